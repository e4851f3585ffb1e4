/**
 * What the sources hold, as planning needs it: the layouts of each side, and one scan of every
 * source file's entries into a `PlanModel` (full shapes of the parameters a strategy lays out,
 * holders of the entries none lays out, the output order), with every inconsistency between
 * files an InputError. The model is data: a plan read back from a file needs no source entries.
 *
 * Decisions where MindSpore is silent or differs:
 * - A parameter described by the source strategy but by no stage of a given destination strategy
 *   is dropped (`plan.dropped`); one the destination strategy names but no source file holds is
 *   an InputError.
 * - A parameter the source strategy does not describe but the destination does is taken as
 *   complete in every source file that holds it.
 * - Output order: names in the order of the source files (stage 0's first file, then stage 1's,
 *   ...), then names first seen in later files.
 * - A source sliced within its stages (more than one device per stage) must have every tensor of
 *   more than one element named by the source strategy: such a tensor is cut on every rank like
 *   its neighbours, and taking one rank's slice for the whole tensor would write wrong shapes.
 *   Entries of one element (global_step, epoch_num, learning_rate, beta1_power, loss scale ...)
 *   and `str` entries are copied verbatim; optimizer states are re-sharded where the strategy
 *   lays them out (mindformers' strategies list adam_m.*, adam_v.*, accu_grads.*). An entry the
 *   strategy does not describe whose shape or dtype differs between rank files is refused too.
 *   A pipeline-only source (one device per stage) holds whole tensors: anything goes.
 */
import { InputError } from '../errors.js';
import { dtypeInfo, type DType } from '../formats/dtype.js';
import type { ParamLayout, Strategy } from '../formats/strategy/model.js';
import { fullDimFromSlice, geomOfLayout, partsOf, type LayoutGeom } from './geometry.js';
import type { ModelExtra, ModelParam, PlanEntry, PlanModel, PlanSourceFile } from './types.js';

/** One side's layouts: stage size, stage count, name -> stage -> layout. */
export interface SideLayouts {
  readonly stageDevices: number;
  readonly stages: number;
  readonly byName: Map<string, Map<number, ParamLayout>>;
  readonly path: string | null;
}

function product(xs: readonly number[]): number {
  let p = 1;
  for (const x of xs) p *= x;
  return p;
}

/** A strategy's layouts, checked: one device count for every layout, stages 0..S-1. */
export function sideOf(strategy: Strategy, what: string): SideLayouts {
  const file = strategy.path;
  if (strategy.layouts.length === 0) throw new InputError(`${what} strategy has no parameter layouts`, { file });
  const side = sideOfLayouts(strategy.layouts, file ?? null, what);
  const sorted = [...new Set(strategy.layouts.map((l) => l.stage))].sort((a, b) => a - b);
  sorted.forEach((s, i) => {
    if (s !== i) throw new InputError(`${what} strategy: pipeline stages are [${sorted.join(',')}], expected 0..${sorted.length - 1}`, { file });
  });
  return side;
}

/** The side of a list of layouts (a plan's stored layouts: no stage check, the stage count given). */
export function sideOfLayouts(layouts: readonly ParamLayout[], path: string | null, what = 'the', stages?: number): SideLayouts {
  const stageDevices = product(layouts[0]?.devMatrix ?? [1]);
  const byName = new Map<string, Map<number, ParamLayout>>();
  const seen = new Set<number>();
  for (const l of layouts) {
    const n = product(l.devMatrix);
    if (n !== stageDevices) {
      throw new InputError(`${what} strategy: dev_matrix [${l.devMatrix.join(',')}] has ${n} devices but other layouts have ${stageDevices}`, { file: path ?? undefined, tensor: l.name });
    }
    seen.add(l.stage);
    let m = byName.get(l.name);
    if (m === undefined) byName.set(l.name, (m = new Map()));
    if (!m.has(l.stage)) m.set(l.stage, l);
  }
  return { stageDevices, stages: stages ?? seen.size, byName, path };
}

/** Check the source files against the source side: ranks 0..N-1, as many as the strategy's devices. */
export function checkSourceFiles(sources: readonly PlanSourceFile[], src: SideLayouts | null): PlanSourceFile[] {
  const files = [...sources].sort((a, b) => a.rank - b.rank);
  if (files.length === 0) throw new InputError('no source files');
  files.forEach((f, i) => {
    if (f.rank !== i) throw new InputError(`source ranks must be 0..${files.length - 1}; rank ${i} is missing`, { file: f.path });
  });
  const srcTotal = (src?.stageDevices ?? 1) * (src?.stages ?? 1);
  if (src === null && files.length > 1) {
    throw new InputError(`the source has ${files.length} rank files (sliced) but no source strategy was given`, { file: files[1]?.path });
  }
  if (files.length !== srcTotal) {
    throw new InputError(
      `the source strategy describes ${src?.stages ?? 1} stage(s) x ${src?.stageDevices ?? 1} devices = ${srcTotal} ranks, but there are ${files.length} rank folders`,
      { file: src?.path ?? undefined },
    );
  }
  return files;
}

function layoutIsUniform(l: ParamLayout): boolean {
  return l.paramSplitShape.length === 0;
}

function entryKey(e: PlanEntry): string {
  return `${e.dtype}|${e.shape.join(',')}|${e.byteLength}|${e.ckpt === undefined ? '' : JSON.stringify(e.ckpt)}`;
}

function bare(e: PlanEntry): PlanEntry {
  return e.ckpt !== undefined
    ? { name: e.name, dtype: e.dtype, shape: [...e.shape], byteLength: e.byteLength, ckpt: e.ckpt }
    : { name: e.name, dtype: e.dtype, shape: [...e.shape], byteLength: e.byteLength };
}

export interface ScannedModel {
  readonly model: PlanModel;
  readonly dropped: string[];
  readonly excluded: string[];
}

/**
 * Scan every source file once into the model. `files` are checked (`checkSourceFiles`); `exclude`
 * names entries left out entirely (and not asked for by the destination strategy).
 */
export function scanModel(files: readonly PlanSourceFile[], src: SideLayouts | null, dst: SideLayouts | null, exclude?: (name: string) => boolean): ScannedModel {
  const srcStageDevices = src?.stageDevices ?? 1;
  const srcStages = src?.stages ?? 1;
  const excludedSet = new Set<string>();
  const skip = (name: string): boolean => {
    if (exclude === undefined || !exclude(name)) return false;
    excludedSet.add(name);
    return true;
  };

  // ---- entry order: the first file of each source stage, then anything else
  const order: string[] = [];
  const seen = new Set<string>();
  for (let s = 0; s < srcStages; s++) {
    for (const e of (files[s * srcStageDevices] as PlanSourceFile).entries) {
      if (!seen.has(e.name) && !skip(e.name)) {
        seen.add(e.name);
        order.push(e.name);
      }
    }
  }

  // ---- every source file: shapes of strategy-described parameters, holders of the rest
  const srcGeomCache = new Map<string, LayoutGeom>();
  const srcGeom = (layout: ParamLayout, rank: number, file: string): LayoutGeom => {
    const k = `${layout.stage}/${layout.name}/${rank}`;
    let g = srcGeomCache.get(k);
    if (g === undefined) srcGeomCache.set(k, (g = geomOfLayout(layout, rank, { file })));
    return g;
  };
  interface SrcParamScan { full: number[]; dtype: DType; stages: Set<number>; filesSeen: Map<number, number>; first: PlanEntry }
  const srcParams = new Map<string, SrcParamScan>();
  /** name -> entry key -> variant */
  const plain = new Map<string, Map<string, { entry: PlanEntry; holders: number[] }>>();
  const plainFirst = new Map<string, PlanEntry>();
  const scannedArrays = new Map<readonly PlanEntry[], number>(); // entries array -> stage, for shared arrays
  for (const f of files) {
    const stage = Math.floor(f.rank / srcStageDevices);
    const local = f.rank % srcStageDevices;
    const sharedScan = scannedArrays.get(f.entries) === stage && src !== null;
    for (const e of f.entries) {
      if (skip(e.name)) continue;
      const described = src?.byName.get(e.name);
      const layout = described?.get(stage);
      if (layout === undefined || described === undefined) {
        if (described !== undefined) continue; // described for another stage only: not used from here
        let variants = plain.get(e.name);
        if (variants === undefined) {
          plain.set(e.name, (variants = new Map()));
          plainFirst.set(e.name, e);
          if (!seen.has(e.name)) {
            seen.add(e.name);
            order.push(e.name);
          }
        }
        const k = entryKey(e);
        let v = variants.get(k);
        if (v === undefined) variants.set(k, (v = { entry: bare(e), holders: [] }));
        v.holders.push(f.rank);
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
  if (src !== null && srcStageDevices > 1) checkCoverage(plain, srcParams.size, src, files);
  for (const [name, scan] of srcParams) {
    for (const s of scan.stages) {
      if (scan.filesSeen.get(s) !== srcStageDevices) {
        throw new InputError(`held by ${scan.filesSeen.get(s)} of the ${srcStageDevices} source files of stage ${s}; expected all`, { tensor: name });
      }
    }
  }

  // ---- parameters (re-sharded), verbatim entries, dropped parameters
  const params: ModelParam[] = [];
  const extras: ModelExtra[] = [];
  const dropped: string[] = [];
  const droppedSet = new Set<string>();
  const kept: string[] = [];
  for (const name of order) {
    const scan = srcParams.get(name);
    const variants = plain.get(name);
    const dstLayouts = dst?.byName.get(name);
    if (scan === undefined && (dstLayouts === undefined || variants === undefined)) {
      if (variants !== undefined) {
        extras.push({ name, variants: [...variants.values()] });
        kept.push(name);
      }
      continue;
    }
    if (dst !== null && dstLayouts === undefined) {
      dropped.push(name);
      droppedSet.add(name);
      continue;
    }
    const first = scan?.first ?? (plainFirst.get(name) as PlanEntry);
    const dtype = first.dtype;
    const info = dtypeInfo(dtype);
    if (info === undefined || info.size === 0) throw new InputError(`dtype ${dtype} cannot be re-sharded`, { tensor: name });
    let full: readonly number[];
    let holders: number[] | undefined;
    if (scan !== undefined) full = scan.full;
    else {
      full = first.shape;
      const vs = [...(variants as Map<string, { entry: PlanEntry; holders: number[] }>).values()];
      const odd = vs.find((v) => v.entry.shape.length !== full.length || v.entry.shape.some((x, i) => x !== full[i]) || v.entry.dtype !== dtype);
      if (odd !== undefined) {
        const r = odd.holders[0] as number;
        throw new InputError(`shape [${odd.entry.shape.join(',')}] ${odd.entry.dtype} differs from [${full.join(',')}] ${dtype} in another source file`, { file: files[r]?.path, tensor: name });
      }
      holders = vs.flatMap((v) => v.holders).sort((a, b) => a - b);
    }
    params.push({
      name, dtype, full: [...full], srcStages: scan === undefined ? [] : [...scan.stages].sort((a, b) => a - b),
      ...(holders !== undefined ? { holders } : {}),
      srcShape: [...first.shape], ...(first.ckpt !== undefined ? { ckpt: first.ckpt } : {}),
    });
    kept.push(name);
  }
  if (dst !== null) {
    const have = new Set(kept);
    for (const [name, m] of dst.byName) {
      if (!have.has(name) && !droppedSet.has(name) && !excludedSet.has(name)) {
        throw new InputError(`the destination strategy needs parameter '${name}' (stage ${[...m.keys()].join(',')}) but no source file holds it`, { file: dst.path ?? undefined, tensor: name });
      }
    }
  }
  return { model: { order: kept, params, extras }, dropped, excluded: [...excludedSet] };
}

/** How many tensors a refusal lists. */
const SHOWN = 5;

function elements(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * The rule for a source sliced within its stages (see the module comment): every entry the
 * source strategy does not describe must be of one element (or `str`) and alike in every file.
 */
function checkCoverage(
  plain: ReadonlyMap<string, ReadonlyMap<string, { entry: PlanEntry; holders: number[] }>>,
  described: number,
  src: SideLayouts,
  files: readonly PlanSourceFile[],
): void {
  const uncovered: string[] = [];
  for (const [name, variants] of plain) {
    const vs = [...variants.values()];
    if (vs.length > 1) {
      const [a, b] = vs as [{ entry: PlanEntry; holders: number[] }, { entry: PlanEntry; holders: number[] }];
      throw new InputError(
        `the source strategy does not describe this tensor, and the rank files hold it differently ([${a.entry.shape.join(',')}] ${a.entry.dtype} in rank ${a.holders[0]}, ` +
          `[${b.entry.shape.join(',')}] ${b.entry.dtype} in rank ${b.holders[0]}): it is sliced, and its layout is needed; is the strategy of another model or run?`,
        { file: src.path ?? files[b.holders[0] as number]?.path, tensor: name },
      );
    }
    const e = (vs[0] as { entry: PlanEntry }).entry;
    if (e.dtype !== 'str' && elements(e.shape) > 1) uncovered.push(`'${name}' [${e.shape.join(',')}]`);
  }
  if (uncovered.length === 0) return;
  const some = `${uncovered.slice(0, SHOWN).join(', ')}${uncovered.length > SHOWN ? `, ... (${uncovered.length} in all)` : ''}`;
  const devices = src.stageDevices;
  if (described === 0) {
    throw new InputError(
      `the source strategy names none of the checkpoint's tensors (${some}); it is another model's strategy, or the names differ (prefixes?)`,
      { file: src.path ?? undefined },
    );
  }
  throw new InputError(
    `the source strategy describes ${described} tensor(s) of the checkpoint but not ${uncovered.length}: ${some}. ` +
      `The checkpoint is sliced over ${devices} devices per stage, so each rank file holds only a part of these and their layout is needed ` +
      '(entries of one element, such as global_step, need none); is the strategy of another model or run?',
    { file: src.path ?? undefined },
  );
}
