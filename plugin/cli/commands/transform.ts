/**
 * `msckpt transform`: re-shard checkpoints between two layouts (slice, merge, convert), with the
 * flags of MindSpore's transform_checkpoints / mindformers (snake_case spellings accepted).
 */
import { Command, Option } from 'commander';
import { InputError } from '../../errors.js';
import type { PickRule } from '../../formats/resolve.js';
import { transformCheckpoints, type TransformOptions } from '../../transform/index.js';
import { createProgress, formatBytes } from '../progress.js';

export const order = 20;

interface Flags {
  srcCheckpoint?: string;
  srcStrategy?: string;
  dstCheckpointDir?: string;
  dstStrategy?: string;
  prefix?: string;
  worldSize?: string;
  processNum?: string;
  rank?: string;
  ranks?: string;
  memory?: string;
  pick?: string;
  outputFormat?: string;
  srcFormat?: string;
  crc?: boolean;
  json?: boolean;
  child?: boolean;
}

export function intFlag(name: string, v: string | undefined, min: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) throw new InputError(`--${name} must be an integer >= ${min}, got '${v}'`);
  return n;
}

/**
 * The file of a rank_N folder that counts: `newest` (default, mindformers' rule) or `name`
 * (largest epoch/step, MindSpore's transform_checkpoints); `last` is the old spelling of `name`.
 * A flag left at its default means the library default.
 */
export function pickFlag(v: string | undefined, source?: string): PickRule | undefined {
  if (v === undefined || source === 'default') return undefined;
  if (v === 'last' || v === 'name') return 'name';
  if (v === 'newest') return 'newest';
  throw new InputError(`--pick must be 'newest' or 'name', got '${v}'`);
}

function strategyFlag(v: string | undefined): string | null {
  // MindSpore accepts None / empty for "no strategy"
  if (v === undefined || v === '' || v === 'None' || v === 'none') return null;
  return v;
}

export function register(program: Command): void {
  program
    .command('transform')
    .description('re-shard checkpoints between parallel layouts: slice a complete file, merge rank_N/ slices, or convert one layout to another')
    .option('--src-checkpoint <path>', 'a complete checkpoint file, or a folder of rank_N/ folders')
    .option('--src-strategy <path>', 'source strategy file, or a folder of per-stage files (merged first); omit for a complete source')
    .option('--dst-checkpoint-dir <dir>', 'output folder: DIR/rank_R/{prefix}R.ckpt')
    .option('--dst-strategy <path>', 'destination strategy file or folder; omit for one complete file')
    .option('--prefix <text>', 'output file name prefix', 'checkpoint_')
    .option('--world-size <n>', 'expected destination device count (checked against the destination strategy)')
    .option('--process-num <k>', 'converter processes, each owning a contiguous block of destination ranks', '1')
    .option('--rank <r>', 'write only this destination rank')
    .option('--ranks <list>', 'write only these destination ranks, e.g. 8-15 or 0,2,4-7')
    .option('--memory <size>', 'buffer budget, e.g. 512M or 2G', '512M')
    .option('--pick <rule>', 'which file of a rank_N folder holding several: last (name order) or newest', 'last')
    .option('--output-format <fmt>', "ckpt or safetensors (default: the source's format)")
    .option('--src-format <fmt>', 'rank_N folders holding both .ckpt and .safetensors files: which to read (default safetensors)')
    .option('--crc', 'ckpt: append the CRC-32 trailer; safetensors: store crc_num in the metadata')
    .option('--json', 'print one JSON report on stdout')
    .addOption(new Option('--child').hideHelp())
    .action(async (flags: Flags, cmd: Command) => {
      if (flags.srcCheckpoint === undefined) throw new InputError('--src-checkpoint is required');
      if (flags.dstCheckpointDir === undefined) throw new InputError('--dst-checkpoint-dir is required');
      const fmt = flags.outputFormat;
      if (fmt !== undefined && fmt !== 'ckpt' && fmt !== 'safetensors') throw new InputError(`--output-format must be ckpt or safetensors, got '${fmt}'`);
      const srcFormat = flags.srcFormat;
      if (srcFormat !== undefined && srcFormat !== 'ckpt' && srcFormat !== 'safetensors') throw new InputError(`--src-format must be ckpt or safetensors, got '${srcFormat}'`);
      const json = flags.json === true;
      const worldSize = intFlag('world-size', flags.worldSize, 1);
      const rank = intFlag('rank', flags.rank, 0);
      const pick = pickFlag(flags.pick, cmd.getOptionValueSource('pick'));
      const opts: TransformOptions = {
        srcCheckpoint: flags.srcCheckpoint,
        srcStrategy: strategyFlag(flags.srcStrategy),
        dstStrategy: strategyFlag(flags.dstStrategy),
        dstDir: flags.dstCheckpointDir,
        prefix: flags.prefix ?? 'checkpoint_',
        processNum: intFlag('process-num', flags.processNum, 1) ?? 1,
        memory: flags.memory ?? '512M',
        ...(fmt !== undefined ? { outputFormat: fmt } : {}),
        ...(srcFormat !== undefined ? { srcFormat } : {}),
        ...(flags.crc === true ? { crc: true } : {}),
        progress: (total: number) => createProgress(total, !json),
        ...(worldSize !== undefined ? { worldSize } : {}),
        ...(rank !== undefined ? { rank } : {}),
        ...(flags.ranks !== undefined ? { ranks: flags.ranks } : {}),
        ...(pick !== undefined ? { pick } : {}),
        ...(json ? {} : { onNotice: (m: string) => process.stderr.write(`msckpt: ${m}\n`) }),
      };
      const r = await transformCheckpoints(opts);
      if (json) {
        process.stdout.write(`${JSON.stringify({ kind: 'transform', ...r })}\n`);
        return;
      }
      const rate = r.seconds > 0 ? r.bytesWritten / r.seconds : 0;
      process.stdout.write(
        `transform: ${r.written.length} file(s) written, ${r.skipped.length} skipped (complete for the same inputs) of ${r.worldSize} rank(s)\n` +
          `  read ${formatBytes(r.bytesRead)}, wrote ${formatBytes(r.bytesWritten)} in ${r.seconds.toFixed(2)} s (${formatBytes(rate)}/s), ${r.processes} process(es), peak RSS ${formatBytes(r.maxRssBytes)}\n` +
          `  output ${r.dstDir}${r.manifest !== null ? `, manifest ${r.manifest}` : ''}\n`,
      );
    });
}
