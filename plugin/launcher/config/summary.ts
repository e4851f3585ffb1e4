/**
 * What `msckpt launch` does with a checked configuration, for `validate`: built from the same
 * functions launch uses (launchMode for the mode, assignConverters for the converters,
 * convertedLoadPath for the derived load_checkpoint, and the launcher's own list of sources).
 */
import { join, resolve } from 'node:path';
import { InputError } from '../../errors.js';
import type { JobPaths } from '../paths.js';
import type { LaunchMode, RunConfig } from './types.js';

/** One converter and the destination slices it writes. */
export interface ConverterAssignment {
  readonly rank: number;
  readonly slices: readonly number[];
}

/**
 * Converters of a group (spec: ranks 0, W/K, 2W/K, ... convert [r, r + W/K)), restricted to the
 * group's ranks: without a shared disk a block that starts on another node is converted by the
 * first rank of this node inside it, so every node writes only its own ranks.
 */
export function assignConverters(worldSize: number, transformProcessNum: number, groupRanks: readonly number[]): ConverterAssignment[] {
  const k = Math.min(Math.max(1, transformProcessNum), worldSize);
  if (worldSize % k !== 0) throw new InputError(`transform_process_num ${k} does not divide the device count ${worldSize}`);
  const step = worldSize / k;
  const inGroup = new Set(groupRanks);
  const out: ConverterAssignment[] = [];
  for (let b = 0; b < worldSize; b += step) {
    const slices: number[] = [];
    for (let r = b; r < b + step; r++) if (inGroup.has(r)) slices.push(r);
    if (slices.length > 0) out.push({ rank: slices[0] as number, slices });
  }
  return out;
}

/** The converter ranks `0, W/K, 2W/K, ...` of a whole job and their slices [from, to). */
export function converterRanks(worldSize: number, transformProcessNum: number): Array<{ rank: number; from: number; to: number }> {
  const all = Array.from({ length: worldSize }, (_v, i) => i);
  const k = Math.min(Math.max(1, transformProcessNum), worldSize);
  if (worldSize % k !== 0) return []; // launch refuses it
  return assignConverters(worldSize, transformProcessNum, all).map((c) => ({ rank: c.rank, from: c.slices[0]!, to: c.slices[c.slices.length - 1]! + 1 }));
}

/** load_checkpoint of the derived training YAML: the one converted `<name>` folder, else the whole transformed_checkpoint. */
export function convertedLoadPath(paths: JobPaths, names: readonly string[]): string {
  return names.length === 1 ? join(paths.transformedDir, names[0]!) : paths.transformedDir;
}

export interface RunConfigSummary {
  /** What `msckpt launch` would do with this YAML. */
  mode: LaunchMode;
  /** Why (one line). */
  reason: string;
  /** Which mindformers release's rules apply and how that was found. */
  release: string;
  deviceCount: number | undefined;
  layout: string;
  source: string;
  /** Converter ranks and the destination slices each writes, [from, to). */
  converters: Array<{ rank: number; from: number; to: number }>;
  /** Folders emptied at start. */
  cleans: string[];
  /** Where this job's strategy comes from. */
  strategy: string;
  /** Where the source's strategy comes from (sliced sources). */
  sourceStrategy: string | undefined;
  /** Keys the derived training YAML changes (empty: the training command reads the user's YAML). */
  derived: Record<string, unknown>;
}

function describeSource(cfg: RunConfig): string {
  if (cfg.loadCheckpoint === '') return 'none (load_checkpoint is empty)';
  const from = cfg.loadCheckpointFrom === 'load_checkpoint' ? '' : ` (from ${cfg.loadCheckpointFrom === 'pretrained_model_dir' ? 'pretrained_model_dir' : 'model.model_config.checkpoint_name_or_path'})`;
  const s = cfg.source;
  if (s === undefined) return `'${cfg.loadCheckpoint}'${from} (not inspected)`;
  switch (s.kind) {
    case 'missing':
      return `'${cfg.loadCheckpoint}' (missing)`;
    case 'file':
      return `complete ${cfg.loadCkptFormat} file ${s.path}${from}`;
    case 'complete-dir':
      return `${s.files.length} complete ${cfg.loadCkptFormat} file(s) in ${s.path}${from}`;
    case 'rank-dir':
      return s.ranks.length === 1 ? `complete checkpoint in ${s.path}/rank_0` : `${s.ranks.length} slices (rank_0..rank_${s.ranks.length - 1}) in ${s.path}`;
    case 'empty-dir':
      return `empty folder ${s.path}`;
  }
}

/**
 * A short account of what the launcher would do. `sourceNames` are the `<name>`s launch converts
 * (launchSources); without them (files not inspected) the derived load_checkpoint is left open.
 */
export function summarizeRunConfig(cfg: RunConfig, sourceNames?: readonly string[]): RunConfigSummary {
  const pc = cfg.parallelConfig;
  const mode = cfg.mode;
  const layout = cfg.useParallel
    ? `${cfg.parallel.effectiveMode ?? String(cfg.parallel.parallelModeRaw)}: dp${pc.dataParallel} mp${pc.modelParallel} cp${pc.contextParallel} pp${pc.pipelineStage}${pc.expertParallel > 1 ? ` ep${pc.expertParallel}` : ''}`
    : 'single device (use_parallel: False)';
  const dc = cfg.deviceCount;
  let converters: RunConfigSummary['converters'] = [];
  if (mode === 'convert' && dc !== undefined) converters = converterRanks(cfg.useParallel ? dc : 1, cfg.transformProcessNum);
  const working = mode === 'convert' || mode === 'strategy-only';
  const cleans = working ? [cfg.paths.strategyDir, cfg.paths.transformedDir] : [];
  const strategy = !working
    ? 'not needed'
    : !cfg.useParallel
      ? 'none (merge into one complete checkpoint)'
      : cfg.msckpt.dstStrategy !== undefined
        ? `given: ${resolve(cfg.baseDir, cfg.msckpt.dstStrategy)}`
        : `strategy-only pass writes ${cfg.paths.strategyFile(0).replace(/_rank_0\.ckpt$/, '_rank_R.ckpt')}${pc.pipelineStage > 1 ? `, merged into ${cfg.paths.mergedStrategy}` : ''}`;
  const sourceStrategy =
    cfg.srcStrategy === undefined ? undefined : `${cfg.srcStrategy.path}${cfg.srcStrategy.from === 'fallback' ? ` (<load_checkpoint's parent>/strategy, as mindformers ${cfg.release.rules.name} finds it)` : ''}`;
  let derived: Record<string, unknown> = {};
  if (mode === 'convert') {
    derived = {
      load_checkpoint: sourceNames !== undefined ? convertedLoadPath(cfg.paths, sourceNames) : `${cfg.paths.transformedDir}/<name of load_checkpoint>`,
      auto_trans_ckpt: false,
    };
  } else if (mode === 'strategy-only') derived = { only_save_strategy: true };
  return {
    mode, reason: cfg.modeReason, release: cfg.release.description, deviceCount: dc, layout, source: describeSource(cfg),
    converters, cleans, strategy, sourceStrategy, derived,
  };
}
