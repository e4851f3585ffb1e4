/**
 * The re-sharding plan (pure, no I/O): source layout + destination layout + the source files'
 * entries -> for every destination rank the source ranks it reads, the copy operations of every
 * tensor, bytes read and written and the buffer memory execution needs.
 *
 * Scale: parameters with the same (source layout, destination layout, full shape, element size)
 * form a class; a class's copy geometry is computed once per distinct destination slice and its
 * replica choice once per destination rank, so planning costs about ranks x classes, not
 * ranks x ranks x parameters.
 *
 * Decisions where MindSpore is silent or differs:
 * - Entries no strategy describes (global_step, learning_rate, str entries, ...) are copied
 *   unchanged from source rank `R % sourceDeviceCount` (MindSpore's rule). For a multi-stage
 *   source, where that rank is not otherwise read, a rank already read with the same local rank
 *   `R % sourceStageDevices` (same values in every stage for such entries) is used instead, so no
 *   extra file is opened; failing both, the holder in the lowest stage with that local rank, else
 *   the lowest source rank that has them.
 * - A parameter described by the source strategy but by no stage of a given destination strategy
 *   is dropped (listed in `plan.dropped`); one the destination strategy names but no source file
 *   holds is an InputError.
 * - A parameter the source strategy does not describe but the destination does is taken as
 *   complete in every source file that holds it.
 * - Output order: names in the order of the source files (stage 0's first file, then stage 1's,
 *   ...), filtered to what the destination rank holds.
 * - Among replicas: a source rank already chosen for this destination rank first, else the one
 *   whose local rank is closest (cyclically, upwards) to `dstLocal % sourceStageDevices`; for a
 *   parameter held by several source stages with the same layout, all their replicas qualify.
 */
import { InputError } from '../errors.js';
import type { DType } from '../formats/dtype.js';
import { dtypeInfo } from '../formats/dtype.js';
import type { ParamLayout, Strategy } from '../formats/strategy/model.js';
import type { Box, CkptHints } from '../formats/types.js';
import {
  boundsOf, completeGeom, cutProblem, fullDimFromSlice, geomOfLayout, overlapping, partCount, partsOf,
  type LayoutGeom,
} from './geometry.js';

/** One entry of a source file, as the planner needs it. */
export interface PlanEntry {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly byteLength: number;
  readonly ckpt?: CkptHints;
}

/** A source file and its entries; `rank` is the global source rank (0 for a complete file). */
export interface PlanSourceFile {
  readonly rank: number;
  readonly path: string;
  readonly entries: readonly PlanEntry[];
}

export interface PlanInput {
  /** Source strategy; null = the source is one complete file. */
  readonly srcStrategy: Strategy | null;
  /** Destination strategy; null = one complete file. */
  readonly dstStrategy: Strategy | null;
  /** Every source file, one per global source rank 0..N-1. */
  readonly sources: readonly PlanSourceFile[];
  /** Destination ranks to plan (default: all). */
  readonly ranks?: readonly number[];
  /** Buffer budget in bytes for execution (default 512 MiB). */
  readonly memory?: number;
  /** Expected destination world size; an InputError when the destination strategy disagrees. */
  readonly worldSize?: number;
}

/** One copy: the box `srcBox` of source rank `srcRank`'s slice (of shape `srcShape`) goes to `dstBox` of the destination slice. */
export interface CopyOp {
  readonly srcRank: number;
  readonly srcShape: readonly number[];
  readonly srcBox: Box;
  readonly dstBox: Box;
}

/** A tensor of a destination file. */
export interface PlannedTensor {
  readonly name: string;
  readonly dtype: DType;
  /** Destination slice shape. */
  readonly shape: readonly number[];
  readonly byteLength: number;
  /** Full (unsliced) shape. */
  readonly fullShape: readonly number[];
  /** Copied verbatim (whole entry bytes) from `ops[0].srcRank`; the boxes are then the whole tensor. */
  readonly verbatim: boolean;
  readonly ops: readonly CopyOp[];
  readonly ckpt?: CkptHints;
}

export interface RankSummary {
  readonly rank: number;
  readonly stage: number;
  /** Source global ranks read, ascending. */
  readonly sourceRanks: readonly number[];
  readonly tensorCount: number;
  readonly bytesRead: number;
  readonly bytesWritten: number;
  /** Buffer bytes the execution of this rank needs (destination buffer + scratch). */
  readonly peakMemory: number;
}

export interface RankPlan extends RankSummary {
  readonly tensors: readonly PlannedTensor[];
}

export interface PlanSide {
  readonly strategy: string | null;
  readonly deviceCount: number;
  readonly stageDevices: number;
  readonly stages: number;
}

export interface Plan {
  readonly version: 1;
  readonly source: PlanSide & { readonly files: readonly { readonly rank: number; readonly path: string }[] };
  readonly destination: PlanSide;
  readonly memory: number;
  /** Parameters re-sharded (described by a strategy). */
  readonly parameters: number;
  /** Entries copied verbatim (described by no strategy). */
  readonly verbatim: readonly string[];
  /** Parameters in the source strategy that no destination stage holds. */
  readonly dropped: readonly string[];
  readonly ranks: readonly RankSummary[];
  readonly bytesRead: number;
  readonly bytesWritten: number;
  readonly peakMemory: number;
}

/** How the executor splits the budget: a destination band buffer and a scratch buffer. */
export interface BufferSizes {
  readonly band: number;
  readonly scratch: number;
}

export const DEFAULT_MEMORY = 512 * 1024 * 1024;
const MAX_BUFFER = 1024 * 1024 * 1024 - 1;

/** Largest band buffer: large enough for big sequential reads, small enough to pipeline. */
const MAX_BAND = 8 * 1024 * 1024;

/** The executor holds two band buffers (one assembled while the other is written) and a scratch buffer. */
export function bufferSizes(memory: number = DEFAULT_MEMORY): BufferSizes {
  const m = Math.max(memory, 1024 * 1024);
  const scratch = Math.min(64 * 1024 * 1024, Math.floor(m / 4));
  return { band: Math.min(MAX_BUFFER, MAX_BAND, Math.floor((m - scratch) / 2)), scratch };
}

// ---------------------------------------------------------------------------------------------

interface DimBounds {
  readonly bounds: Float64Array;
  readonly uniform: boolean;
}

interface SrcChoice {
  readonly geom: LayoutGeom;
  readonly bounds: readonly DimBounds[];
  readonly stages: readonly number[];
  /** tuple id -> global ranks holding it, ascending. */
  readonly holders: Map<number, number[]>;
}

interface OpGeom {
  readonly srcTuple: number;
  readonly srcShape: readonly number[];
  readonly srcBox: Box;
  readonly dstBox: Box;
  readonly bytes: number;
}

interface ClassInfo {
  readonly id: number;
  readonly src: SrcChoice;
  readonly dstGeom: LayoutGeom;
  readonly dstBounds: readonly DimBounds[];
  readonly full: readonly number[];
  readonly elemSize: number;
  readonly geomByDstTuple: Map<number, { ops: OpGeom[]; shape: number[]; bytes: number; needsScratch: boolean }>;
}

interface ParamInfo {
  readonly name: string;
  readonly dtype: DType;
  readonly full: readonly number[];
  /** dst stage -> class */
  readonly classByStage: Map<number, ClassInfo>;
  readonly ckpt?: CkptHints;
  readonly srcShape: readonly number[];
}

interface ExtraInfo {
  readonly name: string;
  /** global source ranks whose file holds it, ascending */
  readonly holders: number[];
}

interface Ctx {
  readonly srcStageDevices: number;
  readonly srcTotal: number;
  readonly dstStageDevices: number;
  readonly dstStages: number;
  readonly order: readonly string[];
  readonly params: Map<string, ParamInfo>;
  readonly extras: Map<string, ExtraInfo>;
  readonly fileEntries: (rank: number) => Map<string, PlanEntry>;
  /** dst stage -> classes (with the count of parameters) in order of first appearance */
  readonly stageClasses: Map<number, Array<{ cls: ClassInfo; count: number; maxBytes: number }>>;
  readonly buffers: BufferSizes;
}

const contexts = new WeakMap<Plan, Ctx>();
const entryMaps = new WeakMap<readonly PlanEntry[], Map<string, PlanEntry>>();

function entryMap(entries: readonly PlanEntry[]): Map<string, PlanEntry> {
  let m = entryMaps.get(entries);
  if (m === undefined) {
    m = new Map(entries.map((e) => [e.name, e]));
    entryMaps.set(entries, m);
  }
  return m;
}

interface SideLayouts {
  readonly stageDevices: number;
  readonly stages: number;
  /** name -> stage -> layout */
  readonly byName: Map<string, Map<number, ParamLayout>>;
  readonly path: string | null;
}

function product(xs: readonly number[]): number {
  let p = 1;
  for (const x of xs) p *= x;
  return p;
}

function sideOf(strategy: Strategy, what: string): SideLayouts {
  const file = strategy.path;
  if (strategy.layouts.length === 0) throw new InputError(`${what} strategy has no parameter layouts`, { file });
  const stageDevices = product(strategy.layouts[0]?.devMatrix ?? [1]);
  const byName = new Map<string, Map<number, ParamLayout>>();
  const stages = new Set<number>();
  for (const l of strategy.layouts) {
    const n = product(l.devMatrix);
    if (n !== stageDevices) {
      throw new InputError(`${what} strategy: dev_matrix [${l.devMatrix.join(',')}] has ${n} devices but other layouts have ${stageDevices}`, { file, tensor: l.name });
    }
    stages.add(l.stage);
    let m = byName.get(l.name);
    if (m === undefined) byName.set(l.name, (m = new Map()));
    if (!m.has(l.stage)) m.set(l.stage, l);
  }
  const sorted = [...stages].sort((a, b) => a - b);
  sorted.forEach((s, i) => {
    if (s !== i) throw new InputError(`${what} strategy: pipeline stages are [${sorted.join(',')}], expected 0..${sorted.length - 1}`, { file });
  });
  return { stageDevices, stages: sorted.length, byName, path: file ?? null };
}

function dimBounds(geom: LayoutGeom, full: readonly number[]): DimBounds[] {
  return geom.dims.map((cut, d) => ({ bounds: boundsOf(cut, full[d] as number), uniform: cut.uneven === null }));
}

function tupleOf(geom: LayoutGeom, local: number): { id: number; parts: number[] } {
  const parts = partsOf(geom, local);
  let id = 0;
  for (let d = 0; d < parts.length; d++) id = id * partCount(geom.dims[d]!) + (parts[d] as number);
  return { id, parts };
}

/** Build the plan. Throws InputError for inconsistent inputs. */
export function buildPlan(input: PlanInput): Plan {
  const memory = input.memory ?? DEFAULT_MEMORY;
  const buffers = bufferSizes(memory);
  const src = input.srcStrategy === null ? null : sideOf(input.srcStrategy, 'source');
  const dst = input.dstStrategy === null ? null : sideOf(input.dstStrategy, 'destination');

  // ---- source files
  const files = [...input.sources].sort((a, b) => a.rank - b.rank);
  if (files.length === 0) throw new InputError('no source files');
  files.forEach((f, i) => {
    if (f.rank !== i) throw new InputError(`source ranks must be 0..${files.length - 1}; rank ${i} is missing`, { file: f.path });
  });
  const srcStageDevices = src?.stageDevices ?? 1;
  const srcStages = src?.stages ?? 1;
  const srcTotal = srcStageDevices * srcStages;
  if (src === null && files.length > 1) {
    throw new InputError(`the source has ${files.length} rank files (sliced) but no source strategy was given`, { file: files[1]?.path });
  }
  if (files.length !== srcTotal) {
    throw new InputError(
      `the source strategy describes ${srcTotal} devices (${srcStages} stage(s) x ${srcStageDevices}) but there are ${files.length} source rank files`,
      { file: src?.path ?? undefined },
    );
  }
  const fileEntries = (rank: number): Map<string, PlanEntry> => entryMap((files[rank] as PlanSourceFile).entries);

  // ---- entry order: the first file of each source stage, then anything else
  const order: string[] = [];
  const seen = new Set<string>();
  for (let s = 0; s < srcStages; s++) {
    for (const e of (files[s * srcStageDevices] as PlanSourceFile).entries) {
      if (!seen.has(e.name)) {
        seen.add(e.name);
        order.push(e.name);
      }
    }
  }

  // ---- scan every source file: shapes of strategy-described parameters, holders of the rest
  const srcGeomCache = new Map<string, LayoutGeom>();
  const srcGeom = (layout: ParamLayout, rank: number, file: string): LayoutGeom => {
    const k = `${layout.stage}/${layout.name}/${rank}`;
    let g = srcGeomCache.get(k);
    if (g === undefined) srcGeomCache.set(k, (g = geomOfLayout(layout, rank, { file })));
    return g;
  };
  interface SrcParamScan { full: number[]; dtype: DType; stages: Set<number>; filesSeen: Map<number, number>; first: PlanEntry }
  const srcParams = new Map<string, SrcParamScan>();
  const plainHolders = new Map<string, number[]>();
  const plainFirst = new Map<string, PlanEntry>();
  const scannedArrays = new Map<readonly PlanEntry[], number>(); // entries array -> stage, for shared arrays
  for (const f of files) {
    const stage = Math.floor(f.rank / srcStageDevices);
    const local = f.rank % srcStageDevices;
    const sharedScan = scannedArrays.get(f.entries) === stage && src !== null;
    for (const e of f.entries) {
      const layout = src?.byName.get(e.name)?.get(stage);
      if (layout === undefined || (src?.byName.get(e.name) === undefined)) {
        if (src?.byName.has(e.name) === true) continue; // described for another stage only: not used from here
        let h = plainHolders.get(e.name);
        if (h === undefined) {
          plainHolders.set(e.name, (h = []));
          plainFirst.set(e.name, e);
          if (!seen.has(e.name)) {
            seen.add(e.name);
            order.push(e.name);
          }
        }
        h.push(f.rank);
        continue;
      }
      let scan = srcParams.get(e.name);
      if (scan === undefined) {
        scan = { full: [], dtype: e.dtype, stages: new Set(), filesSeen: new Map(), first: e };
        srcParams.set(e.name, scan);
        if (!seen.has(e.name)) {
          seen.add(e.name);
          order.push(e.name);
        }
      }
      scan.stages.add(stage);
      scan.filesSeen.set(stage, (scan.filesSeen.get(stage) ?? 0) + 1);
      if (e.dtype !== scan.dtype) {
        throw new InputError(`dtype ${e.dtype} differs from ${scan.dtype} in another source file`, { file: f.path, tensor: e.name });
      }
      if (sharedScan && layoutIsUniform(layout)) continue;
      const g = srcGeom(layout, e.shape.length, src?.path ?? f.path);
      const parts = partsOf(g, local);
      const full: number[] = [];
      for (let d = 0; d < e.shape.length; d++) {
        const v = fullDimFromSlice(g.dims[d]!, e.shape[d] as number, parts[d] as number);
        if (v === null) {
          throw new InputError(`slice dim ${d} is ${e.shape[d]} but param_split_shape says ${g.dims[d]!.uneven?.join(',')}`, { file: f.path, tensor: e.name });
        }
        full.push(v);
      }
      if (scan.full.length === 0 && scan.filesSeen.get(stage) === 1 && scan.stages.size === 1) scan.full = full;
      else if (scan.full.length !== full.length || scan.full.some((v, i) => v !== full[i])) {
        throw new InputError(
          `slice shape [${e.shape.join(',')}] gives full shape [${full.join(',')}] but another source file gives [${scan.full.join(',')}]`,
          { file: f.path, tensor: e.name },
        );
      }
    }
    if (!scannedArrays.has(f.entries)) scannedArrays.set(f.entries, stage);
  }
  for (const [name, scan] of srcParams) {
    for (const s of scan.stages) {
      if (scan.filesSeen.get(s) !== srcStageDevices) {
        throw new InputError(`held by ${scan.filesSeen.get(s)} of the ${srcStageDevices} source files of stage ${s}; expected all`, { tensor: name });
      }
    }
  }

  // ---- parameters and verbatim entries
  const params = new Map<string, ParamInfo>();
  const extras = new Map<string, ExtraInfo>();
  const dropped: string[] = [];
  const holderCache = new Map<string, SrcChoice>();
  const classCache = new Map<string, ClassInfo>();
  const dstGeomCache = new Map<string, LayoutGeom>();
  let classIds = 0;
  const dstStageDevices = dst?.stageDevices ?? 1;
  const dstStages = dst?.stages ?? 1;
  const dstWorld = dstStageDevices * dstStages;
  if (input.worldSize !== undefined && input.worldSize !== dstWorld) {
    throw new InputError(`world size ${input.worldSize} does not match the destination layout's ${dstWorld} devices`, { file: dst?.path ?? undefined });
  }

  const makeSrcChoice = (geom: LayoutGeom, stages: readonly number[], full: readonly number[], holdersOf: number[] | null): SrcChoice => {
    const key = `${geom.key}|${stages.join(',')}|${full.join(',')}|${holdersOf?.join(',') ?? ''}`;
    let c = holderCache.get(key);
    if (c !== undefined) return c;
    const holders = new Map<number, number[]>();
    if (holdersOf !== null) {
      holders.set(0, [...holdersOf]);
    } else {
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

  const classFor = (src: SrcChoice, dstGeom: LayoutGeom, full: readonly number[], elemSize: number): ClassInfo => {
    const key = `${src.geom.key}|${src.stages.join(',')}|${[...src.holders.get(0) ?? []].join(',')}|${dstGeom.key}|${full.join(',')}|${elemSize}`;
    let c = classCache.get(key);
    if (c === undefined) {
      c = { id: classIds++, src, dstGeom, dstBounds: dimBounds(dstGeom, full), full, elemSize, geomByDstTuple: new Map() };
      classCache.set(key, c);
    }
    return c;
  };

  const allNames = order;
  for (const name of allNames) {
    const scan = srcParams.get(name);
    const plainH = plainHolders.get(name);
    const dstLayouts = dst?.byName.get(name);
    if (scan === undefined && (dstLayouts === undefined || plainH === undefined)) {
      if (plainH !== undefined) extras.set(name, { name, holders: plainH });
      continue;
    }
    if (dst !== null && dstLayouts === undefined) {
      dropped.push(name);
      continue;
    }
    const first = scan?.first ?? (plainFirst.get(name) as PlanEntry);
    const dtype = first.dtype;
    const info = dtypeInfo(dtype);
    if (info === undefined || info.size === 0) {
      throw new InputError(`dtype ${dtype} cannot be re-sharded`, { tensor: name });
    }
    let full: readonly number[];
    let srcStagesOf: number[];
    if (scan !== undefined) {
      full = scan.full;
      srcStagesOf = [...scan.stages].sort((a, b) => a - b);
    } else {
      full = first.shape;
      for (const r of plainH ?? []) {
        const e = fileEntries(r).get(name) as PlanEntry;
        if (e.shape.length !== full.length || e.shape.some((v, i) => v !== full[i]) || e.dtype !== dtype) {
          throw new InputError(`shape [${e.shape.join(',')}] ${e.dtype} differs from [${full.join(',')}] ${dtype} in another source file`, { file: files[r]?.path, tensor: name });
        }
      }
      srcStagesOf = [];
    }
    const classByStage = new Map<number, ClassInfo>();
    const dstStageList: Array<[number, ParamLayout | null]> = dst === null ? [[0, null]] : [...(dstLayouts as Map<number, ParamLayout>)].sort((a, b) => a[0] - b[0]);
    for (const [ds, dl] of dstStageList) {
      let dGeom: LayoutGeom;
      if (dl === null) dGeom = completeGeom(full.length);
      else {
        const k = `${ds}/${name}/${full.length}`;
        let g = dstGeomCache.get(k);
        if (g === undefined) dstGeomCache.set(k, (g = geomOfLayout(dl, full.length, { file: dst?.path ?? undefined })));
        dGeom = g;
        const problem = cutProblem(dGeom, full);
        if (problem !== null) throw new InputError(`destination layout cannot cut full shape [${full.join(',')}]: ${problem}`, { file: dst?.path ?? undefined, tensor: name });
      }
      let choice: SrcChoice;
      if (scan !== undefined && src !== null) {
        const pref = srcStagesOf.includes(ds) ? ds : (srcStagesOf[0] as number);
        const layoutOf = (s: number): LayoutGeom => srcGeom(src.byName.get(name)!.get(s)!, full.length, src.path ?? '');
        const g0 = layoutOf(pref);
        const same = srcStagesOf.filter((s) => layoutOf(s).key === g0.key);
        choice = makeSrcChoice(g0, same, full, null);
      } else {
        choice = makeSrcChoice(completeGeom(full.length), [], full, plainH ?? [0]);
      }
      classByStage.set(ds, classFor(choice, dGeom, full, info.size));
    }
    params.set(name, { name, dtype, full, classByStage, ckpt: first.ckpt, srcShape: first.shape });
  }
  if (dst !== null) {
    for (const [name, m] of dst.byName) {
      if (!params.has(name) && !dropped.includes(name)) {
        throw new InputError(`the destination strategy needs parameter '${name}' (stage ${[...m.keys()].join(',')}) but no source file holds it`, { file: dst.path ?? undefined, tensor: name });
      }
    }
  }

  // ---- classes per destination stage, in entry order
  const stageClasses = new Map<number, Array<{ cls: ClassInfo; count: number; maxBytes: number }>>();
  for (let s = 0; s < dstStages; s++) stageClasses.set(s, []);
  const classSlot = new Map<string, { cls: ClassInfo; count: number; maxBytes: number }>();
  for (const name of order) {
    const p = params.get(name);
    if (p === undefined) continue;
    for (const [s, cls] of p.classByStage) {
      const k = `${s}/${cls.id}`;
      let slot = classSlot.get(k);
      if (slot === undefined) {
        slot = { cls, count: 0, maxBytes: 0 };
        classSlot.set(k, slot);
        stageClasses.get(s)?.push(slot);
      }
      slot.count++;
    }
  }

  const ctx: Ctx = {
    srcStageDevices, srcTotal, dstStageDevices, dstStages, order, params, extras, fileEntries, stageClasses, buffers,
  };

  const wanted = input.ranks ?? Array.from({ length: dstWorld }, (_, i) => i);
  const summaries: RankSummary[] = [];
  let bytesRead = 0;
  let bytesWritten = 0;
  let peakMemory = 0;
  for (const r of wanted) {
    if (!Number.isSafeInteger(r) || r < 0 || r >= dstWorld) {
      throw new InputError(`destination rank ${r} is outside 0..${dstWorld - 1}`);
    }
    const s = computeRank(ctx, r, false).summary;
    summaries.push(s);
    bytesRead += s.bytesRead;
    bytesWritten += s.bytesWritten;
    peakMemory = Math.max(peakMemory, s.peakMemory);
  }

  const plan: Plan = {
    version: 1,
    source: {
      strategy: src?.path ?? null, deviceCount: srcTotal, stageDevices: srcStageDevices, stages: srcStages,
      files: files.map((f) => ({ rank: f.rank, path: f.path })),
    },
    destination: { strategy: dst?.path ?? null, deviceCount: dstWorld, stageDevices: dstStageDevices, stages: dstStages },
    memory,
    parameters: params.size,
    verbatim: [...extras.keys()],
    dropped,
    ranks: summaries,
    bytesRead,
    bytesWritten,
    peakMemory,
  };
  contexts.set(plan, ctx);
  return plan;
}

function layoutIsUniform(l: ParamLayout): boolean {
  return l.paramSplitShape.length === 0;
}

function isOneRun(full: readonly number[], box: Box): boolean {
  // one contiguous run: some k with dims > k whole and dims < k of extent 1
  let k = full.length - 1;
  while (k > 0 && box.start[k] === 0 && box.shape[k] === full[k]) k--;
  for (let i = 0; i < k; i++) if (box.shape[i] !== 1) return false;
  return true;
}

function classGeom(cls: ClassInfo, dstLocal: number): { ops: OpGeom[]; shape: number[]; bytes: number; needsScratch: boolean } {
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
  g = { ops, shape, bytes, needsScratch };
  cls.geomByDstTuple.set(id, g);
  return g;
}

function pickReplica(holders: readonly number[], chosen: Set<number>, preferredLocal: number, preferredStage: number, srcStageDevices: number): number {
  for (const h of holders) if (chosen.has(h)) return h;
  let best = holders[0] as number;
  let bestDist = Infinity;
  for (const h of holders) {
    const local = h % srcStageDevices;
    // distance upwards from the preferred local rank; a holder in the same stage wins ties
    const dist = 2 * ((((local - preferredLocal) % srcStageDevices) + srcStageDevices) % srcStageDevices) + (Math.floor(h / srcStageDevices) === preferredStage ? 0 : 1);
    if (dist < bestDist) {
      bestDist = dist;
      best = h;
    }
  }
  return best;
}

function extraSource(ctx: Ctx, e: ExtraInfo, rank: number, chosen: Set<number>): number {
  const pref = rank % ctx.srcTotal;
  const local = rank % ctx.srcStageDevices;
  if (chosen.has(pref) && e.holders.includes(pref)) return pref;
  const chosenSame = e.holders.find((h) => chosen.has(h) && h % ctx.srcStageDevices === local);
  if (chosenSame !== undefined) return chosenSame;
  if (e.holders.includes(pref)) return pref;
  const same = e.holders.find((h) => h % ctx.srcStageDevices === local);
  return same ?? (e.holders[0] as number);
}

function computeRank(ctx: Ctx, rank: number, withTensors: boolean): { summary: RankSummary; tensors: PlannedTensor[] } {
  const stage = Math.floor(rank / ctx.dstStageDevices);
  const local = rank % ctx.dstStageDevices;
  const chosen = new Set<number>();
  const classRanks = new Map<number, number[]>();
  let bytesRead = 0;
  let bytesWritten = 0;
  let maxTensor = 0;
  let scratch = false;
  let tensorCount = 0;
  const preferred = local % ctx.srcStageDevices;
  for (const slot of ctx.stageClasses.get(stage) ?? []) {
    const g = classGeom(slot.cls, local);
    const ranks = g.ops.map((op) => {
      const holders = slot.cls.src.holders.get(op.srcTuple);
      if (holders === undefined || holders.length === 0) throw new InputError(`no source rank holds slice ${op.srcTuple} of a parameter class`);
      const r = pickReplica(holders, chosen, preferred, stage, ctx.srcStageDevices);
      chosen.add(r);
      return r;
    });
    classRanks.set(slot.cls.id, ranks);
    let read = 0;
    for (const op of g.ops) read += op.bytes;
    bytesRead += read * slot.count;
    bytesWritten += g.bytes * slot.count;
    tensorCount += slot.count;
    maxTensor = Math.max(maxTensor, g.bytes);
    if (g.needsScratch) scratch = true;
  }
  const extraSrc = new Map<string, number>();
  for (const e of ctx.extras.values()) {
    const r = extraSource(ctx, e, rank, chosen);
    extraSrc.set(e.name, r);
    chosen.add(r);
    const entry = ctx.fileEntries(r).get(e.name) as PlanEntry;
    bytesRead += entry.byteLength;
    bytesWritten += entry.byteLength;
    maxTensor = Math.max(maxTensor, entry.byteLength);
    tensorCount++;
  }
  const peakMemory = 2 * Math.min(maxTensor, ctx.buffers.band) + (scratch ? Math.min(ctx.buffers.scratch, maxTensor) : 0);
  const summary: RankSummary = {
    rank, stage, sourceRanks: [...chosen].sort((a, b) => a - b), tensorCount, bytesRead, bytesWritten, peakMemory,
  };
  const tensors: PlannedTensor[] = [];
  if (withTensors) {
    for (const name of ctx.order) {
      const p = ctx.params.get(name);
      if (p !== undefined) {
        const cls = p.classByStage.get(stage);
        if (cls === undefined) continue;
        const g = classGeom(cls, local);
        const ranks = classRanks.get(cls.id) as number[];
        const ops: CopyOp[] = g.ops.map((op, i) => ({ srcRank: ranks[i] as number, srcShape: op.srcShape, srcBox: op.srcBox, dstBox: op.dstBox }));
        const sameAsSource = g.shape.length === p.srcShape.length && g.shape.every((v, i) => v === p.srcShape[i]);
        tensors.push({
          name, dtype: p.dtype, shape: g.shape, byteLength: g.bytes, fullShape: p.full, verbatim: false, ops,
          ...(sameAsSource && p.ckpt !== undefined ? { ckpt: p.ckpt } : {}),
        });
        continue;
      }
      const r = extraSrc.get(name);
      if (r === undefined) continue;
      const entry = ctx.fileEntries(r).get(name) as PlanEntry;
      const box = { start: entry.shape.map(() => 0), shape: [...entry.shape] };
      tensors.push({
        name, dtype: entry.dtype, shape: entry.shape, byteLength: entry.byteLength, fullShape: entry.shape, verbatim: true,
        ops: [{ srcRank: r, srcShape: entry.shape, srcBox: box, dstBox: box }],
        ...(entry.ckpt !== undefined ? { ckpt: entry.ckpt } : {}),
      });
    }
  }
  return { summary, tensors };
}

/** The full plan of one destination rank: every tensor in output order with its copy operations. */
export function planRank(plan: Plan, rank: number): RankPlan {
  const ctx = contexts.get(plan);
  if (ctx === undefined) throw new InputError('this plan was not built by buildPlan in this process');
  const world = ctx.dstStageDevices * ctx.dstStages;
  if (!Number.isSafeInteger(rank) || rank < 0 || rank >= world) throw new InputError(`destination rank ${rank} is outside 0..${world - 1}`);
  const { summary, tensors } = computeRank(ctx, rank, true);
  return { ...summary, tensors };
}
