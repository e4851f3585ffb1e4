/**
 * Where a job's files live under `output_dir` (mindformers' layout, spec mindformers-flow §2.5).
 * Comparing paths (symlinks, `..`, trailing slashes) is plugin/real-paths.ts.
 */
import { basename, extname, join, resolve } from 'node:path';

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
