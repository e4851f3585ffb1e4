/**
 * Per-dimension slicing arithmetic for the planner (spec mindspore-formats §3).
 *
 * A layout (dev_matrix, tensor_map, optimizer shard, manual dim-0 split) cuts every tensor dim
 * into a fixed number of parts; a local rank holds one part per dim. The planner never builds
 * boxes for all ranks: it works per dim with part counts and boundaries, and finds overlapping
 * parts by arithmetic (division for even splits, binary search for uneven ones).
 */
import { InputError } from '../errors.js';
import type { ParamLayout, TensorMapEntry } from '../formats/strategy/model.js';

/** How one tensor dimension is cut. */
export interface DimCut {
  /** Device-matrix axes (left-indexed) whose coordinates give the model-parallel part, most significant first. */
  readonly axes: readonly number[];
  /** Model-parallel parts (product of the axes' sizes). */
  readonly mpParts: number;
  /** Optimizer-shard parts inside each model-parallel part (dim 0 only; 1 otherwise). */
  readonly optParts: number;
  /** Uneven model-parallel part sizes (manual dim-0 split); null when even. */
  readonly uneven: readonly number[] | null;
}

/** The slicing of one parameter under one layout, independent of the full shape. */
export interface LayoutGeom {
  readonly key: string;
  readonly devMatrix: readonly number[];
  readonly stageDevices: number;
  readonly dims: readonly DimCut[];
  /** Device axes no dim uses (replica axes), ascending. */
  readonly replicaAxes: readonly number[];
}

/** A complete (unsplit) tensor held by one device. */
export function completeGeom(rank: number): LayoutGeom {
  const dims: DimCut[] = [];
  for (let i = 0; i < rank; i++) dims.push({ axes: [], mpParts: 1, optParts: 1, uneven: null });
  return { key: `complete/${rank}`, devMatrix: [1], stageDevices: 1, dims, replicaAxes: [] };
}

function product(xs: readonly number[]): number {
  let p = 1;
  for (const x of xs) p *= x;
  return p;
}

/** Geometry of a strategy layout for a tensor of `tensorRank` dims. */
export function geomOfLayout(layout: ParamLayout, tensorRank: number, where: { file?: string } = {}): LayoutGeom {
  const ctx = { file: where.file, tensor: layout.name };
  const dev = layout.devMatrix;
  if (dev.length === 0 || dev.some((d) => !Number.isSafeInteger(d) || d < 1)) {
    throw new InputError(`dev_matrix [${dev.join(',')}] must list positive device counts`, ctx);
  }
  if (layout.field > 0) {
    throw new InputError(`field-sliced layouts (field=${layout.field}) are not supported`, ctx);
  }
  const map: TensorMapEntry[] = [...layout.tensorMap];
  // Layout-API maps of a 1-dim tensor carry an extra empty entry; drop empties beyond the tensor rank.
  while (map.length > tensorRank && Array.isArray(map[map.length - 1]) && (map[map.length - 1] as readonly number[]).length === 0) map.pop();
  if (map.length !== tensorRank) {
    throw new InputError(`tensor_map has ${map.length} entries but the tensor has ${tensorRank} dims`, ctx);
  }
  const used = new Set<number>();
  const dims: DimCut[] = [];
  for (let d = 0; d < tensorRank; d++) {
    const e = map[d] as TensorMapEntry;
    const entries = (typeof e === 'number' ? [e] : [...e]).filter((m) => m !== -1);
    const axes: number[] = [];
    for (const m of entries) {
      if (!Number.isInteger(m) || m < 0 || m >= dev.length) {
        throw new InputError(`tensor_map entry ${m} on dim ${d} is outside dev_matrix [${dev.join(',')}]`, ctx);
      }
      const axis = dev.length - 1 - m;
      if (used.has(axis)) throw new InputError(`device axis ${m} is used twice in tensor_map`, ctx);
      used.add(axis);
      axes.push(axis);
    }
    dims.push({ axes, mpParts: product(axes.map((a) => dev[a] as number)), optParts: 1, uneven: null });
  }
  const replicaAxes: number[] = [];
  for (let a = 0; a < dev.length; a++) if (!used.has(a)) replicaAxes.push(a);
  const groupSize = product(replicaAxes.map((a) => dev[a] as number));
  let opt = 1;
  if (layout.optShardSize !== 0 && tensorRank > 0) {
    opt = layout.optShardSize < 0 ? groupSize : Math.min(layout.optShardSize, groupSize);
    if (!Number.isSafeInteger(opt) || opt < 1) throw new InputError(`bad opt_weight_shard_size ${layout.optShardSize}`, ctx);
  }
  if (layout.paramSplitShape.length > 0) {
    const d0 = dims[0];
    if (d0 === undefined) throw new InputError('param_split_shape given for a scalar', ctx);
    if (layout.paramSplitShape.length !== d0.mpParts) {
      throw new InputError(`param_split_shape has ${layout.paramSplitShape.length} sizes but dim 0 is split in ${d0.mpParts}`, ctx);
    }
    if (layout.paramSplitShape.some((s) => !Number.isSafeInteger(s) || s < 0 || s % opt !== 0)) {
      throw new InputError(`param_split_shape [${layout.paramSplitShape.join(',')}] has sizes that are negative or not divisible by the optimizer shard ${opt}`, ctx);
    }
    dims[0] = { ...d0, uneven: [...layout.paramSplitShape] };
  }
  if (opt > 1) dims[0] = { ...(dims[0] as DimCut), optParts: opt };
  const key = JSON.stringify([dev, dims.map((d) => [d.axes, d.optParts, d.uneven])]);
  return { key, devMatrix: [...dev], stageDevices: product(dev), dims, replicaAxes };
}

/** Row-major unravel of every local rank over a device matrix: coords[local * axes + axis]. */
const coordCache = new Map<string, Int32Array>();
export function coordsOf(devMatrix: readonly number[]): Int32Array {
  const key = devMatrix.join(',');
  let c = coordCache.get(key);
  if (c !== undefined) return c;
  const n = product(devMatrix);
  const k = devMatrix.length;
  c = new Int32Array(n * k);
  for (let r = 0; r < n; r++) {
    let rest = r;
    for (let a = k - 1; a >= 0; a--) {
      const size = devMatrix[a] as number;
      c[r * k + a] = rest % size;
      rest = Math.floor(rest / size);
    }
  }
  coordCache.set(key, c);
  return c;
}

/** Part index on every dim for a local rank. */
export function partsOf(geom: LayoutGeom, local: number): number[] {
  const coords = coordsOf(geom.devMatrix);
  const k = geom.devMatrix.length;
  const out: number[] = [];
  for (let d = 0; d < geom.dims.length; d++) {
    const cut = geom.dims[d] as DimCut;
    let p = 0;
    for (const a of cut.axes) p = p * (geom.devMatrix[a] as number) + (coords[local * k + a] as number);
    if (cut.optParts > 1) {
      let pos = 0;
      for (const a of geom.replicaAxes) pos = pos * (geom.devMatrix[a] as number) + (coords[local * k + a] as number);
      p = p * cut.optParts + (pos % cut.optParts);
    }
    out.push(p);
  }
  return out;
}

export function partCount(cut: DimCut): number {
  return cut.mpParts * cut.optParts;
}

/** Boundaries of the parts of one dim of full size `full`: parts+1 increasing numbers. */
export function boundsOf(cut: DimCut, full: number): Float64Array {
  const n = partCount(cut);
  const b = new Float64Array(n + 1);
  if (cut.uneven === null) {
    const size = full / n;
    for (let i = 0; i <= n; i++) b[i] = i * size;
    return b;
  }
  let at = 0;
  let i = 0;
  for (const u of cut.uneven) {
    const piece = u / cut.optParts;
    for (let j = 0; j < cut.optParts; j++) {
      b[i++] = at;
      at += piece;
    }
  }
  b[i] = at;
  return b;
}

/** Full dim size rebuilt from a slice's dim size held at part `part`. */
export function fullDimFromSlice(cut: DimCut, sliceDim: number, part: number): number | null {
  if (cut.uneven === null) return sliceDim * partCount(cut);
  const mp = Math.floor(part / cut.optParts);
  const expected = (cut.uneven[mp] as number) / cut.optParts;
  if (expected !== sliceDim) return null;
  return cut.uneven.reduce((s, x) => s + x, 0);
}

/** Check a full shape can be cut by a geometry; returns a message when it cannot. */
export function cutProblem(geom: LayoutGeom, full: readonly number[]): string | null {
  for (let d = 0; d < geom.dims.length; d++) {
    const cut = geom.dims[d] as DimCut;
    const f = full[d] as number;
    if (cut.uneven !== null) {
      const sum = cut.uneven.reduce((s, x) => s + x, 0);
      if (sum !== f) return `dim ${d} has size ${f} but param_split_shape adds up to ${sum}`;
    } else if (f % partCount(cut) !== 0) {
      return `dim ${d} of size ${f} cannot be split evenly in ${partCount(cut)} parts`;
    }
  }
  return null;
}

/** Parts of a dim that overlap [a, b): first and last index inclusive (empty when last < first). */
export function overlapping(bounds: Float64Array, uniform: boolean, a: number, b: number): [number, number] {
  const n = bounds.length - 1;
  if (b <= a || n <= 0) return [0, -1];
  if (uniform) {
    const size = bounds[1] as number;
    if (size <= 0) return [0, -1];
    return [Math.floor(a / size), Math.min(n - 1, Math.floor((b - 1) / size))];
  }
  const find = (x: number): number => {
    // last i with bounds[i] <= x
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if ((bounds[mid] as number) <= x) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };
  return [find(a), find(b - 1)];
}
