/**
 * What a strategy says about the job that wrote it: device count, pipeline stages, data and model
 * parallel degrees, parameter count. Read from the device matrices and tensor maps only (spec
 * §2.2, §3.1); where they do not tell a figure, it is `null` with the reason, never a guess.
 *
 * How each figure is read:
 * - devices per stage: the product of a layout's `dev_matrix` (MindSpore's
 *   `_get_device_num_from_strategy`); every layout of a stage must agree.
 * - pp: the stages present, when they are 0..n-1: the `{stage}-` prefixes of a merged strategy,
 *   or the stage of each per-rank file of a folder. A single unmerged file holds one stage's
 *   layouts and does not say whether there are others: unknown.
 * - devices: devices per stage x pp (MindSpore's rule: every stage has the same device count);
 *   for a folder, checked against the files named for ranks (`..rank_N..`).
 * - mp: a parameter is split over the device-matrix axes its tensor map names (the product of
 *   their sizes). When every split parameter of a stage is split over the same number of devices,
 *   and the parameters sharing one device matrix name the same axes, that number is mp; a stage
 *   where no parameter is split has mp 1. Parameters split over different counts or different
 *   axes (expert or vocabulary parallel, for instance) leave mp unknown.
 * - dp: devices per stage / mp: the axes no tensor map names hold replicas (spec §3.1). This
 *   counts every replicating axis (data parallel, and context or sequence parallel that does not
 *   split parameters); optimizer sharding (opt_weight_shard_size) does not change it.
 * - parameters: distinct names (a parameter of several stages, a shared embedding, counts once)
 *   without the optimizer and accumulator states (`adam_m.`, `accu_grads.`, ...), counted apart;
 *   elements only when every parameter has its `tensor_shape` (JSON strategies store it, protobuf
 *   does not).
 */
import { formatRanges } from '../../ranges.js';
import { optimizerStatePrefix } from '../param-names.js';
import type { MergedInputFile } from './merge.js';
import type { ParamLayout, Strategy } from './model.js';

/** A parallel degree and how it was read, or `value: null` and why it cannot be. */
export interface ParallelDegree {
  readonly value: number | null;
  readonly how: string;
}

export interface StageSummary {
  readonly stage: number;
  /** Product of the stage's device matrices; null when its layouts disagree (or it has none). */
  readonly devices: number | null;
  readonly layouts: number;
  /** The distinct device matrices of the stage's layouts. */
  readonly devMatrices: number[][];
  /** Layouts by the number of devices they are split over: [devices, layouts], ascending. */
  readonly splits: Array<[number, number]>;
  readonly mp: number | null;
  readonly dp: number | null;
  /** Per-rank files of a folder holding this stage. */
  readonly files?: number;
  /** The rank numbers those files are named for, ascending (absent when a name has none). */
  readonly ranks?: number[];
}

export interface StrategySummary {
  readonly devices: ParallelDegree;
  readonly pp: ParallelDegree;
  readonly dp: ParallelDegree;
  readonly mp: ParallelDegree;
  readonly stages: StageSummary[];
  /** Distinct model parameters (optimizer and accumulator states not counted). */
  readonly parameters: number;
  /** Distinct optimizer and accumulator states (`adam_m.*`, `accu_grads.*`, ...). */
  readonly optimizerStates: number;
  /** Elements of the model parameters, when every one has its tensor_shape (JSON); else null. */
  readonly elements: number | null;
  /** Some layout has opt_weight_shard_size != 0 (the optimizer shards it over its replicas). */
  readonly optimizerSharding: boolean;
  /** Anything the reader should know (inconsistencies, what is missing). */
  readonly notes: string[];
}

export interface StrategySummaryInput {
  readonly strategy: Strategy;
  /** The per-rank files of a folder, as the merge read them (absent: one file). */
  readonly files?: readonly MergedInputFile[];
}

const RANK_IN_NAME = /rank_?(\d+)/i;

function product(xs: readonly number[]): number {
  return xs.reduce((a, b) => a * b, 1);
}

/** Devices a layout is split over, and which axes; null when its tensor map names an axis its device matrix lacks. */
function splitOf(l: ParamLayout): { devices: number; axes: string } | null {
  const used = new Set<number>();
  for (const e of l.tensorMap) {
    for (const m of typeof e === 'number' ? [e] : e) {
      if (m === -1) continue;
      if (!Number.isInteger(m) || m < 0 || m >= l.devMatrix.length) return null;
      used.add(m);
    }
  }
  const axes = [...used].sort((a, b) => a - b);
  return { devices: product(axes.map((m) => l.devMatrix[l.devMatrix.length - 1 - m] as number)), axes: axes.join(',') };
}

function list(xs: readonly number[]): string {
  return xs.join(', ');
}

interface StageMath {
  summary: StageSummary;
  /** Why mp is unknown for this stage, when it is. */
  mpWhy?: string;
}

function stageMath(stage: number, layouts: readonly ParamLayout[], files: readonly MergedInputFile[] | undefined): StageMath {
  const products = [...new Set(layouts.map((l) => product(l.devMatrix)))].sort((a, b) => a - b);
  const devices = products.length === 1 ? (products[0] as number) : null;
  const matrices = new Map<string, number[]>();
  for (const l of layouts) matrices.set(l.devMatrix.join(','), [...l.devMatrix]);
  const bySplit = new Map<number, number>();
  const axesByMatrix = new Map<string, Set<string>>();
  let unreadable = 0;
  for (const l of layouts) {
    const s = splitOf(l);
    if (s === null) {
      unreadable++;
      continue;
    }
    bySplit.set(s.devices, (bySplit.get(s.devices) ?? 0) + 1);
    if (s.devices > 1) {
      const key = l.devMatrix.join(',');
      let set = axesByMatrix.get(key);
      if (set === undefined) axesByMatrix.set(key, (set = new Set()));
      set.add(s.axes);
    }
  }
  const splits = [...bySplit.entries()].sort((a, b) => a[0] - b[0]);
  const splitCounts = splits.map(([k]) => k).filter((k) => k > 1);
  let mp: number | null = null;
  let mpWhy: string | undefined;
  if (layouts.length === 0) mpWhy = `stage ${stage} has no layouts`;
  else if (devices === null) mpWhy = `the device matrices of stage ${stage} cover ${list(products)} devices`;
  else if (unreadable > 0) mpWhy = `${unreadable} layout(s) of stage ${stage} name device axes their device matrix lacks`;
  else if (splitCounts.length > 1) mpWhy = `parameters of stage ${stage} are split over ${list(splitCounts)} devices`;
  else if ([...axesByMatrix.values()].some((s) => s.size > 1)) {
    mpWhy = `parameters of stage ${stage} sharing a device matrix are split over different axes`;
  } else mp = splitCounts[0] ?? 1;
  const dp = mp !== null && devices !== null && devices % mp === 0 ? devices / mp : null;
  const mine = files?.filter((f) => f.stage === stage);
  const ranks = mine?.map((f) => RANK_IN_NAME.exec(f.path.split(/[\\/]/).pop() ?? '')?.[1]);
  const summary: StageSummary = {
    stage,
    devices,
    layouts: layouts.length,
    devMatrices: [...matrices.values()],
    splits,
    mp,
    dp,
    ...(mine !== undefined ? { files: mine.length } : {}),
    ...(ranks !== undefined && ranks.every((r) => r !== undefined) ? { ranks: ranks.map(Number).sort((a, b) => a - b) } : {}),
  };
  return mpWhy !== undefined ? { summary, mpWhy } : { summary };
}

/** The summary of a strategy (one file, or the merge of a folder's per-rank files). See the module comment. */
export function summarizeStrategy(input: StrategySummaryInput): StrategySummary {
  const s = input.strategy;
  const files = input.files;
  const notes: string[] = [];
  const single = files === undefined && !s.merged;
  // a single unmerged file: its layouts carry no prefix; its stage is that of its strategy items
  const fileStage = single ? s.items[0]?.stage : undefined;
  if (single && s.items.length === 0 && s.layouts.length > 0) notes.push('the file has no parallel_strategy_item, so its pipeline stage is unknown');
  const stageOf = (l: ParamLayout): number => (single ? (fileStage ?? 0) : l.stage);
  const byStage = new Map<number, ParamLayout[]>();
  for (const l of s.layouts) {
    const st = stageOf(l);
    let arr = byStage.get(st);
    if (arr === undefined) byStage.set(st, (arr = []));
    arr.push(l);
  }
  if (files !== undefined) for (const f of files) if (!byStage.has(f.stage)) byStage.set(f.stage, []);
  const stageNumbers = [...byStage.keys()].sort((a, b) => a - b);
  const maths = stageNumbers.map((st) => stageMath(st, byStage.get(st) as ParamLayout[], files));
  const stages = maths.map((m) => m.summary);

  // pp
  const missing: number[] = [];
  const top = stageNumbers[stageNumbers.length - 1] ?? -1;
  for (let i = 0; i <= top; i++) if (!byStage.has(i)) missing.push(i);
  let pp: ParallelDegree;
  if (single) {
    pp = {
      value: null,
      how:
        `unknown: a per-rank file holds the layouts of one stage (this one: stage ${fileStage ?? '?'}) and does not say whether there are others ` +
        '(MindSpore reads such a file alone as one stage); give the folder of every rank\'s file, or the merged strategy',
    };
  } else if (stageNumbers.length === 0) {
    pp = { value: null, how: 'unknown: no layouts' };
  } else if (missing.length > 0) {
    pp = { value: null, how: `unknown: stage(s) ${list(missing)} missing (stages present: ${list(stageNumbers)})` };
  } else {
    pp = { value: stageNumbers.length, how: files !== undefined ? 'the stages of the per-rank files (stage of their first strategy item)' : 'the {stage}- prefixes of the merged strategy' };
  }

  // devices
  const perStage = [...new Set(stages.map((x) => x.devices))];
  let devices: ParallelDegree;
  const stageDevices = perStage.length === 1 ? perStage[0] ?? null : null;
  if (stages.some((x) => x.devices === null)) {
    const bad = stages.filter((x) => x.devices === null).map((x) => x.stage);
    devices = { value: null, how: `unknown: the device matrices of stage(s) ${list(bad)} disagree on its device count (or it has no layouts)` };
  } else if (stageDevices === null) {
    devices = { value: null, how: `unknown: stages have different device counts (${stages.map((x) => `stage ${x.stage}: ${x.devices}`).join(', ')})` };
  } else if (pp.value === null) {
    devices = { value: null, how: `unknown: ${stageDevices} per stage (product of dev_matrix), and the number of stages is unknown` };
  } else {
    devices = { value: stageDevices * pp.value, how: `${stageDevices} per stage (product of dev_matrix) x ${pp.value} stage(s)` };
  }
  if (files !== undefined) {
    const named = files.map((f) => RANK_IN_NAME.exec(f.path.split(/[\\/]/).pop() ?? '')?.[1]);
    if (named.every((r) => r !== undefined)) {
      const ranks = [...new Set(named.map(Number))].sort((a, b) => a - b);
      const contiguous = ranks.every((r, i) => r === i);
      if (devices.value !== null) {
        if (contiguous && ranks.length === devices.value) devices = { value: devices.value, how: `${devices.how}, matching the ${ranks.length} per-rank files (ranks 0-${ranks.length - 1})` };
        else notes.push(`the folder holds files for rank(s) ${formatRanges(ranks)}, not one for each of the ${devices.value} devices`);
      } else if (contiguous) notes.push(`the folder holds one file for each of ranks 0-${ranks.length - 1}`);
    } else notes.push('some file names carry no rank number (rank_N), so the folder cannot be checked against the device count');
    const skipped = files.filter((f) => f.skippedStage === true);
    if (skipped.length > 0) notes.push(`${skipped.length} file(s) hold a stage already read from a file with different bytes (ignored, as MindSpore's merge does): ${skipped.slice(0, 3).map((f) => f.path).join(', ')}`);
  }

  // mp and dp
  let mp: ParallelDegree;
  let dp: ParallelDegree;
  const why = maths.filter((m) => m.mpWhy !== undefined).map((m) => m.mpWhy as string);
  const mps = [...new Set(stages.map((x) => x.mp))];
  const dps = [...new Set(stages.map((x) => x.dp))];
  if (stages.length === 0) {
    mp = { value: null, how: 'unknown: no layouts' };
    dp = { value: null, how: 'unknown: no layouts' };
  } else if (why.length > 0) {
    mp = { value: null, how: `unknown: ${why.join('; ')}` };
    dp = { value: null, how: 'unknown: mp is unknown' };
  } else if (mps.length > 1 || dps.length > 1) {
    const per = stages.map((x) => `stage ${x.stage}: mp ${x.mp}, dp ${x.dp}`).join('; ');
    mp = { value: null, how: `unknown: stages differ (${per})` };
    dp = { value: null, how: `unknown: stages differ (${per})` };
  } else {
    const m = mps[0] as number;
    const d = dps[0];
    mp =
      m === 1
        ? { value: 1, how: 'no parameter is split (every tensor map is -1)' }
        : { value: m, how: `every split parameter is split over ${m} devices (the device-matrix axes its tensor map names)` };
    dp =
      d === null || d === undefined
        ? { value: null, how: `unknown: ${m} does not divide the devices per stage` }
        : { value: d, how: `devices per stage / mp: each slice is held by ${d} device(s) (axes no tensor map names replicate)` };
  }

  // parameters
  const model = new Map<string, ParamLayout>();
  const states = new Set<string>();
  for (const l of s.layouts) {
    if (optimizerStatePrefix(l.name) !== undefined) states.add(l.name);
    else if (!model.has(l.name)) model.set(l.name, l);
  }
  let elements: number | null = 0;
  for (const l of model.values()) {
    if (l.tensorShape === undefined) {
      elements = null;
      break;
    }
    elements += product(l.tensorShape);
  }
  if (model.size === 0) elements = null;
  const optimizerSharding = s.layouts.some((l) => l.optShardSize !== 0);
  if (optimizerSharding) notes.push('optimizer sharding is used (opt_weight_shard_size != 0): the optimizer splits each slice further over its replicas');
  return { devices, pp, dp, mp, stages, parameters: model.size, optimizerStates: states.size, elements, optimizerSharding, notes };
}
