/**
 * The typed run configuration and its problems. A problem is an error (exit 2) only where
 * mindformers itself would refuse the file at start-up, or where msckpt's own work cannot be
 * done; everything else that looks wrong is a warning. Each names `file:line:col key.path`.
 */
import { InputError } from '../../errors.js';
import type { JobPaths } from '../paths.js';
import type { ReleaseChoice } from './releases.js';

import type { WeightsFormat } from '../../formats/resolve.js';
export type ParallelModeName =
  | 'data_parallel'
  | 'semi_auto_parallel'
  | 'auto_parallel'
  | 'hybrid_parallel'
  | 'stand_alone'
  | 'manual_parallel';

export interface RunParallelConfig {
  dataParallel: number;
  modelParallel: number;
  contextParallel: number;
  expertParallel: number;
  pipelineStage: number;
  microBatchNum: number;
  vocabEmbDp: boolean;
  optimizerShard: boolean | null;
  useSeqParallel: boolean;
  gradientAggregationGroup: number;
}

export interface RunParallel {
  /**
   * The mode as mindformers' PARALLEL_MODE table maps the YAML value (MANUAL_PARALLEL keeps its
   * own name here; mindformers runs it as stand_alone). Undefined when the value is not in the
   * table of any release covered.
   */
  parallelMode: ParallelModeName | undefined;
  /** The value as written (the safetensors loader compares this spelling with 'STAND_ALONE'). */
  parallelModeRaw: unknown;
  /** The mode MindSpore runs in: the mapped mode with use_parallel, else stand_alone. */
  effectiveMode: ParallelModeName | undefined;
  enableParallelOptimizer: boolean;
  fullBatch: boolean;
  strategyCkptConfig: { saveFile?: string; loadFile?: string; onlyTrainableParams?: boolean };
  /** `strategy_ckpt_config.save_file`, else `strategy_ckpt_save_file`, else undefined. */
  strategySaveFile: string | undefined;
}

/** msckpt's own settings (`msckpt:` key). Durations in seconds. */
export interface MsckptSettings {
  dstStrategy: string | undefined;
  barrierTimeout: number;
  heartbeatTimeout: number;
  /** Seconds ranks may take to start and join; undefined = the launcher's default (msrun's cluster_time_out, else 10 min). */
  joinTimeout: number | undefined;
  /** Seconds; undefined = automatic (events, with polling on network file systems). */
  pollInterval: number | undefined;
  /** undefined = detect. */
  sharedDisk: boolean | undefined;
  /** `msckpt.mindformers_version`: which release's rules apply (overrides detection). */
  mindformersVersion: string | undefined;
}

/** What `load_checkpoint` (or any checkpoint path) holds on disk. */
export interface CheckpointInfo {
  /** Absolute path. */
  path: string;
  /**
   * missing; file (one complete file); complete-dir (complete files, no rank folders);
   * rank-dir (rank_0..rank_N-1 slices); empty-dir (neither).
   */
  kind: 'missing' | 'file' | 'complete-dir' | 'rank-dir' | 'empty-dir';
  /** Rank folder numbers found (rank-dir), ascending. */
  ranks: number[];
  /** First rank number absent from 0..max (rank-dir with a gap). */
  missingRank: number | undefined;
  /** Checkpoint files directly inside (complete-dir, or loose files beside rank folders). */
  files: string[];
}

export interface ConfigProblem {
  /** Dotted key path, '' for the whole file. */
  key: string;
  line: number;
  column: number;
  message: string;
}

/** What `msckpt launch` does with a configuration (decided by `launchMode`). */
export type LaunchMode =
  /** Nothing for the hook: the training command runs on the user's YAML, no coordination. */
  | 'passthrough'
  /** mindformers slices complete safetensors itself at load time: handed over unchanged. */
  | 'handover'
  /** Convert load_checkpoint to the job's layout, then train on a derived YAML. */
  | 'convert'
  /** only_save_strategy: collect strategies, print the plan, exit 0. */
  | 'strategy-only';

export interface RunConfig {
  /** Absolute path of the YAML. */
  file: string;
  /** Directory relative paths are resolved against (the training command's working directory). */
  baseDir: string;
  /** The user's document as PyYAML reads it (base_config files not merged). */
  raw: Record<string, unknown>;
  /** The document mindformers works on: base_config merged, command-line overrides applied. */
  effective: Record<string, unknown>;
  /** The YAML text as read (used to derive YAML that keeps comments and layout). */
  text: string;

  outputDir: string;
  loadCheckpoint: string;
  autoTransCkpt: boolean;
  srcStrategyPathOrDir: string;
  onlySaveStrategy: boolean;
  transformProcessNum: number;
  transformByRank: boolean;
  useParallel: boolean;
  /** The format mindformers loads (always 'ckpt' for releases that do not read the key). */
  loadCkptFormat: WeightsFormat;
  resumeTraining: boolean | string;
  removeRedundancy: boolean;
  /** As written; undefined when absent (mindformers then uses env DEVICE_NUM_PER_NODE or 8). */
  npuNumPerNode: number | undefined;
  runMode: string | undefined;
  parallelConfig: RunParallelConfig;
  parallel: RunParallel;
  msckpt: MsckptSettings;
  /** Which mindformers release's rules apply, and how that was found. */
  release: ReleaseChoice;
  /** What `launch` does with this configuration. */
  mode: LaunchMode;
  /** One line saying why (shown by validate and logged by launch). */
  modeReason: string;

  /** The device count used by the rules: the worldSize option, else dp*mp*cp*pp in semi-auto mode. */
  deviceCount: number | undefined;
  /** Where deviceCount came from. */
  deviceCountFrom: 'world-size' | 'layout' | undefined;
  /** Where load_checkpoint came from (pretrained_model_dir or model.model_config.checkpoint_name_or_path where mindformers falls back to them). */
  loadCheckpointFrom: 'load_checkpoint' | 'pretrained_model_dir' | 'checkpoint_name_or_path';
  /** The strategy of a sliced source as the release's flow finds it (when files were inspected). */
  srcStrategy: { path: string; from: 'src_strategy_path_or_dir' | 'fallback' } | undefined;
  /** What load_checkpoint holds (when files were inspected and it is set). */
  source: CheckpointInfo | undefined;
  /** The job's output folders. */
  paths: JobPaths;
  /** Things worth saying that are not errors. */
  warnings: ConfigProblem[];
  /** Position of a key path in the file. */
  locate(keyPath: string): { line: number; column: number };
}

export interface LoadRunConfigOptions {
  /** Device count of the job (msrun's worker_num / RANK_SIZE), when known. */
  worldSize?: number | undefined;
  /** Working directory of the training command (default process.cwd()). */
  cwd?: string | undefined;
  /** Inspect load_checkpoint and strategy paths on disk (default true). */
  checkFiles?: boolean | undefined;
  /**
   * The installed mindformers version (`1.5.0`), from `--mindformers-version` or detection;
   * the YAML's `msckpt.mindformers_version` wins over a detected one, a flag over both.
   */
  mindformersVersion?: { version: string; from: 'flag' | 'detected'; detail?: string } | undefined;
  /** Environment (ModelArts variables); default process.env. */
  env?: Readonly<Record<string, string | undefined>> | undefined;
  /** Keys the training command overrides (run_mindformer.py flags), already read. */
  commandOverrides?: Readonly<Record<string, unknown>> | undefined;
}

export interface RunConfigReport {
  file: string;
  ok: boolean;
  errors: ConfigProblem[];
  warnings: ConfigProblem[];
  /** The typed configuration (also when there are errors, unless the file could not be parsed). */
  config: RunConfig | null;
}

/** `file:line:col key.path: message`. */
export function formatConfigProblem(file: string, p: ConfigProblem): string {
  return `${file}:${p.line}:${p.column} ${p.key === '' ? '' : `${p.key}: `}${p.message}`;
}

/** Every problem of a run YAML, thrown together (exit code 2). */
export class RunConfigError extends InputError {
  readonly problems: ConfigProblem[];
  readonly file: string;
  constructor(file: string, problems: ConfigProblem[]) {
    const lines = problems.map((p) => formatConfigProblem(file, p));
    super(problems.length === 1 ? lines[0]! : `${problems.length} problems in ${file}:\n  ${lines.join('\n  ')}`);
    this.problems = problems;
    this.file = file;
  }
}
