/**
 * Opening a plan's inputs from paths: the source (one complete file, or `dir/rank_N/*.ckpt`),
 * the strategies (a file, or a directory merged first into a temporary file we own).
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { InputError } from '../errors.js';
import { detectKind } from '../formats/detect.js';
import { mergeStrategies, readStrategy } from '../formats/strategy/index.js';
import type { Strategy } from '../formats/strategy/model.js';
import { buildPlan, type Plan, type PlanSourceFile } from './build.js';
import { openWeightsFile } from './io.js';

export type PickRule = 'last' | 'newest';

/** Weight file formats a source can be in. */
export type SourceFormat = 'ckpt' | 'safetensors';

export interface SourceFileInfo {
  readonly rank: number;
  /** A file; for a unified safetensors directory the directory; for an HF index the index JSON. */
  readonly path: string;
  readonly size: number;
  readonly mtimeMs: number;
}

export interface SourceFiles {
  /** 'file' = one complete source (a file, an index, a unified directory); 'ranks' = a rank_N tree. */
  readonly kind: 'file' | 'ranks';
  readonly files: readonly SourceFileInfo[];
  /** The format the source is in (the default output format). */
  readonly format: SourceFormat;
  /** Messages for the user (which file of a folder was used, ...). */
  readonly notices: readonly string[];
}

const RANK_DIR = /^rank_(\d+)$/;
const WEIGHT_FILE = /\.(ckpt|safetensors)$/i;

function extFormat(name: string): SourceFormat {
  return /\.safetensors$/i.test(name) ? 'safetensors' : 'ckpt';
}

/** The last two integers of a file name without its extension: MindSpore's (epoch, step). */
export function epochStepOf(name: string): [number, number] {
  const ints = (name.replace(WEIGHT_FILE, '').match(/\d+/g) ?? []).map(Number);
  return [ints[ints.length - 2] ?? -1, ints[ints.length - 1] ?? -1];
}

function nameCompare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/**
 * The file of one rank folder MindSpore would load among `names` (all of one format):
 * safetensors: largest trailing (epoch, step) in the name; .ckpt: last in file-name order;
 * `newest`: latest modification time. Ties fall back to name order.
 */
export function pickWeightFile(
  names: readonly { readonly name: string; readonly mtimeMs: number }[],
  format: SourceFormat,
  pick: PickRule,
): { readonly name: string; readonly mtimeMs: number } | undefined {
  const cmp = (a: { name: string; mtimeMs: number }, b: { name: string; mtimeMs: number }): number => {
    if (pick === 'newest') return a.mtimeMs - b.mtimeMs || nameCompare(a.name, b.name);
    if (format === 'safetensors') {
      const [a1, a2] = epochStepOf(a.name);
      const [b1, b2] = epochStepOf(b.name);
      return a1 - b1 || a2 - b2 || nameCompare(a.name, b.name);
    }
    return nameCompare(a.name, b.name);
  };
  let best: { readonly name: string; readonly mtimeMs: number } | undefined;
  for (const n of names) if (best === undefined || cmp(n, best) > 0) best = n;
  return best;
}

function ruleText(format: SourceFormat, pick: PickRule): string {
  if (pick === 'newest') return 'newest by modification time';
  return format === 'safetensors' ? 'largest epoch/step in its name, as MindSpore picks' : 'last in file-name order, as MindSpore picks';
}

/** Size and latest mtime of the safetensors files a unified/index source folder holds (for the resume fingerprint). */
async function folderWeightStat(dir: string): Promise<{ size: number; mtimeMs: number }> {
  let size = 0;
  let mtimeMs = 0;
  for (const d of await readdir(dir, { withFileTypes: true })) {
    if (!d.isFile() || !(/\.safetensors$/i.test(d.name) || /\.json$/i.test(d.name))) continue;
    const s = await stat(join(dir, d.name));
    size += s.size;
    mtimeMs = Math.max(mtimeMs, s.mtimeMs);
  }
  return { size, mtimeMs };
}

/**
 * Find the source files: a file (checkpoint, safetensors, HF `*.index.json`), a unified
 * safetensors directory (`param_name_map.json`) or a folder holding one `*.index.json` is one
 * complete source; otherwise a directory must hold rank_0..rank_{N-1}.
 */
export async function findSourceFiles(srcCheckpoint: string, pick: PickRule = 'last', srcFormat?: SourceFormat): Promise<SourceFiles> {
  let st;
  try {
    st = await stat(srcCheckpoint);
  } catch {
    throw new InputError('no such file or directory', { file: srcCheckpoint });
  }
  if (!st.isDirectory()) {
    const kind = await detectKind(srcCheckpoint);
    const format: SourceFormat = kind === 'safetensors' || kind === 'safetensors-index' ? 'safetensors' : 'ckpt';
    let size = st.size;
    let mtimeMs = st.mtimeMs;
    if (kind === 'safetensors-index') ({ size, mtimeMs } = await folderWeightStat(dirname(resolve(srcCheckpoint))));
    return { kind: 'file', format, files: [{ rank: 0, path: resolve(srcCheckpoint), size, mtimeMs }], notices: [] };
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
    // a complete safetensors source held in a folder: unified (param_name_map.json) or an HF index
    const names = dirents.filter((d) => d.isFile()).map((d) => d.name).sort(nameCompare);
    let path: string | null = null;
    if (names.includes('param_name_map.json')) path = resolve(srcCheckpoint);
    else {
      const idx = names.filter((n) => n.endsWith('.index.json'));
      if (idx.length > 1) throw new InputError(`holds ${idx.length} index files (${idx.join(', ')}); name the one to use`, { file: srcCheckpoint });
      if (idx.length === 1) path = resolve(join(srcCheckpoint, idx[0] as string));
    }
    if (path === null) {
      throw new InputError(
        'holds no rank_N folders, param_name_map.json or *.index.json (expected a checkpoint file, a folder of rank_0, rank_1, ..., a unified safetensors folder or an index)',
        { file: srcCheckpoint },
      );
    }
    const { size, mtimeMs } = await folderWeightStat(srcCheckpoint);
    return { kind: 'file', format: 'safetensors', files: [{ rank: 0, path, size, mtimeMs }], notices: [] };
  }
  const sorted = [...ranks.keys()].sort((a, b) => a - b);
  for (let i = 0; i < sorted.length; i++) {
    if (sorted[i] !== i) {
      throw new InputError(`rank folders must be rank_0..rank_${sorted.length - 1} without gaps; rank_${i} is missing`, { file: srcCheckpoint });
    }
  }
  const notices: string[] = [];
  const perRank: { r: number; dir: string; infos: { name: string; mtimeMs: number; size: number }[] }[] = [];
  const seenFormats = new Set<SourceFormat>();
  for (const r of sorted) {
    const dir = join(srcCheckpoint, ranks.get(r) as string);
    const names = (await readdir(dir, { withFileTypes: true }))
      .filter((d) => d.isFile() && WEIGHT_FILE.test(d.name) && !d.name.startsWith('.'))
      .map((d) => d.name);
    const infos = await Promise.all(names.map(async (n) => {
      const s = await stat(join(dir, n));
      return { name: n, mtimeMs: s.mtimeMs, size: s.size };
    }));
    for (const i of infos) seenFormats.add(extFormat(i.name));
    perRank.push({ r, dir, infos });
  }
  let format: SourceFormat;
  if (srcFormat !== undefined) format = srcFormat;
  else if (seenFormats.size > 1) {
    format = 'safetensors';
    notices.push('rank folders hold both .ckpt and .safetensors files; using the .safetensors files (give the source format to choose .ckpt)');
  } else format = seenFormats.has('safetensors') ? 'safetensors' : 'ckpt';
  const files: SourceFileInfo[] = [];
  for (const { r, dir, infos } of perRank) {
    const mine = infos.filter((i) => extFormat(i.name) === format);
    const chosen = pickWeightFile(mine, format, pick) as { name: string; mtimeMs: number; size: number } | undefined;
    if (chosen === undefined) throw new InputError(`holds no .${format} file`, { file: dir });
    if (mine.length > 1) {
      notices.push(`rank_${r}: ${mine.length} .${format} files, using ${chosen.name} (${ruleText(format, pick)})`);
    }
    files.push({ rank: r, path: resolve(join(dir, chosen.name)), size: chosen.size, mtimeMs: chosen.mtimeMs });
  }
  return { kind: 'ranks', format, files, notices };
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
  /** Which files of rank_N folders to use when they hold both formats (default: safetensors). */
  readonly srcFormat?: SourceFormat;
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
  const sources = await findSourceFiles(opts.srcCheckpoint, opts.pick ?? 'last', opts.srcFormat);
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
