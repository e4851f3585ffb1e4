/**
 * Layout math (spec §3): which hyper-rectangle of a full tensor a rank holds, from the strategy
 * model alone. Pure functions, no I/O.
 *
 * Conventions:
 * - A local rank's device coordinate is the row-major unravel of the rank over `devMatrix` (last
 *   axis fastest).
 * - `tensorMap[i] = m >= 0` splits tensor dim i over device axis `devMatrix.length - 1 - m`;
 *   `-1` leaves it whole; a nested entry `[m1, m2, ...]` splits over several axes, mixed radix with
 *   m1 most significant.
 * - Optimizer (weight) sharding: the ranks that hold the same model-parallel slice (they differ
 *   only on axes no tensor dim uses) form the repeated group G, ordered by rank. G is cut into
 *   consecutive chunks of `size` ranks; dim 0 of the model-parallel slice is split again into
 *   `size` parts and a rank holds part `pos_in_G mod size` (model-parallel index outer, optimizer
 *   index inner). Size -1 means the whole of G. As in MindSpore's Python side, step 0 or size 0
 *   means no optimizer split.
 * - `paramSplitShape` (manual split) gives uneven dim-0 sizes per model-parallel part.
 */
import { InputError } from '../errors.js';
import type { Box } from '../formats/types.js';
import type { ParamLayout, Strategy, TensorMapEntry } from '../formats/strategy/model.js';

/** Upper bound on a stage's device count (a bound on loops sized by untrusted dev matrices). */
export const MAX_STAGE_DEVICES = 1 << 24;

interface Compiled {
  readonly devMatrix: readonly number[];
  readonly devices: number;
  /** Row-major strides of the device matrix. */
  readonly devStrides: readonly number[];
  /** Per tensor dim, the device axes (indices into devMatrix) that split it, most significant first. */
  readonly dimAxes: readonly (readonly number[])[];
  /** Per tensor dim, model-parallel part count. */
  readonly mpCounts: readonly number[];
  /** Per tensor dim, total part count (dim 0 includes the optimizer split). */
  readonly counts: readonly number[];
  /** Axes used by no tensor dim, ascending (the repeated group's axes). */
  readonly freeAxes: readonly number[];
  /** Resolved optimizer shard size (>= 1). */
  readonly optSize: number;
  /** Dim-0 start of each model-parallel part when paramSplitShape is used. */
  readonly splitStarts: readonly number[] | null;
}

const cache = new WeakMap<ParamLayout, Compiled>();

function fail(layout: ParamLayout, message: string): never {
  throw new InputError(message, { tensor: layout.name });
}

function compile(layout: ParamLayout): Compiled {
  const hit = cache.get(layout);
  if (hit !== undefined) return hit;
  if (layout.field > 0) {
    fail(layout, `field-sliced embeddings are not supported (field=${layout.field}); convert this parameter with MindSpore`);
  }
  const dev = layout.devMatrix;
  let devices = 1;
  for (const d of dev) {
    if (!Number.isSafeInteger(d) || d < 1) fail(layout, `dev_matrix [${dev.join(',')}] has an entry ${d} below 1`);
    devices *= d;
    if (devices > MAX_STAGE_DEVICES) fail(layout, `dev_matrix [${dev.join(',')}] describes more than ${MAX_STAGE_DEVICES} devices`);
  }
  const n = dev.length;
  const devStrides = new Array<number>(n).fill(1);
  for (let a = n - 2; a >= 0; a--) devStrides[a] = (devStrides[a + 1] as number) * (dev[a + 1] as number);
  const used = new Set<number>();
  const dimAxes: number[][] = [];
  const mpCounts: number[] = [];
  const mapText = (): string => JSON.stringify(layout.tensorMap);
  for (const entry of layout.tensorMap as readonly TensorMapEntry[]) {
    const ms = typeof entry === 'number' ? [entry] : entry;
    const axes: number[] = [];
    let count = 1;
    for (const m of ms) {
      if (m === -1) continue;
      if (!Number.isSafeInteger(m) || m < 0 || m >= n) {
        fail(layout, `tensor_map ${mapText()} refers to device axis ${m}, but dev_matrix [${dev.join(',')}] has ${n} axes`);
      }
      const axis = n - 1 - m;
      if (used.has(axis)) fail(layout, `tensor_map ${mapText()} uses device axis ${m} twice`);
      used.add(axis);
      axes.push(axis);
      count *= dev[axis] as number;
    }
    dimAxes.push(axes);
    mpCounts.push(count);
  }
  const freeAxes: number[] = [];
  let groupSize = 1;
  for (let a = 0; a < n; a++) {
    if (!used.has(a)) {
      freeAxes.push(a);
      groupSize *= dev[a] as number;
    }
  }
  let optSize = 1;
  const raw = layout.optShardSize;
  if (!Number.isSafeInteger(raw) || raw < -1) fail(layout, `opt_weight_shard_size ${raw} is invalid`);
  if (layout.optShardStep !== 0 && raw !== 0) {
    optSize = raw === -1 ? groupSize : raw;
    if (optSize > groupSize) {
      fail(layout, `opt_weight_shard_size ${raw} exceeds the repeated group of ${groupSize} devices (dev_matrix [${dev.join(',')}], tensor_map ${mapText()})`);
    }
    if (groupSize % optSize !== 0) {
      fail(layout, `opt_weight_shard_size ${raw} does not divide the repeated group of ${groupSize} devices`);
    }
    if (optSize > 1 && mpCounts.length === 0) fail(layout, 'a scalar parameter cannot be optimizer-sharded');
  }
  const counts = mpCounts.slice();
  if (counts.length > 0) counts[0] = (counts[0] as number) * optSize;
  let splitStarts: number[] | null = null;
  if (layout.paramSplitShape.length > 0) {
    const pss = layout.paramSplitShape;
    if (mpCounts.length === 0) fail(layout, 'param_split_shape given for a scalar parameter');
    if (pss.length !== mpCounts[0]) {
      fail(layout, `param_split_shape has ${pss.length} entries but dim 0 is split into ${mpCounts[0]} parts`);
    }
    splitStarts = [];
    let at = 0;
    for (let k = 0; k < pss.length; k++) {
      const size = pss[k] as number;
      if (!Number.isSafeInteger(size) || size < 0) fail(layout, `param_split_shape entry ${size} is invalid`);
      if (size % optSize !== 0) fail(layout, `param_split_shape entry ${size} does not divide into ${optSize} optimizer shards`);
      if (layout.indicesOffset.length > 0 && layout.indicesOffset[k] !== at) {
        fail(layout, `indices_offset [${layout.indicesOffset.join(',')}] does not match param_split_shape [${pss.join(',')}]`);
      }
      splitStarts.push(at);
      at += size;
    }
    if (layout.indicesOffset.length > 0 && layout.indicesOffset.length !== pss.length) {
      fail(layout, `indices_offset has ${layout.indicesOffset.length} entries, param_split_shape ${pss.length}`);
    }
  }
  const c: Compiled = { devMatrix: dev, devices, devStrides, dimAxes, mpCounts, counts, freeAxes, optSize, splitStarts };
  cache.set(layout, c);
  return c;
}

function checkLocalRank(layout: ParamLayout, c: Compiled, localRank: number): void {
  if (!Number.isSafeInteger(localRank) || localRank < 0 || localRank >= c.devices) {
    fail(layout, `local rank ${localRank} is outside the stage's ${c.devices} devices (dev_matrix [${c.devMatrix.join(',')}])`);
  }
}

// ------------------------------------------------------------------------------------------------
// Ranks and stages

/** Row-major device coordinate of a local rank over `devMatrix` (last axis fastest). */
export function deviceCoordinate(devMatrix: readonly number[], localRank: number): number[] {
  const out = new Array<number>(devMatrix.length).fill(0);
  let r = localRank;
  for (let a = devMatrix.length - 1; a >= 0; a--) {
    const d = devMatrix[a] as number;
    out[a] = r % d;
    r = Math.floor(r / d);
  }
  return out;
}

function checkStageDevices(stageDevices: number): void {
  if (!Number.isSafeInteger(stageDevices) || stageDevices < 1) throw new InputError(`stage device count ${stageDevices} must be a positive integer`);
}

/** Position of a global rank inside its pipeline stage. */
export function localRankOf(globalRank: number, stageDevices: number): number {
  checkStageDevices(stageDevices);
  if (!Number.isSafeInteger(globalRank) || globalRank < 0) throw new InputError(`rank ${globalRank} must be a non-negative integer`);
  return globalRank % stageDevices;
}

/** Pipeline stage of a global rank (stages hold contiguous rank blocks). */
export function stageOf(globalRank: number, stageDevices: number): number {
  checkStageDevices(stageDevices);
  if (!Number.isSafeInteger(globalRank) || globalRank < 0) throw new InputError(`rank ${globalRank} must be a non-negative integer`);
  return Math.floor(globalRank / stageDevices);
}

function prod(xs: readonly number[]): number {
  let p = 1;
  for (const x of xs) p *= x;
  return p;
}

/**
 * Devices per pipeline stage: prod(dev_matrix) of the first layout. Every layout must agree (stages
 * are contiguous rank blocks of equal size).
 */
const deviceCountCache = new WeakMap<Strategy, number>();

export function stageDeviceCount(strategy: Strategy): number {
  const hit = deviceCountCache.get(strategy);
  if (hit !== undefined) return hit;
  const file = strategy.path;
  const first = strategy.layouts[0];
  if (first === undefined) throw new InputError('strategy has no parameter layouts', file !== undefined ? { file } : {});
  const n = prod(first.devMatrix);
  for (const l of strategy.layouts) {
    const m = prod(l.devMatrix);
    if (m !== n) {
      throw new InputError(
        `dev_matrix [${l.devMatrix.join(',')}] (stage ${l.stage}) describes ${m} devices, but '${first.name}' (stage ${first.stage}) has [${first.devMatrix.join(',')}] = ${n}; every stage must have the same device count`,
        { ...(file !== undefined ? { file } : {}), tensor: l.name },
      );
    }
  }
  if (!Number.isSafeInteger(n) || n < 1 || n > MAX_STAGE_DEVICES) {
    throw new InputError(`dev_matrix [${first.devMatrix.join(',')}] gives an invalid device count ${n}`, file !== undefined ? { file } : {});
  }
  deviceCountCache.set(strategy, n);
  return n;
}

/** Number of pipeline stages; the stages present must be exactly 0..n-1. */
const stageCountCache = new WeakMap<Strategy, number>();

export function stageCount(strategy: Strategy): number {
  const hit = stageCountCache.get(strategy);
  if (hit !== undefined) return hit;
  const file = strategy.path;
  const stages = [...new Set(strategy.layouts.map((l) => l.stage))].sort((a, b) => a - b);
  if (stages.length === 0) throw new InputError('strategy has no parameter layouts', file !== undefined ? { file } : {});
  for (let i = 0; i < stages.length; i++) {
    if (stages[i] !== i) {
      throw new InputError(`pipeline stages [${stages.join(',')}] are not exactly 0..${stages.length - 1}`, file !== undefined ? { file } : {});
    }
  }
  stageCountCache.set(strategy, stages.length);
  return stages.length;
}

/** All devices of the strategy: stage device count x stage count. */
export function totalDeviceCount(strategy: Strategy): number {
  return stageDeviceCount(strategy) * stageCount(strategy);
}

const stageIndex = new WeakMap<Strategy, Map<number, Map<string, ParamLayout>>>();

function indexOf(strategy: Strategy): Map<number, Map<string, ParamLayout>> {
  let idx = stageIndex.get(strategy);
  if (idx === undefined) {
    idx = new Map();
    for (const l of strategy.layouts) {
      let m = idx.get(l.stage);
      if (m === undefined) idx.set(l.stage, (m = new Map()));
      if (!m.has(l.name)) m.set(l.name, l);
    }
    stageIndex.set(strategy, idx);
  }
  return idx;
}

/** The layouts of one pipeline stage, by parameter name (the first if a name repeats). */
export function layoutsOfStage(strategy: Strategy, stage: number): Map<string, ParamLayout> {
  return new Map(indexOf(strategy).get(stage) ?? []);
}

/** Pipeline stages holding a parameter, ascending (a shared embedding is in several). */
export function stagesOfParam(strategy: Strategy, name: string): number[] {
  const out: number[] = [];
  for (const [stage, m] of indexOf(strategy)) if (m.has(name)) out.push(stage);
  return out.sort((a, b) => a - b);
}

/** The layout a global rank uses for a parameter (its own stage's), or undefined. */
export function layoutForRank(strategy: Strategy, name: string, globalRank: number): ParamLayout | undefined {
  return indexOf(strategy).get(stageOf(globalRank, stageDeviceCount(strategy)))?.get(name);
}

// ------------------------------------------------------------------------------------------------
// Slices

/** Per tensor dim, the model-parallel part count (MindSpore `_get_tensor_strategy`), without the optimizer split. */
export function tensorStrategy(layout: ParamLayout): number[] {
  return [...compile(layout).mpCounts];
}

/** Optimizer shard size after resolving -1 (the whole repeated group); 1 = no extra split. */
export function resolvedOptShardSize(layout: ParamLayout): number {
  return compile(layout).optSize;
}

/** Size of the repeated group: devices that hold the same model-parallel slice. */
export function repeatedGroupSize(layout: ParamLayout): number {
  const c = compile(layout);
  let g = 1;
  for (const a of c.freeAxes) g *= c.devMatrix[a] as number;
  return g;
}

/** Per tensor dim, how many parts it is cut into (nested = product; dim 0 x optimizer shard size). */
export function splitCounts(layout: ParamLayout): number[] {
  return [...compile(layout).counts];
}

/** Devices the layout spreads over: prod(devMatrix). */
export function layoutDeviceCount(layout: ParamLayout): number {
  return compile(layout).devices;
}

/**
 * Per tensor dim, the index of the part `localRank` holds. Dim 0 combines the model-parallel part
 * (outer) and the optimizer part (inner): `mp * size + pos_in_group mod size`.
 */
export function sliceIndex(layout: ParamLayout, localRank: number): number[] {
  const c = compile(layout);
  checkLocalRank(layout, c, localRank);
  const out = new Array<number>(c.dimAxes.length);
  partIndexes(c, localRank, out);
  return out;
}

/** Fill `out` with the per-dim part indices of `localRank` (no checks, no allocation). */
function partIndexes(c: Compiled, localRank: number, out: number[]): void {
  const dev = c.devMatrix;
  const strides = c.devStrides;
  for (let i = 0; i < c.dimAxes.length; i++) {
    const axes = c.dimAxes[i] as readonly number[];
    let idx = 0;
    for (let j = 0; j < axes.length; j++) {
      const a = axes[j] as number;
      const d = dev[a] as number;
      idx = idx * d + (Math.floor(localRank / (strides[a] as number)) % d);
    }
    out[i] = idx;
  }
  if (c.optSize > 1) {
    let pos = 0;
    for (let j = 0; j < c.freeAxes.length; j++) {
      const a = c.freeAxes[j] as number;
      const d = dev[a] as number;
      pos = pos * d + (Math.floor(localRank / (strides[a] as number)) % d);
    }
    out[0] = (out[0] as number) * c.optSize + (pos % c.optSize);
  }
}

/** Ranks holding identical boxes share this key. */
export function replicaKey(layout: ParamLayout, localRank: number): string {
  return sliceIndex(layout, localRank).join(',');
}

function checkRank(layout: ParamLayout, shape: readonly number[], what: string): void {
  const c = compile(layout);
  if (shape.length !== c.dimAxes.length) {
    fail(layout, `${what} [${shape.join(',')}] has ${shape.length} dims but tensor_map ${JSON.stringify(layout.tensorMap)} has ${c.dimAxes.length}`);
  }
  for (const d of shape) if (!Number.isSafeInteger(d) || d < 0) fail(layout, `${what} [${shape.join(',')}] is not a shape`);
}

/** The hyper-rectangle of the full tensor that `localRank` holds. */
export function sliceBox(layout: ParamLayout, fullShape: readonly number[], localRank: number): Box {
  const c = compile(layout);
  checkRank(layout, fullShape, 'full shape');
  checkLocalRank(layout, c, localRank);
  const idx = new Array<number>(fullShape.length);
  partIndexes(c, localRank, idx);
  const start = idx;
  const shape = new Array<number>(fullShape.length);
  for (let i = 0; i < fullShape.length; i++) {
    const full = fullShape[i] as number;
    const k = c.counts[i] as number;
    if (i === 0 && c.splitStarts !== null) {
      const pss = layout.paramSplitShape;
      const total = (c.splitStarts[pss.length - 1] as number) + (pss[pss.length - 1] as number);
      if (total !== full) fail(layout, `param_split_shape [${pss.join(',')}] adds up to ${total}, but dim 0 is ${full}`);
      const p = Math.floor((idx[0] as number) / c.optSize);
      const inner = (idx[0] as number) % c.optSize;
      const part = (pss[p] as number) / c.optSize;
      start[0] = (c.splitStarts[p] as number) + inner * part;
      shape[0] = part;
      continue;
    }
    if (full % k !== 0) {
      fail(layout, `dim ${i} of shape [${fullShape.join(',')}] does not divide into ${k} parts (tensor_map ${JSON.stringify(layout.tensorMap)}, dev_matrix [${layout.devMatrix.join(',')}]${i === 0 && c.optSize > 1 ? `, optimizer shard ${c.optSize}` : ''})`);
    }
    const len = full / k;
    start[i] = (idx[i] as number) * len;
    shape[i] = len;
  }
  return { start, shape };
}

/**
 * The per-dimension view of `sliceBox` for planners: where the parts of tensor dim `dim` (of size
 * `full`) begin, `splitCounts(layout)[dim] + 1` increasing offsets (part p is [b[p], b[p+1])).
 * Throws like `sliceBox` when the dim does not divide.
 */
export function dimPartBounds(layout: ParamLayout, dim: number, full: number): Float64Array {
  const c = compile(layout);
  const k = c.counts[dim];
  if (k === undefined) fail(layout, `dim ${dim} is outside tensor_map ${JSON.stringify(layout.tensorMap)}`);
  const b = new Float64Array(k + 1);
  if (dim === 0 && c.splitStarts !== null) {
    const pss = layout.paramSplitShape;
    const total = (c.splitStarts[pss.length - 1] as number) + (pss[pss.length - 1] as number);
    if (total !== full) fail(layout, `param_split_shape [${pss.join(',')}] adds up to ${total}, but dim 0 is ${full}`);
    let i = 0;
    for (let p = 0; p < pss.length; p++) {
      const part = (pss[p] as number) / c.optSize;
      for (let j = 0; j < c.optSize; j++) b[i++] = (c.splitStarts[p] as number) + j * part;
    }
    b[i] = total;
    return b;
  }
  if (full % k !== 0) {
    fail(layout, `dim ${dim} of size ${full} does not divide into ${k} parts (tensor_map ${JSON.stringify(layout.tensorMap)}, dev_matrix [${layout.devMatrix.join(',')}]${dim === 0 && c.optSize > 1 ? `, optimizer shard ${c.optSize}` : ''})`);
  }
  const len = full / k;
  for (let i = 0; i <= k; i++) b[i] = i * len;
  return b;
}

/**
 * The full tensor shape rebuilt from one slice's shape: `slice[i] x parts[i]`; with
 * param_split_shape, dim 0 is its sum. With `localRank`, the slice must be exactly that rank's.
 */
export function fullShapeFromSlice(layout: ParamLayout, sliceShape: readonly number[], localRank?: number): number[] {
  const c = compile(layout);
  checkRank(layout, sliceShape, 'slice shape');
  const full = sliceShape.map((d, i) => d * (c.counts[i] as number));
  if (c.splitStarts !== null) {
    const pss = layout.paramSplitShape;
    full[0] = (c.splitStarts[pss.length - 1] as number) + (pss[pss.length - 1] as number);
    const allowed = localRank !== undefined
      ? [(pss[Math.floor((sliceIndex(layout, localRank)[0] as number) / c.optSize)] as number) / c.optSize]
      : pss.map((s) => s / c.optSize);
    if (!allowed.includes(sliceShape[0] as number)) {
      fail(layout, `slice dim 0 is ${sliceShape[0]}, expected ${allowed.length === 1 ? allowed[0] : `one of ${allowed.join(',')}`} from param_split_shape [${pss.join(',')}]`);
    }
  }
  return full;
}

/** Every distinct slice of a layout with the local ranks holding it (ascending), in slice order of first holder. */
export function distinctSlices(layout: ParamLayout, fullShape: readonly number[]): Array<{ box: Box; ranks: number[] }> {
  const c = compile(layout);
  const byKey = new Map<string, { box: Box; ranks: number[] }>();
  for (let r = 0; r < c.devices; r++) {
    const key = replicaKey(layout, r);
    const hit = byKey.get(key);
    if (hit !== undefined) hit.ranks.push(r);
    else byKey.set(key, { box: sliceBox(layout, fullShape, r), ranks: [r] });
  }
  return [...byKey.values()];
}

// ------------------------------------------------------------------------------------------------
// No strategy

/** The layout of a parameter held whole by one device ("no strategy": one complete file). */
export function completeLayout(ndim: number, name = ''): ParamLayout {
  if (!Number.isSafeInteger(ndim) || ndim < 0) throw new InputError(`tensor rank ${ndim} is invalid`);
  return {
    name,
    stage: 0,
    devMatrix: [1],
    tensorMap: new Array<number>(ndim).fill(-1),
    paramSplitShape: [],
    indicesOffset: [],
    field: 0,
    optShardStep: 0,
    optShardSize: 0,
  };
}


// ------------------------------------------------------------------------------------------------
// Shape checks

/** One source slice of a parameter, for `checkShapes`. */
export interface SliceShapeSource {
  /** The file holding the slice (for messages). */
  readonly file: string;
  readonly layout: ParamLayout;
  readonly sliceShape: readonly number[];
  /** Local rank of the file, when known: the slice must then be exactly that rank's box. */
  readonly localRank?: number;
}

/**
 * The full shape of `param`, rebuilt from every source slice; all must agree (and, where the rank
 * is known, each slice must be that rank's box). InputError naming the parameter, files and shapes.
 */
export function checkShapes(param: string, sources: readonly SliceShapeSource[]): number[] {
  if (sources.length === 0) throw new InputError('no source holds this parameter', { tensor: param });
  let agreed: number[] | null = null;
  let agreedFile = '';
  let agreedSlice: readonly number[] = [];
  for (const s of sources) {
    let full: number[];
    try {
      full = fullShapeFromSlice(s.layout, s.sliceShape, s.localRank);
    } catch (err) {
      if (err instanceof InputError) throw new InputError(`${err.message.replace(/^tensor '[^']*': /, '')}`, { file: s.file, tensor: param });
      throw err;
    }
    if (agreed === null) {
      agreed = full;
      agreedFile = s.file;
      agreedSlice = s.sliceShape;
    } else if (full.length !== agreed.length || full.some((d, i) => d !== agreed?.[i])) {
      throw new InputError(
        `full shapes disagree: ${agreedFile} has slice [${agreedSlice.join(',')}] -> [${agreed.join(',')}], ${s.file} has slice [${s.sliceShape.join(',')}] -> [${full.join(',')}]`,
        { tensor: param },
      );
    }
    if (s.localRank !== undefined) {
      let box: Box;
      try {
        box = sliceBox(s.layout, agreed, s.localRank);
      } catch (err) {
        if (err instanceof InputError) throw new InputError(`${err.message.replace(/^tensor '[^']*': /, '')}`, { file: s.file, tensor: param });
        throw err;
      }
      if (box.shape.some((d, i) => d !== s.sliceShape[i])) {
        throw new InputError(
          `slice [${s.sliceShape.join(',')}] of local rank ${s.localRank} does not match its box [${box.shape.join(',')}] of full shape [${agreed.join(',')}]`,
          { file: s.file, tensor: param },
        );
      }
    }
  }
  return agreed as number[];
}
