/**
 * `mergeLora`: W' = W + scaling * (B @ A) for every LoRA pair, LoRA tensors and their optimizer
 * states dropped, everything else kept in order. Any source the engine reads (`.ckpt` or
 * safetensors, one complete file or a rank_N tree with its strategy); a complete output
 * (`DST/rank_0/{prefix}0.ckpt`) or one slice per destination rank (`DST/rank_R/{prefix}R.ckpt`).
 *
 * On the engine: one plan moves every kept tensor to the destination (LoRA tensors excluded); a
 * band hook adds the product to each assembled band of a merged weight before it is written:
 * for the band's box [r0, r0+R) x [c0, c0+C) of W, rows r0.. of B and columns c0.. of A. A and B
 * are read as complete tensors through a second plan (to one complete file) and the same
 * executor, one pair at a time. The whole model, or a whole W, is never in memory.
 */
import { refuseOverlaps } from '../real-paths.js';
import { stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { InputError } from '../errors.js';
import { elementSize, isFloat, toFloat32, type DType, type FloatDType } from '../formats/dtype.js';
import { resolveWeights } from '../formats/resolve.js';
import type { SinkTensor, TensorSink } from '../formats/types.js';
import type { ProgressFactory } from '../progress.js';
import { bufferSizes, buildPlan, loadPlan, openPlanSource, planRank, planSourceFiles, type Plan, type PlannedTensor, type RankPlan } from '../plan/index.js';
import { createTransformSourcePool, executeRankPlan, TransformBuffers, type Band, type TransformSourcePool } from '../transform/execute.js';
import { writeRanks } from '../transform/rank-writer.js';
import { KernelPool, kernelAKey, kernelDTypeCode } from './kernel.js';
import { planLoraNames, type LoraPair } from './names.js';
import type { LoraScaling } from './scaling.js';
import { loadStrategy } from '../formats/strategy/load.js';

export interface LoraMergeOptions {
  /** A complete weights file (.ckpt or safetensors), or a folder of `rank_N/` slice folders. */
  src: string;
  /** Output folder; files go to `rank_R/{prefix}R.ckpt`. */
  dstDir: string;
  /** Strategy of a distributed source: a file, or a folder of per-rank/per-stage files. */
  srcStrategy?: string;
  /** Destination strategy: one slice per destination rank. Absent: one complete file. */
  dstStrategy?: string;
  /** Output file prefix; default `checkpoint_`. */
  prefix?: string;
  /** The scaling factor (a number, or a resolved LoraScaling). */
  scaling: number | LoraScaling;
  /** Total threads for the product (main thread included); default min(2, cores). */
  threads?: number;
  /** Replace existing output files (default: refuse). */
  overwrite?: boolean;
  /** Append the CRC trailer to outputs. */
  crc?: boolean;
  /** Largest band of W assembled at once, in bytes (default 1 MiB, `LORA_BAND_BYTES`; at least 1 KiB). */
  chunkBytes?: number;
  /** Smallest product (multiply-adds) worth handing a share to a worker thread (default 2^22). */
  kernelMinWork?: number;
  /** Called once the output size is known; returns the progress reporter to use. */
  progress?: ProgressFactory;
}

export interface LoraMergedWeight {
  readonly base: string;
  readonly a: string;
  readonly b: string;
  readonly scheme: 'mindpet' | 'peft';
  readonly rank: number;
  readonly shape: readonly number[];
  readonly dtype: DType;
}

export interface LoraMergeResult {
  /** Files written, in rank order. */
  readonly files: readonly string[];
  readonly scaling: number;
  readonly merged: readonly LoraMergedWeight[];
  /** LoRA tensors and their optimizer states left out. */
  readonly dropped: readonly string[];
  /** Tensors written per file (same order as `files`). */
  readonly tensorsPerFile: readonly number[];
  readonly sourceRanks: number;
  readonly destinationRanks: number;
  readonly bytesWritten: number;
  /** Seconds spent in the product kernel (including dtype decode/encode of W). */
  readonly productSeconds: number;
  /** Seconds spent reading sources and writing outputs (the rest of the wall time). */
  readonly ioSeconds: number;
  readonly threads: number;
}

/**
 * Default band of a merge: 1 MiB. A band is assembled, multiplied into (split between the
 * threads) and written while it is still in the CPU caches; with the transform's 8 MiB bands the
 * same merge took about 1.6x the CPU time (`npm run bench -- lora`).
 */
export const LORA_BAND_BYTES = 1024 * 1024;

/** What validation needs to know of a tensor: its dtype and full shape. */
export interface LoraTensorInfo {
  readonly name: string;
  readonly dtype: DType;
  readonly fullShape: readonly number[];
}

export interface ValidatedLora {
  readonly pairs: Map<string, { pair: LoraPair; rank: number; w: LoraTensorInfo; a: LoraTensorInfo; b: LoraTensorInfo }>;
  readonly dropped: ReadonlySet<string>;
}

/** Check every pair: names, presence, ranks, dtypes, shapes. One InputError lists every problem. */
export function validateLoraModel(
  names: readonly string[],
  tensor: (name: string) => LoraTensorInfo | undefined,
  srcLabel: string,
  expectedRank?: number,
): ValidatedLora {
  const plan = planLoraNames(names);
  const problems = [...plan.problems];
  const pairs: ValidatedLora['pairs'] = new Map();
  for (const pair of plan.pairs) {
    const w = tensor(pair.baseName) as LoraTensorInfo;
    const a = tensor(pair.aName) as LoraTensorInfo;
    const b = tensor(pair.bName) as LoraTensorInfo;
    const bad: string[] = [];
    const show = (t: LoraTensorInfo): string => `${t.name} [${t.fullShape}] ${t.dtype}`;
    for (const t of [w, a, b]) {
      if (t.fullShape.length !== 2) bad.push(`${show(t)} is not a matrix`);
      if (!isFloat(t.dtype) || kernelDTypeCode(t.dtype) === undefined) bad.push(`${show(t)} is not a Float16/BFloat16/Float32/Float64 tensor`);
    }
    if (bad.length === 0) {
      const [out, inn] = w.fullShape as [number, number];
      const [ar, ain] = a.fullShape as [number, number];
      const [bout, br] = b.fullShape as [number, number];
      if (ar !== br) bad.push(`rank of A ${show(a)} (${ar}) differs from rank of B ${show(b)} (${br})`);
      if (bout !== out) bad.push(`B ${show(b)} has ${bout} rows but W ${show(w)} has ${out} (expected B [out, r])`);
      if (ain !== inn) bad.push(`A ${show(a)} has ${ain} columns but W ${show(w)} has ${inn} (expected A [r, in])`);
      if (ar === 0) bad.push(`A ${show(a)} has rank 0`);
      if (expectedRank !== undefined && ar !== expectedRank) bad.push(`LoRA rank is ${ar} but the scaling was given for rank ${expectedRank}`);
    }
    if (bad.length > 0) {
      problems.push(...bad.map((m) => `pair '${pair.aName}': ${m}`));
      continue;
    }
    pairs.set(pair.baseName, { pair, rank: a.fullShape[0] as number, w, a, b });
  }
  if (problems.length > 0) throw new InputError(`${problems.length} LoRA problem(s) in ${srcLabel}:\n  ${problems.join('\n  ')}`);
  if (pairs.size === 0) {
    throw new InputError(`no LoRA pairs found in ${srcLabel} (expected X.mindpet_delta_lora_a/b or X.lora_A/B.weight tensors)`);
  }
  return { pairs, dropped: plan.dropped };
}

/** Dtype and full shape of every tensor of a plan's model. */
function tensorInfos(plan: Plan): Map<string, LoraTensorInfo> {
  const out = new Map<string, LoraTensorInfo>();
  for (const p of plan.model.params) out.set(p.name, { name: p.name, dtype: p.dtype, fullShape: p.full });
  for (const e of plan.model.extras) {
    const v = e.variants[0];
    if (v !== undefined) out.set(e.name, { name: e.name, dtype: v.entry.dtype, fullShape: v.entry.shape });
  }
  return out;
}

function scalingValue(s: number | LoraScaling): number {
  const v = typeof s === 'number' ? s : s.value;
  if (!Number.isFinite(v)) throw new InputError(`LoRA scaling must be a finite number, got ${v}`, { key: 'lora-scaling' });
  return v;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** A sink that keeps the tensors written to it in memory (small tensors: LoRA A and B). */
class MemorySink implements TensorSink {
  readonly path = '<memory>';
  readonly tensors = new Map<string, Uint8Array>();
  private current: { name: string; buf: Uint8Array; at: number } | null = null;
  async beginTensor(t: SinkTensor): Promise<void> {
    this.current = { name: t.name, buf: new Uint8Array(t.byteLength), at: 0 };
  }
  async write(piece: Uint8Array): Promise<void> {
    const c = this.current as { name: string; buf: Uint8Array; at: number };
    c.buf.set(piece, c.at);
    c.at += piece.byteLength;
  }
  async endTensor(): Promise<void> {
    const c = this.current as { name: string; buf: Uint8Array; at: number };
    this.tensors.set(c.name, c.buf);
    this.current = null;
  }
  async close(): Promise<void> {}
  async abort(): Promise<void> {}
}

/** float32 values in a (Shared)ArrayBuffer. */
function floats(n: number, shared: boolean): Float32Array {
  return new Float32Array(shared ? new SharedArrayBuffer(Math.max(n, 1) * 4) : new ArrayBuffer(Math.max(n, 1) * 4));
}

/**
 * The product hook: per band of a merged weight, scale * B[rows] @ A[:, cols] added in place.
 * A and B of the current pair are read complete (through the LoRA plan) and kept as float32.
 */
class LoraProduct {
  productMs = 0;
  private current: { base: string; r: number; inn: number; a: Float32Array; aKey: number; b: Float32Array; blocks: Map<string, { a: Float32Array; aKey: number }> } | null = null;
  private loading: Promise<void> = Promise.resolve();
  private readonly buffers = new TransformBuffers(bufferSizes(64 * 1024 * 1024));

  constructor(
    private readonly pairs: ValidatedLora['pairs'],
    private readonly lora: { plan: Plan; rp: RankPlan; byName: Map<string, PlannedTensor> },
    private readonly pool: TransformSourcePool,
    private readonly kernels: KernelPool,
    private readonly scale: number,
    private readonly shared: boolean,
    private readonly minWork: number | undefined,
  ) {}

  private async load(base: string): Promise<NonNullable<LoraProduct['current']>> {
    if (this.current?.base === base) return this.current;
    const p = this.pairs.get(base);
    if (p === undefined) throw new InputError('no LoRA pair', { tensor: base });
    const ta = this.lora.byName.get(p.pair.aName) as PlannedTensor;
    const tb = this.lora.byName.get(p.pair.bName) as PlannedTensor;
    const sink = new MemorySink();
    await executeRankPlan({ ...this.lora.rp, tensors: [ta, tb] }, this.pool, sink, this.buffers);
    const toF32 = (t: PlannedTensor): Float32Array => {
      const raw = sink.tensors.get(t.name) as Uint8Array;
      const out = floats(raw.byteLength / elementSize(t.dtype), this.shared);
      out.set(toFloat32(raw, t.dtype as FloatDType));
      return out;
    };
    this.current = { base, r: p.rank, inn: p.w.fullShape[1] as number, a: toF32(ta), aKey: kernelAKey(), b: toF32(tb), blocks: new Map() };
    return this.current;
  }

  /** Columns [c0, c0 + n) of A [r, in], as a contiguous [r, n] block (memoised per pair). */
  private columns(cur: NonNullable<LoraProduct['current']>, c0: number, n: number): { a: Float32Array; aKey: number } {
    if (c0 === 0 && n === cur.inn) return cur;
    const key = `${c0}:${n}`;
    let blk = cur.blocks.get(key);
    if (blk === undefined) {
      const a = floats(cur.r * n, this.shared);
      for (let k = 0; k < cur.r; k++) a.set(cur.a.subarray(k * cur.inn + c0, k * cur.inn + c0 + n), k * n);
      blk = { a, aKey: kernelAKey() };
      cur.blocks.set(key, blk);
    }
    return blk;
  }

  readonly onBand = async (band: Band): Promise<void> => {
    if (!this.pairs.has(band.tensor)) return;
    // one pair loaded at a time: bands of one tensor (and of the ranks of a group) share it
    const loaded = this.loading.then(() => this.load(band.tensor));
    this.loading = loaded.then(() => undefined, () => undefined);
    const cur = await loaded;
    const t0 = performance.now();
    const [r0, c0] = band.box.start as [number, number];
    const [rows, cols] = band.box.shape as [number, number];
    const b = cur.b.subarray(r0 * cur.r, (r0 + rows) * cur.r);
    const { a, aKey } = this.columns(cur, c0, cols);
    await this.kernels.run({
      w: band.bytes.buffer, wOffset: band.bytes.byteOffset, dtype: kernelDTypeCode(band.dtype) as number,
      rowBegin: 0, rowEnd: rows, cols,
      b: b.buffer, bOffset: b.byteOffset, a: a.buffer, aOffset: a.byteOffset,
      r: cur.r, scale: this.scale, aKey,
    }, this.minWork);
    this.productMs += performance.now() - t0;
  };
}

/** Merge LoRA weights (see the file comment). */
export async function mergeLora(opts: LoraMergeOptions): Promise<LoraMergeResult> {
  const started = performance.now();
  const scale = scalingValue(opts.scaling);
  const prefix = opts.prefix ?? 'checkpoint_';
  if (prefix.includes('/') || prefix.includes('\\')) throw new InputError(`--prefix must be a file name prefix, got '${prefix}'`, { key: 'prefix' });
  const band = Math.max(1024, Math.min(opts.chunkBytes ?? LORA_BAND_BYTES, 1 << 30));
  const threads = Math.max(1, Math.floor(opts.threads ?? Math.min(2, availableParallelism())));

  // the source, through the one resolver; one rank folder is a complete source
  const resolved = await resolveWeights(opts.src);
  const sliced = resolved.kind === 'ranks' && resolved.ranks.length > 1;
  if (sliced && opts.srcStrategy === undefined) {
    throw new InputError(`the source is sliced over ${resolved.kind === 'ranks' ? resolved.ranks.length : 1} ranks; --src-ckpt-strategy is required`, { file: opts.src });
  }
  // every tensor, complete: names, dtypes and full shapes for the checks (the headers read once here)
  const whole = await loadPlan({ srcCheckpoint: resolved, srcStrategy: sliced ? (opts.srcStrategy as string) : null });
  const srcStrategy = whole.srcStrategy?.strategy ?? null;
  const dstStrategy = opts.dstStrategy !== undefined ? (await loadStrategy(opts.dstStrategy)).strategy : null;
  const sources = planSourceFiles(whole.plan);
  // nothing is written where anything is read (after resolving symlinks on both sides)
  await refuseOverlaps(
    [{ what: 'output folder', path: opts.dstDir }],
    [
      ...whole.plan.source.files.map((s) => ({ what: 'source file', path: s.path })),
      ...(opts.srcStrategy !== undefined ? [{ what: 'the source strategy', path: opts.srcStrategy }] : []),
      ...(opts.dstStrategy !== undefined ? [{ what: 'the destination strategy', path: opts.dstStrategy }] : []),
      { what: 'the source', path: opts.src },
    ],
  );
  const infos = tensorInfos(whole.plan);
  const sc = typeof opts.scaling === 'number' ? undefined : opts.scaling;
  const expectedRank = sc !== undefined && sc.rank !== undefined && sc.hasPatterns !== true ? sc.rank : undefined;
  const { pairs, dropped } = validateLoraModel(whole.plan.model.order, (n) => infos.get(n), opts.src, expectedRank);

  // the output plan (LoRA tensors and their optimizer states left out) and the LoRA plan (A and B complete)
  const plan = buildPlan({ srcStrategy, dstStrategy, sources, memory: 4 * band, exclude: (n) => dropped.has(n) });
  const ab = new Set([...pairs.values()].flatMap((p) => [p.pair.aName, p.pair.bName]));
  const loraPlan = buildPlan({ srcStrategy, dstStrategy: null, sources, exclude: (n) => !ab.has(n) });
  const loraRank = planRank(loraPlan, 0);

  // outputs: never over a source file; never over an existing file unless asked
  const ranks = plan.ranks.map((r) => r.rank);
  const outputs = ranks.map((r) => resolve(join(opts.dstDir, `rank_${r}`, `${prefix}${r}.ckpt`)));
  const srcPaths = new Set(sources.flatMap((s) => (s.files ?? []).flatMap((f) => [resolve(f.path), f.realPath])));
  for (const out of outputs) {
    if (srcPaths.has(out)) throw new InputError('output would replace a source checkpoint; choose another --dst-ckpt-dir', { file: out });
    if (!opts.overwrite && (await exists(out))) throw new InputError('output exists (pass --overwrite to replace it)', { file: out });
  }

  const loraPool = createTransformSourcePool((rank) => openPlanSource(loraPlan.source.files[rank] as Plan['source']['files'][number]), 8);
  const kernels = new KernelPool(threads);
  const product = new LoraProduct(
    pairs, { plan: loraPlan, rp: loraRank, byName: new Map(loraRank.tensors.map((t) => [t.name, t])) }, loraPool, kernels, scale, threads > 1, opts.kernelMinWork,
  );
  const progress = opts.progress?.(plan.bytesWritten);
  let bytesWritten = 0;
  let written;
  try {
    written = await writeRanks({
      plan, ranks, format: 'ckpt', memory: plan.memory, bandBytes: band, sharedBuffers: threads > 1, crc: opts.crc === true, fileCrc32: false,
      outputPath: (r) => outputs[ranks.indexOf(r)] as string,
      onBytes: (n) => {
        bytesWritten += n;
        progress?.advance(n);
      },
      onBand: async (b) => {
        progress?.label(b.tensor);
        await product.onBand(b);
      },
    });
    progress?.done();
  } finally {
    await loraPool.close();
    await kernels.close();
  }
  const files = written.files.map((f) => f.path);
  const tensorCount = new Map(plan.ranks.map((r) => [r.rank, r.tensorCount]));
  const tensorsPerFile = written.files.map((f) => tensorCount.get(f.rank) ?? 0);
  const merged: LoraMergedWeight[] = [...pairs.values()].map((p) => ({
    base: p.pair.baseName, a: p.pair.aName, b: p.pair.bName, scheme: p.pair.scheme, rank: p.rank, shape: p.w.fullShape, dtype: p.w.dtype,
  }));
  const wall = (performance.now() - started) / 1000;
  const productSeconds = product.productMs / 1000;
  return {
    files, scaling: scale, merged, dropped: [...dropped], tensorsPerFile,
    sourceRanks: plan.source.files.length, destinationRanks: ranks.length, bytesWritten,
    productSeconds, ioSeconds: Math.max(0, wall - productSeconds), threads,
  };
}
