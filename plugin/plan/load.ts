/**
 * Planning from paths: the source through the one resolver (a complete file, an index or unified
 * folder, or a rank_N tree), the strategies (a file, or a folder merged first into a temporary
 * file we own), every source's header read once into its index, then `buildPlan`.
 */
import { basename, resolve } from 'node:path';
import { InputError } from '../errors.js';
import { resolveWeights, type FoundFile, type PickRule, type ResolvedWeights, type WeightsFormat } from '../formats/resolve.js';
import { loadStrategy, type LoadedStrategy } from '../formats/strategy/load.js';
import { defaultSourceIO, type SourceIO } from '../formats/source-index.js';
import { buildPlan } from './build.js';
import type { Plan, PlanSourceFile } from './types.js';

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
  readonly format: WeightsFormat;
  /** Messages for the user (which file of a folder was used, ...). */
  readonly notices: readonly string[];
}

/**
 * The source files of a plan, from the one resolver: a complete file, an HF index or unified
 * folder (one complete source), a folder holding exactly one complete file, or a rank_N tree.
 */
export async function findSourceFiles(srcCheckpoint: string | ResolvedWeights, pick?: PickRule, srcFormat?: WeightsFormat): Promise<SourceFiles> {
  const r = typeof srcCheckpoint === 'string'
    ? await resolveWeights(srcCheckpoint, { ...(pick !== undefined ? { pick } : {}), ...(srcFormat !== undefined ? { format: srcFormat } : {}) })
    : srcCheckpoint;
  const sum = (fs: readonly FoundFile[]): { size: number; mtimeMs: number } => ({
    size: fs.reduce((a, f) => a + f.size, 0),
    mtimeMs: fs.reduce((a, f) => Math.max(a, f.mtimeMs), 0),
  });
  switch (r.kind) {
    case 'file':
      return { kind: 'file', format: r.format, files: [{ rank: 0, path: resolve(r.path), size: r.file.size, mtimeMs: r.file.mtimeMs }], notices: r.notices };
    case 'index':
    case 'unified':
      return { kind: 'file', format: 'safetensors', files: [{ rank: 0, path: resolve(r.kind === 'index' ? r.index.path : r.path), ...sum([r.index, ...r.files]) }], notices: r.notices };
    case 'files': {
      if (r.sources.length !== 1) {
        throw new InputError(
          `holds ${r.sources.length} complete .${r.format} files (${r.sources.map((s) => basename(s.file.path)).slice(0, 4).join(', ')}${r.sources.length > 4 ? ', ...' : ''}); name the one to use`,
          { file: r.path },
        );
      }
      const f = (r.sources[0] as { file: FoundFile }).file;
      return { kind: 'file', format: r.format, files: [{ rank: 0, path: resolve(f.path), size: f.size, mtimeMs: f.mtimeMs }], notices: r.notices };
    }
    case 'ranks':
      return { kind: 'ranks', format: r.format, files: r.ranks.map((x) => ({ rank: x.rank, path: resolve(x.file.path), size: x.file.size, mtimeMs: x.file.mtimeMs })), notices: r.notices };
  }
}

export interface LoadPlanOptions {
  readonly srcCheckpoint: string | ResolvedWeights;
  readonly srcStrategy?: string | null;
  readonly dstStrategy?: string | null;
  readonly ranks?: readonly number[];
  readonly memory?: number;
  readonly worldSize?: number;
  readonly pick?: PickRule;
  /** Which files of rank_N folders to use when they hold both formats (default: safetensors). */
  readonly srcFormat?: WeightsFormat;
  /** Entries to leave out (see PlanInput.exclude). */
  readonly exclude?: (name: string) => boolean;
  /** How source headers are read (default: the files themselves). */
  readonly io?: SourceIO;
}

export interface LoadedPlan {
  readonly plan: Plan;
  readonly sources: SourceFiles;
  readonly srcStrategy: LoadedStrategy | null;
  readonly dstStrategy: LoadedStrategy | null;
  readonly notices: readonly string[];
}

/** Index every source file (header reads, 16 at a time). */
async function indexSources(files: readonly SourceFileInfo[], io: SourceIO): Promise<PlanSourceFile[]> {
  const out: PlanSourceFile[] = new Array(files.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (;;) {
      const i = next++;
      if (i >= files.length) return;
      const f = files[i] as SourceFileInfo;
      const index = await io.index(f.path);
      out[i] = {
        rank: f.rank, path: f.path, entries: index.entries, format: index.format, files: index.files,
        ...(index.bodyBytes !== undefined ? { bodyBytes: index.bodyBytes } : {}),
        ...(index.storedCrc !== undefined ? { storedCrc: index.storedCrc } : {}),
      };
    }
  };
  await Promise.all(Array.from({ length: Math.min(16, files.length) }, worker));
  return out;
}

/** Open every input and build the plan, with what was found on the way. */
export async function loadPlan(opts: LoadPlanOptions): Promise<LoadedPlan> {
  const sources = await findSourceFiles(opts.srcCheckpoint, opts.pick, opts.srcFormat);
  const srcPath = typeof opts.srcCheckpoint === 'string' ? opts.srcCheckpoint : opts.srcCheckpoint.path;
  const srcStrategy = opts.srcStrategy ? await loadStrategy(opts.srcStrategy) : null;
  const dstStrategy = opts.dstStrategy ? await loadStrategy(opts.dstStrategy) : null;
  if (sources.kind === 'ranks' && sources.files.length > 1 && srcStrategy === null) {
    throw new InputError(`holds ${sources.files.length} rank folders (a sliced checkpoint) but no source strategy was given`, { file: srcPath });
  }
  if (sources.kind === 'file' && srcStrategy !== null) {
    const s = srcStrategy.strategy;
    const devices = (s.layouts[0]?.devMatrix ?? [1]).reduce((a, b) => a * b, 1) * Math.max(1, s.stages.length);
    if (devices > 1) {
      throw new InputError(`is one file but the source strategy describes ${devices} devices; give the folder holding rank_0..rank_${devices - 1}`, { file: srcPath });
    }
  }
  const entries = await indexSources(sources.files, opts.io ?? defaultSourceIO);
  const plan = buildPlan({
    srcStrategy: srcStrategy?.strategy ?? null,
    dstStrategy: dstStrategy?.strategy ?? null,
    sources: entries,
    ...(opts.ranks !== undefined ? { ranks: opts.ranks } : {}),
    ...(opts.memory !== undefined ? { memory: opts.memory } : {}),
    ...(opts.worldSize !== undefined ? { worldSize: opts.worldSize } : {}),
    ...(opts.exclude !== undefined ? { exclude: opts.exclude } : {}),
  });
  return { plan, sources, srcStrategy, dstStrategy, notices: sources.notices };
}
