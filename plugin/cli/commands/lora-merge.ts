/**
 * `msckpt lora-merge`: merge LoRA branches into their base weights (complete or distributed).
 */
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { mergeLora, resolveLoraScaling } from '../../lora/index.js';
import { createProgress, formatBytes } from '../progress.js';

export const order = 60;

interface Flags {
  srcCkptPathOrDir?: string;
  dstCkptDir?: string;
  srcCkptStrategy?: string;
  dstCkptStrategy?: string;
  prefix: string;
  loraScaling?: string;
  rslora?: boolean;
  adapterConfig?: string;
  threads?: string;
  overwrite?: boolean;
  crc?: boolean;
  json?: boolean;
}

export function register(program: Command): void {
  program
    .command('lora-merge')
    .description('merge LoRA weights into their base weights: W += scaling * (B @ A); LoRA tensors and their optimizer states are dropped')
    .option('--src-ckpt-path-or-dir <path>', 'a complete .ckpt, or a folder of rank_N/ slice folders')
    .option('--dst-ckpt-dir <dir>', 'output folder (files go to rank_R/{prefix}R.ckpt)')
    .option('--src-ckpt-strategy <path>', 'strategy of a distributed source: a file or a folder of per-rank files')
    .option('--dst-ckpt-strategy <path>', 'write one slice per rank of this strategy (file or folder) instead of a complete file')
    .option('--prefix <prefix>', 'output file name prefix', 'checkpoint_')
    .option('--lora-scaling <value>', 'scaling: a number, or ALPHA/RANK such as 16/8')
    .option('--rslora', 'rsLoRA: scaling = alpha / sqrt(rank)')
    .option('--adapter-config <file>', 'PEFT adapter_config.json to read lora_alpha and r from (when --lora-scaling is absent)')
    .option('--threads <n>', 'threads for the product, main thread included (default: min(2, cores))')
    .option('--overwrite', 'replace existing output files')
    .option('--crc', 'append the crc_num trailer to the outputs')
    .option('--json', 'print one JSON object on stdout')
    .action(async (flags: Flags) => {
      if (flags.srcCkptPathOrDir === undefined) throw new InputError('missing --src-ckpt-path-or-dir', { key: 'src-ckpt-path-or-dir' });
      if (flags.dstCkptDir === undefined) throw new InputError('missing --dst-ckpt-dir', { key: 'dst-ckpt-dir' });
      let threads: number | undefined;
      if (flags.threads !== undefined) {
        threads = Number(flags.threads);
        if (!Number.isInteger(threads) || threads < 1 || threads > 64) {
          throw new InputError(`--threads must be an integer from 1 to 64, got '${flags.threads}'`, { key: 'threads' });
        }
      }
      const scaling = await resolveLoraScaling({
        ...(flags.loraScaling !== undefined ? { loraScaling: flags.loraScaling } : {}),
        ...(flags.adapterConfig !== undefined ? { adapterConfig: flags.adapterConfig } : {}),
        rslora: flags.rslora === true,
      });
      const result = await mergeLora({
        src: flags.srcCkptPathOrDir,
        dstDir: flags.dstCkptDir,
        ...(flags.srcCkptStrategy !== undefined ? { srcStrategy: flags.srcCkptStrategy } : {}),
        ...(flags.dstCkptStrategy !== undefined ? { dstStrategy: flags.dstCkptStrategy } : {}),
        prefix: flags.prefix,
        scaling,
        ...(threads !== undefined ? { threads } : {}),
        overwrite: flags.overwrite === true,
        crc: flags.crc === true,
        progress: (total) => createProgress(total, flags.json !== true),
      });
      if (flags.json === true) {
        process.stdout.write(`${JSON.stringify({ ok: true, scalingSource: scaling.source, ...result })}\n`);
        return;
      }
      const lines = [
        `merged ${result.merged.length} LoRA pair(s) with scaling ${result.scaling}` +
          (scaling.alpha !== undefined && scaling.rank !== undefined
            ? ` (alpha ${scaling.alpha} / ${scaling.rslora ? 'sqrt ' : ''}rank ${scaling.rank}, from ${scaling.source})`
            : ''),
        `dropped ${result.dropped.length} LoRA tensor(s) and optimizer state(s)`,
        `source: ${result.sourceRanks} file(s); wrote ${result.files.length} file(s), ${formatBytes(result.bytesWritten)}`,
        ...result.files.map((f) => `  ${f}`),
      ];
      if (scaling.hasPatterns === true) {
        lines.push('note: the adapter config has rank_pattern/alpha_pattern overrides; one scaling was used for every pair');
      }
      process.stdout.write(`${lines.join('\n')}\n`);
    });
}
