/**
 * mindformers, release by release: the one table of what each release refuses at start-up and
 * how it loads weights, as read in mindspore-lab/mindformers at each maintenance branch head
 * (see /work/notes/mindformers-releases.md for the citations). Rules elsewhere read this table;
 * they never compare version numbers themselves.
 *
 * Which release applies: `--mindformers-version` (validate/launch), else the YAML's
 * `msckpt.mindformers_version`, else the version detected from the training command's Python
 * (launch only), else unknown. With an unknown release msckpt refuses only what every release
 * refuses (the rest are warnings that name the releases) and follows the newest release's flow.
 */

/** Parallel modes as mindformers' PARALLEL_MODE table keys them (a Python dict lookup). */
const PARALLEL_MODE_1_3: ReadonlyArray<string | number> = ['DATA_PARALLEL', 'SEMI_AUTO_PARALLEL', 'AUTO_PARALLEL', 'HYBRID_PARALLEL', 'STAND_ALONE', 0, 1, 2, 3];
const PARALLEL_MODE_1_6: ReadonlyArray<string | number> = [...PARALLEL_MODE_1_3.slice(0, 5), 'MANUAL_PARALLEL', 0, 1, 2, 3];

/** `parallel_config` keys accepted (r1.3.0: TransformerOpParallelConfig's arguments; r1.5.0+: the template). */
const PARALLEL_CONFIG_1_3 = [
  'data_parallel', 'model_parallel', 'context_parallel', 'expert_parallel', 'pipeline_stage', 'micro_batch_num', 'recompute',
  'use_seq_parallel', 'optimizer_shard', 'gradient_aggregation_group', 'vocab_emb_dp', 'context_parallel_algo', 'ulysses_degree_in_cp', 'mem_coeff',
] as const;
const PARALLEL_CONFIG_1_5 = [
  'data_parallel', 'model_parallel', 'context_parallel', 'expert_parallel', 'pipeline_stage', 'micro_batch_num', 'seq_split_num',
  'use_seq_parallel', 'optimizer_shard', 'gradient_aggregation_group', 'vocab_emb_dp', 'context_parallel_algo', 'ulysses_degree_in_cp', 'mem_coeff',
] as const;

const RUN_MODES = ['train', 'eval', 'predict', 'finetune'] as const;
const MODELARTS_1_3 = ['MA_LOG_DIR', 'MA_JOB_DIR', 'MA_LOCAL_LOG_PATH', 'S3_ACCESS_KEY_ID', 'S3_SECRET_ACCESS_KEY', 'BATCH_GROUP_NAME'] as const;
const MODELARTS_1_6 = ['MA_LOG_DIR', 'MA_JOB_DIR', 'MA_LOCAL_LOG_PATH', 'BATCH_GROUP_NAME'] as const;

/** One release's rules. Every difference between releases that msckpt acts on is a field here. */
export interface ReleaseRules {
  /** Release name as users know it. */
  readonly name: string;
  /** `mindformers.__version__` strings (major.minor) this entry covers. */
  readonly minor: string;
  /** Where it was read: branch head commit. */
  readonly commit: string;

  // --- start-up refusals --------------------------------------------------------------------
  /** Keys of PARALLEL_MODE; any other `parallel.parallel_mode` is refused, whatever use_parallel says. */
  readonly parallelModes: ReadonlyArray<string | number>;
  /** `run_mode` values run_mindformer.py accepts. */
  readonly runModes: readonly string[];
  /** `parallel_config` keys accepted; any other is refused (TypeError at Trainer(), or KeyError at load). */
  readonly parallelConfigKeys: readonly string[];
  /** Whether `load_ckpt_format` is read at all (r1.3.0 loads .ckpt whatever it says). */
  readonly readsLoadCkptFormat: boolean;
  /** An invalid `load_ckpt_format` is refused already at start-up when auto_trans_ckpt is set. */
  readonly loadCkptFormatCheckedWithAutoTrans: boolean;
  /** Environment variables whose presence means ModelArts. */
  readonly modelArtsEnv: readonly string[];
  /** remote_save_url (on ModelArts) is checked only with auto_trans_ckpt or resume_training. */
  readonly remoteSaveUrlOnlyWhenLoading: boolean;
  /** resume_training: True with an empty load_checkpoint is turned off with a warning (not refused). */
  readonly resumeWithoutCheckpointWarns: boolean;
  /** A load_checkpoint that does not exist and holds no '/' is looked up as a model name (downloaded). */
  readonly checkpointModelNames: boolean;
  /** An empty load_checkpoint is replaced by pretrained_model_dir when that holds *.safetensors. */
  readonly pretrainedModelDir: boolean;
  /** dp*mp*pp must equal the world size in STAND_ALONE/MANUAL_PARALLEL with use_parallel (cp not counted). */
  readonly standAloneLayoutRule: boolean;
  /** A template fills absent keys with defaults at load (load_checkpoint '', parallel_mode 1, ...). */
  readonly fillsDefaults: boolean;
  /** Deepest mapping nesting accepted in a YAML file, when checked. */
  readonly maxYamlDepth: number | undefined;

  // --- loading flows --------------------------------------------------------------------------
  /**
   * STAND_ALONE (and MANUAL_PARALLEL) with use_parallel, auto_trans_ckpt and safetensors:
   * mindformers builds the strategy from the network and slices complete weights while loading.
   */
  readonly standAloneLoadTimeSlicing: boolean;
  /**
   * Source strategy of distributed safetensors when src_strategy_path_or_dir is empty (or not a
   * folder): `<load_checkpoint's parent>/strategy`. undefined: no fallback.
   */
  readonly srcStrategyFallback: 'parent-strategy' | undefined;
  /** Distributed safetensors with auto_trans_ckpt are unified into output_dir/<this>/ first. */
  readonly unifiedCheckpointDir: string | undefined;
  /** Merged strategies of the safetensors flow go to output_dir/<this>/{src,dst}_strategy.ckpt. */
  readonly mergedStrategyDir: string | undefined;
  /** `remove_redundancy` (safetensors saved without redundant copies) is read. */
  readonly removeRedundancy: boolean;
  /**
   * The file a rank_N folder contributes when mindformers loads it without conversion (and when
   * TransformCkpt converts by rank): the newest by modification time (get_last_checkpoint).
   * Distributed safetensors loaded without auto_trans_ckpt: r1.5.0 merges every matching file.
   */
  readonly rankFilePick: 'newest-mtime';
  /** Distributed safetensors without auto_trans_ckpt: every file of the rank folder (r1.5.0), or the one newest file. */
  readonly safetensorsRankFiles: 'all-matching' | 'newest';
  /** A `.ckpt` path counts as complete: any .ckpt file (r1.3.0), or one with no `rank_<digits>` in its path. */
  readonly completeCkptPath: 'any-ckpt-file' | 'no-rank-in-path';
  /** The safetensors metadata key remove_redundancy overrides the YAML's (r1.6.0+). */
  readonly redundancyFromMetadata: boolean;
  /**
   * Which formats' auto_trans_ckpt makes mindformers check the shared disk and empty
   * output/strategy (+ transformed_checkpoint, or unified_checkpoint for safetensors) at start:
   * every format, .ckpt only, or (r1.6.0/r1.7.0) .ckpt only in the tagged release and every
   * format in later builds of the branch.
   */
  readonly autoTransWipes: 'all-formats' | 'ckpt' | 'ckpt-in-tag-all-in-branch';
  /** The YAML key that switches on the directory checkpoint format (iteration_N, metadata.json). */
  readonly newFormatKey: string | undefined;
}

/** The table: one entry per maintenance branch, oldest first. */
export const MINDFORMERS_RELEASES: readonly ReleaseRules[] = [
  {
    name: 'r1.3.0', minor: '1.3', commit: 'f90b5b9c',
    parallelModes: PARALLEL_MODE_1_3, runModes: RUN_MODES, parallelConfigKeys: PARALLEL_CONFIG_1_3,
    readsLoadCkptFormat: false, loadCkptFormatCheckedWithAutoTrans: false, modelArtsEnv: MODELARTS_1_3,
    remoteSaveUrlOnlyWhenLoading: false, resumeWithoutCheckpointWarns: false, checkpointModelNames: true,
    pretrainedModelDir: false, standAloneLayoutRule: false, fillsDefaults: false, maxYamlDepth: undefined,
    standAloneLoadTimeSlicing: false, srcStrategyFallback: undefined, unifiedCheckpointDir: undefined,
    mergedStrategyDir: undefined, removeRedundancy: false, rankFilePick: 'newest-mtime',
    safetensorsRankFiles: 'newest', completeCkptPath: 'any-ckpt-file', redundancyFromMetadata: false, autoTransWipes: 'all-formats', newFormatKey: undefined,
  },
  {
    name: 'r1.5.0', minor: '1.5', commit: 'ece44cc4',
    parallelModes: PARALLEL_MODE_1_3, runModes: RUN_MODES, parallelConfigKeys: PARALLEL_CONFIG_1_5,
    readsLoadCkptFormat: true, loadCkptFormatCheckedWithAutoTrans: false, modelArtsEnv: MODELARTS_1_3,
    remoteSaveUrlOnlyWhenLoading: false, resumeWithoutCheckpointWarns: false, checkpointModelNames: true,
    pretrainedModelDir: false, standAloneLayoutRule: false, fillsDefaults: true, maxYamlDepth: 10,
    standAloneLoadTimeSlicing: true, srcStrategyFallback: 'parent-strategy', unifiedCheckpointDir: 'unified_checkpoint',
    mergedStrategyDir: 'merged_strategy', removeRedundancy: true, rankFilePick: 'newest-mtime',
    safetensorsRankFiles: 'all-matching', completeCkptPath: 'no-rank-in-path', redundancyFromMetadata: false, autoTransWipes: 'ckpt', newFormatKey: undefined,
  },
  {
    name: 'r1.6.0', minor: '1.6', commit: '2819dc07',
    parallelModes: PARALLEL_MODE_1_6, runModes: RUN_MODES, parallelConfigKeys: PARALLEL_CONFIG_1_5,
    readsLoadCkptFormat: true, loadCkptFormatCheckedWithAutoTrans: true, modelArtsEnv: MODELARTS_1_6,
    remoteSaveUrlOnlyWhenLoading: true, resumeWithoutCheckpointWarns: false, checkpointModelNames: false,
    pretrainedModelDir: true, standAloneLayoutRule: false, fillsDefaults: true, maxYamlDepth: 10,
    standAloneLoadTimeSlicing: true, srcStrategyFallback: 'parent-strategy', unifiedCheckpointDir: 'unified_checkpoint',
    mergedStrategyDir: 'merged_strategy', removeRedundancy: true, rankFilePick: 'newest-mtime',
    safetensorsRankFiles: 'newest', completeCkptPath: 'no-rank-in-path', redundancyFromMetadata: true, autoTransWipes: 'ckpt-in-tag-all-in-branch', newFormatKey: undefined,
  },
  {
    name: 'r1.7.0', minor: '1.7', commit: '61f2d8bd',
    parallelModes: PARALLEL_MODE_1_6, runModes: RUN_MODES, parallelConfigKeys: PARALLEL_CONFIG_1_5,
    readsLoadCkptFormat: true, loadCkptFormatCheckedWithAutoTrans: true, modelArtsEnv: MODELARTS_1_6,
    remoteSaveUrlOnlyWhenLoading: true, resumeWithoutCheckpointWarns: true, checkpointModelNames: false,
    pretrainedModelDir: true, standAloneLayoutRule: true, fillsDefaults: true, maxYamlDepth: 10,
    standAloneLoadTimeSlicing: true, srcStrategyFallback: 'parent-strategy', unifiedCheckpointDir: 'unified_checkpoint',
    mergedStrategyDir: 'merged_strategy', removeRedundancy: true, rankFilePick: 'newest-mtime',
    safetensorsRankFiles: 'newest', completeCkptPath: 'no-rank-in-path', redundancyFromMetadata: true, autoTransWipes: 'ckpt-in-tag-all-in-branch', newFormatKey: 'ckpt_use_legacy_format',
  },
  {
    name: 'r1.8.0', minor: '1.8', commit: '1a72d558',
    parallelModes: PARALLEL_MODE_1_6, runModes: [...RUN_MODES, 'predict_with_train_model'], parallelConfigKeys: PARALLEL_CONFIG_1_5,
    readsLoadCkptFormat: true, loadCkptFormatCheckedWithAutoTrans: true, modelArtsEnv: MODELARTS_1_6,
    remoteSaveUrlOnlyWhenLoading: true, resumeWithoutCheckpointWarns: true, checkpointModelNames: false,
    pretrainedModelDir: true, standAloneLayoutRule: true, fillsDefaults: true, maxYamlDepth: 10,
    standAloneLoadTimeSlicing: true, srcStrategyFallback: 'parent-strategy', unifiedCheckpointDir: 'unified_checkpoint',
    mergedStrategyDir: 'merged_strategy', removeRedundancy: true, rankFilePick: 'newest-mtime',
    safetensorsRankFiles: 'newest', completeCkptPath: 'no-rank-in-path', redundancyFromMetadata: true, autoTransWipes: 'all-formats', newFormatKey: 'use_legacy_format',
  },
];

/** The newest release covered (its flow is followed when the installed release is unknown). */
export const NEWEST_RELEASE: ReleaseRules = MINDFORMERS_RELEASES[MINDFORMERS_RELEASES.length - 1]!;

/** Which release's rules apply, and how that was decided. */
export interface ReleaseChoice {
  /** The release whose flow is followed (the newest when the version is unknown). */
  readonly rules: ReleaseRules;
  /** Releases a refusal must hold for: [rules] when known, every release when unknown. */
  readonly candidates: readonly ReleaseRules[];
  /** The version string as found, when found. */
  readonly version: string | undefined;
  /** How: `--mindformers-version`, `msckpt.mindformers_version`, detected, or unknown. */
  readonly from: 'flag' | 'yaml' | 'detected' | 'unknown';
  /** One line for people ("r1.5.0 rules (mindformers 1.5.0 from --mindformers-version)"). */
  readonly description: string;
  /** Set when the version is outside the covered releases and the nearest one is used. */
  readonly caveat: string | undefined;
}

/** The release of a version string (`1.5.0`, `r1.3.0`, `v1.6.0`, `1.7.0rc1`); undefined if unreadable. */
export function releaseOf(version: string): { rules: ReleaseRules; caveat: string | undefined } | undefined {
  const m = /^\s*[rRvV]?(\d+)\.(\d+)(?:[.\-_+a-zA-Z0-9]*)\s*$/.exec(version);
  if (m === null) return undefined;
  const major = Number(m[1]);
  const minor = Number(m[2]);
  const key = major * 1000 + minor;
  const exact = MINDFORMERS_RELEASES.find((r) => r.minor === `${major}.${minor}`);
  if (exact !== undefined) return { rules: exact, caveat: undefined };
  const oldest = MINDFORMERS_RELEASES[0]!;
  const keyOf = (r: ReleaseRules): number => {
    const [a, b] = r.minor.split('.').map(Number) as [number, number];
    return a * 1000 + b;
  };
  if (key < keyOf(oldest)) {
    return { rules: oldest, caveat: `mindformers ${version} is older than ${oldest.name}, the oldest release msckpt covers; ${oldest.name}'s rules are used` };
  }
  if (key > keyOf(NEWEST_RELEASE)) {
    return { rules: NEWEST_RELEASE, caveat: `mindformers ${version} is newer than ${NEWEST_RELEASE.name}, the newest release msckpt covers; ${NEWEST_RELEASE.name}'s rules are used` };
  }
  // between two covered releases (1.4 betas): the older one's rules
  const below = [...MINDFORMERS_RELEASES].reverse().find((r) => keyOf(r) < key)!;
  return { rules: below, caveat: `mindformers ${version} is not a release msckpt covers; ${below.name}'s rules (the release before it) are used` };
}

/**
 * Decide the release: a flag wins, then the YAML's msckpt.mindformers_version, then a detected
 * version. An unreadable version string is reported by the caller (it is an InputError for a
 * flag, a YAML problem for the key).
 */
export function chooseRelease(input: {
  flag?: string | undefined;
  yaml?: string | undefined;
  detected?: { version: string; detail?: string | undefined } | undefined;
}): ReleaseChoice {
  const pick = (version: string, from: ReleaseChoice['from'], how: string): ReleaseChoice | undefined => {
    const r = releaseOf(version);
    if (r === undefined) return undefined;
    return {
      rules: r.rules, candidates: [r.rules], version, from, caveat: r.caveat,
      description: `${r.rules.name} rules (mindformers ${version} ${how})`,
    };
  };
  const choice =
    (input.flag !== undefined ? pick(input.flag, 'flag', 'from --mindformers-version') : undefined) ??
    (input.yaml !== undefined ? pick(input.yaml, 'yaml', 'from msckpt.mindformers_version') : undefined) ??
    (input.detected !== undefined ? pick(input.detected.version, 'detected', input.detected.detail ?? 'detected') : undefined);
  if (choice !== undefined) return choice;
  return {
    rules: NEWEST_RELEASE, candidates: MINDFORMERS_RELEASES, version: undefined, from: 'unknown', caveat: undefined,
    description:
      `mindformers version unknown: refusing only what every release from ${MINDFORMERS_RELEASES[0]!.name} to ${NEWEST_RELEASE.name} refuses, ` +
      `following ${NEWEST_RELEASE.name}'s loading flow (give --mindformers-version or msckpt.mindformers_version)`,
  };
}

/** Names of releases, compactly: "r1.5.0, r1.6.0". */
export function releaseNames(rs: readonly ReleaseRules[]): string {
  return rs.map((r) => r.name).join(', ');
}
