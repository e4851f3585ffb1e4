/**
 * `msckpt convert`: HuggingFace <-> MindSpore weights (the Python tool's convert_weight.py).
 */
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { convertWeights, listConvertModels, loadConverterModule, type ConvertDTypeName } from '../../convert/index.js';
import { createProgress, formatBytes } from '../progress.js';

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
  list?: boolean;
  json?: boolean;
}

/** `5GB` (decimal, as HF), `5GiB`, `500MB`, `1e9`, `123` -> bytes. */
export function parseSize(text: string): number {
  const m = /^\s*([0-9]+(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kmgt]?i?b?)?\s*$/i.exec(text);
  if (m === null) throw new InputError(`cannot read size '${text}' (e.g. 5GB, 500MB, 2GiB)`, { key: 'max_shard_size' });
  const n = Number(m[1]);
  const unit = (m[2] ?? '').toLowerCase().replace(/b$/, '');
  const mult: Record<string, number> = { '': 1, k: 1e3, m: 1e6, g: 1e9, t: 1e12, ki: 1024, mi: 1024 ** 2, gi: 1024 ** 3, ti: 1024 ** 4 };
  const f = mult[unit];
  if (f === undefined) throw new InputError(`cannot read size '${text}'`, { key: 'max_shard_size' });
  const bytes = Math.floor(n * f);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new InputError(`size '${text}' must be positive`, { key: 'max_shard_size' });
  return bytes;
}

function parseBool(v: boolean | string | undefined, flag: string): boolean | undefined {
  if (v === undefined || typeof v === 'boolean') return v;
  const s = v.toLowerCase();
  if (['true', '1', 'yes'].includes(s)) return true;
  if (['false', '0', 'no'].includes(s)) return false;
  throw new InputError(`--${flag} expects true or false, got '${v}'`, { key: flag });
}

/** Unknown `--key value` / `--key=value` pairs, passed to the model as extra options. */
function parseExtras(args: readonly string[]): Record<string, string | boolean> {
  const out: Record<string, string | boolean> = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (!a.startsWith('--')) throw new InputError(`unexpected argument '${a}' (custom options start with --)`);
    const eq = a.indexOf('=');
    if (eq > 0) {
      out[a.slice(2, eq).replace(/-/g, '_')] = a.slice(eq + 1);
      continue;
    }
    const next = args[i + 1];
    if (next !== undefined && !next.startsWith('--')) {
      out[a.slice(2).replace(/-/g, '_')] = next;
      i++;
    } else out[a.slice(2).replace(/-/g, '_')] = true;
  }
  return out;
}

export function register(program: Command): void {
  program
    .command('convert')
    .description('convert weights HuggingFace -> MindSpore (or back with --reversed) for llama, glm-n, qwen, mixtral, deepseek')
    .option('--model <name>', 'model (see --list)')
    .option('--input-path <path>', 'HF model folder / safetensors / index (forward) or MindSpore .ckpt / safetensors (--reversed)')
    .option('--output-path <path>', '.ckpt or .safetensors file (forward) or a folder for HF shards (--reversed)')
    .option('--reversed', 'MindSpore -> HuggingFace')
    .option('--dtype <dtype>', 'cast floating tensors: fp32, fp16 or bf16 (default: keep each tensor\'s dtype)')
    .option('--qkv-concat [bool]', 'fused q/k/v and gate/up weights on the MindSpore side (glm-n: default true)')
    .option('--mlp-concat [bool]', 'glm-n: keep dense_h_to_4h fused (default true)')
    .option('--num-experts <n>', 'number of routed experts when config.json does not say')
    .option('--max-shard-size <size>', 'largest HF shard with --reversed (default 5GB)')
    .option('--config <path>', 'HF config.json (default: in the input folder, or beside the input file)')
    .option('--converter <module>', 'a JS module adding models (exports name, convertHfToMs, convertMsToHf)')
    .option('--list', 'list the models and exit')
    .option('--json', 'one JSON object on stdout')
    .allowUnknownOption(true)
    .argument('[extra...]', 'model-specific --key value options')
    .action(async (extra: string[], flags: ConvertFlags) => {
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
      const missing = (['model', 'inputPath', 'outputPath'] as const).filter((k) => flags[k] === undefined);
      if (missing.length > 0) {
        throw new InputError(`missing ${missing.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ')} (or --list)`);
      }
      if (flags.dtype !== undefined && !['fp32', 'fp16', 'bf16'].includes(flags.dtype)) {
        throw new InputError(`Dtype '${flags.dtype}' is not supported (expected fp32, fp16 or bf16)`, { key: 'dtype' });
      }
      let numExperts: number | undefined;
      if (flags.numExperts !== undefined) {
        numExperts = Number(flags.numExperts);
        if (!Number.isSafeInteger(numExperts) || numExperts <= 0) throw new InputError(`--num-experts expects a positive integer, got '${flags.numExperts}'`, { key: 'num_experts' });
      }
      const extras: Record<string, string | boolean> = parseExtras(extra);
      const mlp = parseBool(flags.mlpConcat, 'mlp-concat');
      if (mlp !== undefined) extras['mlp_concat'] = mlp;
      const qkv = parseBool(flags.qkvConcat, 'qkv-concat');
      const result = await convertWeights({
        model: flags.model as string,
        inputPath: flags.inputPath as string,
        outputPath: flags.outputPath as string,
        reversed: flags.reversed === true,
        ...(flags.dtype !== undefined ? { dtype: flags.dtype as ConvertDTypeName } : {}),
        options: {
          ...(qkv !== undefined ? { qkvConcat: qkv } : {}),
          ...(numExperts !== undefined ? { numExperts } : {}),
          ...(flags.maxShardSize !== undefined ? { maxShardSize: parseSize(flags.maxShardSize) } : {}),
          ...(flags.config !== undefined ? { configPath: flags.config } : {}),
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
