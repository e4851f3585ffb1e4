/**
 * `msckpt lora-merge`: merge LoRA branches into their base weights (complete or distributed).
 * Takes mindformers' transform_ckpt_lora.py command line unchanged: flags spelled as the tool
 * spells them (`--src_ckpt_path_or_dir`, `--lora_scaling`, ...) write the tool's output,
 * `DST/merged_lora.ckpt` (or `.safetensors` with `--save_format safetensors`), unless
 * `--output-layout msckpt` asks for `DST/rank_N/{prefix}N.ckpt`.
 */
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Option, type Command } from 'commander';
import { UsageError } from '../../errors.js';
import { mergeLora, resolveLoraScaling, type LoraMergeResult } from '../../lora/index.js';
import { ckptToSafetensors } from '../../unify/index.js';
import { typedAs } from '../args.js';
import { choiceFlag, intFlag } from '../flags.js';
import { createProgress, formatBytes } from '../progress.js';
import { handleInterrupts } from '../interrupt.js';

export const order = 60;

interface Flags {
  srcCkptPathOrDir?: string;
  dstCkptDir?: string;
  srcCkptStrategy?: string;
  dstCkptStrategy?: string;
  prefix?: string;
  loraScaling?: string;
  rslora?: boolean;
  adapterConfig?: string;
  threads?: string;
  overwrite?: boolean;
  crc?: boolean;
  saveFormat?: string;
  outputLayout?: string;
  json?: boolean;
}

/** transform_ckpt_lora.py's flags: one spelled with an underscore selects the tool's dialect. */
const TOOL_FLAGS = ['--src-ckpt-strategy', '--dst-ckpt-strategy', '--src-ckpt-path-or-dir', '--dst-ckpt-dir', '--lora-scaling', '--save-format'];
const MERGED_NAME = 'merged_lora';

const none = (v: string | undefined): string | undefined => (v === undefined || v === '' || v === 'None' ? undefined : v);

async function exists(p: string): Promise<boolean> {
  return (await stat(p).catch(() => null)) !== null;
}

export function register(program: Command): void {
  program
    .command('lora-merge')
    .description('merge LoRA weights into their base weights: W += scaling * (B @ A); LoRA tensors and their optimizer states are dropped; takes transform_ckpt_lora.py command lines too')
    .option('--src-ckpt-path-or-dir <path>', 'a complete .ckpt, or a folder of rank_N/ slice folders')
    .option('--dst-ckpt-dir <dir>', 'output folder (files go to rank_R/{prefix}R.ckpt; see --output-layout)')
    .option('--src-ckpt-strategy <path>', 'strategy of a distributed source: a file or a folder of per-rank files')
    .option('--dst-ckpt-strategy <path>', 'write one slice per rank of this strategy (file or folder) instead of a complete file')
    .option('--prefix <prefix>', 'output file name prefix (default checkpoint_)')
    .addOption(new Option('--lora-scaling <value>', 'scaling, positive: a number, or ALPHA/RANK such as 16/8 (no default)').conflicts('adapterConfig'))
    .option('--rslora', 'rsLoRA: scaling = alpha / sqrt(rank)')
    .option('--adapter-config <file>', 'PEFT adapter_config.json to read lora_alpha and r from (when --lora-scaling is absent)')
    .option('--threads <n>', 'threads for the product, main thread included (default: min(2, cores))')
    .option('--save-format <fmt>', 'ckpt (default) or safetensors')
    .option('--output-layout <layout>', "msckpt (DIR/rank_R/{prefix}R.ckpt) or mindformers (DIR/merged_lora.ckpt for a complete result, as transform_ckpt_lora.py); default: mindformers for the tool's command lines, else msckpt")
    .option('--overwrite', 'replace existing output files')
    .option('--crc', 'append the crc_num trailer to the outputs (ckpt)')
    .option('--json', 'print one JSON object on stdout')
    .action(async (flags: Flags) => {
      handleInterrupts('lora-merge');
      const toolDialect = TOOL_FLAGS.some((f) => typedAs(f)?.includes('_') === true);
      const spell = (kebab: string): string => typedAs(kebab) ?? (toolDialect ? kebab.replace(/(?<=\w)-/g, '_') : kebab);
      const src = none(flags.srcCkptPathOrDir);
      const dst = flags.dstCkptDir;
      if (src === undefined) throw new UsageError(`${spell('--src-ckpt-path-or-dir')} is required`);
      if (dst === undefined || dst === '') throw new UsageError(`${spell('--dst-ckpt-dir')} is required`);
      const threads = intFlag('--threads', flags.threads, { min: 1, max: 64 });
      const saveFormat = choiceFlag(spell('--save-format'), flags.saveFormat, ['ckpt', 'safetensors'] as const) ?? 'ckpt';
      const layout = choiceFlag('--output-layout', flags.outputLayout, ['msckpt', 'mindformers'] as const) ?? (toolDialect ? 'mindformers' : 'msckpt');
      if (flags.crc === true && saveFormat === 'safetensors') throw new UsageError(`--crc applies to .ckpt outputs, not ${spell('--save-format')} safetensors`);
      if (flags.loraScaling === undefined && flags.adapterConfig === undefined && toolDialect) {
        throw new UsageError(
          `${spell('--lora-scaling')} not given: transform_ckpt_lora.py would silently use 1; pass ${spell('--lora-scaling')} ALPHA/RANK (e.g. 16/8), or 1 if that is what you mean`,
        );
      }
      const scaling = await resolveLoraScaling({
        ...(flags.loraScaling !== undefined ? { loraScaling: flags.loraScaling } : {}),
        ...(flags.adapterConfig !== undefined ? { adapterConfig: flags.adapterConfig } : {}),
        rslora: flags.rslora === true,
      });
      if (!(scaling.value > 0)) {
        throw new UsageError(
          `${flags.loraScaling !== undefined ? spell('--lora-scaling') : `the adapter config's lora_alpha/r`} gives the scaling ${scaling.value}; it must be positive ` +
            '(0 would drop the LoRA weights without merging them, a negative value would subtract them)',
        );
      }
      const dstStrategy = none(flags.dstCkptStrategy);
      const srcStrategy = none(flags.srcCkptStrategy);
      const prefix = flags.prefix ?? 'checkpoint_';
      // the tool writes one merged file for a complete result; a sliced result keeps rank_N/ files
      const single = layout === 'mindformers' && dstStrategy === undefined;
      const notices: string[] = [];
      if (toolDialect) {
        notices.push(
          single
            ? `transform_ckpt_lora.py command line: writing ${join(dst, `${MERGED_NAME}.${saveFormat}`)}, as the tool does (--output-layout msckpt: ${dst}/rank_0/${prefix}0.${saveFormat})`
            : `transform_ckpt_lora.py command line: writing every destination rank's merged slice to ${dst}/rank_N/${prefix}N.${saveFormat} (the tool would merge only rank 0's slice into ${MERGED_NAME}.${saveFormat})`,
        );
      }
      if (flags.json !== true) for (const n of notices) process.stderr.write(`msckpt: ${n}\n`);
      const staged = single || saveFormat === 'safetensors';
      const finalOf = (file: string, rank: number): string =>
        single ? join(dst, `${MERGED_NAME}.${saveFormat}`) : join(dst, `rank_${rank}`, `${prefix}${rank}.${saveFormat}`);
      const stage = staged ? join(dst, `.msckpt-lora-${process.pid}`) : dst;
      let result: LoraMergeResult;
      let files: string[];
      try {
        if (staged && flags.overwrite !== true && single && (await exists(finalOf('', 0)))) {
          throw new UsageError(`${finalOf('', 0)} exists; pass --overwrite to replace it`);
        }
        result = await mergeLora({
          src,
          dstDir: stage,
          ...(srcStrategy !== undefined ? { srcStrategy } : {}),
          ...(dstStrategy !== undefined ? { dstStrategy } : {}),
          prefix,
          scaling,
          ...(threads !== undefined ? { threads } : {}),
          overwrite: flags.overwrite === true,
          crc: flags.crc === true,
          progress: (total) => createProgress(total, flags.json !== true),
        });
        files = [...result.files];
        if (staged) {
          files = [];
          for (const [rank, file] of result.files.entries()) {
            const out = finalOf(file, rank);
            if (!single && flags.overwrite !== true && (await exists(out))) throw new UsageError(`${out} exists; pass --overwrite to replace it`);
            await mkdir(dirname(out), { recursive: true });
            if (saveFormat === 'safetensors') await ckptToSafetensors(file, out, {});
            else await rename(file, out);
            files.push(out);
          }
        }
      } finally {
        if (staged) await rm(stage, { recursive: true, force: true });
      }
      if (flags.json === true) {
        process.stdout.write(`${JSON.stringify({ ok: true, scalingSource: scaling.source, notices, ...result, files })}\n`);
        return;
      }
      const lines = [
        `merged ${result.merged.length} LoRA pair(s) with scaling ${result.scaling}` +
          (scaling.alpha !== undefined && scaling.rank !== undefined
            ? ` (alpha ${scaling.alpha} / ${scaling.rslora ? 'sqrt ' : ''}rank ${scaling.rank}, from ${scaling.source})`
            : ''),
        `dropped ${result.dropped.length} LoRA tensor(s) and optimizer state(s)`,
        `source: ${result.sourceRanks} file(s); wrote ${files.length} file(s), ${formatBytes(result.bytesWritten)}`,
        ...files.map((f) => `  ${f}`),
      ];
      if (scaling.hasPatterns === true) {
        lines.push('note: the adapter config has rank_pattern/alpha_pattern overrides; one scaling was used for every pair');
      }
      process.stdout.write(`${lines.join('\n')}\n`);
    });
}
