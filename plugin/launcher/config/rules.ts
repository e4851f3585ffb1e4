/**
 * The rules a run YAML is judged by, and what `launch` does with it.
 *
 * One rule for refusing: a problem is an error (exit 2) only where mindformers itself refuses
 * the file at start-up in the release that applies (every covered release when the version is
 * unknown), on a key msckpt reads, or where msckpt's own work (converting, collecting
 * strategies) cannot be done. Everything else is a warning. Keys msckpt does not read are never
 * a reason to refuse, even where mindformers would refuse them (it then says so itself).
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { findOverlaps, type NamedPath } from '../../real-paths.js';
import { releaseNames, type ReleaseChoice, type ReleaseRules } from './releases.js';
import {
  describeValue, isPyInt, MINDFORMERS_TOP_KEYS, nearMiss, objectAt, PARALLEL_KEYS, pyTruthy, RUN_CONFIG_KEYS,
} from './schema.js';
import { inspectCheckpointPath } from './inspect.js';
import { PyFloat } from './pyyaml.js';
import type { CheckpointInfo, ConfigProblem, LaunchMode, RunConfig } from './types.js';

type Env = Readonly<Record<string, string | undefined>>;

/** Collects errors and warnings at their positions. */
export class ProblemLog {
  readonly errors: ConfigProblem[] = [];
  readonly warnings: ConfigProblem[] = [];
  constructor(
    private readonly locate: (key: string) => { line: number; column: number },
    private readonly choice: ReleaseChoice,
  ) {}

  err(key: string, message: string): void {
    this.errors.push({ key, ...this.locate(key), message });
  }

  warn(key: string, message: string): void {
    this.warnings.push({ key, ...this.locate(key), message });
  }

  /**
   * A start-up refusal of mindformers: `test` says, per release, why it refuses (or undefined).
   * An error when every release that may apply refuses and the key is one msckpt reads; else a
   * warning naming the releases that refuse.
   */
  refusal(key: string, test: (r: ReleaseRules) => string | undefined, owned = true): void {
    const cands = this.choice.candidates;
    const hits = cands.map((r) => ({ r, why: test(r) })).filter((h): h is { r: ReleaseRules; why: string } => h.why !== undefined);
    if (hits.length === 0) return;
    const why = hits[hits.length - 1]!.why;
    const all = hits.length === cands.length;
    const who = all
      ? cands.length === 1
        ? `mindformers ${cands[0]!.name}`
        : 'every mindformers release'
      : `mindformers ${releaseNames(hits.map((h) => h.r))}`;
    const verb = all && cands.length !== 1 ? 'refuses' : hits.length === 1 ? 'refuses' : 'refuse';
    if (all && owned) this.err(key, `${why} (${who} ${verb} this at start-up)`);
    else this.warn(key, `${why} (${who} ${verb} this at start-up${all ? '' : `; ${releaseNames(cands.filter((c) => !hits.some((h) => h.r === c)))} ${cands.length - hits.length === 1 ? 'accepts' : 'accept'} it`})`);
  }
}

// ---------------------------------------------------------------------------------------------
// What launch does

/** The YAML spelling of a stand-alone mode (the safetensors loader compares it with 'STAND_ALONE'). */
function isStandAloneSpelling(v: unknown): boolean {
  return v === 'STAND_ALONE' || v === 'MANUAL_PARALLEL';
}

/** What `msckpt launch` does with a configuration, and one line saying why. */
export function launchMode(
  cfg: Pick<RunConfig, 'autoTransCkpt' | 'onlySaveStrategy' | 'useParallel' | 'loadCkptFormat' | 'parallel'>,
  rules: ReleaseRules,
): { mode: LaunchMode; reason: string } {
  if (!cfg.autoTransCkpt && !cfg.onlySaveStrategy) {
    return { mode: 'passthrough', reason: 'auto_trans_ckpt is not True and only_save_strategy is not set: the training command runs on your YAML unchanged' };
  }
  if (cfg.onlySaveStrategy) {
    return { mode: 'strategy-only', reason: 'only_save_strategy: a dry run that collects the strategies, prints the conversion plan and exits 0' };
  }
  if (cfg.useParallel && isStandAloneSpelling(cfg.parallel.parallelModeRaw) && cfg.loadCkptFormat === 'safetensors' && rules.standAloneLoadTimeSlicing) {
    return {
      mode: 'handover',
      reason:
        `${String(cfg.parallel.parallelModeRaw)} inference with use_parallel, auto_trans_ckpt and safetensors: mindformers (${rules.name}) ` +
        'slices the weights itself while loading; handed over unchanged (no strategy pass, no barrier, no conversion)',
    };
  }
  return { mode: 'convert', reason: 'auto_trans_ckpt: msckpt converts load_checkpoint to this job\'s layout once, then trains on a derived YAML' };
}

// ---------------------------------------------------------------------------------------------
// load_checkpoint as mindformers settles it

/**
 * The checkpoint mindformers loads: load_checkpoint; else (r1.6.0+) pretrained_model_dir when it
 * holds *.safetensors (`hasSafetensors` undefined: files not looked at, taken as holding them);
 * else model.model_config.checkpoint_name_or_path where mindformers falls back to it
 * (eval/predict with a null load_checkpoint, or an absent one in r1.3.0, which fills no defaults).
 */
export function settledLoadCheckpoint(
  doc: Record<string, unknown>,
  rules: ReleaseRules,
  hasSafetensors?: (dir: string) => boolean,
): { value: string; from: RunConfig['loadCheckpointFrom'] } {
  const lc = doc['load_checkpoint'];
  if (typeof lc === 'string' && lc !== '') return { value: lc, from: 'load_checkpoint' };
  const pretrained = doc['pretrained_model_dir'];
  if (rules.pretrainedModelDir && typeof pretrained === 'string' && pretrained !== '' && (hasSafetensors === undefined || hasSafetensors(pretrained))) {
    return { value: pretrained, from: 'pretrained_model_dir' };
  }
  const runMode = doc['run_mode'];
  const cnp = objectAt(objectAt(doc, 'model'), 'model_config')['checkpoint_name_or_path'];
  const evalOrPredict = runMode === 'eval' || runMode === 'predict';
  const nullish = lc === null || (lc === undefined && !rules.fillsDefaults);
  if (evalOrPredict && nullish && typeof cnp === 'string' && cnp !== '' && (pyTruthy(doc['auto_trans_ckpt']) || pyTruthy(doc['resume_training']))) {
    return { value: cnp, from: 'checkpoint_name_or_path' };
  }
  return { value: '', from: 'load_checkpoint' };
}

// ---------------------------------------------------------------------------------------------
// The rules

export interface RuleOptions {
  worldSize: number | undefined;
  checkFiles: boolean;
  env: Env;
  /** Keys the training command sets (run_mindformer.py flags), for messages. */
  commandKeys?: readonly string[] | undefined;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 1 && (n & (n - 1)) === 0;
}

function divisors(n: number): number[] {
  const out: number[] = [];
  for (let d = 1; d <= n && out.length < 64; d++) if (n % d === 0) out.push(d);
  return out;
}

function positiveIntProblem(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'boolean' || v instanceof PyFloat || (typeof v === 'number' && !Number.isInteger(v))) return `must be a positive integer, got ${describeValue(v)}`;
  if (!isPyInt(v)) return `must be a positive integer, got ${describeValue(v)}`;
  if (Number(v) < 1) return `must be a positive integer, got ${String(v)}`;
  return undefined;
}

/** Apply every rule to a typed configuration; problems go to `log`. May look at files (options.checkFiles). */
export async function applyRules(cfg: RunConfig, doc: Record<string, unknown>, log: ProblemLog, opts: RuleOptions): Promise<void> {
  const rules = cfg.release.rules;
  const ws = opts.worldSize;
  const pc = cfg.parallelConfig;
  const par = objectAt(doc, 'parallel');
  const pcRaw = objectAt(doc, 'parallel_config');
  const mode = cfg.mode;
  const working = mode === 'convert' || mode === 'strategy-only';
  const converting = mode === 'convert';

  // ---- types mindformers checks at start-up (every release)
  const ati = doc['auto_trans_ckpt'];
  if (ati !== undefined && ati !== null && typeof ati !== 'boolean') {
    log.refusal('auto_trans_ckpt', () => `must be True or False, got ${describeValue(ati)}${typeof ati === 'string' && /^(true|false)$/i.test(ati) ? ' (write True or False without quotes)' : ''}`);
  }
  const rt = doc['resume_training'];
  if (rt !== undefined && rt !== null && typeof rt !== 'boolean' && typeof rt !== 'string') {
    log.refusal('resume_training', () => `must be True or False or a string, got ${describeValue(rt)}`);
  }
  const od = doc['output_dir'];
  if (od !== undefined && od !== null && typeof od !== 'string') log.refusal('output_dir', () => `must be a string, got ${describeValue(od)}`);
  const lc = doc['load_checkpoint'];
  if (lc !== undefined && lc !== null && typeof lc !== 'string' && pyTruthy(lc)) {
    log.refusal('load_checkpoint', () => `must be a string (a path), got ${describeValue(lc)}`);
  }
  for (const [k, v] of [['use_parallel', doc['use_parallel']], ['only_save_strategy', doc['only_save_strategy']], ['transform_by_rank', doc['transform_by_rank']]] as const) {
    if (v !== undefined && v !== null && typeof v !== 'boolean') {
      log.warn(k, `is ${describeValue(v)}, not True or False; mindformers tests its truth, so it counts as ${pyTruthy(v) ? 'True' : 'False'}`);
    }
  }

  // ---- run_mode (not ours: warnings)
  const runMode = doc['run_mode'];
  // absent: usually given on the command line (run_mindformer.py --run_mode)
  if (runMode !== undefined) {
    log.refusal('run_mode', (r) => (typeof runMode === 'string' && r.runModes.includes(runMode) ? undefined : `must be one of ${r.runModes.join(', ')}, got ${describeValue(runMode)}`), false);
  }

  // ---- parallel.parallel_mode: checked whatever use_parallel says
  const pmRaw = cfg.parallel.parallelModeRaw;
  log.refusal('parallel.parallel_mode', (r) => {
    const ok = ['boolean', 'number'].includes(typeof pmRaw) || pmRaw instanceof PyFloat
      ? r.parallelModes.includes(typeof pmRaw === 'boolean' ? Number(pmRaw) : Number(pmRaw instanceof PyFloat ? pmRaw.value : pmRaw))
      : typeof pmRaw === 'string' && r.parallelModes.includes(pmRaw);
    if (ok) return undefined;
    const hint = typeof pmRaw === 'string' && r.parallelModes.includes(pmRaw.toUpperCase()) ? ` (write '${pmRaw.toUpperCase()}'; the names are case-sensitive)` : '';
    return `must be one of ${r.parallelModes.map((m) => (typeof m === 'string' ? `'${m}'` : String(m))).join(', ')}, got ${describeValue(pmRaw)}${hint}`;
  });

  // ---- parallel_config: positive ints (every release), keys (per release; not ours)
  const pcVal = doc['parallel_config'];
  if (pcVal !== undefined && pcVal !== null && Object.getPrototypeOf(pcVal) !== Object.prototype) {
    log.refusal('parallel_config', () => `must be a mapping, got ${describeValue(pcVal)}`);
  }
  for (const k of ['data_parallel', 'model_parallel', 'context_parallel', 'expert_parallel', 'pipeline_stage', 'micro_batch_num']) {
    const p = positiveIntProblem(pcRaw[k]);
    if (p !== undefined) log.refusal(`parallel_config.${k}`, () => p, k !== 'micro_batch_num');
  }
  for (const k of Object.keys(pcRaw)) {
    log.refusal(
      `parallel_config.${k}`,
      (r) => {
        if (r.parallelConfigKeys.includes(k)) return undefined;
        const s = nearMiss(k, r.parallelConfigKeys);
        return `unknown key '${k}' in parallel_config${s !== undefined ? `; did you mean '${s}'?` : ''}`;
      },
      false,
    );
  }

  // ---- dp*mp*cp*pp against the device count
  const product = pc.dataParallel * pc.modelParallel * pc.contextParallel * pc.pipelineStage;
  const productText = `data_parallel * model_parallel * context_parallel * pipeline_stage = ${pc.dataParallel}*${pc.modelParallel}*${pc.contextParallel}*${pc.pipelineStage} = ${product}`;
  const layoutKey = doc['parallel_config'] !== undefined ? 'parallel_config' : '';
  const eff = cfg.parallel.effectiveMode;
  if (ws !== undefined && cfg.useParallel) {
    if (eff === 'semi_auto_parallel' && product !== ws) {
      log.refusal(layoutKey, () => `${productText} must equal the device count ${ws} in semi_auto_parallel mode ("should be equal to device_num")`);
    } else if ((eff === 'auto_parallel' || eff === 'hybrid_parallel') && product > ws) {
      log.warn(layoutKey, `${productText} is more than the device count ${ws} (the model's layers refuse this)`);
    } else if (eff === 'stand_alone') {
      const p3 = pc.dataParallel * pc.modelParallel * pc.pipelineStage;
      log.refusal(layoutKey, (r) =>
        r.standAloneLayoutRule && p3 !== ws
          ? `data_parallel * model_parallel * pipeline_stage = ${pc.dataParallel}*${pc.modelParallel}*${pc.pipelineStage} = ${p3} must equal the device count ${ws} in ${String(pmRaw)} mode`
          : r.standAloneLayoutRule && (pc.dataParallel * pc.modelParallel) % pc.expertParallel !== 0
            ? `data_parallel * model_parallel = ${pc.dataParallel * pc.modelParallel} must be divisible by expert_parallel ${pc.expertParallel}`
            : undefined,
      );
    }
  }
  const pipelineStages = par['pipeline_stages'];
  if (typeof pipelineStages === 'number' && doc['parallel_config'] !== undefined && pipelineStages !== pc.pipelineStage) {
    log.warn('parallel.pipeline_stages', `is ${pipelineStages} but parallel_config.pipeline_stage is ${pc.pipelineStage}; they must agree (the model's layers refuse this)`);
  }
  const modelConfig = objectAt(objectAt(doc, 'model'), 'model_config');
  if (cfg.useParallel && eff === 'semi_auto_parallel' && pc.contextParallel > 1 && !pyTruthy(modelConfig['use_flash_attention'])) {
    log.refusal('parallel_config.context_parallel', () => `is ${pc.contextParallel}; context parallel needs model.model_config.use_flash_attention: True`);
  }
  if (runMode === 'eval' && pc.pipelineStage > 1) {
    log.refusal('parallel_config.pipeline_stage', () => 'pipeline stages are only supported for training; use pipeline_stage: 1 with run_mode eval');
  }
  if (pc.pipelineStage > 1 && pcRaw['vocab_emb_dp'] === true) {
    log.warn('parallel_config.vocab_emb_dp', 'is forced to False when pipeline_stage > 1');
  }
  if (doc['parallel'] !== undefined && cfg.useParallel && eff !== 'semi_auto_parallel' && eff !== 'auto_parallel' && par['full_batch'] === true) {
    log.warn('parallel.full_batch', `is forced to False in ${eff ?? 'this'} mode`);
  }
  const runner = objectAt(doc, 'runner_config');
  if (cfg.useParallel && (eff === 'semi_auto_parallel' || eff === 'auto_parallel' || eff === 'hybrid_parallel') && 'sink_mode' in runner && !pyTruthy(runner['sink_mode']) && (cfg.loadCheckpoint !== '' || cfg.onlySaveStrategy)) {
    log.warn('runner_config.sink_mode', 'must be True when distributed loads are sliced weights (mindformers refuses this when it compiles before loading)');
  }

  // ---- the checkpoint to load
  const resumeOn = (typeof rt === 'boolean' || typeof rt === 'string') && pyTruthy(rt);
  const settledBy = (r: ReleaseRules): string =>
    settledLoadCheckpoint(doc, r, opts.checkFiles ? (d) => hasSafetensors(resolve(cfg.baseDir, d)) : undefined).value;
  if ((cfg.autoTransCkpt || resumeOn) && cfg.release.candidates.some((r) => settledBy(r) === '')) {
    const which = cfg.autoTransCkpt ? 'auto_trans_ckpt' : 'resume_training';
    const key = doc['load_checkpoint'] !== undefined ? 'load_checkpoint' : which;
    log.refusal(key, (r) => {
      if (settledBy(r) !== '') return undefined;
      if (!cfg.autoTransCkpt && r.resumeWithoutCheckpointWarns && doc['resume_training'] === true) return undefined;
      return `must not be empty when ${which} is True (or give the checkpoint to the training command: run_mindformer.py --load_checkpoint PATH)`;
    });
    if (!cfg.autoTransCkpt && doc['resume_training'] === true) {
      log.refusal(
        key,
        (r) => (r.resumeWithoutCheckpointWarns && settledBy(r) === '' ? 'is empty while resume_training is True: mindformers turns resume_training off and starts from random weights' : undefined),
        false,
      );
    }
  }
  const fmt = doc['load_ckpt_format'];
  if (fmt !== undefined && fmt !== null && fmt !== 'ckpt' && fmt !== 'safetensors') {
    log.refusal('load_ckpt_format', (r) =>
      !r.readsLoadCkptFormat
        ? undefined
        : cfg.loadCheckpoint !== '' || cfg.onlySaveStrategy || (r.loadCkptFormatCheckedWithAutoTrans && cfg.autoTransCkpt)
          ? `must be 'ckpt' or 'safetensors', got ${describeValue(fmt)}`
          : undefined,
    );
    if (cfg.loadCheckpoint === '' && !cfg.onlySaveStrategy) log.warn('load_ckpt_format', `is ${describeValue(fmt)}, not 'ckpt' or 'safetensors'; harmless while load_checkpoint is empty`);
  }
  if (fmt === 'safetensors' && !rules.readsLoadCkptFormat) {
    log.warn('load_ckpt_format', `is not read by mindformers ${rules.name}: weights are loaded as .ckpt`);
  }
  if (doc['remove_redundancy'] !== undefined && !rules.removeRedundancy && cfg.release.from !== 'unknown') {
    log.warn('remove_redundancy', `is not read by mindformers ${rules.name}`);
  }

  // ---- ModelArts: remote_save_url
  const remote = doc['remote_save_url'];
  log.refusal('remote_save_url', (r) => {
    const onModelArts = r.modelArtsEnv.some((k) => opts.env[k] !== undefined);
    if (!onModelArts || !pyTruthy(remote)) return undefined;
    if (r.remoteSaveUrlOnlyWhenLoading && !(cfg.autoTransCkpt || resumeOn)) return undefined;
    if (typeof remote !== 'string') return `must be a string, got ${describeValue(remote)}`;
    return /^(obs|s3):\/\//.test(remote) ? undefined : `must start with obs:// or s3:// on ModelArts, got '${remote}'`;
  });

  // ---- msckpt's own settings and keys of ours that look misspelt
  for (const k of Object.keys(doc)) {
    if (MINDFORMERS_TOP_KEYS.has(k)) continue;
    const s = nearMiss(k, RUN_CONFIG_KEYS);
    if (s !== undefined) log.warn(k, `unknown key '${k}'; did you mean '${s}'? (mindformers ignores it)`);
  }
  for (const k of Object.keys(par)) {
    if (PARALLEL_KEYS.includes(k)) continue;
    const s = nearMiss(k, PARALLEL_KEYS);
    if (s !== undefined) log.warn(`parallel.${k}`, `unknown key '${k}'; did you mean '${s}'?`);
  }

  // ---- msckpt's own work
  const dc = cfg.deviceCount;
  if (converting && dc !== undefined && doc['transform_process_num'] !== undefined) {
    const k = cfg.transformProcessNum;
    const from = cfg.deviceCountFrom === 'world-size' ? `the device count ${dc}` : `the device count ${dc} (${cfg.useParallel ? productText : 'use_parallel is False'})`;
    if (k > dc) log.warn('transform_process_num', `${k} is more than ${from}; ${dc} converters will be used`);
    else if (dc % k !== 0) log.err('transform_process_num', `${k} does not divide ${from}; use one of ${divisors(dc).join(', ')}`);
  }
  if (converting && cfg.transformProcessNum > 1 && doc['transform_by_rank'] === false) {
    log.warn('transform_by_rank', 'is forced to True when transform_process_num > 1');
  }
  if (cfg.npuNumPerNode !== undefined && !isPowerOfTwo(cfg.npuNumPerNode)) {
    log.warn('npu_num_per_node', `is ${cfg.npuNumPerNode}, not a power of 2 (1, 2, 4, 8, 16, ...); mindformers' own conversion (auto_trans_ckpt with .ckpt) refuses it`);
  }
  if (cfg.useParallel && working && (eff === 'data_parallel' || eff === 'stand_alone')) {
    const named = `parallel_mode ${typeof pmRaw === 'string' ? pmRaw : `${String(pmRaw)} (${cfg.parallel.parallelMode ?? '?'})`}`;
    log.err(
      'parallel.parallel_mode',
      cfg.onlySaveStrategy
        ? `${named} writes no strategy files: mindformers exits at once with only_save_strategy, so there is nothing for the dry run to collect; use SEMI_AUTO_PARALLEL (1) or AUTO_PARALLEL (2)`
        : `${named} writes no strategy files, so auto_trans_ckpt cannot convert ${cfg.loadCkptFormat === 'ckpt' ? '.ckpt weights' : 'these weights'} to it; use SEMI_AUTO_PARALLEL (1) or AUTO_PARALLEL (2)` +
            (isStandAloneSpelling(pmRaw) && !rules.readsLoadCkptFormat
              ? ` (mindformers ${rules.name} does not read load_ckpt_format and loads .ckpt)`
              : isStandAloneSpelling(pmRaw) && cfg.loadCkptFormat === 'ckpt'
                ? ', or load_ckpt_format: safetensors for load-time slicing'
                : ''),
    );
  }
  if (converting && !cfg.useParallel && ws !== undefined && ws > 1) {
    log.warn('use_parallel', `is False with ${ws} devices: every rank would load the same merged, complete checkpoint`);
  }
  const npn = cfg.npuNumPerNode ?? 8;
  if (working && ws !== undefined && ws > npn && cfg.msckpt.sharedDisk === undefined) {
    log.warn(
      'output_dir',
      `${ws} devices is more than ${npn} per node: output_dir must be on a disk shared by all nodes (checked at launch), or set msckpt.shared_disk: False to convert per node`,
    );
  }

  if (opts.checkFiles) await fileRules(cfg, doc, log, opts);
  if (working) await emptiedOutputRules(cfg, log, opts);
}

export function hasSafetensors(dir: string): boolean {
  try {
    return statSync(dir).isDirectory() && readdirSync(dir).some((n) => n.endsWith('.safetensors'));
  } catch {
    return false;
  }
}

/** Rules that look at load_checkpoint and the strategies on disk. */
async function fileRules(cfg: RunConfig, doc: Record<string, unknown>, log: ProblemLog, opts: RuleOptions): Promise<void> {
  const ws = opts.worldSize;
  const abs = (p: string): string => resolve(cfg.baseDir, p);
  const lcKey = doc['load_checkpoint'] !== undefined ? 'load_checkpoint' : 'model.model_config.checkpoint_name_or_path';
  const mode = cfg.mode;
  const fmt = cfg.loadCkptFormat;
  const ext = fmt === 'ckpt' ? '.ckpt' : '.safetensors';
  let source: CheckpointInfo | undefined;
  if (cfg.loadCheckpoint !== '') {
    source = await inspectCheckpointPath(abs(cfg.loadCheckpoint), fmt);
    cfg.source = source;
  }
  let strategyJudged = false;
  if (source !== undefined && !cfg.onlySaveStrategy) {
    const lc = `'${cfg.loadCheckpoint}'`;
    if (source.kind === 'missing') {
      const nameLike = !cfg.loadCheckpoint.includes('/') || cfg.loadCheckpoint.startsWith('mindspore/');
      if (mode === 'convert') log.err(lcKey, `${lc} does not exist (resolved to ${source.path})`);
      else {
        log.refusal(lcKey, (r) =>
          r.checkpointModelNames && nameLike ? undefined : `${lc} does not exist (resolved to ${source!.path})`,
        );
        if (nameLike) log.refusal(lcKey, (r) => (r.checkpointModelNames ? `${lc} is not a path: mindformers looks it up as a model name and downloads it` : undefined), false);
      }
      return;
    }
    if (mode === 'convert' || (fmt === 'ckpt' && cfg.autoTransCkpt)) {
      if (fmt === 'ckpt' && source.kind === 'file' && !source.path.endsWith('.ckpt')) log.err(lcKey, `${lc} must be a folder or a file with suffix '.ckpt'`);
      else if (source.kind === 'empty-dir') log.err(lcKey, `no rank_0 folder and no ${ext} files under ${lc}`);
    }
    if (fmt === 'safetensors' && mode !== 'convert') {
      // mindformers' own safetensors loading (validate_config_with_file_mode)
      if (source.kind === 'file' && cfg.useParallel) {
        log.err(lcKey, `${lc} is a single file and use_parallel is True; give the folder holding only this file instead`);
      } else if (source.kind === 'complete-dir' && cfg.useParallel && !cfg.autoTransCkpt) {
        log.err(lcKey, `${lc} holds complete weights and use_parallel is True; set auto_trans_ckpt: True to slice them automatically`);
      } else if (source.kind === 'rank-dir' && !cfg.useParallel) {
        log.err(lcKey, `${lc} holds rank folders; set use_parallel: True to load distributed weights`);
      } else if (source.kind === 'empty-dir') {
        log.err(lcKey, `no valid checkpoint files found under ${lc} (expected *.safetensors or rank_N folders)`);
      }
    } else if (mode === 'convert' && fmt === 'safetensors' && source.kind === 'rank-dir' && !cfg.useParallel) {
      log.err(lcKey, `${lc} holds rank folders; set use_parallel: True to load distributed weights`);
    }
    if (source.kind === 'rank-dir') {
      if (source.missingRank !== undefined) {
        log.err(lcKey, `rank_${source.missingRank} folder not found under ${lc}; rank folders must be rank_0 .. rank_${source.ranks.length - 1} without gaps`);
      }
      if (source.files.length > 0 && cfg.autoTransCkpt) {
        log.warn(lcKey, `${lc} holds both ${ext} files and rank folders; the rank folders are used`);
      }
      const sliced = source.ranks.length > 1;
      if ((mode === 'convert' || mode === 'handover') && sliced) {
        cfg.srcStrategy = sourceStrategy(cfg, source, doc, log);
        strategyJudged = true;
      }
      if (mode === 'passthrough' && cfg.useParallel && ws !== undefined && source.missingRank === undefined) {
        if (source.ranks.length < ws) {
          log.err(lcKey, `${lc} holds ${source.ranks.length} rank folders but the job has ${ws} devices (rank_${source.ranks.length} and up are missing); set auto_trans_ckpt: True to convert them`);
        } else if (source.ranks.length > ws && fmt === 'ckpt') {
          log.warn(lcKey, `${lc} holds ${source.ranks.length} rank folders but the job has ${ws} devices; only rank_0 .. rank_${ws - 1} are loaded`);
        }
      }
    } else if ((source.kind === 'file' || source.kind === 'complete-dir') && cfg.autoTransCkpt && cfg.srcStrategyPathOrDir !== '') {
      log.warn('src_strategy_path_or_dir', 'is ignored: load_checkpoint holds complete weights');
    }
    if (typeof cfg.resumeTraining === 'string' && source.kind === 'file') {
      log.warn('resume_training', 'names a checkpoint file but load_checkpoint is a file; it is treated as True');
    }
  }
  if (cfg.srcStrategyPathOrDir !== '' && mode === 'convert' && !strategyJudged) {
    const sp = abs(cfg.srcStrategyPathOrDir);
    if (!existsSync(sp)) log.err('src_strategy_path_or_dir', `'${cfg.srcStrategyPathOrDir}' does not exist (resolved to ${sp})`);
  }
  if (cfg.msckpt.dstStrategy !== undefined && (mode === 'convert' || mode === 'strategy-only') && !existsSync(abs(cfg.msckpt.dstStrategy))) {
    log.err('msckpt.dst_strategy', `'${cfg.msckpt.dstStrategy}' does not exist (resolved to ${abs(cfg.msckpt.dstStrategy)})`);
  }
}

/**
 * The strategy of a sliced source, as the release's flow finds it: src_strategy_path_or_dir, or
 * (distributed safetensors, releases that do it) `<load_checkpoint's parent>/strategy`.
 */
function sourceStrategy(cfg: RunConfig, source: CheckpointInfo, doc: Record<string, unknown>, log: ProblemLog): RunConfig['srcStrategy'] {
  const rules = cfg.release.rules;
  const given = cfg.srcStrategyPathOrDir;
  const givenAbs = given === '' ? undefined : resolve(cfg.baseDir, given);
  const lc = `'${cfg.loadCheckpoint}'`;
  const key = doc['src_strategy_path_or_dir'] !== undefined ? 'src_strategy_path_or_dir' : 'load_checkpoint';
  if (cfg.loadCkptFormat === 'safetensors') {
    // only a folder counts; else <load_checkpoint's parent>/strategy
    let isDir = false;
    try {
      isDir = givenAbs !== undefined && statSync(givenAbs).isDirectory();
    } catch {
      isDir = false;
    }
    if (isDir) return { path: givenAbs!, from: 'src_strategy_path_or_dir' };
    const fallback = join(dirname(source.path), 'strategy');
    if (rules.srcStrategyFallback === 'parent-strategy' && existsSync(fallback)) {
      log.warn(key, `${given === '' ? 'src_strategy_path_or_dir is not set' : `'${given}' is not a folder (mindformers takes only folders here)`}; the strategy is taken from ${fallback}, as mindformers ${rules.name} does`);
      return { path: fallback, from: 'fallback' };
    }
    log.err(
      key,
      givenAbs !== undefined && existsSync(givenAbs)
        ? 'must be a folder holding the strategy files when loading sliced safetensors'
        : `${lc} is sliced into ${source.ranks.length} rank folders; set src_strategy_path_or_dir to the folder of strategy files of the run that wrote it`,
    );
    return undefined;
  }
  if (givenAbs === undefined) {
    log.err(key, `${lc} is sliced into ${source.ranks.length} rank folders; set src_strategy_path_or_dir to the strategy file or strategy folder of the run that wrote it`);
    return undefined;
  }
  if (!existsSync(givenAbs)) {
    log.err('src_strategy_path_or_dir', `'${given}' does not exist (resolved to ${givenAbs})`);
    return undefined;
  }
  return { path: givenAbs, from: 'src_strategy_path_or_dir' };
}

/** A folder msckpt writes under output_dir; `empties`: it is cleaned before converting. */
interface LaunchWrite extends NamedPath {
  readonly empties: boolean;
}

/** A path a launch reads, as the user gave it: `key` is the YAML key or the flag. */
interface LaunchRead extends NamedPath {
  readonly key: string;
}

/** One path a launch would read from a folder it writes or empties. */
export interface LaunchPathConflict {
  /** The YAML key or flag that gives the path (`load_checkpoint`, `--dst-strategy`). */
  readonly key: string;
  readonly message: string;
}

export interface LaunchPathOptions {
  /** `msckpt launch --dst-strategy` (replaces msckpt.dst_strategy). */
  readonly dstStrategyFlag?: string | undefined;
  /** Keys the training command sets (run_mindformer.py flags such as --load_checkpoint). */
  readonly commandKeys?: readonly string[] | undefined;
  /** Compare lexically (`..`, trailing slashes), nothing looked up on disk. */
  readonly lexical?: boolean | undefined;
}

/**
 * Every path a launch reads (load_checkpoint as mindformers settles it, with the training
 * command's --load_checkpoint; the source strategy, src_strategy_path_or_dir or mindformers'
 * `<load_checkpoint's parent>/strategy`; the destination strategy, msckpt.dst_strategy or
 * `--dst-strategy`) that is, contains or lies inside a folder msckpt writes or empties
 * (output_dir/strategy, output_dir/transformed_checkpoint, output_dir/msckpt), compared after
 * resolving symlinks on both sides. The one check of the launcher's paths: the run-YAML rules
 * report it per key, `launch` refuses with it (its flags included) before anything is written.
 */
export async function launchPathConflicts(cfg: RunConfig, opts: LaunchPathOptions = {}): Promise<LaunchPathConflict[]> {
  const writes: LaunchWrite[] = [
    { what: 'output_dir/strategy', path: cfg.paths.strategyDir, empties: true },
    { what: 'output_dir/transformed_checkpoint', path: cfg.paths.transformedDir, empties: true },
    { what: 'output_dir/msckpt', path: cfg.paths.msckptDir, empties: false },
  ];
  const reads: LaunchRead[] = [];
  if (cfg.loadCheckpoint !== '') {
    const byCommand = cfg.loadCheckpointFrom === 'load_checkpoint' && opts.commandKeys?.includes('load_checkpoint') === true;
    const key = cfg.loadCheckpointFrom === 'checkpoint_name_or_path' ? 'model.model_config.checkpoint_name_or_path' : cfg.loadCheckpointFrom;
    reads.push({ key, what: byCommand ? "the training command's --load_checkpoint" : '', path: cfg.loadCheckpoint });
  }
  if (cfg.srcStrategyPathOrDir !== '') reads.push({ key: 'src_strategy_path_or_dir', what: '', path: cfg.srcStrategyPathOrDir });
  if (cfg.srcStrategy?.from === 'fallback') {
    reads.push({ key: 'src_strategy_path_or_dir', what: "the source strategy mindformers takes from load_checkpoint's parent", path: cfg.srcStrategy.path });
  }
  if (opts.dstStrategyFlag !== undefined) reads.push({ key: '--dst-strategy', what: '', path: opts.dstStrategyFlag });
  else if (cfg.msckpt.dstStrategy !== undefined) reads.push({ key: 'msckpt.dst_strategy', what: '', path: cfg.msckpt.dstStrategy });
  const found = await findOverlaps(writes, reads, cfg.baseDir, { lexical: opts.lexical === true });
  const work = cfg.mode === 'strategy-only' ? 'saving strategies' : 'converting';
  return found.map(({ output: o, input: i, relation }) => {
    // the read path's relation to the folder: "lies inside" when the folder contains it
    const rel = relation === 'contains' ? 'lies inside' : relation === 'lies inside' ? 'contains' : 'is';
    return {
      key: i.key,
      message:
        `${i.what !== '' ? `${i.what} ` : ''}'${i.path}' ${rel} ${o.what} (${o.real}), which msckpt ${o.empties ? 'empties' : 'writes'} before ${work}; ` +
        'move it elsewhere or set a different output_dir',
    };
  });
}

/** What msckpt writes or empties may not be, contain or lie inside what the run reads (see launchPathConflicts). */
async function emptiedOutputRules(cfg: RunConfig, log: ProblemLog, opts: RuleOptions): Promise<void> {
  for (const c of await launchPathConflicts(cfg, { commandKeys: opts.commandKeys, lexical: !opts.checkFiles })) log.err(c.key, c.message);
}
