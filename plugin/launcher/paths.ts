/**
 * Where a job's files live under `output_dir` (mindformers' layout, spec mindformers-flow §2.5),
 * and path comparison that survives `..`, symlinks and trailing slashes.
 */
import { lstat, realpath } from 'node:fs/promises';
import { basename, dirname, extname, isAbsolute, join, resolve, sep } from 'node:path';

/** The parts of a run configuration the paths depend on. */
export interface JobPathsInput {
  /** `output_dir` as written in the YAML (default `./output`). */
  outputDir: string;
  /** Directory relative paths are resolved against (the training command's working directory). */
  baseDir: string;
  /** `parallel.strategy_ckpt_config.save_file` or `parallel.strategy_ckpt_save_file`, if set. */
  strategySaveFile?: string | undefined;
}

export interface JobPaths {
  /** Absolute `output_dir`. */
  outputDir: string;
  /** `output_dir/strategy`: this job's per-rank strategy files. */
  strategyDir: string;
  /** `output_dir/transformed_checkpoint`: converted slices, one `<name>/rank_R/` tree per source. */
  transformedDir: string;
  /** `output_dir/strategy/merged_ckpt_strategy.ckpt` (pipeline stages > 1). */
  mergedStrategy: string;
  /** Base name of strategy files, `ckpt_strategy` unless the YAML renames it. */
  strategyBase: string;
  /** `output_dir/msckpt`: derived YAMLs and msckpt's own records. */
  msckptDir: string;
  /** `output_dir/strategy/<base>_rank_R.ckpt`. */
  strategyFile(rank: number): string;
  /** `output_dir/transformed_checkpoint/<name>/rank_R/checkpoint_R.ckpt`. */
  transformedRankFile(name: string, rank: number): string;
  /** `output_dir/transformed_checkpoint/<name>/rank_R`. */
  transformedRankDir(name: string, rank: number): string;
  /** A derived run YAML, `output_dir/msckpt/<name>.yaml`. */
  derivedConfig(name: string): string;
}

/** Resolve `p` against `baseDir` lexically (removes `.`, `..` and trailing slashes). */
export function resolvePath(baseDir: string, p: string): string {
  return resolve(baseDir, p);
}

/** The layout of a job's outputs. */
export function jobPaths(cfg: JobPathsInput): JobPaths {
  const outputDir = resolve(cfg.baseDir, cfg.outputDir === '' ? './output' : cfg.outputDir);
  const strategyDir = join(outputDir, 'strategy');
  const transformedDir = join(outputDir, 'transformed_checkpoint');
  const msckptDir = join(outputDir, 'msckpt');
  const save = cfg.strategySaveFile;
  const strategyBase = save !== undefined && save !== '' ? basename(save, extname(save)) || 'ckpt_strategy' : 'ckpt_strategy';
  return {
    outputDir,
    strategyDir,
    transformedDir,
    mergedStrategy: join(strategyDir, 'merged_ckpt_strategy.ckpt'),
    strategyBase,
    msckptDir,
    strategyFile: (rank) => join(strategyDir, `${strategyBase}_rank_${rank}.ckpt`),
    transformedRankDir: (name, rank) => join(transformedDir, name, `rank_${rank}`),
    transformedRankFile: (name, rank) => join(transformedDir, name, `rank_${rank}`, `checkpoint_${rank}.ckpt`),
    derivedConfig: (name) => join(msckptDir, `${name}.yaml`),
  };
}

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * The canonical absolute form of `p`: walked component by component from the root, each existing
 * prefix replaced by its realpath (so symlinks are followed before a later `..` is applied, as
 * the kernel does), the non-existing rest appended lexically. Trailing slashes are dropped.
 */
export async function canonicalPath(p: string, baseDir: string = process.cwd()): Promise<string> {
  const abs = isAbsolute(p) ? p : `${baseDir}${sep}${p}`;
  const parts = abs.split(/[\\/]+/).filter((c) => c !== '' && c !== '.');
  let cur: string = sep;
  let existing = true;
  for (const part of parts) {
    if (part === '..') {
      cur = dirname(cur);
      continue;
    }
    const next = join(cur, part);
    if (existing && (await exists(next))) {
      try {
        cur = await realpath(next);
      } catch {
        // a dangling symlink: keep the lexical name, nothing below it exists
        cur = next;
        existing = false;
      }
    } else {
      cur = next;
      existing = false;
    }
  }
  return cur;
}

/** True when `a` and `b` are the same path or `a` lies inside `b`, after canonicalising both. */
export async function isSameOrInside(a: string, b: string, baseDir: string = process.cwd()): Promise<boolean> {
  const [ca, cb] = await Promise.all([canonicalPath(a, baseDir), canonicalPath(b, baseDir)]);
  return isSameOrInsideCanonical(ca, cb);
}

/** `isSameOrInside` on already canonical paths (no I/O). */
export function isSameOrInsideCanonical(a: string, b: string): boolean {
  if (a === b) return true;
  const prefix = b.endsWith(sep) ? b : b + sep;
  return a.startsWith(prefix);
}

/** How two paths relate: `a` is `b`, inside it, contains it, or neither (after canonicalising). */
export type PathRelation = 'same' | 'inside' | 'contains' | 'apart';

export async function pathRelation(a: string, b: string, baseDir: string = process.cwd()): Promise<PathRelation> {
  const [ca, cb] = await Promise.all([canonicalPath(a, baseDir), canonicalPath(b, baseDir)]);
  if (ca === cb) return 'same';
  if (isSameOrInsideCanonical(ca, cb)) return 'inside';
  if (isSameOrInsideCanonical(cb, ca)) return 'contains';
  return 'apart';
}
