/**
 * The derived geometry of a plan, computed from the plan's data alone and memoised per plan
 * object (a plan read back from JSON derives the same).
 *
 * Scale: parameters with the same (source layout, destination layout, full shape, element size)
 * form a class; a class's copy geometry is computed once per distinct destination slice and its
 * replica choice once per destination rank, so planning costs about ranks x classes, not
 * ranks x ranks x parameters.
 */
import { InputError } from '../errors.js';
import { dtypeInfo } from '../formats/dtype.js';
import type { ParamLayout } from '../formats/strategy/model.js';
import type { Box, CkptHints } from '../formats/types.js';
import { bufferSizes } from './buffers.js';
import { boundsOf, completeGeom, cutProblem, geomOfLayout, overlapping, partCount, partsOf, type LayoutGeom } from './geometry.js';
import { sideOfLayouts, type SideLayouts } from './model.js';
import type { BufferSizes, ModelParam, Plan, PlanEntry } from './types.js';

export interface DimBounds {
  readonly bounds: Float64Array;
  readonly uniform: boolean;
}

export interface SrcChoice {
  readonly geom: LayoutGeom;
  readonly bounds: readonly DimBounds[];
  readonly stages: readonly number[];
  /** tuple id -> global ranks holding it, ascending. */
  readonly holders: Map<number, number[]>;
}

export interface OpGeom {
  readonly srcTuple: number;
  readonly srcShape: readonly number[];
  readonly srcBox: Box;
  readonly dstBox: Box;
  readonly bytes: number;
}

export interface SliceGeom {
  readonly ops: OpGeom[];
  /** Start of the destination slice in the full tensor. */
  readonly start: number[];
  readonly shape: number[];
  readonly bytes: number;
  readonly needsScratch: boolean;
}

export interface ClassInfo {
  readonly id: number;
  readonly src: SrcChoice;
  readonly dstGeom: LayoutGeom;
  readonly dstBounds: readonly DimBounds[];
  readonly full: readonly number[];
  readonly elemSize: number;
  readonly geomByDstTuple: Map<number, SliceGeom>;
}

export interface ParamInfo {
  readonly name: string;
  readonly param: ModelParam;
  /** dst stage -> class */
  readonly classByStage: Map<number, ClassInfo>;
  readonly ckpt?: CkptHints;
}

export interface ExtraInfo {
  readonly name: string;
  /** global source ranks whose file holds it, ascending */
  readonly holders: number[];
  readonly entryOf: Map<number, PlanEntry>;
}

export interface PlanContext {
  readonly srcStageDevices: number;
  readonly srcTotal: number;
  readonly dstStageDevices: number;
  readonly dstStages: number;
  readonly order: readonly string[];
  readonly params: Map<string, ParamInfo>;
  readonly extras: Map<string, ExtraInfo>;
  /** dst stage -> classes (with the count of parameters) in order of first appearance */
  readonly stageClasses: Map<number, Array<{ cls: ClassInfo; count: number }>>;
  readonly buffers: BufferSizes;
}

const contexts = new WeakMap<Plan, PlanContext>();

function dimBounds(geom: LayoutGeom, full: readonly number[]): DimBounds[] {
  return geom.dims.map((cut, d) => ({ bounds: boundsOf(cut, full[d] as number), uniform: cut.uneven === null }));
}

export function tupleOf(geom: LayoutGeom, local: number): { id: number; parts: number[] } {
  const parts = partsOf(geom, local);
  let id = 0;
  for (let d = 0; d < parts.length; d++) id = id * partCount(geom.dims[d]!) + (parts[d] as number);
  return { id, parts };
}

/** The geometry of a plan (memoised per plan object). Throws InputError for a layout that cannot cut a full shape. */
export function planContext(plan: Plan): PlanContext {
  let ctx = contexts.get(plan);
  if (ctx === undefined) {
    ctx = deriveContext(plan);
    contexts.set(plan, ctx);
  }
  return ctx;
}

/** Let `to` (the same plan data with other summaries) use the geometry already derived for `from`. */
export function shareContext(from: Plan, to: Plan): void {
  const ctx = contexts.get(from);
  if (ctx !== undefined) contexts.set(to, ctx);
}

function sideFrom(side: Plan['destination']): SideLayouts | null {
  return side.layouts === null ? null : sideOfLayouts(side.layouts, side.strategy, 'the', side.stages);
}

function deriveContext(plan: Plan): PlanContext {
  const src = sideFrom(plan.source);
  const dst = sideFrom(plan.destination);
  const srcStageDevices = plan.source.stageDevices;
  const srcTotal = plan.source.deviceCount;
  const dstStageDevices = plan.destination.stageDevices;
  const dstStages = plan.destination.stages;
  const holderCache = new Map<string, SrcChoice>();
  const classCache = new Map<string, ClassInfo>();
  const geomCache = new Map<string, LayoutGeom>();
  let classIds = 0;
  const geomOf = (side: SideLayouts, layout: ParamLayout, rank: number): LayoutGeom => {
    const k = `${side === src ? 's' : 'd'}/${layout.stage}/${layout.name}/${rank}`;
    let g = geomCache.get(k);
    if (g === undefined) geomCache.set(k, (g = geomOfLayout(layout, rank, { file: side.path ?? undefined })));
    return g;
  };

  const makeSrcChoice = (geom: LayoutGeom, stages: readonly number[], full: readonly number[], holdersOf: readonly number[] | null): SrcChoice => {
    const key = `${geom.key}|${stages.join(',')}|${full.join(',')}|${holdersOf?.join(',') ?? ''}`;
    let c = holderCache.get(key);
    if (c !== undefined) return c;
    const holders = new Map<number, number[]>();
    if (holdersOf !== null) holders.set(0, [...holdersOf]);
    else {
      for (const s of stages) {
        for (let l = 0; l < geom.stageDevices; l++) {
          const { id } = tupleOf(geom, l);
          let h = holders.get(id);
          if (h === undefined) holders.set(id, (h = []));
          h.push(s * srcStageDevices + l);
        }
      }
      for (const h of holders.values()) h.sort((a, b) => a - b);
    }
    c = { geom, bounds: dimBounds(geom, full), stages, holders };
    holderCache.set(key, c);
    return c;
  };

  const classFor = (choice: SrcChoice, dstGeom: LayoutGeom, full: readonly number[], elemSize: number): ClassInfo => {
    const key = `${choice.geom.key}|${choice.stages.join(',')}|${[...(choice.holders.get(0) ?? [])].join(',')}|${dstGeom.key}|${full.join(',')}|${elemSize}`;
    let c = classCache.get(key);
    if (c === undefined) {
      c = { id: classIds++, src: choice, dstGeom, dstBounds: dimBounds(dstGeom, full), full, elemSize, geomByDstTuple: new Map() };
      classCache.set(key, c);
    }
    return c;
  };

  const params = new Map<string, ParamInfo>();
  for (const p of plan.model.params) {
    const full = p.full;
    const elemSize = dtypeInfo(p.dtype)?.size as number;
    const classByStage = new Map<number, ClassInfo>();
    const dstLayouts = dst?.byName.get(p.name);
    const dstStageList: Array<[number, ParamLayout | null]> = dst === null ? [[0, null]] : [...(dstLayouts ?? new Map<number, ParamLayout>())].sort((a, b) => a[0] - b[0]);
    for (const [ds, dl] of dstStageList) {
      let dGeom: LayoutGeom;
      if (dl === null || dst === null) dGeom = completeGeom(full.length);
      else {
        dGeom = geomOf(dst, dl, full.length);
        const problem = cutProblem(dGeom, full);
        if (problem !== null) throw new InputError(`destination layout cannot cut full shape [${full.join(',')}]: ${problem}`, { file: dst.path ?? undefined, tensor: p.name });
      }
      let choice: SrcChoice;
      if (p.srcStages.length > 0 && src !== null) {
        const pref = p.srcStages.includes(ds) ? ds : (p.srcStages[0] as number);
        const layoutOf = (s: number): LayoutGeom => geomOf(src, src.byName.get(p.name)!.get(s)!, full.length);
        const g0 = layoutOf(pref);
        const same = p.srcStages.filter((s) => layoutOf(s).key === g0.key);
        choice = makeSrcChoice(g0, same, full, null);
      } else {
        choice = makeSrcChoice(completeGeom(full.length), [], full, p.holders ?? [0]);
      }
      classByStage.set(ds, classFor(choice, dGeom, full, elemSize));
    }
    params.set(p.name, { name: p.name, param: p, classByStage, ...(p.ckpt !== undefined ? { ckpt: p.ckpt } : {}) });
  }

  const extras = new Map<string, ExtraInfo>();
  for (const e of plan.model.extras) {
    const entryOf = new Map<number, PlanEntry>();
    for (const v of e.variants) for (const h of v.holders) entryOf.set(h, v.entry);
    extras.set(e.name, { name: e.name, holders: [...entryOf.keys()].sort((a, b) => a - b), entryOf });
  }

  // ---- classes per destination stage, in entry order
  const stageClasses = new Map<number, Array<{ cls: ClassInfo; count: number }>>();
  for (let s = 0; s < dstStages; s++) stageClasses.set(s, []);
  const classSlot = new Map<string, { cls: ClassInfo; count: number }>();
  for (const name of plan.model.order) {
    const p = params.get(name);
    if (p === undefined) continue;
    for (const [s, cls] of p.classByStage) {
      const k = `${s}/${cls.id}`;
      let slot = classSlot.get(k);
      if (slot === undefined) {
        slot = { cls, count: 0 };
        classSlot.set(k, slot);
        stageClasses.get(s)?.push(slot);
      }
      slot.count++;
    }
  }
  return {
    srcStageDevices, srcTotal, dstStageDevices, dstStages, order: plan.model.order, params, extras, stageClasses,
    buffers: bufferSizes(plan.memory),
  };
}

function isOneRun(full: readonly number[], box: Box): boolean {
  // one contiguous run: some k with dims > k whole and dims < k of extent 1
  let k = full.length - 1;
  while (k > 0 && box.start[k] === 0 && box.shape[k] === full[k]) k--;
  for (let i = 0; i < k; i++) if (box.shape[i] !== 1) return false;
  return true;
}

/** The copy geometry of a class for the destination slice of local rank `dstLocal` (memoised per distinct slice). */
export function classGeom(cls: ClassInfo, dstLocal: number): SliceGeom {
  const { id, parts } = tupleOf(cls.dstGeom, dstLocal);
  let g = cls.geomByDstTuple.get(id);
  if (g !== undefined) return g;
  const rank = cls.full.length;
  const a: number[] = [];
  const b: number[] = [];
  for (let d = 0; d < rank; d++) {
    const bd = cls.dstBounds[d] as DimBounds;
    a.push(bd.bounds[parts[d] as number] as number);
    b.push(bd.bounds[(parts[d] as number) + 1] as number);
  }
  const shape = a.map((x, d) => (b[d] as number) - x);
  // overlapping source parts per dim
  const ranges: Array<[number, number]> = [];
  for (let d = 0; d < rank; d++) {
    const sb = cls.src.bounds[d] as DimBounds;
    ranges.push(overlapping(sb.bounds, sb.uniform, a[d] as number, b[d] as number));
  }
  const ops: OpGeom[] = [];
  let needsScratch = false;
  const counts = cls.src.geom.dims.map((c) => partCount(c));
  const cur = ranges.map((r) => r[0]);
  const empty = ranges.some((r) => r[1] < r[0]);
  if (!empty) {
    for (;;) {
      const srcStart: number[] = [];
      const srcShape: number[] = [];
      const dstStart: number[] = [];
      const boxShape: number[] = [];
      let tuple = 0;
      let ok = true;
      for (let d = 0; d < rank; d++) {
        const sb = (cls.src.bounds[d] as DimBounds).bounds;
        const p = cur[d] as number;
        const s0 = sb[p] as number;
        const s1 = sb[p + 1] as number;
        const lo = Math.max(s0, a[d] as number);
        const hi = Math.min(s1, b[d] as number);
        if (hi <= lo) ok = false;
        srcStart.push(lo - s0);
        srcShape.push(s1 - s0);
        dstStart.push(lo - (a[d] as number));
        boxShape.push(hi - lo);
        tuple = tuple * (counts[d] as number) + p;
      }
      if (ok || rank === 0) {
        const srcBox = { start: srcStart, shape: boxShape };
        let vol = cls.elemSize;
        for (const x of boxShape) vol *= x;
        if (!isOneRun(srcShape, srcBox)) needsScratch = true;
        ops.push({ srcTuple: tuple, srcShape, srcBox, dstBox: { start: dstStart, shape: boxShape }, bytes: vol });
      }
      let d = rank - 1;
      while (d >= 0) {
        cur[d] = (cur[d] as number) + 1;
        if ((cur[d] as number) <= (ranges[d] as [number, number])[1]) break;
        cur[d] = (ranges[d] as [number, number])[0];
        d--;
      }
      if (d < 0) break;
    }
  }
  let bytes = cls.elemSize;
  for (const x of shape) bytes *= x;
  g = { ops, start: a, shape, bytes, needsScratch };
  cls.geomByDstTuple.set(id, g);
  return g;
}
