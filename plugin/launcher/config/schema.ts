/**
 * The keys msckpt reads, how their values are read (as Python reads them: truthiness where
 * mindformers tests truthiness), and schemas/run-config.schema.json (editor help, and the check
 * of msckpt's own `msckpt:` section).
 */
import { readFileSync } from 'node:fs';
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import { packageFile } from '../../package-files.js';
import { parseDuration } from '../../units.js';
import type { ReleaseRules } from './releases.js';
import type { ParallelModeName, RunConfig, RunParallel, RunParallelConfig } from './types.js';
import { joinKeyPath, PyDict, PyFloat, pyFloatRepr, PySet, PyTimestamp, PyTuple } from './pyyaml.js';
import { editDistance } from '../../suggest.js';

/** Top-level keys msckpt reads (problems with them may be refusals; others only warnings). */
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
  'remove_redundancy',
  'remote_save_url',
  'parallel_config',
  'parallel',
  'msckpt',
] as const;

/** Other top-level keys of mindformers configs: never taken for near misses of ours. */
export const MINDFORMERS_TOP_KEYS: ReadonlySet<string> = new Set([
  'seed', 'run_mode', 'use_legacy', 'load_ckpt_async', 'pretrained_model_dir', 'remote_save_url', 'remove_redundancy',
  'micro_batch_interleave_num', 'do_eval', 'eval_step_interval', 'eval_epoch_interval', 'ignore_data_skip', 'data_skip_steps',
  'profile', 'profile_communication', 'profile_memory', 'init_start_profile', 'profile_start_step', 'profile_stop_step',
  'profile_rank_ids', 'profile_pipeline', 'profile_level', 'mstx', 'layer_scale', 'layer_decay', 'lr_scale',
  'lr_scale_factor', 'save_file', 'input_data', 'predict_batch_size', 'adapter_id', 'exclude_cann_cpu',
  'train_precision_sync', 'infer_precision_sync', 'postprocess_use_numpy', 'trainer', 'runner_config', 'runner_wrapper',
  'context', 'model', 'moe_config', 'recompute_config', 'swap_config', 'optimizer', 'lr_schedule', 'metric',
  'train_dataset', 'train_dataset_task', 'eval_dataset', 'eval_dataset_task', 'callbacks', 'eval_callbacks',
  'monitor_config', 'processor', 'model_config', 'checkpoint_name_or_path', 'base_config', 'print_separate_loss',
  'ckpt_use_legacy_format', 'use_legacy_format', 'balanced_load', 'resume_by_last_timestamp_ckpt', 'use_graceful_exit',
  'use_checkpoint_health_monitor', 'mindio_pool_capacity', 'trust_remote_code', 'local_rank', 'device_num',
  ...RUN_CONFIG_KEYS,
]);

/** `parallel:` keys (mindspore.set_auto_parallel_context's), for near misses. */
export const PARALLEL_KEYS = [
  'parallel_mode', 'enable_parallel_optimizer', 'full_batch', 'gradients_mean', 'enable_alltoall', 'search_mode',
  'strategy_ckpt_save_file', 'strategy_ckpt_load_file', 'strategy_ckpt_config', 'pipeline_stages', 'device_num',
  'parallel_optimizer_config', 'pipeline_config', 'dataset_strategy', 'gradient_fp32_sync', 'loss_repeated_mean',
  'comm_fusion', 'auto_pipeline', 'all_reduce_fusion_config', 'global_rank', 'parameter_broadcast', 'group_ckpt_save_file',
  'enable_alltoall', 'auto_parallel_search_mode', 'sharding_propagation',
];

export const DEFAULT_BARRIER_TIMEOUT_S = 7200;
export const DEFAULT_HEARTBEAT_TIMEOUT_S = 60;
/** Largest run YAML read (they are a few KiB). */
export const MAX_YAML_BYTES = 16 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Python's view of values

/** Python's bool(v). */
export function pyTruthy(v: unknown): boolean {
  if (v === null || v === undefined) return false;
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number') return v !== 0;
  if (typeof v === 'bigint') return v !== 0n;
  if (typeof v === 'string') return v.length > 0;
  if (v instanceof PyFloat) return v.value !== 0;
  if (Array.isArray(v)) return v.length > 0;
  if (v instanceof PyDict) return v.entries.length > 0;
  if (v instanceof PySet || v instanceof PyTuple) return v.items.length > 0;
  if (v instanceof Uint8Array) return v.length > 0;
  if (v instanceof PyTimestamp) return true;
  if (typeof v === 'object') return Object.keys(v).length > 0;
  return true;
}

/** A Python int (not bool, not float). */
export function isPyInt(v: unknown): v is number | bigint {
  return (typeof v === 'number' && Number.isInteger(v)) || typeof v === 'bigint';
}

/** What a value is, in the user's words (Python's spelling of values). */
export function describeValue(v: unknown): string {
  if (v === null || v === undefined) return 'nothing (null)';
  if (typeof v === 'string') return `the string '${v}'`;
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (typeof v === 'number') return Number.isInteger(v) ? `${v}` : `the float ${pyFloatRepr(v)}`;
  if (typeof v === 'bigint') return String(v);
  if (v instanceof PyFloat) return `the float ${pyFloatRepr(v.value)}`;
  if (v instanceof PyTimestamp) return `the ${v.kind} ${v.toString()}`;
  if (Array.isArray(v)) return 'a list';
  return 'a mapping';
}

/** A mapping value at `key` of `doc`, else {} (missing, null or not a mapping). */
export function objectAt(doc: Record<string, unknown>, key: string): Record<string, unknown> {
  const v = doc[key];
  return v !== null && typeof v === 'object' && !Array.isArray(v) && Object.getPrototypeOf(v) === Object.prototype
    ? (v as Record<string, unknown>)
    : {};
}

// ---------------------------------------------------------------------------------------------
// Near misses

export { editDistance };

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

/** nearMiss, or a candidate that extends (or is extended by) the key. */
export function suggestKey(key: string, candidates: readonly string[]): string | undefined {
  const s = nearMiss(key, candidates);
  if (s !== undefined || key.length < 5) return s;
  const k = key.toLowerCase();
  return candidates.find((c) => c.startsWith(k) || (k.startsWith(c) && c.length >= 5));
}

// ---------------------------------------------------------------------------------------------
// The JSON schema

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

/** The document as JSON for the schema: floats and big ints as numbers, other Python values as-is. */
function jsonView(v: unknown): unknown {
  if (v instanceof PyFloat) return v.value;
  if (typeof v === 'bigint') return Number(v);
  if (Array.isArray(v)) return v.map(jsonView);
  if (v !== null && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) Object.defineProperty(out, k, { value: jsonView(x), enumerable: true, writable: true, configurable: true });
    return out;
  }
  return v;
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

/** What the schema finds wrong, as `{key, message}` (the caller decides error or warning). */
export function schemaFindings(doc: Record<string, unknown>): Array<{ key: string; message: string }> {
  const validate = getValidator();
  const view = jsonView(doc) as Record<string, unknown>;
  if (validate(view)) return [];
  const out: Array<{ key: string; message: string }> = [];
  const seen = new Set<string>();
  for (const e of validate.errors ?? []) {
    const f = schemaFinding(e, doc);
    if (f === null) continue;
    const sig = `${f.key}\u0000${f.message}`;
    if (seen.has(sig)) continue;
    seen.add(sig);
    out.push(f);
  }
  return out;
}

function schemaFinding(e: ErrorObject, doc: Record<string, unknown>): { key: string; message: string } | null {
  if (e.schemaPath.includes('/anyOf/')) return null; // reported by the anyOf error itself
  let key = pointerToKeyPath(e.instancePath);
  const value = valueAt(doc, e.instancePath);
  let message: string;
  switch (e.keyword) {
    case 'type': {
      const t = (e.params as { type: string | string[] }).type;
      const want = (Array.isArray(t) ? t : [t]).map((x) => TYPE_WORDS[x] ?? x).join(' or ');
      message = `must be ${want}, got ${describeValue(value)}`;
      if (Array.isArray(t) ? t.includes('boolean') : t === 'boolean') {
        if (typeof value === 'string' && /^(true|false)$/i.test(value)) message += ' (write True or False without quotes)';
      } else if ((t === 'integer' || t === 'number') && typeof value === 'string' && /^\s*-?\d+(\.\d+)?\s*$/.test(value)) {
        message += ' (write the number without quotes)';
      }
      break;
    }
    case 'enum': {
      const allowed = (e.params as { allowedValues: unknown[] }).allowedValues;
      message = `must be one of ${allowed.map((a) => (typeof a === 'string' ? `'${a}'` : String(a))).join(', ')}, got ${describeValue(value)}`;
      break;
    }
    case 'anyOf':
      message = `has an invalid value: ${describeValue(value)}`;
      if (/^msckpt\.\w+_(timeout|interval)$/.test(key) && (typeof value === 'string' || typeof value === 'number')) {
        // a duration: say what is expected, as the flags do
        try {
          parseDuration(value, key);
        } catch (err) {
          message = (err as Error).message.replace(`${key}: `, '');
        }
      }
      break;
    case 'minimum':
    case 'exclusiveMinimum': {
      const lim = (e.params as { limit: number }).limit;
      message = `must be ${e.keyword === 'minimum' ? '>=' : '>'} ${lim}, got ${describeValue(value)}`;
      break;
    }
    case 'minLength':
      message = 'must not be empty';
      break;
    case 'additionalProperties': {
      const extra = (e.params as { additionalProperty: string }).additionalProperty;
      const parentSchemaKeys = Object.keys((e.parentSchema as { properties?: Record<string, unknown> } | undefined)?.properties ?? {});
      key = joinKeyPath(key, extra);
      const s = suggestKey(extra, parentSchemaKeys);
      const where = pointerToKeyPath(e.instancePath);
      message = `unknown key '${extra}' in ${where}` + (s !== undefined ? `; did you mean '${s}'?` : `; allowed: ${parentSchemaKeys.join(', ')}`);
      break;
    }
    default:
      message = e.message ?? 'is invalid';
  }
  return { key, message };
}

// ---------------------------------------------------------------------------------------------
// The typed reading

/** The mode a `parallel.parallel_mode` value maps to in mindformers' PARALLEL_MODE (any release), Python equality. */
export function parallelModeOf(v: unknown, accepted: ReadonlyArray<string | number>): ParallelModeName | undefined {
  const names: Record<string, ParallelModeName> = {
    DATA_PARALLEL: 'data_parallel', SEMI_AUTO_PARALLEL: 'semi_auto_parallel', AUTO_PARALLEL: 'auto_parallel',
    HYBRID_PARALLEL: 'hybrid_parallel', STAND_ALONE: 'stand_alone', MANUAL_PARALLEL: 'manual_parallel',
  };
  const byNumber: ParallelModeName[] = ['data_parallel', 'semi_auto_parallel', 'auto_parallel', 'hybrid_parallel'];
  // a dict lookup: True == 1 and 1.0 == 1 hash alike; strings are compared exactly
  let n: number | undefined;
  if (typeof v === 'boolean') n = v ? 1 : 0;
  else if (typeof v === 'number') n = v;
  else if (v instanceof PyFloat) n = v.value;
  if (n !== undefined) return accepted.includes(n) ? byNumber[n] : undefined;
  if (typeof v === 'string') return accepted.includes(v) ? names[v] : undefined;
  return undefined;
}

function posIntOr(v: unknown, dflt: number): number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 1 ? v : dflt;
}

/** The typed fields of a run configuration, read from the effective document as `rules` reads them. */
export function readRunConfig(doc: Record<string, unknown>, rules: ReleaseRules): Omit<
  RunConfig,
  'file' | 'baseDir' | 'raw' | 'effective' | 'text' | 'release' | 'mode' | 'modeReason' | 'deviceCount' | 'deviceCountFrom' | 'source' | 'paths' | 'warnings' | 'locate' | 'srcStrategy' | 'loadCheckpointFrom'
> {
  const pc = objectAt(doc, 'parallel_config');
  const par = objectAt(doc, 'parallel');
  const scc = objectAt(par, 'strategy_ckpt_config');
  const ms = objectAt(doc, 'msckpt');
  const parallelConfig: RunParallelConfig = {
    dataParallel: posIntOr(pc['data_parallel'], 1),
    modelParallel: posIntOr(pc['model_parallel'], 1),
    contextParallel: posIntOr(pc['context_parallel'], 1),
    expertParallel: posIntOr(pc['expert_parallel'], 1),
    pipelineStage: posIntOr(pc['pipeline_stage'], 1),
    microBatchNum: posIntOr(pc['micro_batch_num'], 1),
    vocabEmbDp: 'vocab_emb_dp' in pc ? pyTruthy(pc['vocab_emb_dp']) : true,
    optimizerShard: typeof pc['optimizer_shard'] === 'boolean' ? pc['optimizer_shard'] : null,
    useSeqParallel: pyTruthy(pc['use_seq_parallel']),
    gradientAggregationGroup: posIntOr(pc['gradient_aggregation_group'], 4),
  };
  const strategyCkptConfig: RunParallel['strategyCkptConfig'] = {};
  if (typeof scc['save_file'] === 'string') strategyCkptConfig.saveFile = scc['save_file'];
  if (typeof scc['load_file'] === 'string') strategyCkptConfig.loadFile = scc['load_file'];
  if (typeof scc['only_trainable_params'] === 'boolean') strategyCkptConfig.onlyTrainableParams = scc['only_trainable_params'];
  const strategySaveFile =
    strategyCkptConfig.saveFile ?? (typeof par['strategy_ckpt_save_file'] === 'string' ? par['strategy_ckpt_save_file'] : undefined);
  const useParallel = pyTruthy(doc['use_parallel']);
  // absent: r1.3.0 defaults to 'SEMI_AUTO_PARALLEL', the template of later releases to 1
  const modeRaw = 'parallel_mode' in par ? par['parallel_mode'] : 1;
  const parallelMode = parallelModeOf(modeRaw, rules.parallelModes);
  const parallel: RunParallel = {
    parallelMode,
    parallelModeRaw: modeRaw,
    effectiveMode: useParallel ? (parallelMode === 'manual_parallel' ? 'stand_alone' : parallelMode) : 'stand_alone',
    enableParallelOptimizer: pyTruthy(par['enable_parallel_optimizer']),
    fullBatch: 'full_batch' in par ? pyTruthy(par['full_batch']) : true,
    strategyCkptConfig,
    strategySaveFile,
  };
  const outputDir = typeof doc['output_dir'] === 'string' && doc['output_dir'] !== '' ? doc['output_dir'] : './output';
  const resume = doc['resume_training'];
  const fmt = doc['load_ckpt_format'];
  const tpn = doc['transform_process_num'];
  const npn = doc['npu_num_per_node'];
  const version = ms['mindformers_version'];
  return {
    outputDir,
    loadCheckpoint: typeof doc['load_checkpoint'] === 'string' ? doc['load_checkpoint'] : '',
    autoTransCkpt: doc['auto_trans_ckpt'] === true,
    srcStrategyPathOrDir: typeof doc['src_strategy_path_or_dir'] === 'string' && doc['src_strategy_path_or_dir'] !== 'None' ? doc['src_strategy_path_or_dir'] : '',
    onlySaveStrategy: pyTruthy(doc['only_save_strategy']),
    // TransformCkpt: `transform_process_num or 1`
    transformProcessNum: isPyInt(tpn) && Number(tpn) >= 1 ? Number(tpn) : 1,
    transformByRank: pyTruthy(doc['transform_by_rank']),
    useParallel,
    loadCkptFormat: rules.readsLoadCkptFormat && fmt === 'safetensors' ? 'safetensors' : 'ckpt',
    resumeTraining: typeof resume === 'string' ? resume : pyTruthy(resume),
    removeRedundancy: rules.removeRedundancy && pyTruthy(doc['remove_redundancy']),
    npuNumPerNode: isPyInt(npn) && Number(npn) >= 1 ? Number(npn) : undefined,
    runMode: typeof doc['run_mode'] === 'string' ? doc['run_mode'] : undefined,
    parallelConfig,
    parallel,
    msckpt: {
      dstStrategy: typeof ms['dst_strategy'] === 'string' && ms['dst_strategy'] !== '' ? ms['dst_strategy'] : undefined,
      barrierTimeout: durationSeconds(ms['barrier_timeout']) ?? DEFAULT_BARRIER_TIMEOUT_S,
      heartbeatTimeout: durationSeconds(ms['heartbeat_timeout']) ?? DEFAULT_HEARTBEAT_TIMEOUT_S,
      joinTimeout: durationSeconds(ms['join_timeout']),
      pollInterval: durationSeconds(ms['poll_interval']),
      sharedDisk: typeof ms['shared_disk'] === 'boolean' ? ms['shared_disk'] : undefined,
      mindformersVersion: versionText(version),
    },
  };
}

/** `msckpt.mindformers_version` as text (PyYAML reads `1.5` as a float). */
export function versionText(v: unknown): string | undefined {
  if (typeof v === 'string' && v.trim() !== '') return v.trim();
  if (typeof v === 'number' && !Number.isInteger(v)) return pyFloatRepr(v);
  return undefined;
}

/** A duration key of `msckpt:` in seconds (bare number = seconds, or `500ms`/`2s`/`10m`/`1h`), undefined when absent or unreadable. */
export function durationSeconds(v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  const value = v instanceof PyFloat ? v.value : v;
  if (typeof value !== 'number' && typeof value !== 'string') return undefined;
  try {
    return parseDuration(value, 'msckpt') / 1000;
  } catch {
    return undefined;
  }
}
