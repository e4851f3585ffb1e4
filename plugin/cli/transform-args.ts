/**
 * The flags `transform`, `plan` and `rank-list` share, and the command lines of mindformers'
 * transform_checkpoint.py and transform_checkpoint.sh read as those tools read them.
 *
 * Dialects:
 * - msckpt: `--src-checkpoint S --dst-checkpoint-dir D ...`, outputs in `D/rank_N/`.
 * - transform_checkpoint.py: any of the tool's flags spelled as the tool spells them
 *   (`--src_checkpoint`, `--dst_checkpoint`, `--world_size`, ...) or a flag only the tool has
 *   (`--rank_id`, `--transform_process_num`, `--transform_by_rank`). Outputs go where the tool
 *   puts them, `D/<name>/rank_N/<prefix>N.ckpt` (`<name>`: the source folder's name, or the
 *   file's name up to its first dot), and `world_size`/`rank_id`/`transform_process_num` choose
 *   the destination ranks as the tool's TransformCkpt does.
 * - transform_checkpoint.sh: six or seven positional arguments
 *   `SRC SRC_STRATEGY DST DST_STRATEGY WORLD_SIZE PROCESS_NUM [PREFIX]`.
 * `--output-layout msckpt|mindformers` overrides the layout the dialect implies.
 * The tools' quirks that lose data or lie are not copied: no output folder is removed first, no
 * `./log` is deleted, `--transform_by_rank False` means false, a directory strategy is merged in
 * memory instead of into the user's strategy folder.
 */
import { readdir, realpath, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { Option, type Command } from 'commander';
import { InputError, UsageError } from '../errors.js';
import type { PickRule, WeightsFormat } from '../formats/resolve.js';
import { formatRanges, parseRankRanges } from '../ranges.js';
import { typedAs } from './args.js';
import { boolFlag, choiceFlag, intFlag, MAX_PROCESSES, MAX_WORLD_SIZE, sizeFlag } from './flags.js';

export type TransformUse = 'transform' | 'plan' | 'rank-list';
export type OutputLayout = 'msckpt' | 'mindformers';
export type TransformDialect = 'msckpt' | 'transform_checkpoint.py' | 'transform_checkpoint.sh';

export interface TransformFlags {
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
  rankId?: string;
  transformProcessNum?: string;
  transformByRank?: string | boolean;
  outputLayout?: string;
  overwrite?: boolean;
  cluster?: string | boolean;
  testFault?: string;
}

export const DEFAULT_PREFIX = 'checkpoint_';
export const DEFAULT_MEMORY_TEXT = '512M';

/** The `.sh` form's usage line, as the script prints it. */
export const SH_USAGE = 'transform_checkpoint.sh <src_ckpt> <src_strategy> <dst_ckpt_dir> <dst_strategy> <world_size> <process_num> [<prefix>]';

/** Declare the shared flags on `cmd`. `plan` and `rank-list` take a transform command line unchanged. */
export function addTransformFlags(cmd: Command, use: TransformUse): Command {
  const writes = use === 'transform';
  const ignored = (text: string): string => (writes ? text : `${text} (accepted, ${use} writes nothing)`);
  cmd
    .argument('[sh-args...]', `transform_checkpoint.sh's positional form: ${SH_USAGE.replace(/^\S+ /, '')}`)
    .option('--src-checkpoint <path>', 'a complete checkpoint file, or a folder of rank_N/ folders')
    .option('--src-strategy <path>', "source strategy file, or a folder of per-stage files (merged first); omit or 'None' for a complete source")
    .option('--dst-checkpoint-dir <dir>', ignored('output folder: DIR/rank_R/{prefix}R.ckpt (see --output-layout)'))
    .option('--dst-strategy <path>', "destination strategy file or folder; omit or 'None' for one complete file")
    .option('--prefix <text>', ignored(`output file name prefix (default ${DEFAULT_PREFIX})`))
    .option('--world-size <n>', 'expected destination device count, checked against the destination strategy (transform_checkpoint.py: the ranks its converters cover)')
    .option('--process-num <k>', ignored('converter processes, each owning a contiguous block of destination ranks (default 1)'))
    .addOption(new Option('--rank <r>', `${use === 'transform' ? 'write' : use} only this destination rank`).conflicts(['ranks', 'rankId']))
    .addOption(new Option('--ranks <list>', `${use === 'transform' ? 'write' : use} only these destination ranks, e.g. 8-15 or 0,2,4-7`).conflicts(['rankId']))
    .option('--memory <size>', `buffer budget, e.g. 512M or 2G (K/M/G: powers of 1024; default ${DEFAULT_MEMORY_TEXT})`)
    .option('--pick <rule>', "which file of a rank_N folder holding several counts: newest (modification time, mindformers' rule; default) or name (largest epoch/step in the name, MindSpore's transform_checkpoints)")
    .option('--output-format <fmt>', ignored("ckpt or safetensors (default: the source's format)"))
    .option('--src-format <fmt>', 'rank_N folders holding both .ckpt and .safetensors files: which to read (default safetensors)')
    .option('--output-layout <layout>', ignored("msckpt (DIR/rank_N/) or mindformers (DIR/<name>/rank_N/, as transform_checkpoint.py); default: mindformers for the Python tool's command lines, else msckpt"))
    .option('--rank-id <n>', "transform_checkpoint.py: this converter's rank (with --world_size and --transform_process_num)")
    .option('--transform-process-num <k>', 'transform_checkpoint.py: converters sharing the world_size ranks')
    .option('--transform-by-rank [bool]', 'transform_checkpoint.py: convert only this converter\'s ranks (true/false)')
    .option('--json', use === 'rank-list' ? 'print one JSON object on stdout' : use === 'plan' ? 'print the full plan (with copy operations) as one JSON object' : 'print one JSON report on stdout');
  if (use === 'transform') {
    cmd.option('--crc', 'ckpt: append the CRC-32 trailer; safetensors: store crc_num in the metadata');
    cmd.option('--overwrite', "replace another transform's outputs found in the output folder (exactly the files its manifest lists; nothing else is removed)");
    cmd.option(
      '--cluster [mode]',
      'share the work among the processes of a cluster job on a shared disk: run the same command on every process (msrun, srun, ' +
        'or any launcher setting RANK_ID/RANK_SIZE); each writes its block of destination ranks. mode: auto (default), msrun or slurm',
    );
    cmd.addOption(new Option('--test-fault <spec>', 'tests only: at=plan|manifest|files|mid-group,n=N,worker=W,action=kill|throw|kill-parent|pause, or error=ENOSPC').hideHelp());
  } else {
    cmd.addOption(new Option('--crc').hideHelp());
  }
  return cmd;
}

export type ClusterFlag = 'auto' | 'msrun' | 'slurm';

/** The hidden `--test-fault` of transform, read. */
export interface TransformTestFault {
  readonly at?: 'plan' | 'manifest' | 'files' | 'mid-group';
  readonly n?: number;
  readonly worker?: number;
  readonly action?: 'kill' | 'throw' | 'kill-parent' | 'pause';
  /** Make every write fail with this system error code. */
  readonly error?: string;
}

function testFaultFlag(v: string | undefined): TransformTestFault | undefined {
  if (v === undefined) return undefined;
  const out: Record<string, string | number> = {};
  for (const part of v.split(',')) {
    const m = /^(at|n|worker|action|error)=([\w-]+)$/.exec(part.trim());
    if (m === null) throw new UsageError(`--test-fault: cannot read '${part}'`);
    out[m[1] as string] = /^\d+$/.test(m[2] as string) ? Number(m[2]) : (m[2] as string);
  }
  return out as TransformTestFault;
}

export interface TransformJob {
  readonly srcCheckpoint: string;
  readonly dstDir: string;
}

export interface TransformRequest {
  readonly dialect: TransformDialect;
  readonly layout: OutputLayout;
  /** One per source (a folder of complete checkpoints read by the Python tool's rules gives several). */
  readonly jobs: readonly TransformJob[];
  readonly srcStrategy: string | null;
  readonly dstStrategy: string | null;
  readonly prefix: string;
  /** Destination ranks; undefined = all. */
  readonly ranks?: readonly number[];
  /** Destination device count to check (msckpt's --world-size). */
  readonly worldSize?: number;
  readonly processNum: number;
  readonly memory: number;
  readonly pick?: PickRule;
  readonly outputFormat?: 'ckpt' | 'safetensors';
  readonly srcFormat?: WeightsFormat;
  readonly crc: boolean;
  /** Lines for the user before the work starts (the dialect's announcement, warnings). */
  readonly notices: readonly string[];
  /** Set when this command line converts nothing (a transform_checkpoint.py rank_id that is no converter). */
  readonly idle?: string;
  /** transform_checkpoint.py's world_size, to say afterwards when it covered fewer ranks than the destination has. */
  readonly toolWorldSize?: number;
  readonly overwrite: boolean;
  /** Share the work among a cluster job's processes. */
  readonly cluster?: ClusterFlag;
  readonly testFault?: TransformTestFault;
}

const STRATEGY_NONE = (v: string | undefined): string | null => (v === undefined || v === '' || v === 'None' || v === 'none' ? null : v);

/** Flags the Python tool spells with underscores (a snake_case spelling of one of these selects its dialect). */
const TOOL_SPELLED = ['--src-checkpoint', '--dst-checkpoint-dir', '--src-strategy', '--dst-strategy', '--world-size'];
/** Flags only the Python tool has. */
const TOOL_ONLY = ['--rank-id', '--transform-process-num', '--transform-by-rank'];

function dialectOf(positional: readonly string[]): TransformDialect {
  if (positional.length > 0) return 'transform_checkpoint.sh';
  for (const f of TOOL_ONLY) if (typedAs(f) !== undefined) return 'transform_checkpoint.py';
  for (const f of TOOL_SPELLED) if (typedAs(f)?.includes('_') === true) return 'transform_checkpoint.py';
  return 'msckpt';
}

function ranksFlag(v: string | undefined): number[] | undefined {
  if (v === undefined) return undefined;
  try {
    return parseRankRanges(v);
  } catch (err) {
    if (err instanceof InputError) throw new UsageError(`--ranks: ${err.message}`);
    throw err;
  }
}

const range = (a: number, n: number): number[] => Array.from({ length: n }, (_v, i) => a + i);

/**
 * The output folder(s) transform_checkpoint.py writes to: `dst/<name>` where `<name>` is the
 * source folder's name, or each complete checkpoint's name up to its first dot (a folder of
 * complete `.ckpt` files without rank_N folders is one job per file, as the tool does it).
 */
async function mindformersJobs(src: string, dst: string): Promise<TransformJob[]> {
  let real: string;
  try {
    real = await realpath(src);
  } catch {
    throw new InputError('no such file or directory', { file: src });
  }
  const st = await stat(real);
  if (!st.isDirectory()) return [{ srcCheckpoint: src, dstDir: join(dst, (basename(real).split('.')[0] as string) || basename(real)) }];
  const names = await readdir(real, { withFileTypes: true });
  const hasRanks = names.some((d) => d.isDirectory() && /^rank_?\d+$/.test(d.name));
  const ckpts = names.filter((d) => d.isFile() && d.name.endsWith('.ckpt')).map((d) => d.name).sort();
  const folderSource = names.some((d) => d.isFile() && (d.name === 'param_name_map.json' || d.name.endsWith('.index.json')));
  if (hasRanks || folderSource || ckpts.length === 0) return [{ srcCheckpoint: src, dstDir: join(dst, basename(real)) }];
  return ckpts.map((f) => ({ srcCheckpoint: join(src, f), dstDir: join(dst, f.split('.')[0] as string) }));
}

/** Read the shared flags (and the `.sh` positional form) into one request. */
export async function resolveTransformRequest(flags: TransformFlags, positional: readonly string[], use: TransformUse): Promise<TransformRequest> {
  const dialect = dialectOf(positional);
  const notices: string[] = [];
  const layout = choiceFlag('--output-layout', flags.outputLayout, ['msckpt', 'mindformers'] as const) ?? (dialect === 'msckpt' ? 'msckpt' : 'mindformers');
  const outputFormat = choiceFlag('--output-format', flags.outputFormat, ['ckpt', 'safetensors'] as const);
  const srcFormat = choiceFlag('--src-format', flags.srcFormat, ['ckpt', 'safetensors'] as const);
  const memory = sizeFlag('--memory', flags.memory ?? DEFAULT_MEMORY_TEXT) as number;
  const processNum = intFlag('--process-num', flags.processNum, { min: 1, max: MAX_PROCESSES }) ?? 1;
  let pick: PickRule | undefined = choiceFlag('--pick', flags.pick, ['newest', 'name'] as const);
  const one = intFlag('--rank', flags.rank, { min: 0, max: MAX_WORLD_SIZE - 1 });
  let ranks: number[] | undefined = one !== undefined ? [one] : ranksFlag(flags.ranks);

  let src: string | undefined;
  let dst: string | undefined;
  let srcStrategy: string | null;
  let dstStrategy: string | null;
  let prefix = flags.prefix ?? DEFAULT_PREFIX;
  let worldSize: number | undefined;
  let toolWorldSize: number | undefined;
  let idle: string | undefined;
  let processes = processNum;

  if (dialect === 'msckpt') {
    src = flags.srcCheckpoint;
    dst = flags.dstCheckpointDir;
    srcStrategy = STRATEGY_NONE(flags.srcStrategy);
    dstStrategy = STRATEGY_NONE(flags.dstStrategy);
    worldSize = intFlag('--world-size', flags.worldSize, { min: 1, max: MAX_WORLD_SIZE });
  } else {
    let w: number;
    let k: number;
    let r: number;
    let byRankAsked: boolean;
    if (dialect === 'transform_checkpoint.sh') {
      const given = ['srcCheckpoint', 'srcStrategy', 'dstCheckpointDir', 'dstStrategy', 'worldSize', 'prefix', 'rankId', 'transformProcessNum', 'transformByRank'] as const;
      const both = given.filter((g) => flags[g] !== undefined);
      if (both.length > 0) {
        const names = both.map((g) => `--${g.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
        throw new UsageError(`give either transform_checkpoint.sh's positional form or flags, not both (${names.join(', ')} given with ${positional.length} positional arguments)`);
      }
      if (positional.length < 6 || positional.length > 7) {
        throw new UsageError(`the positional form takes 6 or 7 arguments, got ${positional.length}: ${SH_USAGE}`);
      }
      const [s, ss, d, ds, ws, pn, pf] = positional as [string, string, string, string, string, string, string | undefined];
      src = s;
      dst = d;
      srcStrategy = STRATEGY_NONE(ss);
      dstStrategy = STRATEGY_NONE(ds);
      if (dstStrategy === null) notices.push("dst_strategy None: one complete checkpoint is written (transform_checkpoint.sh itself would fail on '$PWD/None')");
      w = intFlag('world_size (5th argument)', ws, { min: 1, max: MAX_WORLD_SIZE }) as number;
      k = intFlag('process_num (6th argument)', pn, { min: 1, max: MAX_PROCESSES }) as number;
      if (pf !== undefined && pf !== '') prefix = pf;
      r = 0;
      byRankAsked = true;
      if (flags.processNum === undefined) processes = Math.min(k, w);
    } else {
      src = flags.srcCheckpoint;
      dst = flags.dstCheckpointDir;
      srcStrategy = STRATEGY_NONE(flags.srcStrategy);
      dstStrategy = STRATEGY_NONE(flags.dstStrategy);
      w = intFlag(typedAs('--world-size') ?? '--world_size', flags.worldSize, { min: 1, max: MAX_WORLD_SIZE }) ?? 1;
      k = intFlag(typedAs('--transform-process-num') ?? '--transform_process_num', flags.transformProcessNum, { min: 1, max: MAX_PROCESSES }) ?? 1;
      const given = intFlag(typedAs('--rank-id') ?? '--rank_id', flags.rankId, { min: 0, max: MAX_WORLD_SIZE - 1 });
      // the tool takes RANK_ID from the environment when --rank_id is absent (or 0: falsy in Python)
      const env = process.env['RANK_ID'];
      const fromEnv = env !== undefined && /^\d+$/.test(env.trim()) ? Number(env) : undefined;
      r = given ?? fromEnv ?? 0;
      if (given === undefined && fromEnv !== undefined && fromEnv !== 0) notices.push(`--rank_id not given: using RANK_ID=${fromEnv} from the environment, as transform_checkpoint.py does`);
      if (given === 0 && fromEnv !== undefined && fromEnv !== 0) {
        notices.push(`--rank_id 0 taken as given (transform_checkpoint.py would use RANK_ID=${fromEnv} from the environment instead)`);
      }
      byRankAsked = boolFlag(typedAs('--transform-by-rank') ?? '--transform_by_rank', flags.transformByRank) ?? false;
      if (flags.transformByRank !== undefined && flags.transformByRank !== true && !byRankAsked && w > 1 && k === 1) {
        notices.push(
          `${typedAs('--transform-by-rank')} ${String(flags.transformByRank)}: taken as false (transform_checkpoint.py reads any non-empty value as true and would convert only ranks ${formatRanges(range(r, w))})`,
        );
      }
    }
    if (k > w) {
      notices.push(`transform_process_num ${k} is larger than world_size ${w}; using ${w}, as transform_checkpoint.py does`);
      k = w;
    }
    if (w % k !== 0) throw new UsageError(`world_size ${w} must be divisible by transform_process_num ${k}`);
    const step = w / k;
    const converters = range(0, k).map((i) => i * step);
    const byRank = k > 1 ? true : w === 1 ? false : byRankAsked;
    if (dialect === 'transform_checkpoint.sh') {
      if (byRank && ranks === undefined) ranks = range(0, w);
    } else if (!converters.includes(r)) {
      idle = `rank_id ${r} converts nothing: the converters of world_size ${w} with transform_process_num ${k} are rank_id ${converters.join(', ')}`;
    } else if (byRank && ranks === undefined) {
      ranks = range(r, step);
    }
    if (byRank) {
      toolWorldSize = w;
      pick ??= 'newest'; // transform_checkpoint_by_rank takes the newest file of a rank folder
    }
  }
  if ((src === undefined || src === '') && use === 'rank-list') src = '';
  if (src === undefined || (src === '' && use !== 'rank-list')) {
    throw new UsageError(`${dialect === 'msckpt' ? '--src-checkpoint' : '--src_checkpoint'} is required`);
  }
  if (dst === undefined || dst === '') {
    if (use !== 'transform') dst = '.';
    else if (dialect === 'msckpt') throw new UsageError('--dst-checkpoint-dir is required');
    else {
      dst = join(process.cwd(), 'transformed_checkpoint');
      notices.push(`--dst_checkpoint_dir not given: writing under ${dst}, as transform_checkpoint.py does`);
    }
  }
  const jobs = layout === 'mindformers' && use === 'transform' ? await mindformersJobs(src, dst) : [{ srcCheckpoint: src, dstDir: dst }];
  if (use === 'transform' && dialect !== 'msckpt') {
    const where = layout === 'mindformers'
      ? `${join(dst, jobs.length === 1 ? basename((jobs[0] as TransformJob).dstDir) : '<name>')}/rank_N/${prefix}N.ckpt, as the tool does (--output-layout msckpt: ${dst}/rank_N/)`
      : `${dst}/rank_N/${prefix}N.ckpt (--output-layout msckpt)`;
    notices.unshift(`${dialect} command line: writing ${where}`);
  }
  if (use !== 'transform' && flags.crc === true) throw new UsageError(`--crc applies to transform only`);
  const cluster = flags.cluster === undefined ? undefined : typeof flags.cluster === 'boolean' ? 'auto' : choiceFlag('--cluster', flags.cluster, ['auto', 'msrun', 'slurm'] as const);
  if (cluster !== undefined && dialect !== 'msckpt') {
    throw new UsageError(`--cluster takes msckpt's own flags, not ${dialect}'s command line (whose rank_id/transform_process_num share the work their own way)`);
  }
  if (use === 'transform' && cluster === undefined && dialect === 'msckpt') {
    const size = process.env['RANK_SIZE'] ?? process.env['MS_WORKER_NUM'];
    if (size !== undefined && /^\d+$/.test(size.trim()) && Number(size) > 1) {
      notices.push(
        `RANK_SIZE=${size.trim()} is set (started by msrun or another launcher?): this process converts every destination rank itself; ` +
          'pass --cluster to share the work among the job\'s processes',
      );
    }
  }
  return {
    dialect,
    layout,
    jobs,
    srcStrategy,
    dstStrategy,
    prefix,
    ...(ranks !== undefined ? { ranks } : {}),
    ...(worldSize !== undefined ? { worldSize } : {}),
    processNum: processes,
    memory,
    ...(pick !== undefined ? { pick } : {}),
    ...(outputFormat !== undefined ? { outputFormat } : {}),
    ...(srcFormat !== undefined ? { srcFormat } : {}),
    crc: flags.crc === true,
    notices,
    ...(idle !== undefined ? { idle } : {}),
    ...(toolWorldSize !== undefined ? { toolWorldSize } : {}),
    overwrite: flags.overwrite === true,
    ...(cluster !== undefined ? { cluster } : {}),
    ...(flags.testFault !== undefined ? { testFault: testFaultFlag(flags.testFault) as TransformTestFault } : {}),
  };
}

/** After the work: say when transform_checkpoint.py's world_size covered fewer ranks than the destination has. */
export function coverageNote(req: TransformRequest, destinationRanks: number): string | undefined {
  const w = req.toolWorldSize;
  if (w === undefined || req.ranks === undefined || w >= destinationRanks) return undefined;
  return `world_size ${w} covers ranks 0-${w - 1} of the destination strategy's ${destinationRanks}; ranks ${w}-${destinationRanks - 1} were not written (as transform_checkpoint.py does); pass --world_size ${destinationRanks} for all`;
}
