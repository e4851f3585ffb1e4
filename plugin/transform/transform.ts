/**
 * `transformCheckpoints`: plan, then write every destination rank's file (temporary name +
 * rename), then `transform_manifest.json` (last, atomically) with sizes and CRC-32s and a
 * fingerprint of the inputs. A re-run with the same inputs skips files the manifest shows
 * complete. With `processNum: K` the selected ranks are cut into K contiguous blocks
 * (`[i*W/K, (i+1)*W/K)`, as mindformers' transform_process_num does) and each block is converted
 * by a child `msckpt transform --ranks a-b` process; children report their files on stdout and
 * the parent writes the manifest once all succeeded. Within one process, consecutive ranks of the
 * same stage that list the same tensors are converted together (up to 8, `executeRankPlanGroup`),
 * so each source span is read once per group rather than once per rank.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, rm, stat } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { crc32 } from 'node:zlib';
import { execa } from 'execa';
import { createProgress, type Progress } from '../cli/progress.js';
import { packageFile } from '../package-files.js';
import { FailureError, InputError } from '../errors.js';
import { expectAtomicCrc32, takeAtomicCrc32, writeFileAtomic } from '../formats/atomic.js';
import { createWeightsSink } from '../formats/open.js';
import { DEFAULT_MEMORY, openPlanSource, type RankPlan } from '../plan/index.js';
import type { PickRule, WeightsFormat } from '../formats/resolve.js';
import { loadPlan, type LoadedPlan } from '../plan/load.js';
import type { TensorSink } from '../formats/types.js';
import {
  createTransformSourcePool, executeRankPlanGroup, rankPlanGroups, sinkTensorOf,
  TransformBuffers, transformGroupBufferSizes, transformGroupSize,
} from './execute.js';

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
  /** Buffer budget in bytes or a size string like `512M` (default 512 MiB). */
  readonly memory?: number | string;
  /** Which file of a rank_N folder holding several counts (default newest; see formats/resolve.ts). */
  readonly pick?: PickRule;
  /** Output format; default: the source's format (ckpt or safetensors). */
  readonly outputFormat?: WeightsFormat;
  /** rank_N folders holding both .ckpt and .safetensors: which to read (default safetensors). */
  readonly srcFormat?: WeightsFormat;
  /** `.ckpt`: append the CRC trailer; safetensors: `crc_num` in metadata (as MindSpore's crc_check). */
  readonly crc?: boolean;
  /** Progress line on a TTY (default true). */
  readonly progress?: boolean;
  /** Messages for the user as they happen (which file was picked, ...). */
  readonly onNotice?: (message: string) => void;
  /** Internal: run as a child of a multi-process run (no manifest written). */
  readonly child?: boolean;
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

/** `512M`, `2G`, `1048576`, `64KiB` -> bytes. */
export function parseMemorySize(text: string | number): number {
  if (typeof text === 'number') {
    if (!Number.isSafeInteger(text) || text <= 0) throw new InputError(`memory must be a positive number of bytes, got ${text}`);
    return text;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$/i.exec(text);
  if (m === null) throw new InputError(`cannot read size '${text}' (expected e.g. 512M, 2G, 1048576)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[(m[2] as string).toLowerCase()] as number;
  const v = Math.floor(Number(m[1]) * mult);
  if (!Number.isSafeInteger(v) || v <= 0) throw new InputError(`size '${text}' is not a positive byte count`);
  return v;
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

/** CRC-32 of a file, read in pieces. */
export async function fileCrc32Of(path: string): Promise<{ size: number; crc32: number }> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
    let pos = 0;
    let crc = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.byteLength, pos);
      if (bytesRead === 0) break;
      crc = crc32(buf.subarray(0, bytesRead), crc);
      pos += bytesRead;
    }
    return { size: pos, crc32: crc >>> 0 };
  } finally {
    await fh.close();
  }
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

/** Progress of a converter child: written bytes sent to the parent over IPC, at most ~10 times a second. */
function childProgress(): Progress {
  let pending = 0;
  let last = 0;
  const flush = (): void => {
    if (pending > 0 && process.send !== undefined && process.connected) process.send({ progress: pending });
    pending = 0;
  };
  return {
    advance(n: number) {
      pending += n;
      const now = Date.now();
      if (now - last >= 100) {
        last = now;
        flush();
      }
    },
    label() {},
    done() {
      flush();
    },
  };
}

function hashOf(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value)).digest('hex');
}

function binPath(): string {
  try {
    return packageFile('bin/msckpt.js');
  } catch {
    throw new FailureError('cannot find bin/msckpt.js to start converter processes');
  }
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
  const memory = opts.memory === undefined ? DEFAULT_MEMORY : parseMemorySize(opts.memory);
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
  } else if (prev !== null && !opts.child) {
    // stale manifest of ours for other inputs: it must not vouch for files we are replacing
    await rm(join(dstDir, TRANSFORM_MANIFEST_NAME), { force: true });
  }
  const todo = sel.ranks.filter((r) => !done.has(r));
  const skipped = sel.ranks.filter((r) => done.has(r));
  await mkdir(dstDir, { recursive: true });

  const files: ManifestFile[] = skipped.map((r) => done.get(r) as ManifestFile);
  let bytesRead = 0;
  let bytesWritten = 0;
  let maxRss = process.resourceUsage().maxRSS * 1024;
  let processes = 1;

  const summaries = new Map(sel.loaded.plan.ranks.map((x) => [x.rank, x]));
  const total = todo.reduce((sum, r) => sum + (summaries.get(r)?.bytesWritten ?? 0), 0);
  if (processNum > 1 && !opts.child && todo.length > 1) {
    const blocks = transformProcessBlocks(sel.ranks, processNum).filter((b) => b.some((r) => !done.has(r)));
    processes = blocks.length;
    const bin = binPath();
    // children report written bytes over IPC; the parent shows one progress line
    const progress = createProgress(total, opts.progress !== false);
    progress.label(`${blocks.length} converters`);
    let results: PromiseSettledResult<TransformReport>[];
    try {
      results = await Promise.allSettled(
        blocks.map(async (block) => {
          const args = [bin, 'transform', '--src-checkpoint', opts.srcCheckpoint, '--dst-checkpoint-dir', dstDir,
            '--prefix', prefix, '--ranks', formatRankRanges(block), '--memory', String(memory), '--output-format', format,
            '--json', '--child'];
          if (opts.pick !== undefined) args.push('--pick', opts.pick);
          if (opts.srcStrategy) args.push('--src-strategy', opts.srcStrategy);
          if (opts.dstStrategy) args.push('--dst-strategy', opts.dstStrategy);
          if (opts.srcFormat !== undefined) args.push('--src-format', opts.srcFormat);
          if (opts.crc === true) args.push('--crc');
          const child = execa(process.execPath, args, { reject: false, all: false, stdin: 'ignore', ipc: true, serialization: 'json' });
          child.on('message', (m: unknown) => {
            if (typeof m === 'object' && m !== null && typeof (m as { progress?: unknown }).progress === 'number') {
              progress.advance((m as { progress: number }).progress);
            }
          });
          const r = await child;
          if (r.exitCode !== 0) {
            const text = String(r.stderr).trim().replace(/^msckpt: /, '') || `exited with code ${r.exitCode ?? r.signal ?? '?'}`;
            const Err = r.exitCode === 2 ? InputError : FailureError;
            throw new Err(`converter for ranks ${formatRankRanges(block)} failed: ${text}`);
          }
          try {
            return JSON.parse(String(r.stdout)) as TransformReport;
          } catch {
            throw new FailureError(`converter for ranks ${formatRankRanges(block)} printed no report`);
          }
        }),
      );
    } finally {
      progress.done();
    }
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    for (const r of results) {
      if (r.status !== 'fulfilled') continue;
      const rep = r.value;
      for (const f of rep.files) if (!done.has(f.rank)) files.push(f);
      bytesRead += rep.bytesRead;
      bytesWritten += rep.bytesWritten;
      maxRss = Math.max(maxRss, rep.maxRssBytes);
    }
  } else {
    const plan = sel.loaded.plan;
    const progress = opts.child === true && typeof process.send === 'function' ? childProgress() : createProgress(total, opts.progress !== false);
    const pool = createTransformSourcePool(async (rank) => openPlanSource(plan.source.files[rank] as (typeof plan.source.files)[number]));
    // destination ranks of the same stage listing the same tensors are converted together (each
    // source span read once for the whole group); the band budget is split across the group
    const groupSize = transformGroupSize(memory);
    const buffers = new TransformBuffers(transformGroupBufferSizes(memory, groupSize));
    try {
      for (const group of rankPlanGroups(plan, todo, format, groupSize)) {
        const first = group[0] as RankPlan;
        const outs = group.map((rp) => transformOutputPath(dstDir, rp.rank, prefix, format));
        progress.label(group.length === 1 ? `rank ${first.rank}` : `ranks ${formatRankRanges(group.map((rp) => rp.rank))}`);
        const sinks: TensorSink[] = [];
        try {
          for (let k = 0; k < group.length; k++) {
            expectAtomicCrc32(outs[k] as string);
            const rp = group[k] as RankPlan;
            sinks.push(await createWeightsSink(outs[k] as string, format, rp.tensors.map(sinkTensorOf), { crc: opts.crc === true }));
          }
          bytesRead += await executeRankPlanGroup(group, pool, sinks, buffers, (n) => progress.advance(n));
          for (const sink of sinks) await sink.close();
        } catch (err) {
          for (const out of outs) takeAtomicCrc32(out);
          // abort is a no-op for sinks already closed (their files are complete)
          for (const sink of sinks) await sink.abort().catch(() => undefined);
          throw err;
        }
        for (let k = 0; k < group.length; k++) {
          const out = outs[k] as string;
          // CRC-32 computed while writing; read the file back only when the writes could not tell
          const { size, crc32: crc } = takeAtomicCrc32(out) ?? (await fileCrc32Of(out));
          bytesWritten += size;
          files.push({ rank: (group[k] as RankPlan).rank, path: relative(dstDir, out), size, crc32: crc });
        }
      }
    } finally {
      await pool.close();
      progress.done();
    }
    maxRss = Math.max(maxRss, process.resourceUsage().maxRSS * 1024);
  }
  files.sort((a, b) => a.rank - b.rank);
  const manifest = opts.child ? null : await writeManifest(dstDir, sel, files);
  return {
    dstDir, manifest, worldSize: sel.world, written: todo, skipped, files, bytesRead, bytesWritten,
    seconds: (Date.now() - started) / 1000, processes, maxRssBytes: maxRss, notices,
  };
}
