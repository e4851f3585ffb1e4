/**
 * `msckpt convert`: HuggingFace <-> MindSpore weights. Takes mindformers' convert_weight.py
 * command line unchanged (`--model --input_path --output_path --dtype --reversed`, and the
 * model's own `--key value` options); an option no model reads is refused with a did-you-mean
 * (convert_weight.py would pass it on silently). Options for a user converter (`--converter`)
 * go through `--extra key=value`.
 */
import { readFile } from 'node:fs/promises';
import { extname } from 'node:path';
import { Command } from 'commander';
import yaml from 'js-yaml';
import { InputError, UsageError } from '../../errors.js';
import { convertWeights, getConvertModel, listConvertModels, loadConverterModule, type ConvertDTypeName } from '../../convert/index.js';
import { closest } from '../../suggest.js';
import { acceptExtras, invocation } from '../args.js';
import { boolFlag, choiceFlag, intFlag, required, sizeFlag } from '../flags.js';
import { createProgress, formatBytes } from '../progress.js';
import { handleInterrupts } from '../interrupt.js';

export const order = 40;

interface ConvertFlags {
  model?: string;
  inputPath?: string;
  outputPath?: string;
  reversed?: boolean;
  dtype?: string;
  qkvConcat?: boolean | string;
  mlpConcat?: boolean | string;
  numExperts?: string;
  maxShardSize?: string;
  converter?: string;
  config?: string;
  extra?: string[];
  list?: boolean;
  json?: boolean;
}

/** convert_weight.py's own options for models msckpt does not convert, for a clearer refusal. */
const TOOL_OPTIONS: Readonly<Record<string, string>> = {
  telechat_type: 'telechat',
  is_lora: 'LoRA weights of qwen2_5 and others',
  align_rank: 'LoRA weights of qwen2_5',
  layers: 'gpt2 and wizardcoder',
  n_head: 'bloom',
  hidden_size: 'bloom',
  is_pretrain: 'swin',
  config_path: "qwen2_5's MindSpore-to-MindSpore qkv concatenation",
  concat: "glm4's MindSpore-to-MindSpore qkv concatenation",
};

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** `--extra key=value` pairs. */
function readExtraFlags(list: readonly string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of list ?? []) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw new UsageError(`--extra takes key=value, got '${item}'`);
    out[item.slice(0, eq).replace(/-/g, '_')] = item.slice(eq + 1);
  }
  return out;
}

/**
 * mindformers' glm4 documentation passes the model's mindformers YAML as `--config`; the tool reads
 * qkv_concat and mlp_concat from its model.model_config. Returns them (undefined when absent).
 */
async function mindformersModelOptions(path: string): Promise<{ qkvConcat?: boolean; mlpConcat?: boolean; modelConfig: Record<string, unknown> }> {
  let doc: unknown;
  try {
    doc = yaml.load(await readFile(path, 'utf8'));
  } catch (err) {
    throw new InputError(`cannot read the mindformers YAML: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`, { file: path });
  }
  const mc = ((doc as { model?: { model_config?: Record<string, unknown> } } | null)?.model?.model_config ?? {}) as Record<string, unknown>;
  if (mc['use_rearrange_rope'] === true) {
    throw new InputError('use_rearrange_rope: True is not supported by msckpt convert (the q/k rows would need rearranging)', { file: path, key: 'model.model_config.use_rearrange_rope' });
  }
  const bool = (k: string): boolean | undefined => (typeof mc[k] === 'boolean' ? (mc[k] as boolean) : undefined);
  const q = bool('qkv_concat');
  const m = bool('mlp_concat');
  return { ...(q !== undefined ? { qkvConcat: q } : {}), ...(m !== undefined ? { mlpConcat: m } : {}), modelConfig: mc };
}

export function register(program: Command): void {
  const cmd = program
    .command('convert')
    .description('convert weights HuggingFace -> MindSpore (or back with --reversed) for llama, glm-n, qwen, mixtral, deepseek; takes convert_weight.py command lines too')
    .option('--model <name>', 'model (see --list)')
    .option('--input-path <path>', 'HF model folder / safetensors / index (forward) or MindSpore .ckpt / safetensors (--reversed)')
    .option('--output-path <path>', '.ckpt or .safetensors file (forward) or a folder for HF shards (--reversed)')
    .option('--reversed', 'MindSpore -> HuggingFace (config.json is needed only by models whose tensors do not tell their shapes)')
    .option('--dtype <dtype>', "cast floating tensors: fp32, fp16 or bf16 (default: keep each tensor's dtype)")
    .option('--qkv-concat [bool]', 'fused q/k/v and gate/up weights on the MindSpore side (glm-n: default true)')
    .option('--mlp-concat [bool]', 'glm-n: keep dense_h_to_4h fused (default true)')
    .option('--num-experts <n>', 'number of routed experts when config.json does not say')
    .option('--max-shard-size <size>', 'largest HF shard with --reversed, e.g. 5GB (10^9 bytes, as HuggingFace) or 4GiB (default 5GB)')
    .option('--config <path>', "HF config.json (default: in the input folder, or beside the input file); glm-n also takes the model's mindformers YAML, as convert_weight.py does")
    .option('--extra <key=value>', 'a model option by name, for user converters (repeatable)', collect)
    .option('--converter <module>', 'a JS module adding models (exports name, convertHfToMs, convertMsToHf)')
    .option('--list', 'list the models and exit')
    .option('--json', 'one JSON object on stdout');
  acceptExtras(cmd).action(async (flags: ConvertFlags) => {
    handleInterrupts('convert');
    if (flags.converter !== undefined) await loadConverterModule(flags.converter);
    if (flags.list === true) {
      const models = listConvertModels().map((m) => ({ name: m.name, aliases: [...(m.aliases ?? [])], description: m.description ?? '' }));
      if (flags.json === true) process.stdout.write(`${JSON.stringify({ models })}\n`);
      else {
        const w = Math.max(...models.map((m) => m.name.length), 5);
        for (const m of models) {
          const al = m.aliases.length > 0 ? ` (aliases: ${m.aliases.join(', ')})` : '';
          process.stdout.write(`${m.name.padEnd(w)}  ${m.description}${al}\n`);
        }
      }
      return;
    }
    const model = flags.model !== undefined ? getConvertModel(flags.model) : null;
    // the model's own `--key value` options, as convert_weight.py passes them on
    const accepted = new Set(model?.options ?? []);
    const extras: Record<string, string | boolean> = {};
    const refused: string[] = [];
    for (const e of invocation().extras) {
      if (accepted.has(e.key)) extras[e.key] = e.value ?? true;
      else if (e.key === 'is_lora' && e.value !== undefined && boolFlag(e.typed, e.value) === false) continue; // the tool's default: nothing to do
      else refused.push(e.typed);
    }
    if (refused.length > 0) {
      const first = refused[0] as string;
      const key = first.replace(/^--/, '').replace(/-/g, '_');
      const names = [...cmd.options.filter((o) => !o.hidden).map((o) => o.long ?? ''), ...[...accepted].map((a) => `--${a}`)];
      const hint = closest(first, names, 2);
      const tool = TOOL_OPTIONS[key];
      throw new UsageError(
        `unknown option${refused.length > 1 ? 's' : ''} ${refused.map((r) => `'${r}'`).join(', ')} for ${model !== null ? `--model ${model.name}` : 'convert'}` +
          (hint.length > 0 ? ` (did you mean ${hint.map((h) => `'${h}'`).join(' or ')}?)` : '') +
          (tool !== undefined ? `; convert_weight.py reads ${first} for ${tool}, which msckpt does not convert` : '') +
          (model === null ? '' : `; ${model.name} reads ${accepted.size > 0 ? [...accepted].map((a) => `--${a}`).join(', ') : 'no options beyond the flags above'}`) +
          ' (options of a user converter: --extra key=value)',
      );
    }
    const modelName = required('--model', flags.model, ' (or --list)');
    const inputPath = required('--input-path', flags.inputPath);
    const outputPath = required('--output-path', flags.outputPath);
    const dtype = choiceFlag('--dtype', flags.dtype, ['fp32', 'fp16', 'bf16'] as const) as ConvertDTypeName | undefined;
    const numExperts = intFlag('--num-experts', flags.numExperts, { min: 1, max: 1 << 16 });
    const maxShardSize = sizeFlag('--max-shard-size', flags.maxShardSize);
    const reversed = flags.reversed === true;
    if (maxShardSize !== undefined && !reversed) throw new UsageError('--max-shard-size applies to --reversed (HF shards); the forward output is one file');
    if (reversed && /\.(bin|pt|pth)$/i.test(outputPath)) {
      throw new UsageError(`--output-path ${outputPath}: msckpt writes HuggingFace safetensors shards (never PyTorch pickles) into a folder; name a folder`);
    }

    for (const [k, v] of Object.entries(readExtraFlags(flags.extra))) extras[k] = v;

    let qkv = boolFlag('--qkv-concat', flags.qkvConcat);
    let mlp = boolFlag('--mlp-concat', flags.mlpConcat);
    let configPath = flags.config;
    let modelConfig: Record<string, unknown> | undefined;
    if (configPath !== undefined && ['.yaml', '.yml'].includes(extname(configPath).toLowerCase())) {
      if (model?.name !== 'glm-n') throw new UsageError(`--config ${configPath}: give the model's HuggingFace config.json (a mindformers YAML is read for glm-n only)`);
      // convert_weight.py's glm-n takes the run YAML: fusion from it, and (reversed) the geometry
      const fromYaml = await mindformersModelOptions(configPath);
      qkv ??= fromYaml.qkvConcat;
      mlp ??= fromYaml.mlpConcat;
      if (reversed) modelConfig = fromYaml.modelConfig;
      configPath = undefined;
    }
    if (mlp !== undefined) {
      if (!accepted.has('mlp_concat')) throw new UsageError(`--mlp-concat applies to glm-n, not --model ${modelName}`);
      extras['mlp_concat'] = mlp;
    }
    const result = await convertWeights({
      model: modelName,
      inputPath,
      outputPath,
      reversed,
      ...(dtype !== undefined ? { dtype } : {}),
      options: {
        ...(qkv !== undefined ? { qkvConcat: qkv } : {}),
        ...(numExperts !== undefined ? { numExperts } : {}),
        ...(maxShardSize !== undefined ? { maxShardSize } : {}),
        ...(configPath !== undefined ? { configPath } : {}),
        ...(modelConfig !== undefined ? { config: modelConfig } : {}),
        extra: extras,
        progress: (total: number) => createProgress(total, flags.json !== true),
      },
    });
    if (flags.json === true) {
      process.stdout.write(`${JSON.stringify(result)}\n`);
    } else {
      process.stdout.write(
        `converted ${result.model} ${result.direction}: ${result.tensorsIn} tensors in, ${result.tensorsOut} out, ${formatBytes(result.bytesOut)}` +
          `${result.dtype !== null ? ` as ${result.dtype}` : ''}\n`,
      );
      for (const f of result.files) process.stdout.write(`  ${f}\n`);
    }
  });
}
