/**
 * The run YAML: load (keeping key positions), validate against schemas/run-config.schema.json,
 * apply mindformers' cross-field rules (spec mindformers-flow §1.2, §2.7) and ours, and derive
 * YAML for derived runs. Every problem names `file:line:column key.path`; all of them are
 * collected and reported together.
 */
import { existsSync, readFileSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import yaml from 'js-yaml';
import { packageFile } from '../package-files.js';
import { surveyWeights, type WeightsFormat } from '../formats/resolve.js';
import { InputError } from '../errors.js';
import { canonicalPath, isSameOrInsideCanonical, jobPaths, type JobPaths } from './paths.js';
import { joinKeyPath, loadYamlWithPositions, YamlSyntaxError, type LocatedYaml } from './yaml-positions.js';

// ---------------------------------------------------------------------------------------------
// Types

/** Alias of the one format type, kept until this file's owner removes it. */
export type LoadCkptFormat = WeightsFormat;
export type ParallelModeName = 'data_parallel' | 'semi_auto_parallel' | 'auto_parallel' | 'hybrid_parallel' | 'stand_alone';

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
  parallelMode: ParallelModeName;
  enableParallelOptimizer: boolean;
  fullBatch: boolean;
  strategyCkptConfig: { saveFile?: string; loadFile?: string; onlyTrainableParams?: boolean };
  /** `strategy_ckpt_config.save_file`, else `strategy_ckpt_save_file`, else undefined. */
  strategySaveFile: string | undefined;
}

/** msckpt's own settings (`msckpt:` key), in seconds. */
export interface MsckptSettings {
  dstStrategy: string | undefined;
  barrierTimeout: number;
  heartbeatTimeout: number;
  /** undefined = automatic (events, with polling on network file systems). */
  pollInterval: number | undefined;
  /** undefined = detect. */
  sharedDisk: boolean | undefined;
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

export interface RunConfig {
  /** Absolute path of the YAML. */
  file: string;
  /** Directory relative paths are resolved against (the training command's working directory). */
  baseDir: string;
  /** The whole document as parsed. */
  raw: Record<string, unknown>;
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
  loadCkptFormat: LoadCkptFormat;
  resumeTraining: boolean | string;
  /** As written; undefined when absent (mindformers then uses env DEVICE_NUM_PER_NODE or 8). */
  npuNumPerNode: number | undefined;
  runMode: string | undefined;
  parallelConfig: RunParallelConfig;
  parallel: RunParallel;
  msckpt: MsckptSettings;

  /** The device count used by the rules: the worldSize option, else dp*mp*cp*pp in semi-auto mode. */
  deviceCount: number | undefined;
  /** Where deviceCount came from. */
  deviceCountFrom: 'world-size' | 'layout' | undefined;
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
}

export interface RunConfigReport {
  file: string;
  ok: boolean;
  errors: ConfigProblem[];
  warnings: ConfigProblem[];
  /** The typed configuration (also when there are errors, unless the file could not be parsed). */
  config: RunConfig | null;
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

/** `file:line:col key.path: message`. */
export function formatConfigProblem(file: string, p: ConfigProblem): string {
  return `${file}:${p.line}:${p.column} ${p.key === '' ? '' : `${p.key}: `}${p.message}`;
}

// ---------------------------------------------------------------------------------------------
// Constants

export const DEFAULT_BARRIER_TIMEOUT_S = 7200;
export const DEFAULT_HEARTBEAT_TIMEOUT_S = 60;
/** Largest run YAML read (they are a few KiB). */
export const MAX_YAML_BYTES = 16 * 1024 * 1024;

/** Top-level keys msckpt reads. */
export const RUN_CONFIG_KEYS = [
  'output_dir',
  'load_checkpoint',
  'src_strategy_path_or_dir',
  'auto_trans_ckpt',
  'only_save_strategy',
  'transform_process_num',
  'transform_by_rank',
  'use_parallel',
  'load_ckpt_format',
  'resume_training',
  'npu_num_per_node',
  'parallel_config',
  'parallel',
  'msckpt',
] as const;

/** Other top-level keys of mindformers configs: never flagged as near misses of ours. */
const MINDFORMERS_TOP_KEYS = new Set([
  'seed', 'run_mode', 'use_legacy', 'load_ckpt_async', 'pretrained_model_dir', 'remote_save_url', 'remove_redundancy',
  'micro_batch_interleave_num', 'do_eval', 'eval_step_interval', 'eval_epoch_interval', 'ignore_data_skip', 'data_skip_steps',
  'profile', 'profile_communication', 'profile_memory', 'init_start_profile', 'profile_start_step', 'profile_stop_step',
  'profile_rank_ids', 'profile_pipeline', 'profile_level', 'mstx', 'layer_scale', 'layer_decay', 'lr_scale',
  'lr_scale_factor', 'save_file', 'input_data', 'predict_batch_size', 'adapter_id', 'exclude_cann_cpu',
  'train_precision_sync', 'infer_precision_sync', 'postprocess_use_numpy', 'trainer', 'runner_config', 'runner_wrapper',
  'context', 'model', 'moe_config', 'recompute_config', 'swap_config', 'optimizer', 'lr_schedule', 'metric',
  'train_dataset', 'train_dataset_task', 'eval_dataset', 'eval_dataset_task', 'callbacks', 'eval_callbacks',
  'monitor_config', 'processor', 'src_strategy_path_or_dir', 'load_checkpoint', 'use_parallel', 'output_dir',
  'resume_training', 'auto_trans_ckpt', 'only_save_strategy', 'transform_process_num', 'transform_by_rank',
  'load_ckpt_format', 'npu_num_per_node', 'parallel_config', 'parallel', 'msckpt', 'model_config', 'checkpoint_name_or_path',
]);

const PARALLEL_KEYS = [
  'parallel_mode', 'enable_parallel_optimizer', 'full_batch', 'gradients_mean', 'enable_alltoall', 'search_mode',
  'strategy_ckpt_save_file', 'strategy_ckpt_load_file', 'strategy_ckpt_config', 'pipeline_stages', 'device_num',
  'parallel_optimizer_config', 'pipeline_config', 'dataset_strategy', 'gradient_fp32_sync', 'loss_repeated_mean',
  'comm_fusion', 'auto_pipeline', 'all_reduce_fusion_config', 'global_rank', 'parameter_broadcast', 'group_ckpt_save_file',
];

const PARALLEL_MODES: readonly ParallelModeName[] = ['data_parallel', 'semi_auto_parallel', 'auto_parallel', 'hybrid_parallel'];

// ---------------------------------------------------------------------------------------------
// Schema

let validator: ValidateFunction | null = null;

/** Path of schemas/run-config.schema.json (from the sources or an installed package). */
export function runConfigSchemaPath(): string {
  return packageFile('schemas/run-config.schema.json');
}

function getValidator(): ValidateFunction {
  if (validator !== null) return validator;
  const schema = JSON.parse(readFileSync(runConfigSchemaPath(), 'utf8')) as Record<string, unknown>;
  const ajv = new Ajv2020({ allErrors: true, strict: false, logger: false, verbose: true });
  validator = ajv.compile(schema);
  return validator;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** Levenshtein distance, giving up (returning max+1) once it exceeds `max`. */
export function editDistance(a: string, b: string, max = 3): number {
  if (Math.abs(a.length - b.length) > max) return max + 1;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      const v = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      cur.push(v);
      if (v < rowMin) rowMin = v;
    }
    if (rowMin > max) return max + 1;
    prev = cur;
  }
  return prev[b.length]!;
}

/** The closest candidate within edit distance 2 (case-insensitive), if any. */
export function nearMiss(key: string, candidates: readonly string[]): string | undefined {
  if (key.length < 4) return undefined;
  let best: string | undefined;
  let bestD = 3;
  for (const c of candidates) {
    if (c === key) return undefined;
    const d = editDistance(key.toLowerCase(), c, 2);
    if (d <= 2 && d < bestD) {
      best = c;
      bestD = d;
    }
  }
  return best;
}

/** nearMiss, or a candidate that extends (or is extended by) the key, for keys that are already errors. */
function suggestKey(key: string, candidates: readonly string[]): string | undefined {
  const s = nearMiss(key, candidates);
  if (s !== undefined || key.length < 5) return s;
  const k = key.toLowerCase();
  return candidates.find((c) => c.startsWith(k) || (k.startsWith(c) && c.length >= 5));
}

function describe(v: unknown): string {
  if (v === null || v === undefined) return 'nothing (null)';
  if (typeof v === 'string') return `the string '${v}'`;
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (typeof v === 'number') return Number.isInteger(v) ? `${v}` : `the number ${v}`;
  if (Array.isArray(v)) return 'a list';
  return 'a mapping';
}

const TYPE_WORDS: Record<string, string> = {
  string: 'a string',
  boolean: 'True or False',
  integer: 'an integer',
  number: 'a number',
  object: 'a mapping',
  array: 'a list',
  null: 'empty',
};

function valueAt(doc: unknown, instancePath: string): unknown {
  if (instancePath === '') return doc;
  let cur: unknown = doc;
  for (const seg of instancePath.slice(1).split('/')) {
    const k = seg.replace(/~1/g, '/').replace(/~0/g, '~');
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[k];
  }
  return cur;
}

function pointerToKeyPath(instancePath: string): string {
  if (instancePath === '') return '';
  return instancePath
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce<string>((acc, seg) => (/^\d+$/.test(seg) ? `${acc}[${seg}]` : joinKeyPath(acc, seg)), '');
}

function objectAt(doc: Record<string, unknown>, key: string): Record<string, unknown> {
  const v = doc[key];
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

function asBool(v: unknown, dflt: boolean): boolean {
  return typeof v === 'boolean' ? v : dflt;
}
function asPosInt(v: unknown, dflt: number): number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 1 ? v : dflt;
}
function asStr(v: unknown, dflt: string): string {
  return typeof v === 'string' ? v : dflt;
}
function asPosNum(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : undefined;
}

function parallelModeName(v: unknown): ParallelModeName {
  if (typeof v === 'number' && v >= 0 && v <= 3) return PARALLEL_MODES[v]!;
  if (typeof v === 'string') {
    const s = v.toLowerCase();
    if (s === 'stand_alone' || (PARALLEL_MODES as readonly string[]).includes(s)) return s as ParallelModeName;
  }
  return 'semi_auto_parallel';
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 1 && (n & (n - 1)) === 0;
}

/** What a checkpoint path holds on disk, for the given format (the resolver's survey). */
export async function inspectCheckpointPath(path: string, format: LoadCkptFormat = 'ckpt'): Promise<CheckpointInfo> {
  const s = await surveyWeights(path, format);
  const kind: CheckpointInfo['kind'] = s.kind !== 'folder' ? s.kind : s.rankFolders.length > 0 ? 'rank-dir' : s.files.length > 0 ? 'complete-dir' : 'empty-dir';
  return { path: s.path, kind, ranks: [...s.rankFolders], missingRank: s.missingRank, files: [...s.files] };
}

// ---------------------------------------------------------------------------------------------
// Loading and checking

/** Load, validate and check a run YAML; never throws for problems in it (they are in the report). */
export async function checkRunConfig(path: string, options: LoadRunConfigOptions = {}): Promise<RunConfigReport> {
  const file = resolve(path);
  const errors: ConfigProblem[] = [];
  const warnings: ConfigProblem[] = [];
  let text: string;
  try {
    const st = await stat(file);
    if (st.size > MAX_YAML_BYTES) {
      throw new InputError(`is ${st.size} bytes; a run YAML over ${MAX_YAML_BYTES} bytes is not accepted`, { file: path });
    }
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (err instanceof InputError) throw err;
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new InputError(`cannot read the run YAML (${code})`, { file: path });
  }
  let located: LocatedYaml;
  try {
    located = loadYamlWithPositions(text, file);
  } catch (err) {
    if (err instanceof YamlSyntaxError) {
      errors.push({ key: '', ...err.position, message: `YAML syntax error: ${err.reason}` });
      return { file, ok: false, errors, warnings, config: null };
    }
    throw err;
  }
  const doc = located.doc;
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    errors.push({ key: '', line: 1, column: 1, message: `the run YAML must be a mapping of keys, got ${describe(doc)}` });
    return { file, ok: false, errors, warnings, config: null };
  }
  const raw = doc as Record<string, unknown>;
  const err = (key: string, message: string): void => {
    errors.push({ key, ...located.locate(key), message });
  };
  const warn = (key: string, message: string): void => {
    warnings.push({ key, ...located.locate(key), message });
  };

  // 1. schema
  const validate = getValidator();
  if (!validate(raw)) schemaErrors(validate.errors ?? [], raw, err);

  // 2. near misses of our keys
  for (const k of Object.keys(raw)) {
    if (MINDFORMERS_TOP_KEYS.has(k)) continue;
    const s = nearMiss(k, RUN_CONFIG_KEYS);
    if (s !== undefined) err(k, `unknown key '${k}'; did you mean '${s}'?`);
  }
  const parallelRaw = objectAt(raw, 'parallel');
  for (const k of Object.keys(parallelRaw)) {
    if (PARALLEL_KEYS.includes(k)) continue;
    const s = nearMiss(k, PARALLEL_KEYS);
    if (s !== undefined) err(`parallel.${k}`, `unknown key '${k}'; did you mean '${s}'?`);
  }

  // 3. typed view
  const baseDir = resolve(options.cwd ?? process.cwd());
  const cfg = buildRunConfig(file, baseDir, raw, text, located, warnings, options.worldSize);

  // 4. cross-field rules
  await crossRules(cfg, raw, options, err, warn);

  return { file, ok: errors.length === 0, errors: sortProblems(errors), warnings: sortProblems(warnings), config: cfg };
}

function sortProblems(ps: ConfigProblem[]): ConfigProblem[] {
  return ps.sort((a, b) => a.line - b.line || a.column - b.column);
}

/**
 * Load a run YAML and check it; throws RunConfigError (InputError, exit 2) listing every problem.
 */
export async function loadRunConfig(path: string, options: LoadRunConfigOptions = {}): Promise<RunConfig> {
  const report = await checkRunConfig(path, options);
  if (!report.ok || report.config === null) throw new RunConfigError(report.file, report.errors);
  return report.config;
}

function schemaErrors(errs: ErrorObject[], raw: Record<string, unknown>, err: (key: string, message: string) => void): void {
  const seen = new Set<string>();
  for (const e of errs) {
    if (e.schemaPath.includes('/anyOf/')) continue; // reported by the anyOf error itself
    let key = pointerToKeyPath(e.instancePath);
    const value = valueAt(raw, e.instancePath);
    let message: string;
    switch (e.keyword) {
      case 'type': {
        const t = (e.params as { type: string | string[] }).type;
        const want = (Array.isArray(t) ? t : [t]).map((x) => TYPE_WORDS[x] ?? x).join(' or ');
        message = `must be ${want}, got ${describe(value)}`;
        if (Array.isArray(t) ? t.includes('boolean') : t === 'boolean') {
          if (typeof value === 'string' && /^(true|false)$/i.test(value)) message += ' (write True or False without quotes)';
        } else if ((t === 'integer' || t === 'number') && typeof value === 'string' && /^\s*-?\d+(\.\d+)?\s*$/.test(value)) {
          message += ' (write the number without quotes)';
        }
        break;
      }
      case 'enum': {
        const allowed = (e.params as { allowedValues: unknown[] }).allowedValues;
        message = `must be one of ${allowed.map((a) => (typeof a === 'string' ? `'${a}'` : String(a))).join(', ')}, got ${describe(value)}`;
        break;
      }
      case 'anyOf':
        message =
          key === 'parallel.parallel_mode'
            ? `must be 0 (data_parallel), 1 (semi_auto_parallel), 2 (auto_parallel), 3 (hybrid_parallel) or 'stand_alone', got ${describe(value)}`
            : `has an invalid value: ${describe(value)}`;
        break;
      case 'minimum':
      case 'exclusiveMinimum': {
        const lim = (e.params as { limit: number }).limit;
        message = `must be ${e.keyword === 'minimum' ? '>=' : '>'} ${lim}, got ${describe(value)}`;
        break;
      }
      case 'minLength':
        message = 'must not be empty';
        break;
      case 'additionalProperties': {
        const extra = (e.params as { additionalProperty: string }).additionalProperty;
        const parentSchemaKeys = Object.keys(
          (e.parentSchema as { properties?: Record<string, unknown> } | undefined)?.properties ?? {},
        );
        key = joinKeyPath(key, extra);
        const s = suggestKey(extra, parentSchemaKeys);
        const where = pointerToKeyPath(e.instancePath);
        message = `unknown key '${extra}' in ${where}` + (s !== undefined ? `; did you mean '${s}'?` : `; allowed: ${parentSchemaKeys.join(', ')}`);
        if (where === 'parallel_config') message += ' (mindformers rejects unknown keys in parallel_config)';
        break;
      }
      default:
        message = e.message ?? 'is invalid';
    }
    const sig = `${key}\u0000${message}`;
    if (seen.has(sig)) continue;
    seen.add(sig);
    err(key, message);
  }
}

function buildRunConfig(
  file: string,
  baseDir: string,
  raw: Record<string, unknown>,
  text: string,
  located: LocatedYaml,
  warnings: ConfigProblem[],
  worldSize: number | undefined,
): RunConfig {
  const pc = objectAt(raw, 'parallel_config');
  const par = objectAt(raw, 'parallel');
  const scc = objectAt(par, 'strategy_ckpt_config');
  const ms = objectAt(raw, 'msckpt');
  const parallelConfig: RunParallelConfig = {
    dataParallel: asPosInt(pc['data_parallel'], 1),
    modelParallel: asPosInt(pc['model_parallel'], 1),
    contextParallel: asPosInt(pc['context_parallel'], 1),
    expertParallel: asPosInt(pc['expert_parallel'], 1),
    pipelineStage: asPosInt(pc['pipeline_stage'], 1),
    microBatchNum: asPosInt(pc['micro_batch_num'], 1),
    vocabEmbDp: asBool(pc['vocab_emb_dp'], true),
    optimizerShard: typeof pc['optimizer_shard'] === 'boolean' ? pc['optimizer_shard'] : null,
    useSeqParallel: asBool(pc['use_seq_parallel'], false),
    gradientAggregationGroup: asPosInt(pc['gradient_aggregation_group'], 4),
  };
  const strategyCkptConfig: RunParallel['strategyCkptConfig'] = {};
  if (typeof scc['save_file'] === 'string') strategyCkptConfig.saveFile = scc['save_file'];
  if (typeof scc['load_file'] === 'string') strategyCkptConfig.loadFile = scc['load_file'];
  if (typeof scc['only_trainable_params'] === 'boolean') strategyCkptConfig.onlyTrainableParams = scc['only_trainable_params'];
  const strategySaveFile =
    strategyCkptConfig.saveFile ?? (typeof par['strategy_ckpt_save_file'] === 'string' ? par['strategy_ckpt_save_file'] : undefined);
  const parallel: RunParallel = {
    parallelMode: parallelModeName(par['parallel_mode'] ?? 1),
    enableParallelOptimizer: asBool(par['enable_parallel_optimizer'], false),
    fullBatch: asBool(par['full_batch'], true),
    strategyCkptConfig,
    strategySaveFile,
  };
  const useParallel = asBool(raw['use_parallel'], false);
  const product =
    parallelConfig.dataParallel * parallelConfig.modelParallel * parallelConfig.contextParallel * parallelConfig.pipelineStage;
  let deviceCount: number | undefined;
  let deviceCountFrom: RunConfig['deviceCountFrom'];
  if (worldSize !== undefined) {
    deviceCount = worldSize;
    deviceCountFrom = 'world-size';
  } else if (useParallel && parallel.parallelMode === 'semi_auto_parallel') {
    deviceCount = product;
    deviceCountFrom = 'layout';
  } else if (!useParallel) {
    deviceCount = 1;
    deviceCountFrom = 'layout';
  }
  const outputDir = asStr(raw['output_dir'], './output') || './output';
  const resume = raw['resume_training'];
  const fmt = raw['load_ckpt_format'];
  return {
    file,
    baseDir,
    raw,
    text,
    outputDir,
    loadCheckpoint: asStr(raw['load_checkpoint'], ''),
    autoTransCkpt: asBool(raw['auto_trans_ckpt'], false),
    srcStrategyPathOrDir: asStr(raw['src_strategy_path_or_dir'], ''),
    onlySaveStrategy: asBool(raw['only_save_strategy'], false),
    transformProcessNum: asPosInt(raw['transform_process_num'], 1),
    transformByRank: asBool(raw['transform_by_rank'], false),
    useParallel,
    loadCkptFormat: fmt === 'safetensors' ? 'safetensors' : 'ckpt',
    resumeTraining: typeof resume === 'boolean' || typeof resume === 'string' ? resume : false,
    npuNumPerNode: typeof raw['npu_num_per_node'] === 'number' && Number.isSafeInteger(raw['npu_num_per_node']) ? raw['npu_num_per_node'] : undefined,
    runMode: typeof raw['run_mode'] === 'string' ? raw['run_mode'] : undefined,
    parallelConfig,
    parallel,
    msckpt: {
      dstStrategy: typeof ms['dst_strategy'] === 'string' && ms['dst_strategy'] !== '' ? ms['dst_strategy'] : undefined,
      barrierTimeout: asPosNum(ms['barrier_timeout']) ?? DEFAULT_BARRIER_TIMEOUT_S,
      heartbeatTimeout: asPosNum(ms['heartbeat_timeout']) ?? DEFAULT_HEARTBEAT_TIMEOUT_S,
      pollInterval: asPosNum(ms['poll_interval']),
      sharedDisk: typeof ms['shared_disk'] === 'boolean' ? ms['shared_disk'] : undefined,
    },
    deviceCount,
    deviceCountFrom,
    source: undefined,
    paths: jobPaths({ outputDir, baseDir, strategySaveFile }),
    warnings,
    locate: (k) => located.locate(k),
  };
}

function divisors(n: number): number[] {
  const out: number[] = [];
  for (let d = 1; d <= n && out.length < 64; d++) if (n % d === 0) out.push(d);
  return out;
}

async function crossRules(
  cfg: RunConfig,
  raw: Record<string, unknown>,
  options: LoadRunConfigOptions,
  err: (key: string, message: string) => void,
  warn: (key: string, message: string) => void,
): Promise<void> {
  const pc = cfg.parallelConfig;
  const mode = cfg.parallel.parallelMode;
  const semi = mode === 'semi_auto_parallel';
  const hasStrategyMode = mode === 'semi_auto_parallel' || mode === 'auto_parallel' || mode === 'hybrid_parallel';
  const converting = cfg.autoTransCkpt;
  const cleaning = cfg.autoTransCkpt || cfg.onlySaveStrategy;
  const checkFiles = options.checkFiles ?? true;
  const ws = options.worldSize;
  const layoutKey = raw['parallel_config'] !== undefined ? 'parallel_config' : '';
  const product = pc.dataParallel * pc.modelParallel * pc.contextParallel * pc.pipelineStage;
  const productText = `data_parallel * model_parallel * context_parallel * pipeline_stage = ${pc.dataParallel}*${pc.modelParallel}*${pc.contextParallel}*${pc.pipelineStage} = ${product}`;

  // npu_num_per_node: a power of two
  if (cfg.npuNumPerNode !== undefined && cfg.npuNumPerNode >= 1 && !isPowerOfTwo(cfg.npuNumPerNode)) {
    err('npu_num_per_node', `must be a power of 2 (1, 2, 4, 8, 16, ...), got ${cfg.npuNumPerNode}`);
  }

  // the layout against the device count
  if (ws !== undefined && cfg.useParallel) {
    if (semi && product !== ws) {
      err(
        layoutKey,
        `${productText} must equal the device count ${ws} in semi_auto_parallel mode (mindformers: "dp*mp*cp*pp should be equal to device_num")`,
      );
    } else if (!semi && hasStrategyMode && product > ws) {
      err(layoutKey, `${productText} is more than the device count ${ws}`);
    }
  }
  const pipelineStages = objectAt(raw, 'parallel')['pipeline_stages'];
  if (typeof pipelineStages === 'number' && raw['parallel_config'] !== undefined && pipelineStages !== pc.pipelineStage) {
    err('parallel.pipeline_stages', `is ${pipelineStages} but parallel_config.pipeline_stage is ${pc.pipelineStage}; they must agree`);
  }

  // transform_process_num divides the device count
  const dc = cfg.deviceCount;
  if (converting && dc !== undefined && raw['transform_process_num'] !== undefined) {
    const k = cfg.transformProcessNum;
    const from = cfg.deviceCountFrom === 'world-size' ? `the device count ${dc}` : `the device count ${dc} (${cfg.useParallel ? productText : 'use_parallel is False'})`;
    if (k > dc) {
      warn('transform_process_num', `${k} is more than ${from}; ${dc} converters will be used`);
    } else if (dc % k !== 0) {
      err('transform_process_num', `${k} does not divide ${from}; use one of ${divisors(dc).join(', ')}`);
    }
  }
  if (converting && cfg.transformProcessNum > 1 && raw['transform_by_rank'] === false) {
    warn('transform_by_rank', 'is forced to True when transform_process_num > 1');
  }

  // mindformers' own rules (§1.2)
  if ((converting || cfg.resumeTraining !== false) && cfg.loadCheckpoint === '') {
    const m = objectAt(objectAt(raw, 'model'), 'model_config');
    const cnp = m['checkpoint_name_or_path'];
    if (!(typeof cnp === 'string' && cnp !== '')) {
      const which = converting ? 'auto_trans_ckpt' : 'resume_training';
      err(raw['load_checkpoint'] !== undefined ? 'load_checkpoint' : which, `must not be empty when ${which} is True`);
    }
  }
  if (cfg.useParallel && (mode === 'data_parallel' || mode === 'stand_alone') && (converting || cfg.onlySaveStrategy)) {
    err(
      'parallel.parallel_mode',
      `${mode} writes no strategy files, so ${converting ? 'auto_trans_ckpt' : 'only_save_strategy'} cannot work; use semi_auto_parallel (1) or auto_parallel (2)`,
    );
  }
  const runner = objectAt(raw, 'runner_config');
  if (cfg.useParallel && hasStrategyMode && runner['sink_mode'] === false && (cfg.loadCheckpoint !== '' || cfg.onlySaveStrategy)) {
    err('runner_config.sink_mode', 'must be True when distributed loads are sliced weights (semi/auto/hybrid parallel)');
  }
  const modelConfig = objectAt(objectAt(raw, 'model'), 'model_config');
  if (cfg.useParallel && semi && pc.contextParallel > 1 && modelConfig['use_flash_attention'] === false) {
    err('parallel_config.context_parallel', `is ${pc.contextParallel}; context parallel needs model.model_config.use_flash_attention: True`);
  }
  if (cfg.runMode === 'eval' && pc.pipelineStage > 1) {
    err('parallel_config.pipeline_stage', 'pipeline stages are only supported for training; use pipeline_stage: 1 with run_mode eval');
  }
  const remote = raw['remote_save_url'];
  if (typeof remote === 'string' && remote !== '' && !/^(obs|s3):\/\//.test(remote)) {
    err('remote_save_url', `must start with obs:// or s3://, got '${remote}'`);
  }
  if (raw['parallel'] !== undefined && !hasStrategyMode && objectAt(raw, 'parallel')['full_batch'] === true) {
    warn('parallel.full_batch', `is forced to False in ${mode} mode`);
  }
  if (pc.pipelineStage > 1 && objectAt(raw, 'parallel_config')['vocab_emb_dp'] === true) {
    warn('parallel_config.vocab_emb_dp', 'is forced to False when pipeline_stage > 1');
  }
  if (converting && !cfg.useParallel && ws !== undefined && ws > 1) {
    warn('use_parallel', `is False with ${ws} devices: every rank would load the same merged, complete checkpoint`);
  }
  const npn = cfg.npuNumPerNode ?? 8;
  if (cleaning && ws !== undefined && ws > npn && cfg.msckpt.sharedDisk === undefined) {
    warn(
      'output_dir',
      `${ws} devices is more than ${npn} per node: output_dir must be on a disk shared by all nodes (checked at launch), or set msckpt.shared_disk: False to convert per node`,
    );
  }

  // files on disk
  const abs = (p: string): string => resolve(cfg.baseDir, p);
  let source: CheckpointInfo | undefined;
  if (checkFiles && cfg.loadCheckpoint !== '') {
    source = await inspectCheckpointPath(abs(cfg.loadCheckpoint), cfg.loadCkptFormat);
    cfg.source = source;
  }
  const fmt = cfg.loadCkptFormat;
  const ext = fmt === 'ckpt' ? '.ckpt' : '.safetensors';
  if (source !== undefined && !cfg.onlySaveStrategy) {
    const lc = `'${cfg.loadCheckpoint}'`;
    if (source.kind === 'missing') {
      err('load_checkpoint', `${lc} does not exist (resolved to ${source.path})`);
    } else if (fmt === 'ckpt') {
      if (source.kind === 'file' && !source.path.endsWith('.ckpt')) {
        err('load_checkpoint', `${lc} must be a folder or a file with suffix '.ckpt'`);
      } else if (source.kind === 'empty-dir') {
        err('load_checkpoint', `no rank_0 folder and no ${ext} files under ${lc}`);
      }
    } else {
      // §2.7 safetensors rules
      if (source.kind === 'file' && cfg.useParallel) {
        err('load_checkpoint', `${lc} is a single file and use_parallel is True; give the folder holding only this file instead`);
      } else if (source.kind === 'complete-dir' && cfg.useParallel && !converting) {
        err('load_checkpoint', `${lc} holds complete weights and use_parallel is True; set auto_trans_ckpt: True to slice them automatically`);
      } else if (source.kind === 'rank-dir' && !cfg.useParallel) {
        err('load_checkpoint', `${lc} holds rank folders; set use_parallel: True to load distributed weights`);
      } else if (source.kind === 'empty-dir') {
        err('load_checkpoint', `no valid checkpoint files found under ${lc} (expected *.safetensors or rank_N folders)`);
      }
    }
    if (source.kind === 'rank-dir') {
      if (source.missingRank !== undefined) {
        err('load_checkpoint', `rank_${source.missingRank} folder not found under ${lc}; rank folders must be rank_0 .. rank_${source.ranks.length - 1} without gaps`);
      }
      if (source.files.length > 0 && converting) {
        warn('load_checkpoint', `${lc} holds both ${ext} files and rank folders; the rank folders are used`);
      }
      const sliced = source.ranks.length > 1;
      if (converting && sliced && cfg.srcStrategyPathOrDir === '') {
        const fallback = join(dirname(source.path), 'strategy');
        if (fmt === 'safetensors' && existsSync(fallback)) {
          warn('load_checkpoint', `src_strategy_path_or_dir is not set; using ${fallback}`);
        } else {
          err(
            raw['src_strategy_path_or_dir'] !== undefined ? 'src_strategy_path_or_dir' : 'load_checkpoint',
            `${lc} is sliced into ${source.ranks.length} rank folders; set src_strategy_path_or_dir to the strategy file or strategy folder of the run that wrote it`,
          );
        }
      }
      if (!converting && cfg.useParallel && ws !== undefined && fmt === 'ckpt' && source.ranks.length !== ws && source.missingRank === undefined) {
        err(
          'load_checkpoint',
          `${lc} holds ${source.ranks.length} rank folders but the job has ${ws} devices; set auto_trans_ckpt: True to convert them`,
        );
      }
    } else if ((source.kind === 'file' || source.kind === 'complete-dir') && converting && cfg.srcStrategyPathOrDir !== '') {
      warn('src_strategy_path_or_dir', 'is ignored: load_checkpoint holds complete weights');
    }
    if (typeof cfg.resumeTraining === 'string' && source.kind === 'file') {
      warn('resume_training', 'names a checkpoint file but load_checkpoint is a file; it is treated as True');
    }
  }
  if (checkFiles && cfg.srcStrategyPathOrDir !== '' && converting) {
    const sp = abs(cfg.srcStrategyPathOrDir);
    let st;
    try {
      st = await stat(sp);
    } catch {
      st = undefined;
    }
    if (st === undefined) {
      err('src_strategy_path_or_dir', `'${cfg.srcStrategyPathOrDir}' does not exist (resolved to ${sp})`);
    } else if (fmt === 'safetensors' && !st.isDirectory() && source?.kind === 'rank-dir') {
      err('src_strategy_path_or_dir', 'must be a folder holding the strategy files when loading sliced safetensors');
    }
  }
  if (checkFiles && cfg.msckpt.dstStrategy !== undefined && !existsSync(abs(cfg.msckpt.dstStrategy))) {
    err('msckpt.dst_strategy', `'${cfg.msckpt.dstStrategy}' does not exist (resolved to ${abs(cfg.msckpt.dstStrategy)})`);
  }

  // outputs that are emptied may not be, contain or lie inside what the run reads
  if (cleaning) {
    const outs: Array<[string, string]> = [
      ['output_dir/strategy', cfg.paths.strategyDir],
      ['output_dir/transformed_checkpoint', cfg.paths.transformedDir],
    ];
    const inputs: Array<[string, string]> = [];
    if (cfg.loadCheckpoint !== '') inputs.push(['load_checkpoint', cfg.loadCheckpoint]);
    if (cfg.srcStrategyPathOrDir !== '') inputs.push(['src_strategy_path_or_dir', cfg.srcStrategyPathOrDir]);
    if (cfg.msckpt.dstStrategy !== undefined) inputs.push(['msckpt.dst_strategy', cfg.msckpt.dstStrategy]);
    for (const [key, value] of inputs) {
      const ci = await canonicalPath(value, cfg.baseDir);
      for (const [oname, opath] of outs) {
        const co = await canonicalPath(opath, cfg.baseDir);
        let rel: string | null = null;
        if (ci === co) rel = 'is';
        else if (isSameOrInsideCanonical(ci, co)) rel = 'lies inside';
        else if (isSameOrInsideCanonical(co, ci)) rel = 'contains';
        if (rel !== null) {
          err(
            key,
            `'${value}' ${rel} ${oname} (${co}), which msckpt empties before ${converting ? 'converting' : 'saving strategies'}; ` +
              'move it elsewhere or set a different output_dir',
          );
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Derived YAML

function setPath(obj: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.');
  let cur = obj;
  for (let i = 0; i < parts.length - 1; i++) {
    const p = parts[i]!;
    const next = cur[p];
    if (next === null || typeof next !== 'object' || Array.isArray(next)) cur[p] = {};
    cur = cur[p] as Record<string, unknown>;
  }
  const last = parts[parts.length - 1]!;
  if (value === undefined) delete cur[last];
  else cur[last] = value;
}

function scalarYaml(v: unknown): string | null {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (typeof v === 'number' && Number.isSafeInteger(v)) return String(v);
  if (typeof v === 'string') return JSON.stringify(v);
  return null;
}

function renderTopLevel(key: string, value: unknown): string {
  const s = scalarYaml(value);
  if (s !== null) return `${key}: ${s}`;
  return yaml.dump({ [key]: value }, { lineWidth: -1, noRefs: true }).replace(/\n+$/, '');
}

/**
 * YAML text for a derived run: the user's document with `overrides` applied (dotted key paths;
 * `undefined` removes a key), every other key kept. The user's text is patched where the
 * document allows it (comments and layout survive), else the document is re-dumped. The caller
 * writes it (atomically, next to the outputs); the user's YAML is never modified.
 */
export function deriveRunConfig(cfg: Pick<RunConfig, 'raw' | 'text' | 'file'>, overrides: Record<string, unknown>): string {
  const expected = structuredClone(cfg.raw);
  for (const [k, v] of Object.entries(overrides)) setPath(expected, k, v);
  const header = `# Derived by msckpt from ${cfg.file}; changed: ${Object.keys(overrides).join(', ') || 'nothing'}. Regenerated at every launch.\n`;

  const patched = patchText(cfg.text, cfg.file, expected, Object.keys(overrides));
  if (patched !== null) return header + patched;
  return header + yaml.dump(expected, { lineWidth: -1, noRefs: true });
}

function patchText(text: string, file: string, expected: Record<string, unknown>, keys: string[]): string | null {
  let located: LocatedYaml;
  try {
    located = loadYamlWithPositions(text, file);
  } catch {
    return null;
  }
  if (located.topLevel.some((t) => t.column0 !== 0)) return null;
  const eol = text.includes('\r\n') ? '\r\n' : '\n';
  const lines = text.split(/\r?\n/);
  const tops = located.topLevel;
  const touched = new Set(keys.map((k) => k.split('.')[0]!));
  // line ranges of each top-level entry: [start, end) without trailing blank/comment lines
  const ranges = new Map<string, [number, number]>();
  for (let i = 0; i < tops.length; i++) {
    const start = tops[i]!.line0;
    let end = i + 1 < tops.length ? tops[i + 1]!.line0 : lines.length;
    while (end > start + 1 && /^\s*(#.*)?$/.test(lines[end - 1]!)) end--;
    if (ranges.has(tops[i]!.key)) return null; // duplicate keys: let the dump handle it
    ranges.set(tops[i]!.key, [start, end]);
  }
  const replacement = new Map<number, { end: number; text: string | null }>();
  const appended: string[] = [];
  for (const top of touched) {
    const r = ranges.get(top);
    const has = Object.prototype.hasOwnProperty.call(expected, top);
    const newText = has ? renderTopLevel(top, expected[top]) : null;
    if (r === undefined) {
      if (newText !== null) appended.push(newText);
    } else {
      replacement.set(r[0], { end: r[1], text: newText });
    }
  }
  const out: string[] = [];
  for (let i = 0; i < lines.length; ) {
    const rep = replacement.get(i);
    if (rep !== undefined) {
      if (rep.text !== null) out.push(...rep.text.split('\n'));
      i = rep.end;
    } else {
      out.push(lines[i]!);
      i++;
    }
  }
  while (out.length > 0 && out[out.length - 1] === '') out.pop();
  out.push(...appended.flatMap((a) => a.split('\n')));
  const result = out.join(eol) + eol;
  try {
    if (!isDeepStrictEqual(yaml.load(result), expected)) return null;
  } catch {
    return null;
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Summary

export interface RunConfigSummary {
  /** What `msckpt launch` would do with this YAML. */
  mode: 'passthrough' | 'convert' | 'strategy-only';
  deviceCount: number | undefined;
  layout: string;
  source: string;
  /** Converter ranks and the destination slices each writes, [from, to). */
  converters: Array<{ rank: number; from: number; to: number }>;
  /** Folders emptied at start. */
  cleans: string[];
  /** Where this job's strategy comes from. */
  strategy: string;
  /** Keys the derived training YAML changes. */
  derived: Record<string, unknown>;
}

/** The converter ranks `0, W/K, 2W/K, ...` and their slices (spec §3.1); K is clamped to W. */
export function converterRanks(worldSize: number, transformProcessNum: number): Array<{ rank: number; from: number; to: number }> {
  const k = Math.min(Math.max(1, transformProcessNum), worldSize);
  const step = Math.floor(worldSize / k);
  const out: Array<{ rank: number; from: number; to: number }> = [];
  for (let r = 0; r < worldSize; r += step) out.push({ rank: r, from: r, to: Math.min(r + step, worldSize) });
  return out;
}

function describeSource(cfg: RunConfig): string {
  if (cfg.loadCheckpoint === '') return 'none (load_checkpoint is empty)';
  const s = cfg.source;
  if (s === undefined) return `'${cfg.loadCheckpoint}' (not inspected)`;
  switch (s.kind) {
    case 'missing':
      return `'${cfg.loadCheckpoint}' (missing)`;
    case 'file':
      return `complete ${cfg.loadCkptFormat} file ${s.path}`;
    case 'complete-dir':
      return `${s.files.length} complete ${cfg.loadCkptFormat} file(s) in ${s.path}`;
    case 'rank-dir':
      return s.ranks.length === 1 ? `complete checkpoint in ${s.path}/rank_0` : `${s.ranks.length} slices (rank_0..rank_${s.ranks.length - 1}) in ${s.path}`;
    case 'empty-dir':
      return `empty folder ${s.path}`;
  }
}

/**
 * The `<name>` folders conversion writes under output_dir/transformed_checkpoint (spec §2.5): the
 * base name of a rank-folder source, else the stem (text before the first '.') of each complete file.
 */
export function transformedNames(source: CheckpointInfo): string[] {
  const stem = (p: string): string => (p.split(/[\\/]/).pop() ?? p).split('.')[0] ?? p;
  switch (source.kind) {
    case 'rank-dir':
      return [source.path.split(/[\\/]/).pop() ?? 'checkpoint'];
    case 'file':
    case 'complete-dir':
      return source.files.map(stem);
    default:
      return [];
  }
}

/** A short account of what the launcher would do with a checked configuration. */
export function summarizeRunConfig(cfg: RunConfig): RunConfigSummary {
  const pc = cfg.parallelConfig;
  const mode: RunConfigSummary['mode'] = cfg.onlySaveStrategy ? 'strategy-only' : cfg.autoTransCkpt ? 'convert' : 'passthrough';
  const layout = cfg.useParallel
    ? `${cfg.parallel.parallelMode}: dp${pc.dataParallel} mp${pc.modelParallel} cp${pc.contextParallel} pp${pc.pipelineStage}${pc.expertParallel > 1 ? ` ep${pc.expertParallel}` : ''}`
    : 'single device (use_parallel: False)';
  const dc = cfg.deviceCount;
  const converters = mode === 'convert' && dc !== undefined ? converterRanks(cfg.useParallel ? dc : 1, cfg.transformProcessNum) : [];
  const cleans = mode === 'passthrough' ? [] : [cfg.paths.strategyDir, cfg.paths.transformedDir];
  const strategy =
    mode === 'passthrough'
      ? 'not needed'
      : !cfg.useParallel
        ? 'none (merge into one complete checkpoint)'
        : cfg.msckpt.dstStrategy !== undefined
          ? `given: ${resolve(cfg.baseDir, cfg.msckpt.dstStrategy)}`
          : `strategy-only pass writes ${cfg.paths.strategyFile(0).replace(/_rank_0\.ckpt$/, '_rank_R.ckpt')}${pc.pipelineStage > 1 ? `, merged into ${cfg.paths.mergedStrategy}` : ''}`;
  const derived: Record<string, unknown> =
    mode === 'convert'
      ? {
          load_checkpoint:
            cfg.source !== undefined && transformedNames(cfg.source).length === 1
              ? join(cfg.paths.transformedDir, transformedNames(cfg.source)[0]!)
              : cfg.paths.transformedDir,
          auto_trans_ckpt: false,
        }
      : mode === 'strategy-only'
        ? { only_save_strategy: true }
        : {};
  return { mode, deviceCount: dc, layout, source: describeSource(cfg), converters, cleans, strategy, derived };
}

