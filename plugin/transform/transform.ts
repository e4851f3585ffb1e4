/**
 * `transformCheckpoints`: plan once, then write every destination rank's file with the one rank
 * writer (temporary name + rename, size and CRC-32 computed while writing), recording each file
 * in a journal as it is committed, then `transform_manifest.json` (last, atomically).
 *
 * The destination folder (records.ts):
 * - Nothing is written, created or removed before every output path is compared with every input
 *   after resolving symlinks (`refuseOverlaps`).
 * - A folder holding files no record of msckpt lists (someone else's) is refused, listing a few;
 *   they are never removed. A folder holding another plan's outputs is refused naming that plan,
 *   unless `overwrite`: then exactly the files that plan's records list are removed first.
 * - Resume: files the records of this plan list are re-checked (size and CRC-32, reading them)
 *   and skipped when right, rewritten when not; leftovers of killed runs (temporary files, plan
 *   folders) are removed.
 *
 * With `processNum: K` the selected ranks are cut into K contiguous blocks (`[i*W/K, (i+1)*W/K)`,
 * as mindformers' transform_process_num does) and each block is written by a worker process
 * (transform/worker.ts) that loads the plan from a plan file (no header re-read, no strategy
 * merged again) and reports each committed file; the parent journals it. Workers exit when the
 * parent dies and never commit after it is gone.
 *
 * Source CRCs: a source that stores a CRC of itself is checked while it is read, by one process
 * (the worker whose block reads it most); a mismatch removes every output built from it (the
 * records say they are ours) and is an InputError naming the file.
 *
 * With `cluster`, several processes (nodes) share the work (see `TransformCluster`): the first
 * plans and prepares the folder, the others load its plan file; each writes its block of ranks
 * and keeps its own journal; the first writes the manifest when all are done.
 */
import { createHash } from 'node:crypto';
import { fork, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { FailureError, fromSystemError, InputError } from '../errors.js';
import { makeDirs } from '../formats/atomic.js';
import { SourceCrcMismatch } from '../formats/crc-check.js';
import type { PickRule, WeightsFormat } from '../formats/resolve.js';
import { onInterrupt } from '../interrupt.js';
import { pluginModule } from '../package-files.js';
import { processState } from '../processes.js';
import { formatRanges, parseRankRanges } from '../ranges.js';
import { DEFAULT_MEMORY, findSourceFiles, loadPlan, readPlanFile, writePlanFile, type LoadedPlan, type Plan } from '../plan/index.js';
import { SILENT_PROGRESS, type Progress, type ProgressFactory } from '../progress.js';
import { refuseOverlaps, type NamedPath } from '../real-paths.js';
import { fileCrc32Of } from './file-crc.js';
import { writeRanks, type CommittedRankFile, type FaultAction, type SourceCrcChecked, type WriterFault } from './rank-writer.js';
import {
  CLUSTER_DIR_NAME, foldRecords, Journal, journalFiles, journalName, readDestination, removeOutputs, TRANSFORM_MANIFEST_NAME,
  writeManifestFile, type DestinationState, type ManifestFile, type PlanRecord, type TransformFingerprint, type TransformInputs,
  type TransformManifest,
} from './records.js';
import type { WorkerJob, WorkerMessage } from './worker.js';

export { fileCrc32Of };
export {
  readTransformManifest, TRANSFORM_MANIFEST_NAME, type ManifestFile, type TransformFingerprint, type TransformInputs, type TransformManifest,
} from './records.js';

/**
 * Faults for tests (the CLI's hidden `--test-fault`): `plan` = the parent dies once the plan file
 * is written, before the workers start; `manifest` = the parent dies with the manifest written
 * under its temporary name; `files` = after `n` committed files of worker `worker` (or of the
 * single process); `mid-group` = half-way through group `n` of that worker. `kill-parent` (in a
 * worker) SIGKILLs the parent and goes on, as if someone killed the command under its workers;
 * `pause` (with `files`) stops after the commit with the group's other temporary files open, until
 * signalled.
 */
export interface TransformFaults {
  readonly at: 'plan' | 'manifest' | 'files' | 'mid-group';
  readonly n?: number;
  readonly worker?: number;
  readonly action: FaultAction;
}

/** Several processes (cluster nodes) sharing one transform; implemented over coordination by cluster/. */
export interface TransformCluster {
  /** This process, 0..count-1; process 0 plans, prepares the folder and writes the manifest. */
  readonly index: number;
  readonly count: number;
  /** Process 0: publish the plan; the others: wait for it (with a deadline) and get it. */
  sharePlan(plan: SharedTransformPlan | null): Promise<SharedTransformPlan>;
  /** Report this process's files; resolves once every process has (process 0 gets all reports). */
  finish(mine: ClusterReport): Promise<readonly ClusterReport[]>;
  /** Process 0: the manifest is written; the others: wait until it is. */
  manifestWritten(path: string | null): Promise<string | null>;
  /** Tell the others this process failed (they stop, naming it). */
  fail(err: unknown): Promise<void>;
}

/** What process 0 tells the others. */
export interface SharedTransformPlan {
  readonly planFile: string;
  readonly planFingerprint: string;
  readonly fingerprint: TransformFingerprint;
  readonly fingerprintHash: string;
  readonly inputs: TransformInputs;
  readonly format: WeightsFormat;
  readonly prefix: string;
  /** Every destination rank of the run. */
  readonly ranks: readonly number[];
  /** Files of this plan from earlier runs (re-checked by the process whose block holds them). */
  readonly prior: readonly ManifestFile[];
  readonly checked: readonly number[];
}

/** What each cluster process reports when done. */
export interface ClusterReport {
  readonly index: number;
  /** Files of its block, right: re-checked or written. */
  readonly files: readonly ManifestFile[];
  readonly checked: readonly number[];
  readonly written: readonly number[];
  readonly skipped: readonly number[];
  readonly bytesRead: number;
  readonly bytesWritten: number;
}

export interface TransformOptions {
  /** A complete checkpoint file, or a folder of rank_N/ folders. */
  readonly srcCheckpoint: string;
  /** Source strategy file or folder of per-stage files; null/undefined = complete source. */
  readonly srcStrategy?: string | null;
  /** Destination strategy file or folder; null/undefined = one complete file. */
  readonly dstStrategy?: string | null;
  /** Output folder: DST/rank_R/{prefix}R.ckpt. */
  readonly dstDir: string;
  /** File name prefix (default `checkpoint_`). */
  readonly prefix?: string;
  /** Destination ranks to write: a list, or a string like `8-15` or `0,2,4-7`; default all. */
  readonly ranks?: readonly number[] | string;
  /** One destination rank (same as ranks: [rank]). */
  readonly rank?: number;
  /** Expected destination world size (checked against the destination strategy). */
  readonly worldSize?: number;
  /** Converter processes (default 1 = in this process). */
  readonly processNum?: number;
  /** Buffer budget in bytes (default 512 MiB). */
  readonly memory?: number;
  /** Which file of a rank_N folder holding several counts (default newest; see formats/resolve.ts). */
  readonly pick?: PickRule;
  /** Output format; default: the source's format (ckpt or safetensors). */
  readonly outputFormat?: WeightsFormat;
  /** rank_N folders holding both .ckpt and .safetensors: which to read (default safetensors). */
  readonly srcFormat?: WeightsFormat;
  /** `.ckpt`: append the CRC trailer; safetensors: `crc_num` in metadata (as MindSpore's crc_check). */
  readonly crc?: boolean;
  /** Replace the outputs of another plan found in the destination folder (only the files its records list). */
  readonly overwrite?: boolean;
  /** Progress of the written bytes (default: none). */
  readonly progress?: ProgressFactory | false;
  /** Messages for the user as they happen (which file was picked, ...). */
  readonly onNotice?: (message: string) => void;
  /** Share the work with other processes (cluster/). */
  readonly cluster?: TransformCluster;
  /** Fault injection (tests). */
  readonly faults?: TransformFaults;
}

/** A source CRC check, as reported. */
export interface SourceCheckReport {
  readonly sourceRank: number;
  readonly file: string;
  readonly ok: boolean;
  /** Bytes of the file the conversion's reads covered. */
  readonly coveredBytes: number;
  /** Bytes read only for the check. */
  readonly extraBytes: number;
}

export interface TransformReport {
  readonly dstDir: string;
  readonly manifest: string | null;
  readonly worldSize: number;
  /** Ranks written in this call. */
  readonly written: readonly number[];
  /** Ranks skipped: listed for the same inputs and found right when re-checked (size, CRC-32). */
  readonly skipped: readonly number[];
  /** Ranks listed for the same inputs whose file failed its re-check, rewritten. */
  readonly redone: readonly number[];
  readonly files: readonly ManifestFile[];
  readonly bytesRead: number;
  readonly bytesWritten: number;
  /** Bytes of earlier outputs read to re-check them. */
  readonly bytesRechecked: number;
  /** Leftovers of earlier runs removed (relative paths). */
  readonly cleaned: readonly string[];
  /** Files of another plan removed (`overwrite`). */
  readonly replaced: number;
  readonly sourceChecks: readonly SourceCheckReport[];
  readonly seconds: number;
  readonly processes: number;
  /** Peak resident set of the converter process(es), bytes. */
  readonly maxRssBytes: number;
  readonly notices: readonly string[];
}

/** Block `i` of `k` contiguous blocks of `items`: `[i*W/k, (i+1)*W/k)` (may be empty). */
export function transformProcessBlock<T>(items: readonly T[], k: number, i: number): T[] {
  const w = items.length;
  return items.slice(Math.floor((i * w) / k), Math.floor(((i + 1) * w) / k));
}

/** The blocks K converter processes own: [i*W/K, (i+1)*W/K) of the selected ranks (empty blocks dropped). */
export function transformProcessBlocks<T>(items: readonly T[], k: number): T[][] {
  const blocks: T[][] = [];
  for (let i = 0; i < k; i++) {
    const b = transformProcessBlock(items, k, i);
    if (b.length > 0) blocks.push(b);
  }
  return blocks;
}

export function transformOutputPath(dstDir: string, rank: number, prefix: string, format: WeightsFormat): string {
  return join(dstDir, `rank_${rank}`, `${prefix}${rank}.${format === 'safetensors' ? 'safetensors' : 'ckpt'}`);
}

function hashOf(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value)).digest('hex');
}

/** The plan of a run and what identifies its outputs. */
interface RunPlan {
  readonly plan: Plan;
  readonly ranks: readonly number[];
  readonly world: number;
  readonly format: WeightsFormat;
  readonly prefix: string;
  readonly fingerprint: TransformFingerprint;
  readonly fingerprintHash: string;
  readonly inputs: TransformInputs;
  readonly notices: readonly string[];
}

function validate(opts: TransformOptions): { prefix: string; memory: number; processNum: number; dstDir: string } {
  const prefix = opts.prefix ?? 'checkpoint_';
  if (/[/\\]/.test(prefix)) throw new InputError(`prefix '${prefix}' must not contain a path separator`);
  const requested = opts.outputFormat;
  if (requested !== undefined && requested !== 'ckpt' && requested !== 'safetensors') {
    throw new InputError(`output format must be ckpt or safetensors, got '${String(requested)}'`);
  }
  const memory = opts.memory ?? DEFAULT_MEMORY;
  if (!Number.isSafeInteger(memory) || memory <= 0) throw new InputError(`memory must be a positive number of bytes, got ${memory}`);
  const processNum = opts.processNum ?? 1;
  if (!Number.isSafeInteger(processNum) || processNum < 1) throw new InputError(`process number must be a positive integer, got ${processNum}`);
  return { prefix, memory, processNum, dstDir: resolve(opts.dstDir) };
}

/**
 * Refuse (exit 2) a destination folder that is, holds or lies in what the transform reads:
 * compared after resolving symlinks on both sides. Reads only directory listings (no header).
 */
export async function checkTransformPaths(opts: TransformOptions): Promise<void> {
  const sources = await findSourceFiles(opts.srcCheckpoint, opts.pick, opts.srcFormat);
  const inputs: NamedPath[] = sources.files.map((f) => ({ what: 'source file', path: f.path }));
  if (opts.srcStrategy) inputs.push({ what: 'the source strategy', path: opts.srcStrategy });
  if (opts.dstStrategy) inputs.push({ what: 'the destination strategy', path: opts.dstStrategy });
  // the source folder itself: nothing is written into the tree a source lives in
  inputs.push({ what: 'the source', path: opts.srcCheckpoint });
  await refuseOverlaps([{ what: 'destination folder', path: opts.dstDir }], inputs);
}

async function planRun(opts: TransformOptions, memory: number, prefix: string): Promise<RunPlan> {
  let ranks: number[] | undefined;
  if (opts.rank !== undefined) ranks = [opts.rank];
  if (opts.ranks !== undefined) {
    const r = typeof opts.ranks === 'string' ? parseRankRanges(opts.ranks) : [...new Set(opts.ranks)].sort((a, b) => a - b);
    ranks = ranks === undefined ? r : r.filter((x) => ranks?.includes(x));
  }
  const loaded: LoadedPlan = await loadPlan({
    srcCheckpoint: opts.srcCheckpoint,
    srcStrategy: opts.srcStrategy ?? null,
    dstStrategy: opts.dstStrategy ?? null,
    memory,
    ...(ranks !== undefined ? { ranks } : {}),
    ...(opts.worldSize !== undefined ? { worldSize: opts.worldSize } : {}),
    ...(opts.pick !== undefined ? { pick: opts.pick } : {}),
    ...(opts.srcFormat !== undefined ? { srcFormat: opts.srcFormat } : {}),
  });
  const format: WeightsFormat = opts.outputFormat ?? loaded.sources.format;
  const world = loaded.plan.destination.deviceCount;
  const fingerprint: TransformFingerprint = {
    sources: loaded.sources.files.map((f) => ({ path: f.path, size: f.size, mtimeMs: f.mtimeMs })),
    srcStrategy: loaded.srcStrategy?.sha256 ?? null,
    dstStrategy: loaded.dstStrategy?.sha256 ?? null,
    prefix,
    format,
    worldSize: world,
    ...(opts.crc === true ? { crc: true } : {}),
  };
  const inputs: TransformInputs = {
    source: resolve(opts.srcCheckpoint),
    srcStrategy: loaded.srcStrategy?.path ?? null,
    dstStrategy: loaded.dstStrategy?.path ?? null,
  };
  return {
    plan: loaded.plan, ranks: loaded.plan.ranks.map((r) => r.rank), world, format, prefix, fingerprint, fingerprintHash: hashOf(fingerprint),
    inputs, notices: loaded.notices,
  };
}

const SHOWN = 5;

function few(list: readonly string[]): string {
  return `${list.slice(0, SHOWN).join(', ')}${list.length > SHOWN ? `, ... (${list.length} in all)` : ''}`;
}

function describePlan(r: PlanRecord): string {
  const i = r.inputs;
  if (i === undefined) return `a transform of msckpt ${r.name === TRANSFORM_MANIFEST_NAME ? '' : 'still being written or interrupted '}(inputs not recorded; fingerprint ${r.fingerprintHash.slice(0, 12)})`;
  return `the transform of ${i.source} with source strategy ${i.srcStrategy ?? 'none (complete)'} and destination strategy ${i.dstStrategy ?? 'none (complete)'}`;
}

/** What preparing the folder found and did. */
interface Prepared {
  readonly prior: Map<number, ManifestFile>;
  readonly checked: Set<number>;
  readonly cleaned: string[];
  readonly replaced: number;
}

/**
 * Look at the destination folder and make it ready (see the module comment). Nothing is changed
 * before every refusal has been decided.
 */
async function prepareDestination(dstDir: string, run: RunPlan, opts: TransformOptions, inCluster: boolean): Promise<Prepared & { state: DestinationState }> {
  const st = await stat(dstDir).catch(() => null);
  if (st !== null && !st.isDirectory()) throw new InputError('the destination exists and is not a folder', { file: dstDir });
  const state = await readDestination(dstDir);
  const ours = run.fingerprintHash;
  const me = process.pid;
  // a run of msckpt writing here right now (this machine)
  for (const r of state.records) {
    const h = r.header;
    if (h !== undefined && h.pid !== me && h.owner !== undefined && processState(h.owner) === 'alive') {
      throw new InputError(
        `another msckpt transform (pid ${h.pid}, started ${new Date(h.started).toISOString()}) is writing to this folder now; wait for it or choose another folder`,
        { file: dstDir },
      );
    }
  }
  // what each file is: listed or claimed by a record, ours or another plan's, or nobody's
  const owner = new Map<string, PlanRecord[]>();
  for (const r of state.records) {
    for (const p of [...r.files.keys(), ...r.claims]) {
      const list = owner.get(p) ?? [];
      list.push(r);
      owner.set(p, list);
    }
  }
  const foreign = [...state.scan.files.filter((f) => !owner.has(f)), ...state.scan.otherDirs.map((d) => `${d}/`)];
  if (foreign.length > 0) {
    throw new InputError(
      `holds ${foreign.length} file(s) or folder(s) no msckpt transform record lists (${few(foreign)}): someone else's? ` +
        'nothing was changed; choose an empty or new folder, or move them away',
      { file: dstDir },
    );
  }
  const existing = new Set(state.scan.files);
  const others = state.records.filter((r) => r.fingerprintHash !== ours);
  const otherFiles = new Set<string>();
  for (const r of others) for (const p of [...r.files.keys(), ...r.claims]) if (existing.has(p) && !(owner.get(p) ?? []).some((o) => o.fingerprintHash === ours)) otherFiles.add(p);
  if (otherFiles.size > 0 && opts.overwrite !== true) {
    const r = others.find((o) => [...o.files.keys(), ...o.claims].some((p) => otherFiles.has(p))) as PlanRecord;
    const same = r.inputs !== undefined && r.inputs.source === run.inputs.source && r.inputs.srcStrategy === run.inputs.srcStrategy && r.inputs.dstStrategy === run.inputs.dstStrategy;
    throw new InputError(
      `holds ${otherFiles.size} output file(s) of ${describePlan(r)}` +
        (same ? ' (the same paths, but the inputs or options changed since: sizes, times, prefix, format or --crc)' : '') +
        '; nothing was changed; pass --overwrite to replace exactly those files, or choose another folder',
      { file: dstDir },
    );
  }
  // ---- changes from here on
  let replaced = 0;
  if (otherFiles.size > 0) replaced = await removeOutputs(dstDir, otherFiles);
  const cleaned: string[] = [];
  for (const t of state.scan.temps) {
    await rm(join(dstDir, t), { force: true }).catch((err: unknown) => {
      throw fromSystemError(err, join(dstDir, t), 'cannot remove a temporary file of an earlier run');
    });
    cleaned.push(t);
  }
  for (const d of state.scan.planDirs) {
    await rm(join(dstDir, d), { recursive: true, force: true });
    cleaned.push(`${d}/`);
  }
  if (state.scan.clusterDir && !inCluster) {
    await rm(join(dstDir, CLUSTER_DIR_NAME), { recursive: true, force: true });
    cleaned.push(`${CLUSTER_DIR_NAME}/`);
  }
  const { files, checked } = foldRecords(state.records, ours);
  const prior = new Map<number, ManifestFile>();
  for (const f of files.values()) if (existing.has(f.path)) prior.set(f.rank, f);
  return { prior, checked, cleaned, replaced, state };
}

/** Fold the records of this plan into the manifest and start a fresh journal claiming the run's outputs. */
async function startRecords(dstDir: string, run: RunPlan, prep: Prepared & { state: DestinationState }, opts: TransformOptions): Promise<Journal> {
  await makeDirs(dstDir);
  if (prep.state.records.length > 0) {
    // one record of this plan from here on: the manifest of what is there, then a new journal
    const files = [...prep.prior.values()].sort((a, b) => a.rank - b.rank);
    if (files.length > 0 || prep.state.manifest !== null) await writeManifestFile(dstDir, manifestOf(run, files, prep.checked));
    for (const j of await journalFiles(dstDir)) await rm(join(dstDir, j), { force: true });
  }
  const claims = run.ranks.map((r) => relative(dstDir, transformOutputPath(dstDir, r, run.prefix, run.format)));
  return Journal.start(join(dstDir, journalName(opts.cluster?.index)), {
    fingerprintHash: run.fingerprintHash, fingerprint: run.fingerprint, inputs: run.inputs, worldSize: run.world, claims,
    ...(opts.cluster !== undefined ? { process: opts.cluster.index } : {}),
  });
}

function manifestOf(run: Pick<RunPlan, 'fingerprint' | 'fingerprintHash' | 'inputs' | 'world'>, files: readonly ManifestFile[], checked: ReadonlySet<number>): TransformManifest {
  const list = [...files].sort((a, b) => a.rank - b.rank);
  return {
    tool: 'msckpt', kind: 'transform_manifest', version: 2,
    fingerprint: run.fingerprint, fingerprintHash: run.fingerprintHash, inputs: run.inputs, worldSize: run.world,
    complete: new Set(list.map((f) => f.rank)).size === run.world, files: list, checkedSources: [...checked].sort((a, b) => a - b),
  };
}

/** Re-check the files earlier runs recorded (size and CRC-32); returns those that are right. */
async function recheck(dstDir: string, prior: ReadonlyMap<number, ManifestFile>, ranks: readonly number[], notice: (m: string) => void): Promise<{ ok: Map<number, ManifestFile>; redo: number[]; bytes: number }> {
  const ok = new Map<number, ManifestFile>();
  const redo: number[] = [];
  let bytes = 0;
  for (const r of ranks) {
    const f = prior.get(r);
    if (f === undefined) continue;
    const abs = join(dstDir, f.path);
    let problem: string | undefined;
    try {
      const st = await stat(abs);
      if (st.size !== f.size) problem = `size ${st.size}, recorded ${f.size}`;
      else {
        const got = await fileCrc32Of(abs);
        bytes += got.size;
        if (got.crc32 !== f.crc32) problem = `CRC-32 ${got.crc32.toString(16)}, recorded ${f.crc32.toString(16)}`;
      }
    } catch (err) {
      problem = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : String(err);
    }
    if (problem === undefined) ok.set(r, f);
    else {
      redo.push(r);
      notice(`rank ${r}: ${f.path} failed its re-check (${problem}); writing it again`);
    }
  }
  return { ok, redo, bytes };
}

/**
 * Which process checks which source CRC: the block reading it in the most ranks (ties: the
 * first); a source no block reads goes to the first block (it reads the file for the check).
 */
function assignCrcChecks(plan: Plan, blocks: readonly (readonly number[])[], sources: readonly number[]): number[][] {
  const out = blocks.map(() => [] as number[]);
  if (blocks.length === 0) return out;
  const summaries = new Map(plan.ranks.map((x) => [x.rank, x]));
  for (const s of sources) {
    let best = 0;
    let bestCount = -1;
    blocks.forEach((b, i) => {
      const n = b.filter((r) => summaries.get(r)?.sourceRanks.includes(s) === true).length;
      if (n > bestCount) {
        bestCount = n;
        best = i;
      }
    });
    (out[best] as number[]).push(s);
  }
  return out;
}

function crcSourcesOf(plan: Plan, checked: ReadonlySet<number>): number[] {
  return plan.source.files.filter((s) => s.storedCrc !== undefined && !checked.has(s.rank)).map((s) => s.rank);
}

function dieNow(): never {
  process.kill(process.pid, 'SIGKILL');
  throw new FailureError('injected failure');
}

/** Re-shard checkpoints: see the module comment. */
export async function transformCheckpoints(opts: TransformOptions): Promise<TransformReport> {
  const started = Date.now();
  const { prefix, memory, processNum, dstDir } = validate(opts);
  const cluster = opts.cluster;
  const lead = cluster === undefined || cluster.index === 0;
  const notices: string[] = [];
  const notice = (m: string): void => {
    notices.push(m);
    opts.onNotice?.(m);
  };
  const faults = opts.faults;

  // ---- the plan and the folder: here, or from process 0 of the cluster
  let run: RunPlan;
  let prep: Prepared;
  let journal: Journal | null = null;
  try {
    if (lead) {
      await checkTransformPaths(opts);
      run = await planRun(opts, memory, prefix);
      for (const n of run.notices) notice(n);
      const p = await prepareDestination(dstDir, run, opts, cluster !== undefined);
      for (const c of p.cleaned) notice(`removed ${c}, left by an interrupted run`);
      if (p.replaced > 0) notice(`removed ${p.replaced} file(s) of another transform (--overwrite)`);
      journal = await startRecords(dstDir, run, p, opts);
      prep = p;
      if (cluster !== undefined) {
        const dir = join(dstDir, CLUSTER_DIR_NAME, 'plan');
        await makeDirs(dir);
        const planFile = join(dir, 'plan.json');
        const planFingerprint = await writePlanFile(run.plan, planFile);
        await cluster.sharePlan({
          planFile, planFingerprint, fingerprint: run.fingerprint, fingerprintHash: run.fingerprintHash, inputs: run.inputs,
          format: run.format, prefix: run.prefix, ranks: run.ranks, prior: [...p.prior.values()], checked: [...p.checked],
        });
      }
    } else {
      const shared = await (cluster as TransformCluster).sharePlan(null);
      const plan = await readPlanFile(shared.planFile, shared.planFingerprint);
      run = {
        plan, ranks: shared.ranks, world: plan.destination.deviceCount, format: shared.format, prefix: shared.prefix,
        fingerprint: shared.fingerprint, fingerprintHash: shared.fingerprintHash, inputs: shared.inputs, notices: [],
      };
      prep = { prior: new Map(shared.prior.map((f) => [f.rank, f])), checked: new Set(shared.checked), cleaned: [], replaced: 0 };
      journal = await Journal.start(join(dstDir, journalName(cluster?.index)), {
        fingerprintHash: run.fingerprintHash, claims: [], ...(cluster !== undefined ? { process: cluster.index } : {}),
      });
    }
  } catch (err) {
    await journal?.close();
    if (cluster !== undefined) await cluster.fail(err).catch(() => undefined);
    throw err;
  }

  const plan = run.plan;
  const outputOf = (rank: number): string => transformOutputPath(dstDir, rank, run.prefix, run.format);
  const myRanks = cluster === undefined ? [...run.ranks] : transformProcessBlock(run.ranks, cluster.count, cluster.index);
  const committed: CommittedRankFile[] = [];
  const checks: SourceCrcChecked[] = [];
  const checkedNow = new Set<number>();
  let skippedFiles = new Map<number, ManifestFile>();
  let redone: number[] = [];
  let bytesRechecked = 0;
  let bytesRead = 0;
  let bytesWritten = 0;
  let maxRss = process.resourceUsage().maxRSS * 1024;
  let processes = 1;
  let todo: number[] = [];
  const j = journal as Journal;
  const recordCommit = async (f: CommittedRankFile): Promise<void> => {
    committed.push(f);
    await j.append({ commit: { rank: f.rank, path: relative(dstDir, f.path), size: f.size, crc32: f.crc32 } });
  };
  const recordCheck = async (c: SourceCrcChecked): Promise<void> => {
    checks.push(c);
    if (c.ok) {
      checkedNow.add(c.sourceRank);
      await j.append({ checked: c.sourceRank });
    }
  };
  try {
    const r = await recheck(dstDir, prep.prior, myRanks, notice);
    skippedFiles = r.ok;
    redone = r.redo;
    bytesRechecked = r.bytes;
    todo = myRanks.filter((x) => !skippedFiles.has(x));
    // source CRCs: this process's share (in a cluster: by the blocks of every process)
    const toCheck = crcSourcesOf(plan, prep.checked);
    const mineToCheck = cluster === undefined
      ? toCheck
      : (assignCrcChecks(plan, Array.from({ length: cluster.count }, (_, i) => transformProcessBlock(run.ranks, cluster.count, i)), toCheck)[cluster.index] ?? []);
    const summaries = new Map(plan.ranks.map((x) => [x.rank, x]));
    const total = todo.reduce((sum, x) => sum + (summaries.get(x)?.bytesWritten ?? 0), 0);
    const progress: Progress = opts.progress ? opts.progress(total) : SILENT_PROGRESS;
    try {
      if (processNum > 1 && todo.length > 1) {
        const blocks = transformProcessBlocks(myRanks, processNum).map((b) => b.filter((x) => todo.includes(x))).filter((b) => b.length > 0);
        processes = blocks.length;
        progress.label(`${blocks.length} converters`);
        const res = await runWorkers(plan, blocks, {
          format: run.format, memory, crc: opts.crc === true, outputOf, dstDir, crcSources: assignCrcChecks(plan, blocks, mineToCheck), faults,
        }, recordCommit, recordCheck, (n) => progress.advance(n));
        bytesRead = res.bytesRead;
        bytesWritten = res.bytesWritten;
        maxRss = Math.max(maxRss, res.maxRssBytes);
      } else {
        const wf: WriterFault | undefined = faults === undefined || (faults.worker ?? 0) !== 0
          ? undefined
          : faults.at === 'files' ? { afterFiles: faults.n ?? 1, action: faults.action } : faults.at === 'mid-group' ? { midGroup: faults.n ?? 1, action: faults.action } : undefined;
        const res = await writeRanks({
          plan, ranks: todo, outputPath: outputOf, format: run.format, memory, crc: opts.crc === true, crcSources: mineToCheck,
          onCommit: recordCommit, onSourceChecked: recordCheck,
          onGroup: (ranks) => progress.label(ranks.length === 1 ? `rank ${ranks[0]}` : `ranks ${formatRanges(ranks)}`),
          onBytes: (n) => progress.advance(n),
          ...(wf !== undefined ? { faults: wf } : {}),
        });
        bytesRead = res.bytesRead;
        bytesWritten = res.bytesWritten;
        maxRss = Math.max(maxRss, process.resourceUsage().maxRSS * 1024);
      }
    } finally {
      progress.done();
    }
  } catch (err) {
    let e = err;
    if (err instanceof SourceCrcMismatch && err.sourceRank !== undefined) e = await dropBuiltFrom(err, err.sourceRank, run, dstDir, j);
    await j.close();
    if (cluster !== undefined) await cluster.fail(e).catch(() => undefined);
    throw e;
  }
  await j.close();

  // ---- the manifest: what this plan has, folded (prior files outside this run, then this run's)
  const mine: ManifestFile[] = [
    ...skippedFiles.values(),
    ...committed.map((f) => ({ rank: f.rank, path: relative(dstDir, f.path), size: f.size, crc32: f.crc32 })),
  ];
  const checkedAll = new Set([...prep.checked, ...checkedNow]);
  let files: ManifestFile[];
  let manifest: string | null = null;
  let written = todo;
  let skipped = myRanks.filter((x) => skippedFiles.has(x));
  if (cluster === undefined) {
    files = foldFiles(prep.prior, run.ranks, mine);
    manifest = await writeManifestFile(dstDir, manifestOf(run, files, checkedAll), faults?.at === 'manifest' ? dieNow : undefined);
    for (const name of await journalFiles(dstDir)) await rm(join(dstDir, name), { force: true });
  } else {
    const reports = await cluster.finish({
      index: cluster.index, files: mine, checked: [...checkedNow], written: todo, skipped, bytesRead, bytesWritten,
    });
    if (cluster.index === 0) {
      const all = reports.flatMap((x) => x.files);
      for (const x of reports) for (const c of x.checked) checkedAll.add(c);
      files = foldFiles(prep.prior, run.ranks, all);
      written = reports.flatMap((x) => x.written).sort((a, b) => a - b);
      skipped = reports.flatMap((x) => x.skipped).sort((a, b) => a - b);
      bytesRead = reports.reduce((a, x) => a + x.bytesRead, 0);
      bytesWritten = reports.reduce((a, x) => a + x.bytesWritten, 0);
      manifest = await writeManifestFile(dstDir, manifestOf(run, files, checkedAll), faults?.at === 'manifest' ? dieNow : undefined);
      for (const name of await journalFiles(dstDir)) await rm(join(dstDir, name), { force: true });
      await cluster.manifestWritten(manifest);
    } else {
      files = mine.sort((a, b) => a.rank - b.rank);
      manifest = await cluster.manifestWritten(null);
    }
  }
  return {
    dstDir, manifest, worldSize: run.world, written, skipped, redone, files, bytesRead, bytesWritten, bytesRechecked,
    cleaned: prep.cleaned, replaced: prep.replaced,
    sourceChecks: checks.map((c) => ({ sourceRank: c.sourceRank, file: c.file, ok: c.ok, coveredBytes: c.coveredBytes, extraBytes: c.extraBytes })),
    seconds: (Date.now() - started) / 1000, processes, maxRssBytes: maxRss, notices,
  };
}

/** Files of the plan after a run: earlier files of ranks outside the run, then the run's. */
function foldFiles(prior: ReadonlyMap<number, ManifestFile>, runRanks: readonly number[], mine: readonly ManifestFile[]): ManifestFile[] {
  const inRun = new Set(runRanks);
  const byRank = new Map<number, ManifestFile>();
  for (const [r, f] of prior) if (!inRun.has(r)) byRank.set(r, f);
  for (const f of mine) byRank.set(f.rank, f);
  return [...byRank.values()].sort((a, b) => a.rank - b.rank);
}

/**
 * A source failed its CRC check: remove every output of the run built from it (each is ours: the
 * journal claims it) and say so in the error.
 */
async function dropBuiltFrom(err: SourceCrcMismatch, src: number, run: RunPlan, dstDir: string, j: Journal): Promise<InputError> {
  const built = run.plan.ranks.filter((x) => x.sourceRanks.includes(src)).map((x) => relative(dstDir, transformOutputPath(dstDir, x.rank, run.prefix, run.format)));
  const removed = await removeOutputs(dstDir, built);
  for (const p of built) await j.append({ removed: p }).catch(() => undefined);
  return new InputError(
    `${err.message.replace(/^[^:]*: /, '')}; ${removed} output file(s) built from it were removed, none is recorded as complete; replace the file and run again`,
    { file: err.result.file },
  );
}

interface WorkerSetup {
  format: WeightsFormat;
  memory: number;
  crc: boolean;
  outputOf: (rank: number) => string;
  dstDir: string;
  crcSources: readonly (readonly number[])[];
  faults?: TransformFaults | undefined;
}

/**
 * Write `blocks` of destination ranks in worker processes, one per block: the plan is written
 * once to a plan file (under the destination folder, removed afterwards) that every worker loads.
 * A worker failing stops the others; an interrupted parent kills them (they also watch it).
 */
async function runWorkers(
  plan: Plan,
  blocks: readonly (readonly number[])[],
  o: WorkerSetup,
  onCommit: (f: CommittedRankFile) => Promise<void>,
  onChecked: (c: SourceCrcChecked) => Promise<void>,
  onBytes: (n: number) => void,
): Promise<{ bytesRead: number; bytesWritten: number; maxRssBytes: number }> {
  const mod = pluginModule('transform/worker');
  let dir: string;
  try {
    dir = await mkdtemp(join(o.dstDir, '.msckpt-plan-'));
  } catch (err) {
    throw fromSystemError(err, o.dstDir, 'cannot create the plan folder');
  }
  const children: ChildProcess[] = [];
  const unregister = onInterrupt(() => {
    for (const c of children) c.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  });
  try {
    const planFile = join(dir, 'plan.json');
    const fingerprint = await writePlanFile(plan, planFile);
    if (o.faults?.at === 'plan') dieNow();
    let firstFailure: unknown;
    const pending: Promise<unknown>[] = [];
    const results = await Promise.allSettled(
      blocks.map(
        (block, index) =>
          new Promise<{ bytesRead: number; bytesWritten: number; maxRssBytes: number }>((resolvePromise, reject) => {
            const child = fork(mod.path, [], { execArgv: mod.execArgv, stdio: ['ignore', 'ignore', 'pipe', 'ipc'], serialization: 'json' });
            children.push(child);
            let stderr = '';
            child.stderr?.on('data', (d: Buffer) => {
              stderr = (stderr + d.toString('utf8')).slice(-4000);
            });
            let result: { bytesRead: number; bytesWritten: number; maxRssBytes: number } | undefined;
            let error: { message: string; exitCode: 1 | 2; file?: string; crcSource?: number; crcResult?: SourceCrcChecked } | undefined;
            // messages are handled in order; the exit waits for the last one's records
            let chain: Promise<void> = Promise.resolve();
            child.on('message', (m: WorkerMessage) => {
              chain = chain.then(async () => {
                if ('file' in m) await onCommit(m.file);
                else if ('checked' in m) await onChecked(m.checked);
                else if ('progress' in m) onBytes(m.progress);
                else if ('done' in m) result = m.done;
                else if ('error' in m) error = m.error;
              });
              pending.push(chain.catch(() => undefined));
            });
            child.on('error', (err) => reject(new FailureError(`cannot start a converter process: ${err.message}`)));
            child.on('exit', (code, signal) => {
              void chain.then(
                () => {
                  const what = `converter for ranks ${formatRanges([...block])}`;
                  if (code === 0 && result !== undefined) return resolvePromise(result);
                  let e: unknown;
                  if (error?.crcResult !== undefined && error.crcSource !== undefined) e = new SourceCrcMismatch(error.crcResult, error.crcSource);
                  else if (error !== undefined) e = new (error.exitCode === 2 ? InputError : FailureError)(`${what} failed: ${error.message}`);
                  else e = new FailureError(`${what} failed: ${stderr.trim() || `exited with ${signal ?? `code ${code}`}`}`);
                  // one failure stops the others (their temporary files are theirs to remove)
                  if (firstFailure === undefined) {
                    firstFailure = e;
                    for (const c of children) if (c !== child && c.exitCode === null) c.kill('SIGTERM');
                  }
                  reject(e);
                },
                (err: unknown) => reject(err),
              );
            });
            const outputs: Record<string, string> = {};
            for (const r of block) outputs[String(r)] = o.outputOf(r);
            const f = o.faults;
            const wf: WriterFault | undefined = f === undefined || (f.worker ?? 0) !== index
              ? undefined
              : f.at === 'files' ? { afterFiles: f.n ?? 1, action: f.action } : f.at === 'mid-group' ? { midGroup: f.n ?? 1, action: f.action } : undefined;
            const job: WorkerJob = {
              planFile, fingerprint, ranks: block, outputs, format: o.format, memory: o.memory, crc: o.crc, parentPid: process.pid,
              crcSources: o.crcSources[index] ?? [], ...(wf !== undefined ? { faults: wf } : {}),
            };
            child.send(job);
          }),
      ),
    );
    await Promise.all(pending);
    const failed = firstFailure ?? results.find((r): r is PromiseRejectedResult => r.status === 'rejected')?.reason;
    if (failed !== undefined) throw failed;
    const out = { bytesRead: 0, bytesWritten: 0, maxRssBytes: 0 };
    for (const r of results) {
      if (r.status !== 'fulfilled') continue;
      out.bytesRead += r.value.bytesRead;
      out.bytesWritten += r.value.bytesWritten;
      out.maxRssBytes = Math.max(out.maxRssBytes, r.value.maxRssBytes);
    }
    return out;
  } finally {
    unregister();
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    await rm(dir, { recursive: true, force: true });
  }
}
