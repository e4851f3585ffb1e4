/**
 * `msckpt launch`: the step sequence of a job start, run by every rank msrun starts.
 *
 * 1. Nothing to do (no auto_trans_ckpt, no only_save_strategy): the command starts at once on the
 *    user's YAML, nothing read beyond it; STAND_ALONE/MANUAL_PARALLEL safetensors inference is
 *    handed over the same way (mindformers slices while loading). Otherwise the YAML is judged
 *    with the files, and (release unknown) one rank finds the installed mindformers and shares it.
 * 2. Clean: one rank per coordination group (global rank 0 on a shared disk; each node's first
 *    local rank without one) removes what msckpt or a strategy pass wrote under
 *    output/strategy and output/transformed_checkpoint, then the group's generation opens.
 * 3. Strategy: a strategy-only pass of the training command (derived YAML with
 *    only_save_strategy: True), or --dst-strategy; all ranks wait for every rank's file; with
 *    pipeline stages one rank merges them.
 * 4. Check: one rank plans the conversion; a missing parameter or a shape mismatch stops every
 *    rank with that report; weights that already match the layout are used as they are.
 * 5. Convert: ranks 0, W/K, 2W/K, ... write destination slices [r, r + W/K) with a heartbeat
 *    (consecutive slices listing the same tensors together, each source span read once per
 *    group, as `msckpt transform` does); the others wait (and fail promptly when a converter fails or dies).
 * 6. Train: the command with a derived YAML (load_checkpoint -> converted weights,
 *    auto_trans_ckpt: False), stdio inherited, SIGINT/SIGTERM forwarded; its exit code returned.
 * With only_save_strategy: True the launch is a dry run: strategies, then the plan, exit 0.
 * From joining the group until it leaves coordination every rank writes a light presence beat
 * (its stage); every wait for other ranks fails when an awaited rank's beat stops changing for the
 * heartbeat timeout, so a rank dying on another node (strategy pass, waiting) is found promptly.
 *
 * load_ckpt_format: safetensors takes the same steps: a complete source (a single file, a unified
 * folder with param_name_map.json, an HF index) or rank_N/*.safetensors (per rank the file with
 * the largest (epoch, step)) becomes <name>/rank_R/checkpoint_R.safetensors, written as MindSpore
 * writes safetensors. With msckpt.safetensors_slicing: load-time, complete weights are left
 * unified and mindformers slices them while loading (steps 2-5 are skipped).
 */
import { execa } from 'execa';
import { existsSync, realpathSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { formatBytes } from '../units.js';
import { CoordinationError, Coordinator, DEFAULT_JOIN_TIMEOUT_MS, defaultPollInterval, type HeartbeatHandle } from '../coordination/coordinator.js';
import { detectSharedDisk } from '../coordination/shared-disk.js';
import { formatDuration } from '../units.js';
import { describeError, FailureError, fromSystemError, InputError, MsckptError } from '../errors.js';
import { signalExitCode } from '../interrupt.js';
import { removeLiveTempFiles, removeLiveTempFilesSync, writeFileAtomic } from '../formats/atomic.js';
import { mergeStrategies } from '../formats/strategy/merge.js';
import { openWeights } from '../formats/open.js';
import { defaultSourceIO, type SourceIO } from '../formats/source-index.js';
import { DEFAULT_MEMORY, loadPlan, planRank, readPlanFile, writePlanFile, type Plan } from '../plan/index.js';
import { writeRanks, type CommittedRankFile } from '../transform/rank-writer.js';
import { resolveWeights, sourceStem, type ResolvedWeights } from '../formats/resolve.js';
import {
  assignConverters, checkRunConfig, commandOverrides, convertedLoadPath, deriveRunConfig, detectMindformersVersion, formatConfigProblem,
  launchPathConflicts, rewriteCommand, RunConfigError, type ConverterAssignment, type FoundVersion, type RunConfig, type RunConfigReport,
} from './config.js';
import { jobIdentity, msrunClusterTimeoutMs, MSRUN_VARS, rankIdentity, type RankIdentity } from './identity.js';
import { cleanJobOutputs, Ledger, strategyPassFiles } from './ledger.js';

export interface LaunchOptions {
  /** The run YAML (never modified). */
  readonly config: string;
  /** The training command; every `{config}` is replaced by the YAML the command should read. */
  readonly command: readonly string[];
  /** Environment (msrun's variables); default process.env. */
  readonly env?: NodeJS.ProcessEnv;
  /** Working directory of the command (relative YAML paths resolve against it); default cwd. */
  readonly cwd?: string;
  /** A destination strategy file or folder instead of a strategy-only pass. */
  readonly dstStrategy?: string;
  /** Milliseconds every barrier waits at most (default: the YAML's msckpt.barrier_timeout, else 7200 s). */
  readonly barrierTimeoutMs?: number;
  /** Milliseconds without an awaited rank's heartbeat (converters: task beat; others: presence beat) before it counts as dead (default 60 s). */
  readonly heartbeatTimeoutMs?: number;
  /**
   * Milliseconds the ranks may take to join before the missing ones are named and every rank
   * stops (default: the YAML's msckpt.join_timeout, else msrun's cluster_time_out from
   * MS_TOPO_TIMEOUT, else 10 min).
   */
  readonly joinTimeoutMs?: number;
  /** Poll interval in milliseconds (default: the YAML's msckpt.poll_interval, else automatic). */
  readonly pollIntervalMs?: number;
  /** Force (true) or deny (false) a disk shared by all nodes; default: detected. */
  readonly sharedDisk?: boolean;
  /** Workers per node when msrun's environment cannot tell. */
  readonly localWorkerNum?: number;
  /** Buffer budget of a converter in bytes (default 512 MiB). */
  readonly memory?: number;
  /**
   * With `load_ckpt_format: safetensors`: `convert` (default) slices complete weights per rank
   * into output/transformed_checkpoint; `load-time` leaves them unified for mindformers to slice
   * while loading (default: the YAML's `msckpt.safetensors_slicing`, else `convert`).
   */
  readonly safetensorsSlicing?: SafetensorsSlicing;
  /**
   * The installed mindformers version whose rules apply (`1.5.0`); default: the YAML's
   * msckpt.mindformers_version, else found from the training command's Python when msckpt has
   * work to do.
   */
  readonly mindformersVersion?: string;
  /** Where progress lines go (default: stderr, prefixed with the rank). */
  readonly log?: (line: string) => void;
  /**
   * How source headers are read and sources opened (default: the files). The leader reads the
   * headers once while planning; converter ranks open the sources from the plan file's indexes.
   */
  readonly sourceIO?: SourceIO;
  /** Fault injection for tests (`msckpt launch --test-fault RANK:POINT:ACTION`, see LaunchFaults). */
  readonly faults?: LaunchFaults;
}

/**
 * A rank that fails on purpose (tests), at a point of the launch: after `files` converted files
 * are committed (and recorded), `mid`-write of the next one (its first band), or at a named
 * point (`clean`: after the clean, before the others go on; `planned`: once the conversion is
 * planned; `train`: just before the training command starts). `throw` fails with an error,
 * `kill` is SIGKILL, `enospc` fails as a full disk would, `hold` waits there until the rank is
 * stopped by a signal.
 */
export interface LaunchFaults {
  readonly rank: number;
  readonly at: { readonly files: number; readonly mid: boolean } | 'clean' | 'planned' | 'train';
  readonly action: 'throw' | 'kill' | 'enospc' | 'hold';
}

/** How a job with `load_ckpt_format: safetensors` gets its slices (see LaunchOptions). */
export type SafetensorsSlicing = 'convert' | 'load-time';

export { assignConverters, type ConverterAssignment } from './config.js';

/** What one source `<name>` needs, decided by the checking rank. */
interface NameCheck {
  name: string;
  /** The source path (file or folder of rank_N). */
  source: string;
  /** True: the source already holds exactly the job's slices; used as it is. */
  reuse: boolean;
  bytesRead: number;
  bytesWritten: number;
  peakMemory: number;
  ranks: Array<{ rank: number; bytesWritten: number; peakMemory: number; sourceRanks: readonly number[] }>;
  dropped: readonly string[];
  /** The plan file the leader wrote (with its fingerprint); null when the source is used as it is. */
  plan: { file: string; fingerprint: string } | null;
}

interface CheckResult {
  names: NameCheck[];
  dstStrategy: string | null;
}

function defaultLog(rank: string): (line: string) => void {
  return (line) => {
    process.stderr.write(`msckpt[${rank}]: ${line}\n`);
  };
}

/** Replace `{config}` in every argument. */
export function substituteConfig(command: readonly string[], configPath: string): string[] {
  return command.map((a) => a.split('{config}').join(configPath));
}

/**
 * The command for a derived YAML: `{config}` replaced, and run_mindformer.py flags that set one
 * of the derived keys (`--load_checkpoint`, `--auto_trans_ckpt`, ...) given the derived value.
 */
export function derivedCommand(command: readonly string[], configPath: string, overrides: Readonly<Record<string, unknown>>): string[] {
  return substituteConfig(rewriteCommand(command, overrides), configPath);
}

/** Keys a strategy-only pass changes. */
const STRATEGY_PASS_OVERRIDES = { only_save_strategy: true, auto_trans_ckpt: false } as const;

/**
 * Run a command with stdio inherited and SIGINT/SIGTERM forwarded; returns its exit code (128 +
 * signal number when a signal ended it). `tail` keeps the end of its stderr for messages.
 */
async function runCommand(
  argv: readonly string[],
  opts: { cwd: string; env: NodeJS.ProcessEnv; captureTail?: boolean },
): Promise<{ code: number; tail: string }> {
  const [file, ...args] = argv;
  if (file === undefined) throw new InputError('no training command given (put it after `--`)');
  let tail = '';
  const child = execa(file, args, {
    cwd: opts.cwd,
    env: opts.env,
    extendEnv: false,
    reject: false,
    stdin: 'inherit',
    stdout: 'inherit',
    stderr: opts.captureTail === true ? 'pipe' : 'inherit',
    buffer: false,
  });
  if (opts.captureTail === true && child.stderr !== null) {
    child.stderr.on('data', (chunk: Buffer) => {
      process.stderr.write(chunk);
      tail = (tail + chunk.toString('utf8')).slice(-2000);
    });
  }
  const forward = (sig: NodeJS.Signals): void => {
    child.kill(sig);
  };
  const onInt = (): void => forward('SIGINT');
  const onTerm = (): void => forward('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    const r = await child;
    if (r.failed && r.exitCode === undefined && r.signal === undefined) {
      throw new InputError(`cannot start the training command '${file}': ${r.shortMessage ?? r.message}`);
    }
    const code = r.exitCode ?? signalExitCode(r.signal);
    return { code, tail: tail.trim() };
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
}

export { cleanJobOutputs, planClean, type CleanOptions, type CleanPlan, type CleanReport } from './ledger.js';

/** The launch was stopped by SIGINT or SIGTERM (before training). */
export class StoppedError extends FailureError {
  constructor(readonly signal: NodeJS.Signals) {
    super(`stopped by ${signal}`);
  }
}

/** A stop asked for by a signal: converters check it between bands, the steps between them. */
class StopRequest {
  signal: NodeJS.Signals | undefined;
  private readonly waiters: Array<() => void> = [];

  /** True for the first request. */
  request(sig: NodeJS.Signals): boolean {
    if (this.signal !== undefined) return false;
    this.signal = sig;
    for (const w of this.waiters.splice(0)) w();
    return true;
  }

  /** Throws StoppedError once a stop was asked for. */
  check(): void {
    if (this.signal !== undefined) throw new StoppedError(this.signal);
  }

  /** Resolves when a stop is asked for. */
  wait(): Promise<void> {
    if (this.signal !== undefined) return Promise.resolve();
    return new Promise((res) => this.waiters.push(res));
  }
}

/** A point of the launch a test fault may fire at (see LaunchFaults). */
type FaultPoint = { files: number; mid: boolean } | 'clean' | 'planned' | 'train';

function faultMatches(at: LaunchFaults['at'], point: FaultPoint): boolean {
  if (typeof at === 'string' || typeof point === 'string') return at === point;
  return at.files === point.files && at.mid === point.mid;
}

function describePoint(p: FaultPoint): string {
  if (typeof p === 'string') return `'${p}'`;
  return p.mid ? `the middle of converted file ${p.files + 1}` : `${p.files} converted file(s)`;
}

/** True when every destination rank r takes each tensor whole, unchanged, from source rank r. */
export function planIsIdentity(plan: Plan): boolean {
  if (plan.source.files.length !== plan.destination.deviceCount || plan.source.files.length <= 1) return false;
  if (plan.dropped.length > 0) return false;
  for (const s of plan.ranks) {
    const rp = planRank(plan, s.rank);
    for (const t of rp.tensors) {
      if (t.ops.length !== 1) return false;
      const op = t.ops[0]!;
      if (op.srcRank !== s.rank) return false;
      if (op.srcShape.length !== t.shape.length || op.srcShape.some((d, i) => d !== t.shape[i])) return false;
    }
  }
  return true;
}

interface Ctx {
  /** The ranks this rank coordinates with (all, or its node's without a shared disk). */
  group: readonly number[];
  shared: boolean;
  cfg: RunConfig;
  id: RankIdentity;
  env: NodeJS.ProcessEnv;
  cwd: string;
  log: (line: string) => void;
  command: readonly string[];
  io: SourceIO;
  /** This rank's part of the record of what msckpt writes under output_dir. */
  ledger: Ledger;
  stop: StopRequest;
  faults: LaunchFaults | undefined;
  /** Converted files this rank committed so far. */
  committed: number;
}

/** Fire this rank's test fault if it is set for `point`. */
async function fault(ctx: Ctx, point: FaultPoint): Promise<void> {
  const f = ctx.faults;
  if (f === undefined || f.rank !== ctx.id.rank || !faultMatches(f.at, point)) return;
  const where = describePoint(point);
  switch (f.action) {
    case 'kill':
      ctx.log(`test fault: killed at ${where}`);
      process.kill(process.pid, 'SIGKILL');
      await new Promise(() => undefined);
      return;
    case 'enospc':
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
    case 'hold': {
      ctx.log(`test fault: holds at ${where} until stopped`);
      const alive = setInterval(() => undefined, 1 << 30); // nothing else may keep the process up meanwhile
      await ctx.stop.wait();
      clearInterval(alive);
      ctx.stop.check();
      return;
    }
    case 'throw':
      throw new FailureError(typeof point === 'string' || point.mid ? `injected failure at ${where}` : `injected failure after ${point.files} file(s)`);
  }
}

/** The derived YAML for `purpose`, written under output/msckpt (per rank, so no two ranks race) and recorded. */
async function writeDerived(ctx: Ctx, purpose: string, overrides: Record<string, unknown>): Promise<string> {
  const path = ctx.cfg.paths.derivedConfig(`${purpose}_rank_${ctx.id.rank}`);
  try {
    await mkdir(ctx.cfg.paths.msckptDir, { recursive: true });
    await writeFileAtomic(path, deriveRunConfig(ctx.cfg, overrides));
  } catch (err) {
    throw fromSystemError(err, (err as NodeJS.ErrnoException).path ?? path, 'writing the derived run YAML');
  }
  await ctx.ledger.written([path], 'derived run YAML');
  return path;
}

function childEnv(ctx: Ctx): NodeJS.ProcessEnv {
  return { ...ctx.env, MSCKPT_RANK: String(ctx.id.rank), MSCKPT_WORLD_SIZE: String(ctx.id.worldSize) };
}

/** Resolve a path of the YAML against the command's working directory. */
function abs(ctx: Ctx, p: string): string {
  return resolve(ctx.cfg.baseDir, p);
}

/**
 * The sources to convert, from the one resolver: a folder of rank_N (named after the folder), a
 * unified folder or HF-index folder (named after the folder), or each complete file (named by its
 * stem). With safetensors, several complete files without an index are refused (nothing says
 * which tensor is where).
 */
export async function launchSources(cfg: RunConfig): Promise<Array<{ name: string; path: string; resolved: ResolvedWeights }>> {
  const s = cfg.source;
  if (s === undefined || s.kind === 'missing' || s.kind === 'empty-dir') {
    throw new InputError(`load_checkpoint '${cfg.loadCheckpoint}' holds no checkpoint to convert`, { key: 'load_checkpoint' });
  }
  const r = await resolveWeights(s.path, { format: cfg.loadCkptFormat });
  switch (r.kind) {
    case 'ranks':
    case 'unified':
      return [{ name: basename(r.path), path: r.path, resolved: r }];
    case 'index':
      // the folder holding the index is named after the folder; an index file given by name by its stem
      return [{ name: r.index.path === r.path ? sourceStem(r.path) : basename(r.path), path: r.index.path, resolved: r }];
    case 'file':
      return [{ name: sourceStem(r.path), path: r.path, resolved: r }];
    case 'files':
      if (r.format === 'safetensors' && r.sources.length > 1) {
        throw new InputError(
          `holds ${r.sources.length} .safetensors files but no param_name_map.json or *.index.json to say which tensor is where; ` +
            'add the index of these weights (or keep one complete file in the folder)',
          { file: r.path, key: 'load_checkpoint' },
        );
      }
      return r.sources.map((x) => ({ name: x.name, path: x.file.path, resolved: { kind: 'file', path: x.file.path, format: r.format, file: x.file, notices: [] } }));
  }
}

/** The source strategy of a sliced source, as the release's flow finds it (config's rules: the key, or its fallback). */
function srcStrategyOf(ctx: Ctx): string | null {
  return ctx.cfg.source?.kind === 'rank-dir' ? (ctx.cfg.srcStrategy?.path ?? null) : null;
}

/** `output/transformed_checkpoint/<name>/rank_R/checkpoint_R.<ckpt|safetensors>`: the job's format. */
function transformedFile(cfg: RunConfig, name: string, rank: number): string {
  return join(cfg.paths.transformedRankDir(name, rank), `checkpoint_${rank}.${cfg.loadCkptFormat}`);
}

async function strategyStep(ctx: Ctx, coord: Coordinator, dstOverride: string | undefined): Promise<string | null> {
  const { cfg, id, log } = ctx;
  if (!cfg.useParallel) return null; // one complete checkpoint
  if (dstOverride !== undefined) {
    const p = abs(ctx, dstOverride);
    log(`destination strategy: ${p} (given)`);
    return p;
  }
  const yamlPath = await writeDerived(ctx, 'strategy_pass', STRATEGY_PASS_OVERRIDES);
  const mine = cfg.paths.strategyFile(id.rank);
  const passCommand = derivedCommand(ctx.command, yamlPath, STRATEGY_PASS_OVERRIDES);
  if (id.rank === coord.leader) log(`strategy-only pass: ${passCommand.join(' ')}`);
  const r = await runCommand(passCommand, { cwd: ctx.cwd, env: childEnv(ctx), captureTail: true });
  ctx.stop.check(); // the pass got the signal too
  if (r.code !== 0) {
    throw new FailureError(`the strategy-only pass exited with code ${r.code}${r.tail !== '' ? `: ${r.tail.split('\n').slice(-3).join(' | ')}` : ''}`);
  }
  if (!existsSync(mine)) throw new FailureError(`the strategy-only pass ended but wrote no ${mine}`);
  await coord.publish('strategy'); // no data: every rank reads a barrier's data
  await coord.waitAll('strategy', { what: "every rank's strategy file" });
  if (id.rank === coord.leader) await ctx.ledger.written(await strategyPassFiles(cfg.paths, ctx.shared ? undefined : ctx.group), 'strategy-only pass');
  if (cfg.parallelConfig.pipelineStage > 1) {
    if (id.rank === coord.leader) {
      ctx.stop.check();
      const files = coord.ranks.map((r) => cfg.paths.strategyFile(r));
      let rep;
      try {
        rep = await mergeStrategies(files, cfg.paths.mergedStrategy);
      } catch (err) {
        throw fromSystemError(err, (err as NodeJS.ErrnoException).path ?? cfg.paths.mergedStrategy, 'merging the strategies');
      }
      await ctx.ledger.written([cfg.paths.mergedStrategy], 'merge of the pipeline strategies');
      log(`merged ${rep.files} strategy files (stages ${rep.stages.join(', ')}) into ${cfg.paths.mergedStrategy}`);
      await coord.publish('merged');
    } else {
      await coord.waitAll('merged', { ranks: [coord.leader], what: 'the merged strategy' });
    }
    return cfg.paths.mergedStrategy;
  }
  return cfg.paths.strategyFile(coord.ranks[0] as number);
}

async function checkStep(ctx: Ctx, coord: Coordinator, dst: string | null, memory: number): Promise<CheckResult> {
  const { cfg, id } = ctx;
  if (id.rank !== coord.leader) {
    const got = await coord.waitAll<CheckResult>('checked', { ranks: [coord.leader], what: 'the check of the weights' });
    return got.get(coord.leader) as CheckResult;
  }
  // the leader plans once (every source header read here, the strategies merged here) and writes
  // each plan to a plan file the converter ranks load
  const srcStrategy = srcStrategyOf(ctx);
  const names: NameCheck[] = [];
  const sources = await launchSources(cfg);
  for (const [i, s] of sources.entries()) {
    const loaded = await loadPlan({
      srcCheckpoint: s.resolved, srcStrategy, dstStrategy: dst, memory, worldSize: cfg.useParallel ? id.worldSize : 1, srcFormat: cfg.loadCkptFormat,
      io: ctx.io,
      ...(ctx.shared || !cfg.useParallel ? {} : { ranks: ctx.group }),
    });
    for (const n of loaded.notices) ctx.log(n);
    const plan = loaded.plan;
    names.push({
      name: s.name,
      source: s.path,
      reuse: planIsIdentity(plan),
      bytesRead: plan.bytesRead,
      bytesWritten: plan.bytesWritten,
      peakMemory: plan.peakMemory,
      ranks: plan.ranks.map((r) => ({ rank: r.rank, bytesWritten: r.bytesWritten, peakMemory: r.peakMemory, sourceRanks: r.sourceRanks })),
      dropped: plan.dropped,
      plan: { file: join(coord.dir, 'plans', `${i}-${s.name}.plan.json`), fingerprint: plan.fingerprint },
    });
    await writePlanFile(plan, (names[names.length - 1] as NameCheck).plan?.file as string);
  }
  // with several sources, reuse only when all match (the derived YAML names one folder)
  if (names.length > 1 && names.some((n) => !n.reuse)) for (const n of names) n.reuse = false;
  const result: CheckResult = { names, dstStrategy: dst };
  // the files the converters will write are recorded before any of them starts
  if (!cfg.onlySaveStrategy) {
    await ctx.ledger.planned(names.filter((n) => !n.reuse).flatMap((n) => n.ranks.map((r) => transformedFile(cfg, n.name, r.rank))), 'the conversion plan');
  }
  ctx.stop.check();
  // every rank reads what is published: only what the others need (no per-rank table)
  await coord.publish('checked', { names: names.map(({ ranks: _r, dropped: _d, ...rest }) => ({ ...rest, ranks: [], dropped: [] })), dstStrategy: dst });
  return result;
}

function describePlan(ctx: Ctx, check: CheckResult, converters: readonly ConverterAssignment[]): string[] {
  const lines: string[] = [];
  for (const n of check.names) {
    if (n.reuse) {
      lines.push(`${n.name}: ${n.source} already holds this job's slices; no conversion`);
      continue;
    }
    lines.push(`${n.name}: ${n.source} -> ${ctx.cfg.paths.transformedDir}/${n.name}/rank_R/checkpoint_R.${ctx.cfg.loadCkptFormat}`);
    const per = new Map(n.ranks.map((r) => [r.rank, r]));
    for (const c of converters) {
      const rs = c.slices.map((r) => per.get(r)).filter((x) => x !== undefined);
      const bytes = rs.reduce((s, r) => s + r.bytesWritten, 0);
      const mem = rs.reduce((m, r) => Math.max(m, r.peakMemory), 0);
      lines.push(
        `  converter rank ${c.rank}: slices ${c.slices[0]}..${c.slices[c.slices.length - 1]} (${c.slices.length} files, ${formatBytes(bytes)} written, buffers ${formatBytes(mem)})`,
      );
    }
    lines.push(`  total: ${formatBytes(n.bytesRead)} read, ${formatBytes(n.bytesWritten)} written (disk needed), peak buffers per converter ${formatBytes(n.peakMemory)}`);
    if (n.dropped.length > 0) lines.push(`  not in the job's layout (dropped): ${n.dropped.join(', ')}`);
  }
  return lines;
}

/**
 * A converter rank's share of one source: the plan the leader wrote (loaded from its file,
 * checked against the published fingerprint; no source header is read, no strategy merged), its
 * destination slices written by the one rank writer, each file recorded in the ledger as it is
 * committed. Stops between bands when the rank is stopped (the writer removes the temporary files
 * of the files it has not committed). Returns the files written.
 */
async function convertSlices(ctx: Ctx, name: NameCheck, slices: readonly number[], memory: number, hb: HeartbeatHandle): Promise<number> {
  const { cfg, id } = ctx;
  if (name.plan === null) throw new FailureError(`no plan was written for ${name.name}`);
  const plan = await readPlanFile(name.plan.file, name.plan.fingerprint);
  const mine = new Set(slices);
  const total = plan.ranks.reduce((s, r) => s + (mine.has(r.rank) ? r.bytesWritten : 0), 0);
  let done = 0;
  let label = name.name;
  let group: readonly number[] = [];
  let midFired = -1;
  try {
    const r = await writeRanks({
      plan, ranks: slices, format: cfg.loadCkptFormat, memory, io: ctx.io,
      // the job's format; safetensors as MindSpore writes it (keys sorted, {"format":"ms"})
      outputPath: (rank) => transformedFile(cfg, name.name, rank),
      onGroup: (ranks) => {
        group = ranks;
        label = ranks.length === 1 ? `${name.name}/rank_${ranks[0]}` : `${name.name}/rank_${ranks[0]}..${ranks[ranks.length - 1]}`;
        hb.update({ done, total, label });
      },
      onBytes: (n) => {
        done += n;
        hb.update({ done, total, label });
      },
      onBand: async () => {
        ctx.stop.check();
        if (midFired !== ctx.committed) {
          midFired = ctx.committed;
          await fault(ctx, { files: ctx.committed, mid: true });
        }
      },
      onCommit: async (file: CommittedRankFile) => {
        await ctx.ledger.written([{ path: file.path, crc32: file.crc32 }], `converter rank ${id.rank}`);
        ctx.committed += 1;
        await fault(ctx, { files: ctx.committed, mid: false });
        ctx.stop.check();
      },
    });
    return r.files.length;
  } catch (err) {
    if (err instanceof MsckptError) throw err;
    // a system error of the writes (ENOSPC, EACCES, EROFS, ...): the file (or the group's folder) it happened on
    const where = (err as NodeJS.ErrnoException).path ?? (group.length === 1 ? transformedFile(cfg, name.name, group[0] as number) : join(cfg.paths.transformedDir, name.name));
    throw fromSystemError(err, where, 'writing the converted weights');
  }
}

/** `msckpt.safetensors_slicing` of the YAML (validated by the schema), default `convert`. */
export function safetensorsSlicingOf(cfg: RunConfig): SafetensorsSlicing {
  const ms = cfg.raw['msckpt'];
  const v = ms !== null && typeof ms === 'object' && !Array.isArray(ms) ? (ms as Record<string, unknown>)['safetensors_slicing'] : undefined;
  return v === 'load-time' ? 'load-time' : 'convert';
}

/**
 * Load-time slicing of complete safetensors: nothing is converted; the weights are checked to
 * open as one complete set and the derived YAML points at them (absolute), keeping
 * `load_ckpt_format: safetensors` and `auto_trans_ckpt: True` so that mindformers slices them
 * while loading (load_distributed_checkpoint with unified_safetensors_dir).
 */
async function loadTimeYaml(cfg: RunConfig, rank: number, log: (line: string) => void): Promise<{ path: string; overrides: Record<string, unknown> }> {
  const sources = await launchSources(cfg);
  const src = sources[0] as { name: string; path: string };
  const opened = await openWeights(src.path);
  const tensors = opened.entries().length;
  await opened.close();
  const loadPath = cfg.source?.kind === 'file' ? src.path : (cfg.source?.path ?? src.path);
  if (rank === 0) log(`load-time slicing (msckpt.safetensors_slicing: load-time): ${loadPath} (${tensors} tensors) is left unified; mindformers slices it while loading`);
  const path = cfg.paths.derivedConfig(`train_rank_${rank}`);
  await mkdir(cfg.paths.msckptDir, { recursive: true });
  const overrides = { load_checkpoint: loadPath, load_ckpt_format: 'safetensors', auto_trans_ckpt: true };
  await writeFileAtomic(path, deriveRunConfig(cfg, overrides));
  return { path, overrides };
}

/**
 * Started outside msrun (none of its variables set) on a YAML whose conversion needs several
 * devices: say so, instead of a device-count complaint about a world of one.
 */
function refuseWithoutMsrun(config: string, cfg: RunConfig): void {
  const pc = cfg.parallelConfig;
  const devices = cfg.useParallel ? pc.dataParallel * pc.modelParallel * pc.contextParallel * pc.pipelineStage : 1;
  if (devices <= 1) return;
  throw new InputError(
    `no msrun environment found (none of ${MSRUN_VARS.join(', ')} is set), but ${config} describes ${devices} devices; ` +
      `start every rank under msrun: msrun --worker_num=${devices} --local_worker_num=${devices} msckpt launch --config ${config} -- <training command>`,
  );
}

/**
 * The launcher hook: see the module comment. Returns the training command's exit code (0 for a
 * dry run). Throws InputError for bad configuration (exit 2) and FailureError/CoordinationError
 * when the job cannot start (exit 1), after telling the other ranks.
 */
export async function launch(opts: LaunchOptions): Promise<number> {
  const env = opts.env ?? process.env;
  const cwd = resolve(opts.cwd ?? process.cwd());
  if (opts.command.length === 0) throw new InputError('no training command given (put it after `--`)');
  const first = rankIdentity(env, { localWorkerNum: opts.localWorkerNum });
  if (first.scheduler) {
    // msrun's scheduler runs the same command; it takes no part in the weights
    return (await runCommand(substituteConfig(opts.command, resolve(cwd, opts.config)), { cwd, env })).code;
  }
  // the configuration mindformers will run: the YAML with the training command's overrides
  const fromCommand = commandOverrides(opts.command);
  const flagVersion = opts.mindformersVersion !== undefined ? { version: opts.mindformersVersion, from: 'flag' as const } : undefined;
  const judge = (checkFiles: boolean, detected?: FoundVersion): Promise<RunConfigReport> =>
    checkRunConfig(opts.config, {
      worldSize: first.worldSize, cwd, checkFiles, env, commandOverrides: fromCommand.overrides,
      mindformersVersion: flagVersion ?? (detected !== undefined ? { version: detected.version, from: 'detected', detail: detected.detail } : undefined),
    });
  // first nothing beyond the YAML: with nothing to do, the command runs on the user's file at once
  const early = await judge(false);
  if (early.config === null) throw new RunConfigError(early.file, early.errors);
  let cfg = early.config;
  const log0 = opts.log ?? defaultLog(`rank ${first.rank}`);
  const tell = (report: RunConfigReport, asWarnings: boolean): void => {
    if (first.rank !== 0) return; // once per job
    for (const n of fromCommand.notes) log0(`warning: ${n}`);
    for (const e of asWarnings ? report.errors : []) log0(`warning: ${formatConfigProblem(opts.config, e)} (mindformers will stop on this)`);
    for (const w of report.warnings) log0(`warning: ${formatConfigProblem(opts.config, w)}`);
  };
  if (cfg.mode === 'passthrough' || cfg.mode === 'handover') {
    tell(early, true);
    if (cfg.mode === 'handover' && first.rank === 0) log0(`handing over to mindformers: ${cfg.modeReason}`);
    return (await runCommand(substituteConfig(opts.command, cfg.file), { cwd, env })).code;
  }
  if (first.standalone) refuseWithoutMsrun(opts.config, cfg);
  if (!early.ok) throw new RunConfigError(early.file, early.errors);
  const full = await judge(true);
  if (!full.ok || full.config === null) throw new RunConfigError(full.file, full.errors);
  cfg = full.config;
  // again with npu_num_per_node, so every rank derives the same node size
  const id = rankIdentity(env, { localWorkerNum: opts.localWorkerNum, npuNumPerNode: cfg.npuNumPerNode });
  const log = opts.log ?? defaultLog(`rank ${id.rank}`);
  const slicing = opts.safetensorsSlicing ?? safetensorsSlicingOf(cfg);
  if (cfg.loadCkptFormat === 'safetensors' && slicing === 'load-time' && cfg.useParallel && !cfg.onlySaveStrategy) {
    if (cfg.source?.kind !== 'rank-dir') {
      tell(full, false);
      const lt = await loadTimeYaml(cfg, id.rank, log);
      return (await runCommand(derivedCommand(opts.command, lt.path, lt.overrides), { cwd, env: { ...env, MSCKPT_RANK: String(id.rank), MSCKPT_WORLD_SIZE: String(id.worldSize) } })).code;
    }
    if (id.rank === 0 || id.localRank === 0) {
      log('safetensors_slicing: load-time applies to complete weights; distributed rank folders are re-sharded per rank as usual');
    }
  }
  const versionKnown = cfg.release.from !== 'unknown';
  if (versionKnown) tell(full, false);

  const settings = cfg.msckpt;
  const barrierMs = opts.barrierTimeoutMs ?? settings.barrierTimeout * 1000;
  const heartbeatMs = opts.heartbeatTimeoutMs ?? settings.heartbeatTimeout * 1000;
  // msckpt.poll_interval is in seconds (units.ts), the option in milliseconds
  const pollInterval = opts.pollIntervalMs ?? (settings.pollInterval !== undefined ? Math.max(1, Math.round(settings.pollInterval * 1000)) : undefined);
  const dstOverride = opts.dstStrategy ?? settings.dstStrategy;
  const memory = opts.memory ?? DEFAULT_MEMORY;
  const disk = detectSharedDisk(cfg.paths.outputDir, env);
  const singleNode = id.worldSize <= id.localWorkerNum;
  const sharedSetting = opts.sharedDisk ?? settings.sharedDisk;
  const shared = singleNode || (sharedSetting ?? disk.network);
  const polling = disk.network || sharedSetting === true;
  if (!shared && id.localWorkerNumFrom === 'default') {
    throw new InputError(
      `without a shared disk each node converts its own ranks, but the workers per node are unknown (guessed ${id.localWorkerNum}); set npu_num_per_node in the YAML or pass --local-worker-num`,
    );
  }
  const group = shared
    ? Array.from({ length: id.worldSize }, (_v, i) => i)
    : Array.from({ length: id.localWorkerNum }, (_v, i) => id.nodeRank * id.localWorkerNum + i).filter((r) => r < id.worldSize);
  const leader = group[0] as number;
  if (!shared && cfg.useParallel && cfg.parallelConfig.pipelineStage > 1 && dstOverride === undefined) {
    throw new InputError(
      'without a shared disk a node sees only its own ranks\' strategy files, which do not describe every pipeline stage; ' +
        'run a strategy-only dry run, merge the strategies (msckpt merge-strategy) and pass the merged file with --dst-strategy (or msckpt.dst_strategy)',
    );
  }
  // every path it reads against every folder it writes or empties, flags and YAML alike, before
  // anything is written or removed
  await refusePathConflicts(cfg, opts.dstStrategy, fromCommand.overrides);
  if (id.rank === leader) {
    log(
      `${cfg.onlySaveStrategy ? 'strategy-only dry run' : 'automatic conversion'} for ${id.worldSize} ranks; ` +
        (shared
          ? `coordinating all ranks on ${singleNode ? 'one node' : sharedSetting === true && !disk.network ? 'a shared disk (as configured)' : `a shared disk (${disk.fsType ?? disk.reason})`}`
          : `no shared disk: node ${id.nodeRank} converts its own ranks ${group[0]}..${group[group.length - 1]}`) +
        `${polling ? `, polling every ${formatDuration(pollInterval ?? defaultPollInterval(group.length))}` : ''}`,
    );
  }

  // the job's identity: what msrun gives all its ranks alike, and the YAML's real path; a rank of
  // another job finds output/msckpt held and stops before writing anything
  const yamlReal = (() => {
    try {
      return realpathSync(cfg.file);
    } catch {
      return cfg.file;
    }
  })();
  const job = jobIdentity(env, yamlReal, id.worldSize);
  const ctx: Ctx = {
    cfg, id, env, cwd, log, command: opts.command, group, shared, io: opts.sourceIO ?? defaultSourceIO,
    ledger: new Ledger(cfg.paths, id.rank, job.id), stop: new StopRequest(), faults: opts.faults, committed: 0,
  };
  try {
    await mkdir(cfg.paths.msckptDir, { recursive: true });
  } catch (err) {
    throw fromSystemError(err, (err as NodeJS.ErrnoException).path ?? cfg.paths.msckptDir, 'creating the folder');
  }

  // SIGINT/SIGTERM before training: tell the other ranks at once, stop the converter between two
  // bands (its temporary files removed), leave with one line and 128 + the signal's number; a
  // second signal leaves at once. During training the command gets the signal (runCommand).
  let coord: Coordinator | undefined;
  let stage = 'join';
  let told: Promise<void> = Promise.resolve();
  const onSignal = (sig: NodeJS.Signals): void => {
    const firstRequest = ctx.stop.request(sig);
    if (!firstRequest || coord === undefined) {
      removeLiveTempFilesSync();
      log(`stopped by ${sig} ${coord === undefined ? 'before the ranks had joined' : `during '${stage}' (second signal)`}`);
      process.exit(signalExitCode(sig));
    }
    const c = coord;
    told = c.fail(stage, new StoppedError(sig)).then(() => c.close()).catch(() => undefined);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let trainYaml: string;
  let trainOverrides: Record<string, unknown> = {};
  try {
    try {
      coord = await Coordinator.open({
        root: shared ? join(cfg.paths.msckptDir, 'coord') : join(cfg.paths.msckptDir, 'coord', `node_${id.nodeRank}`),
        rank: id.rank,
        ranks: group,
        leader,
        sharedDisk: polling,
        ...(pollInterval !== undefined ? { pollInterval } : {}),
        barrierTimeoutMs: barrierMs,
        heartbeatTimeoutMs: heartbeatMs,
        joinTimeoutMs: opts.joinTimeoutMs ?? (settings.joinTimeout !== undefined ? settings.joinTimeout * 1000 : undefined) ?? msrunClusterTimeoutMs(env) ?? DEFAULT_JOIN_TIMEOUT_MS,
        job: { id: job.id, yaml: yamlReal, details: job.details, lockDir: cfg.paths.msckptDir },
      });
    } catch (err) {
      throw fromSystemError(err, (err as NodeJS.ErrnoException).path ?? cfg.paths.msckptDir, 'joining the other ranks');
    }
  } catch (err) {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    throw err;
  }
  if (id.rank === leader) {
    log(
      `job ${job.id} holds ${cfg.paths.msckptDir} (${job.from === 'msrun' ? `msrun scheduler ${job.details['scheduler']}` : 'no msrun scheduler address in the environment: known by its YAML and world size'}); ` +
        `all ${group.length} ranks joined`,
    );
  }
  stage = 'clean';
  await coord.setStage(stage);
  try {
    ctx.stop.check();
    // 1b. the installed mindformers decides which release's rules apply: found once per group
    // (by its leader, from the training command's Python) and shared through the coordinator
    if (!versionKnown) {
      stage = 'mindformers-version';
      let found: FoundVersion | null;
      if (id.rank === leader) {
        found = (await detectMindformersVersion(opts.command, { cwd, env })) ?? null;
        await coord.publish('mindformers_version', found);
      } else {
        const m = await coord.waitAll<FoundVersion | null>('mindformers_version', { ranks: [leader], what: 'the mindformers version' });
        found = m.get(leader) ?? null;
      }
      const again = await judge(true, found ?? undefined);
      if (!again.ok || again.config === null) throw new RunConfigError(again.file, again.errors);
      ctx.cfg = cfg = again.config;
      await refusePathConflicts(cfg, opts.dstStrategy, fromCommand.overrides);
      tell(again, false);
      stage = 'clean';
      ctx.stop.check();
    }
    if (id.rank === 0) log(cfg.release.description);

    // 2. clean: only what msckpt (or a strategy pass) wrote; anything else refuses the job
    if (id.rank === leader) {
      const rep = await cleanJobOutputs({ paths: cfg.paths, worldSize: id.worldSize, ranks: shared ? undefined : group });
      log(`cleaned ${rep.removed} file(s) msckpt or a strategy pass wrote before, in ${cfg.paths.strategyDir}, ${cfg.paths.transformedDir} and ${cfg.paths.msckptDir}`);
      await fault(ctx, 'clean');
      ctx.stop.check();
      await coord.publish('cleaned');
    } else {
      await fault(ctx, 'clean');
      await coord.waitAll('cleaned', { ranks: [leader], what: 'the clean of the output folders' });
    }

    // 3. strategy
    stage = 'strategy';
    ctx.stop.check();
    await coord.setStage(stage);
    const dst = await strategyStep(ctx, coord, dstOverride);

    // 4. check
    stage = 'check';
    ctx.stop.check();
    await coord.setStage(stage);
    const check = await checkStep(ctx, coord, dst, memory);
    await fault(ctx, 'planned');
    ctx.stop.check();
    const converters = assignConverters(cfg.useParallel ? id.worldSize : 1, cfg.transformProcessNum, cfg.useParallel ? group : [0]);
    if (cfg.onlySaveStrategy) {
      if (id.rank === leader) {
        log('dry run (only_save_strategy: True): strategies collected; the conversion would be:');
        for (const l of describePlan(ctx, check, converters)) log(l);
      }
      await coord.close();
      return 0;
    }
    if (id.rank === leader) for (const l of describePlan(ctx, check, converters)) log(l);

    // 5. convert
    stage = 'convert';
    await coord.setStage(stage);
    const todo = check.names.filter((n) => !n.reuse);
    const convRanks = converters.map((c) => c.rank);
    if (todo.length > 0) {
      const mine = converters.find((c) => c.rank === id.rank);
      if (mine !== undefined) {
        const hb = coord.startHeartbeat('convert');
        let files = 0;
        const started = Date.now();
        try {
          await fault(ctx, { files: 0, mid: false });
          for (const n of todo) files += await convertSlices(ctx, n, mine.slices, memory, hb);
        } finally {
          await hb.stop();
        }
        log(`converted slices ${mine.slices[0]}..${mine.slices[mine.slices.length - 1]} (${files} file(s)) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
        ctx.stop.check();
        await coord.publish('converted', { slices: mine.slices, files });
      } else {
        log(`waiting for converter rank(s) ${convRanks.join(', ')}`);
      }
      let lastShown = 0;
      await coord.waitAll('converted', {
        ranks: convRanks,
        heartbeats: convRanks,
        what: 'the converters',
        onProgress: (beats) => {
          if (id.rank !== leader || Date.now() - lastShown < 5000) return;
          lastShown = Date.now();
          // this rank's own share is done by now; the others' as of their last heartbeat
          const parts = [...beats.values()].map((b) => `rank ${b.rank} ${b.rank === id.rank && mine !== undefined ? 'done' : `${b.total ? Math.floor((100 * (b.done ?? 0)) / b.total) : 0}%`}`);
          log(`converting: ${parts.join(', ')}`);
        },
      });
    }
    // a rank's own file must be there before it trains
    const loadPath =
      todo.length === 0
        ? abs(ctx, cfg.loadCheckpoint)
        : convertedLoadPath(cfg.paths, check.names.map((n) => n.name));
    if (todo.length === 0) log(`weights at ${loadPath} already match this job's layout: no conversion`);
    else if (cfg.useParallel) {
      for (const n of todo) {
        const f = transformedFile(cfg, n.name, id.rank);
        if (!existsSync(f)) throw new FailureError(`converted file ${f} is missing after every converter reported success`);
      }
    }
    stage = 'start';
    ctx.stop.check();
    await coord.setStage(stage);
    trainOverrides = { load_checkpoint: loadPath, auto_trans_ckpt: false };
    trainYaml = await writeDerived(ctx, 'train', trainOverrides);
    // the job keeps output/msckpt while it trains
    await coord.close({ keepJob: true });
    await fault(ctx, 'train');
    ctx.stop.check();
  } catch (err) {
    const sig = ctx.stop.signal;
    if (sig !== undefined) {
      // stopped: the others were told by the signal handler; this rank's temporary files go
      await told;
      await coord.close();
      await removeLiveTempFiles();
      log(`stopped by ${sig} during '${stage}'; the other ranks were told, the temporary files of this rank removed`);
      return signalExitCode(sig);
    }
    if (!(err instanceof CoordinationError && err.failedRank !== undefined)) await coord.fail(stage, err);
    await coord.close();
    if (err instanceof CoordinationError) {
      log(`stopping: ${describeError(err)}`);
    }
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }

  // 6. train
  try {
    const r = await runCommand(derivedCommand(opts.command, trainYaml, trainOverrides), { cwd, env: childEnv(ctx) });
    return r.code;
  } finally {
    await coord.releaseJob();
  }
}

/**
 * Refuse (exit 2) before anything is written when a path the launch reads (the YAML's, the
 * training command's --load_checkpoint, --dst-strategy) is, contains or lies inside a folder it
 * writes or empties, after resolving symlinks on both sides (config's launchPathConflicts, the
 * one check for flags and YAML); a --dst-strategy that does not exist is refused here too.
 */
async function refusePathConflicts(cfg: RunConfig, dstFlag: string | undefined, overrides: Readonly<Record<string, unknown>>): Promise<void> {
  const conflicts = await launchPathConflicts(cfg, { dstStrategyFlag: dstFlag, commandKeys: Object.keys(overrides) });
  if (conflicts.length > 0) throw new InputError(conflicts.map((c) => `${c.key}: ${c.message}`).join('; '));
  if (dstFlag !== undefined && cfg.useParallel && !existsSync(resolve(cfg.baseDir, dstFlag))) {
    throw new InputError('--dst-strategy: destination strategy not found', { file: resolve(cfg.baseDir, dstFlag) });
  }
}
