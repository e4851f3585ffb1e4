/**
 * The planner's per-dimension view of a layout (spec mindspore-formats §3). All rank-to-part and
 * boundary math comes from plugin/layout (tensorStrategy, resolvedOptShardSize, sliceIndex,
 * dimPartBounds); this module only arranges it per dimension.
 *
 * A layout (dev_matrix, tensor_map, optimizer shard, manual dim-0 split) cuts every tensor dim
 * into a fixed number of parts; a local rank holds one part per dim. The planner never builds
 * boxes for all ranks: it works per dim with part counts and boundaries, and finds overlapping
 * parts by arithmetic (division for even splits, binary search for uneven ones).
 */
import { InputError } from '../errors.js';
import type { ParamLayout, TensorMapEntry } from '../formats/strategy/model.js';
import { dimPartBounds, layoutDeviceCount, resolvedOptShardSize, sliceIndex, tensorStrategy } from '../layout/index.js';

/** How one tensor dimension is cut (derived from plugin/layout, the one source of layout math). */
export interface DimCut {
  /** Model-parallel parts (product of the mapped device axes' sizes). */
  readonly mpParts: number;
  /** Optimizer-shard parts inside each model-parallel part (dim 0 only; 1 otherwise). */
  readonly optParts: number;
  /** Uneven model-parallel part sizes (manual dim-0 split); null when even. */
  readonly uneven: readonly number[] | null;
  /** The layout this dim belongs to (null: a complete tensor) and its index. */
  readonly layout: ParamLayout | null;
  readonly dim: number;
}

/** The slicing of one parameter under one layout, independent of the full shape. */
export interface LayoutGeom {
  readonly key: string;
  readonly devMatrix: readonly number[];
  readonly stageDevices: number;
  readonly dims: readonly DimCut[];
  /** The (rank-trimmed) layout; null for a complete tensor. */
  readonly layout: ParamLayout | null;
}

/** A complete (unsplit) tensor held by one device. */
export function completeGeom(rank: number): LayoutGeom {
  const dims: DimCut[] = [];
  for (let i = 0; i < rank; i++) dims.push({ mpParts: 1, optParts: 1, uneven: null, layout: null, dim: i });
  return { key: `complete/${rank}`, devMatrix: [1], stageDevices: 1, dims, layout: null };
}

function product(xs: readonly number[]): number {
  let p = 1;
  for (const x of xs) p *= x;
  return p;
}

/**
 * Geometry of a strategy layout for a tensor of `tensorRank` dims: part counts, optimizer shard
 * and uneven split as plugin/layout computes them (which also validates the layout).
 */
export function geomOfLayout(layout: ParamLayout, tensorRank: number, where: { file?: string } = {}): LayoutGeom {
  const ctx = { file: where.file, tensor: layout.name };
  const map: TensorMapEntry[] = [...layout.tensorMap];
  // Layout-API maps of a 1-dim tensor carry an extra empty entry; drop empties beyond the tensor rank.
  while (map.length > tensorRank && Array.isArray(map[map.length - 1]) && (map[map.length - 1] as readonly number[]).length === 0) map.pop();
  if (map.length !== tensorRank) {
    throw new InputError(`tensor_map has ${map.length} entries but the tensor has ${tensorRank} dims`, ctx);
  }
  const lay: ParamLayout = map.length === layout.tensorMap.length ? layout : { ...layout, tensorMap: map };
  let mp: number[];
  let opt: number;
  try {
    mp = tensorStrategy(lay);
    opt = tensorRank > 0 ? resolvedOptShardSize(lay) : 1;
    layoutDeviceCount(lay);
  } catch (err) {
    if (err instanceof InputError && where.file !== undefined) throw new InputError(err.message.replace(/^.*?: /, ''), ctx);
    throw err;
  }
  const dims: DimCut[] = mp.map((m, d) => ({
    mpParts: m,
    optParts: d === 0 ? opt : 1,
    uneven: d === 0 && lay.paramSplitShape.length > 0 ? [...lay.paramSplitShape] : null,
    layout: lay,
    dim: d,
  }));
  const key = JSON.stringify([lay.devMatrix, map, opt, lay.paramSplitShape]);
  return { key, devMatrix: [...lay.devMatrix], stageDevices: product(lay.devMatrix), dims, layout: lay };
}

/** Part index on every dim for a local rank (plugin/layout's sliceIndex). */
export function partsOf(geom: LayoutGeom, local: number): number[] {
  if (geom.layout === null) return geom.dims.map(() => 0);
  return sliceIndex(geom.layout, local);
}

export function partCount(cut: DimCut): number {
  return cut.mpParts * cut.optParts;
}

/** Boundaries of the parts of one dim of full size `full`: parts+1 increasing numbers (plugin/layout's dimPartBounds). */
export function boundsOf(cut: DimCut, full: number): Float64Array {
  if (cut.layout === null) return Float64Array.of(0, full);
  return dimPartBounds(cut.layout, cut.dim, full);
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
    if (cut.uneven === null && f % partCount(cut) !== 0) return `dim ${d} of size ${f} cannot be split evenly in ${partCount(cut)} parts`;
    try {
      boundsOf(cut, f);
    } catch (err) {
      if (err instanceof InputError) return err.message;
      throw err;
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
