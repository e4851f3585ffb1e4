/**
 * `transformCheckpoints`: plan once, then write every destination rank's file with the one rank
 * writer (temporary name + rename, size and CRC-32 computed while writing), then
 * `transform_manifest.json` (last, atomically) with sizes and CRC-32s and a fingerprint of the
 * inputs. A re-run with the same inputs skips files the manifest shows complete. With
 * `processNum: K` the selected ranks are cut into K contiguous blocks (`[i*W/K, (i+1)*W/K)`, as
 * mindformers' transform_process_num does) and each block is written by a worker process
 * (transform/worker.ts) that loads the plan from a plan file the parent wrote (no header re-read,
 * no strategy merged again) and reports each file as it is committed; the parent writes the
 * manifest once all succeeded.
 */
import { createHash } from 'node:crypto';
import { fork } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { FailureError, InputError } from '../errors.js';
import { writeFileAtomic } from '../formats/atomic.js';
import type { PickRule, WeightsFormat } from '../formats/resolve.js';
import { pluginModule } from '../package-files.js';
import { DEFAULT_MEMORY, loadPlan, writePlanFile, type LoadedPlan } from '../plan/index.js';
import { SILENT_PROGRESS, type Progress, type ProgressFactory } from '../progress.js';
import { fileCrc32Of } from './file-crc.js';
import { writeRanks, type CommittedRankFile } from './rank-writer.js';
import type { WorkerJob, WorkerMessage } from './worker.js';

export { fileCrc32Of };

export const TRANSFORM_MANIFEST_NAME = 'transform_manifest.json';

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
  /** Progress of the written bytes (default: none). */
  readonly progress?: ProgressFactory | false;
  /** Messages for the user as they happen (which file was picked, ...). */
  readonly onNotice?: (message: string) => void;
}

export interface ManifestFile {
  readonly rank: number;
  /** Path relative to the destination folder. */
  readonly path: string;
  readonly size: number;
  readonly crc32: number;
}

export interface TransformFingerprint {
  readonly sources: readonly { readonly path: string; readonly size: number; readonly mtimeMs: number }[];
  readonly srcStrategy: string | null;
  readonly dstStrategy: string | null;
  readonly prefix: string;
  readonly format: WeightsFormat;
  readonly worldSize: number;
  readonly crc?: boolean;
}

export interface TransformManifest {
  readonly tool: 'msckpt';
  readonly kind: 'transform_manifest';
  readonly version: 1;
  readonly fingerprint: TransformFingerprint;
  readonly fingerprintHash: string;
  readonly worldSize: number;
  /** True when every destination rank's file is listed. */
  readonly complete: boolean;
  readonly files: readonly ManifestFile[];
}

export interface TransformReport {
  readonly dstDir: string;
  readonly manifest: string | null;
  readonly worldSize: number;
  /** Ranks written in this call. */
  readonly written: readonly number[];
  /** Ranks skipped because the manifest showed them complete for the same inputs. */
  readonly skipped: readonly number[];
  readonly files: readonly ManifestFile[];
  readonly bytesRead: number;
  readonly bytesWritten: number;
  readonly seconds: number;
  readonly processes: number;
  /** Peak resident set of the converter process(es), bytes. */
  readonly maxRssBytes: number;
  readonly notices: readonly string[];
}

/** `8-15`, `0,2,4-7` -> sorted distinct ranks. */
export function parseRankRanges(text: string): number[] {
  const out = new Set<number>();
  for (const part of text.split(',')) {
    const p = part.trim();
    if (p === '') continue;
    const m = /^(\d+)(?:-(\d+))?$/.exec(p);
    if (m === null) throw new InputError(`cannot read rank range '${p}' (expected e.g. 8-15 or 0,2,4-7)`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (b < a) throw new InputError(`rank range '${p}' runs backwards`);
    if (b - a > 1_000_000) throw new InputError(`rank range '${p}' is too large`);
    for (let r = a; r <= b; r++) out.add(r);
  }
  if (out.size === 0) throw new InputError(`no ranks in '${text}'`);
  return [...out].sort((x, y) => x - y);
}

/** Compact text of a sorted rank list: `0-3,8`. */
export function formatRankRanges(ranks: readonly number[]): string {
  const parts: string[] = [];
  let i = 0;
  while (i < ranks.length) {
    let j = i;
    while (j + 1 < ranks.length && (ranks[j + 1] as number) === (ranks[j] as number) + 1) j++;
    parts.push(i === j ? `${ranks[i]}` : `${ranks[i]}-${ranks[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

/** The blocks K converter processes own: [i*W/K, (i+1)*W/K) of the selected ranks. */
export function transformProcessBlocks<T>(items: readonly T[], k: number): T[][] {
  const w = items.length;
  const blocks: T[][] = [];
  for (let i = 0; i < k; i++) {
    const a = Math.floor((i * w) / k);
    const b = Math.floor(((i + 1) * w) / k);
    if (b > a) blocks.push(items.slice(a, b));
  }
  return blocks;
}

export function transformOutputPath(dstDir: string, rank: number, prefix: string, format: WeightsFormat): string {
  return join(dstDir, `rank_${rank}`, `${prefix}${rank}.${format === 'safetensors' ? 'safetensors' : 'ckpt'}`);
}

export async function readTransformManifest(dstDir: string): Promise<TransformManifest | null> {
  const path = join(dstDir, TRANSFORM_MANIFEST_NAME);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return null;
  }
  try {
    const m = JSON.parse(text) as TransformManifest;
    if (m.tool !== 'msckpt' || m.kind !== 'transform_manifest' || !Array.isArray(m.files)) return null;
    return m;
  } catch {
    return null;
  }
}

function hashOf(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value)).digest('hex');
}

interface Selected {
  loaded: LoadedPlan;
  ranks: number[];
  world: number;
  fingerprint: TransformFingerprint;
  fingerprintHash: string;
}

async function selectAndPlan(opts: TransformOptions, memory: number, requested: WeightsFormat | undefined, prefix: string): Promise<Selected & { format: WeightsFormat }> {
  let ranks: number[] | undefined;
  if (opts.rank !== undefined) ranks = [opts.rank];
  if (opts.ranks !== undefined) {
    const r = typeof opts.ranks === 'string' ? parseRankRanges(opts.ranks) : [...new Set(opts.ranks)].sort((a, b) => a - b);
    ranks = ranks === undefined ? r : r.filter((x) => ranks?.includes(x));
  }
  const loaded = await loadPlan({
    srcCheckpoint: opts.srcCheckpoint,
    srcStrategy: opts.srcStrategy ?? null,
    dstStrategy: opts.dstStrategy ?? null,
    memory,
    ...(ranks !== undefined ? { ranks } : {}),
    ...(opts.worldSize !== undefined ? { worldSize: opts.worldSize } : {}),
    ...(opts.pick !== undefined ? { pick: opts.pick } : {}),
    ...(opts.srcFormat !== undefined ? { srcFormat: opts.srcFormat } : {}),
  });
  const format: WeightsFormat = requested ?? loaded.sources.format;
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
  return { format, loaded, ranks: loaded.plan.ranks.map((r) => r.rank), world, fingerprint, fingerprintHash: hashOf(fingerprint) };
}

async function writeManifest(dstDir: string, sel: Selected, files: ManifestFile[]): Promise<string> {
  const byRank = new Map<number, ManifestFile>();
  const prev = await readTransformManifest(dstDir);
  if (prev !== null && prev.fingerprintHash === sel.fingerprintHash) for (const f of prev.files) byRank.set(f.rank, f);
  for (const f of files) byRank.set(f.rank, f);
  const list = [...byRank.values()].sort((a, b) => a.rank - b.rank);
  const manifest: TransformManifest = {
    tool: 'msckpt', kind: 'transform_manifest', version: 1,
    fingerprint: sel.fingerprint, fingerprintHash: sel.fingerprintHash, worldSize: sel.world,
    complete: list.length === sel.world, files: list,
  };
  const path = join(dstDir, TRANSFORM_MANIFEST_NAME);
  await writeFileAtomic(path, `${JSON.stringify(manifest, null, 1)}\n`);
  return path;
}

/** Re-shard checkpoints: see the module comment. */
export async function transformCheckpoints(opts: TransformOptions): Promise<TransformReport> {
  const started = Date.now();
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
  const dstDir = resolve(opts.dstDir);
  if (existsSync(dstDir) && !(await stat(dstDir)).isDirectory()) throw new InputError('destination exists and is not a directory', { file: dstDir });

  const sel = await selectAndPlan(opts, memory, requested, prefix);
  const format = sel.format;
  const notices = [...sel.loaded.notices];
  for (const n of notices) opts.onNotice?.(n);
  for (const f of sel.loaded.sources.files) {
    if (resolve(f.path).startsWith(`${dstDir}/`)) throw new InputError('the destination folder contains the source files; choose another', { file: dstDir });
  }

  // resume: files the manifest lists for the same inputs, still of the listed size
  const prev = await readTransformManifest(dstDir);
  const done = new Map<number, ManifestFile>();
  if (prev !== null && prev.fingerprintHash === sel.fingerprintHash) {
    for (const f of prev.files) {
      try {
        const st = await stat(join(dstDir, f.path));
        if (st.size === f.size) done.set(f.rank, f);
      } catch {
        // missing: redo
      }
    }
  } else if (prev !== null) {
    // stale manifest of ours for other inputs: it must not vouch for files we are replacing
    await rm(join(dstDir, TRANSFORM_MANIFEST_NAME), { force: true });
  }
  const todo = sel.ranks.filter((r) => !done.has(r));
  const skipped = sel.ranks.filter((r) => done.has(r));
  await mkdir(dstDir, { recursive: true });

  const plan = sel.loaded.plan;
  const outputOf = (rank: number): string => transformOutputPath(dstDir, rank, prefix, format);
  const summaries = new Map(plan.ranks.map((x) => [x.rank, x]));
  const total = todo.reduce((sum, r) => sum + (summaries.get(r)?.bytesWritten ?? 0), 0);
  const progress: Progress = opts.progress ? opts.progress(total) : SILENT_PROGRESS;
  const committed: CommittedRankFile[] = [];
  let bytesRead = 0;
  let bytesWritten = 0;
  let maxRss = process.resourceUsage().maxRSS * 1024;
  let processes = 1;
  try {
    if (processNum > 1 && todo.length > 1) {
      const blocks = transformProcessBlocks(sel.ranks, processNum).map((b) => b.filter((r) => !done.has(r))).filter((b) => b.length > 0);
      processes = blocks.length;
      progress.label(`${blocks.length} converters`);
      const r = await runWorkers(plan, blocks, { format, memory, crc: opts.crc === true, outputOf, dstDir }, (f) => committed.push(f), (n) => progress.advance(n));
      bytesRead = r.bytesRead;
      bytesWritten = r.bytesWritten;
      maxRss = Math.max(maxRss, r.maxRssBytes);
    } else {
      const r = await writeRanks({
        plan, ranks: todo, outputPath: outputOf, format, memory, crc: opts.crc === true,
        onCommit: (f) => {
          committed.push(f);
        },
        onGroup: (ranks) => progress.label(ranks.length === 1 ? `rank ${ranks[0]}` : `ranks ${formatRankRanges(ranks)}`),
        onBytes: (n) => progress.advance(n),
      });
      bytesRead = r.bytesRead;
      bytesWritten = r.bytesWritten;
      maxRss = Math.max(maxRss, process.resourceUsage().maxRSS * 1024);
    }
  } finally {
    progress.done();
  }
  const files: ManifestFile[] = [
    ...skipped.map((r) => done.get(r) as ManifestFile),
    ...committed.map((f) => ({ rank: f.rank, path: relative(dstDir, f.path), size: f.size, crc32: f.crc32 })),
  ].sort((a, b) => a.rank - b.rank);
  const manifest = await writeManifest(dstDir, sel, files);
  return {
    dstDir, manifest, worldSize: sel.world, written: todo, skipped, files, bytesRead, bytesWritten,
    seconds: (Date.now() - started) / 1000, processes, maxRssBytes: maxRss, notices,
  };
}

/**
 * Write `blocks` of destination ranks in worker processes, one per block: the plan is written
 * once to a plan file (under the destination folder, removed afterwards) that every worker loads.
 */
async function runWorkers(
  plan: LoadedPlan['plan'],
  blocks: readonly (readonly number[])[],
  o: { format: WeightsFormat; memory: number; crc: boolean; outputOf: (rank: number) => string; dstDir: string },
  onCommit: (f: CommittedRankFile) => void,
  onBytes: (n: number) => void,
): Promise<{ bytesRead: number; bytesWritten: number; maxRssBytes: number }> {
  const mod = pluginModule('transform/worker');
  const dir = await mkdtemp(join(o.dstDir, '.msckpt-plan-'));
  try {
    const planFile = join(dir, 'plan.json');
    const fingerprint = await writePlanFile(plan, planFile);
    const results = await Promise.allSettled(
      blocks.map(
        (block) =>
          new Promise<{ bytesRead: number; bytesWritten: number; maxRssBytes: number }>((resolvePromise, reject) => {
            const child = fork(mod.path, [], { execArgv: mod.execArgv, stdio: ['ignore', 'ignore', 'pipe', 'ipc'], serialization: 'json' });
            let stderr = '';
            child.stderr?.on('data', (d: Buffer) => {
              stderr = (stderr + d.toString('utf8')).slice(-4000);
            });
            let result: { bytesRead: number; bytesWritten: number; maxRssBytes: number } | undefined;
            let error: { message: string; exitCode: 1 | 2 } | undefined;
            child.on('message', (m: WorkerMessage) => {
              if ('file' in m) onCommit(m.file);
              else if ('progress' in m) onBytes(m.progress);
              else if ('done' in m) result = m.done;
              else if ('error' in m) error = m.error;
            });
            child.on('error', (err) => reject(new FailureError(`cannot start a converter process: ${err.message}`)));
            child.on('exit', (code, signal) => {
              const what = `converter for ranks ${formatRankRanges([...block])}`;
              if (code === 0 && result !== undefined) resolvePromise(result);
              else if (error !== undefined) reject(new (error.exitCode === 2 ? InputError : FailureError)(`${what} failed: ${error.message}`));
              else reject(new FailureError(`${what} failed: ${stderr.trim() || `exited with ${signal ?? `code ${code}`}`}`));
            });
            const outputs: Record<string, string> = {};
            for (const r of block) outputs[String(r)] = o.outputOf(r);
            const job: WorkerJob = { planFile, fingerprint, ranks: block, outputs, format: o.format, memory: o.memory, crc: o.crc };
            child.send(job);
          }),
      ),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    const out = { bytesRead: 0, bytesWritten: 0, maxRssBytes: 0 };
    for (const r of results) {
      if (r.status !== 'fulfilled') continue;
      out.bytesRead += r.value.bytesRead;
      out.bytesWritten += r.value.bytesWritten;
      out.maxRssBytes = Math.max(out.maxRssBytes, r.value.maxRssBytes);
    }
    return out;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
