/**
 * Opening a plan's inputs from paths: the source (one complete file, or `dir/rank_N/*.ckpt`),
 * the strategies (a file, or a directory merged first into a temporary file we own).
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { InputError } from '../errors.js';
import { mergeStrategies, readStrategy } from '../formats/strategy/index.js';
import type { Strategy } from '../formats/strategy/model.js';
import { buildPlan, type Plan, type PlanSourceFile } from './build.js';
import { openWeightsFile } from './io.js';

export type PickRule = 'last' | 'newest';

export interface SourceFileInfo {
  readonly rank: number;
  readonly path: string;
  readonly size: number;
  readonly mtimeMs: number;
}

export interface SourceFiles {
  /** 'file' = one complete file; 'ranks' = a rank_N tree. */
  readonly kind: 'file' | 'ranks';
  readonly files: readonly SourceFileInfo[];
  /** Messages for the user (which file of a folder was used, ...). */
  readonly notices: readonly string[];
}

const RANK_DIR = /^rank_(\d+)$/;
const WEIGHT_FILE = /\.(ckpt|safetensors)$/i;

/** Find the source files: a file is rank 0; a directory must hold rank_0..rank_{N-1}. */
export async function findSourceFiles(srcCheckpoint: string, pick: PickRule = 'last'): Promise<SourceFiles> {
  let st;
  try {
    st = await stat(srcCheckpoint);
  } catch {
    throw new InputError('no such file or directory', { file: srcCheckpoint });
  }
  if (!st.isDirectory()) {
    return { kind: 'file', files: [{ rank: 0, path: resolve(srcCheckpoint), size: st.size, mtimeMs: st.mtimeMs }], notices: [] };
  }
  const dirents = await readdir(srcCheckpoint, { withFileTypes: true });
  const ranks = new Map<number, string>();
  for (const d of dirents) {
    const m = RANK_DIR.exec(d.name);
    if (m === null || !d.isDirectory()) continue;
    const r = Number(m[1]);
    if (ranks.has(r)) throw new InputError(`two folders name rank ${r}`, { file: join(srcCheckpoint, d.name) });
    ranks.set(r, d.name);
  }
  if (ranks.size === 0) {
    throw new InputError('holds no rank_N folders (expected a checkpoint file or a folder of rank_0, rank_1, ...)', { file: srcCheckpoint });
  }
  const sorted = [...ranks.keys()].sort((a, b) => a - b);
  for (let i = 0; i < sorted.length; i++) {
    if (sorted[i] !== i) {
      throw new InputError(`rank folders must be rank_0..rank_${sorted.length - 1} without gaps; rank_${i} is missing`, { file: srcCheckpoint });
    }
  }
  const notices: string[] = [];
  const files: SourceFileInfo[] = [];
  for (const r of sorted) {
    const dir = join(srcCheckpoint, ranks.get(r) as string);
    const names = (await readdir(dir, { withFileTypes: true }))
      .filter((d) => d.isFile() && WEIGHT_FILE.test(d.name) && !d.name.startsWith('.'))
      .map((d) => d.name);
    if (names.length === 0) throw new InputError('holds no .ckpt file', { file: dir });
    const infos = await Promise.all(names.map(async (n) => ({ n, s: await stat(join(dir, n)) })));
    let chosen;
    if (pick === 'newest') {
      chosen = infos.reduce((a, b) => (b.s.mtimeMs > a.s.mtimeMs || (b.s.mtimeMs === a.s.mtimeMs && b.n > a.n) ? b : a));
    } else {
      chosen = infos.reduce((a, b) => (b.n > a.n ? b : a));
    }
    if (infos.length > 1) {
      notices.push(`rank_${r}: ${infos.length} checkpoint files, using ${chosen.n} (${pick === 'newest' ? 'newest' : 'last in name order'})`);
    }
    files.push({ rank: r, path: resolve(join(dir, chosen.n)), size: chosen.s.size, mtimeMs: chosen.s.mtimeMs });
  }
  return { kind: 'ranks', files, notices };
}

export interface LoadedStrategy {
  readonly strategy: Strategy;
  /** The path given (file or directory). */
  readonly path: string;
  /** sha256 of the strategy bytes used (the merged bytes for a directory). */
  readonly sha256: string;
}

/** Read a strategy file, or merge a directory of per-stage files into a temporary file first. */
export async function loadStrategy(path: string): Promise<LoadedStrategy> {
  let st;
  try {
    st = await stat(path);
  } catch {
    throw new InputError('no such file or directory', { file: path });
  }
  if (!st.isDirectory()) {
    const bytes = await readFile(path);
    const strategy = await readStrategy(path);
    return { strategy, path: resolve(path), sha256: createHash('sha256').update(bytes).digest('hex') };
  }
  const tmp = await mkdtemp(join(tmpdir(), 'msckpt-strategy-'));
  try {
    const out = join(tmp, 'merged_ckpt_strategy.ckpt');
    await mergeStrategies(path, out);
    const bytes = await readFile(out);
    const strategy = await readStrategy(out);
    return { strategy: { ...strategy, path: resolve(path) }, path: resolve(path), sha256: createHash('sha256').update(bytes).digest('hex') };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

export interface PlanFromPathsOptions {
  readonly srcCheckpoint: string;
  readonly srcStrategy?: string | null;
  readonly dstStrategy?: string | null;
  readonly ranks?: readonly number[];
  readonly memory?: number;
  readonly worldSize?: number;
  readonly pick?: PickRule;
}

export interface LoadedPlan {
  readonly plan: Plan;
  readonly sources: SourceFiles;
  readonly srcStrategy: LoadedStrategy | null;
  readonly dstStrategy: LoadedStrategy | null;
  readonly notices: readonly string[];
}

async function readEntries(files: readonly SourceFileInfo[]): Promise<PlanSourceFile[]> {
  const out: PlanSourceFile[] = new Array(files.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (;;) {
      const i = next++;
      if (i >= files.length) return;
      const f = files[i] as SourceFileInfo;
      const src = await openWeightsFile(f.path);
      try {
        out[i] = { rank: f.rank, path: f.path, entries: src.entries().map((e) => ({ ...e })) };
      } finally {
        await src.close();
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(16, files.length) }, worker));
  return out;
}

/** Open every input and build the plan, with what was found on the way. */
export async function loadPlan(opts: PlanFromPathsOptions): Promise<LoadedPlan> {
  const sources = await findSourceFiles(opts.srcCheckpoint, opts.pick ?? 'last');
  const srcStrategy = opts.srcStrategy ? await loadStrategy(opts.srcStrategy) : null;
  const dstStrategy = opts.dstStrategy ? await loadStrategy(opts.dstStrategy) : null;
  if (sources.kind === 'ranks' && sources.files.length > 1 && srcStrategy === null) {
    throw new InputError(`holds ${sources.files.length} rank folders (a sliced checkpoint) but no source strategy was given`, { file: opts.srcCheckpoint });
  }
  if (sources.kind === 'file' && srcStrategy !== null) {
    const s = srcStrategy.strategy;
    const devices = (s.layouts[0]?.devMatrix ?? [1]).reduce((a, b) => a * b, 1) * Math.max(1, s.stages.length);
    if (devices > 1) {
      throw new InputError(`is one file but the source strategy describes ${devices} devices; give the folder holding rank_0..rank_${devices - 1}`, { file: opts.srcCheckpoint });
    }
  }
  const entries = await readEntries(sources.files);
  const plan = buildPlan({
    srcStrategy: srcStrategy?.strategy ?? null,
    dstStrategy: dstStrategy?.strategy ?? null,
    sources: entries,
    ...(opts.ranks !== undefined ? { ranks: opts.ranks } : {}),
    ...(opts.memory !== undefined ? { memory: opts.memory } : {}),
    ...(opts.worldSize !== undefined ? { worldSize: opts.worldSize } : {}),
  });
  return { plan, sources, srcStrategy, dstStrategy, notices: sources.notices };
}

/** Open the inputs (merging a strategy directory into a temporary file first) and build the plan. */
export async function planFromPaths(opts: PlanFromPathsOptions): Promise<Plan> {
  return (await loadPlan(opts)).plan;
}
