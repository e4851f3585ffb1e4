/**
 * `mergeLora`: W' = W + scaling * (B @ A) for every LoRA pair, LoRA tensors and their optimizer
 * states dropped, everything else kept in order. Complete or distributed input; complete output
 * (`DST/rank_0/{prefix}0.ckpt`) or one slice per destination rank (`DST/rank_R/{prefix}R.ckpt`).
 *
 * Per destination tensor the destination box is assembled from the source slices that overlap it
 * (positioned reads), in row chunks of bounded size. For a merged weight the chunk's rows of B and
 * the box's columns of A are read the same way, so a destination slice of W gets exactly its
 * rows/columns of B @ A: the whole model, or even a whole tensor, is never in memory.
 */
import { stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { InputError } from '../errors.js';
import { volume } from '../formats/box.js';
import { createCheckpointSink } from '../formats/ckpt/index.js';
import { elementSize, isFloat, toFloat32, type DType, type FloatDType } from '../formats/dtype.js';
import type { Box, SinkTensor, TensorSink } from '../formats/types.js';
import type { Progress } from '../cli/progress.js';
import { KernelPool, kernelDTypeCode } from './kernel.js';
import { planLoraNames, type LoraPair } from './names.js';
import { openDestination, openSourceView, type DestinationPlan } from './placement.js';
import type { LoraScaling } from './scaling.js';
import type { ModelView, ViewTensor } from './view.js';

export interface LoraMergeOptions {
  /** A complete `.ckpt`, or a folder of `rank_N/` slice folders. */
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
  /** Largest W chunk held at once, in bytes (default 64 MiB; at least 1 KiB). */
  chunkBytes?: number;
  /** Smallest product (multiply-adds) worth handing a share to a worker thread (default 2^22). */
  kernelMinWork?: number;
  /** Called once the output size is known; returns the progress reporter to use. */
  progress?: (totalBytes: number) => Progress;
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
  /** Seconds spent reading sources and writing outputs. */
  readonly ioSeconds: number;
  readonly threads: number;
}

const DEFAULT_CHUNK = 64 * 1024 * 1024;

interface Validated {
  pairs: Map<string, { pair: LoraPair; rank: number; w: ViewTensor; a: ViewTensor; b: ViewTensor }>;
  dropped: Set<string>;
}

/** Check every pair: names, presence, ranks, dtypes, shapes. One InputError lists every problem. */
export function validateLoraModel(view: ModelView, srcLabel: string, expectedRank?: number): Validated {
  const plan = planLoraNames(view.order);
  const problems = [...plan.problems];
  const pairs: Validated['pairs'] = new Map();
  for (const pair of plan.pairs) {
    const w = view.tensor(pair.baseName) as ViewTensor;
    const a = view.tensor(pair.aName) as ViewTensor;
    const b = view.tensor(pair.bName) as ViewTensor;
    const bad: string[] = [];
    const show = (t: ViewTensor): string => `${t.name} [${t.fullShape}] ${t.dtype}`;
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
      if (expectedRank !== undefined && ar !== expectedRank) {
        bad.push(`LoRA rank is ${ar} but the scaling was given for rank ${expectedRank}`);
      }
    }
    if (bad.length > 0) {
      problems.push(...bad.map((m) => `pair '${pair.aName}': ${m}`));
      continue;
    }
    pairs.set(pair.baseName, { pair, rank: a.fullShape[0] as number, w, a, b });
  }
  if (problems.length > 0) {
    throw new InputError(`${problems.length} LoRA problem(s) in ${srcLabel}:\n  ${problems.join('\n  ')}`);
  }
  if (pairs.size === 0) {
    throw new InputError(
      `no LoRA pairs found in ${srcLabel} (expected X.mindpet_delta_lora_a/b or X.lora_A/B.weight tensors)`,
    );
  }
  return { pairs, dropped: new Set(plan.dropped) };
}

/** Split a box into C-contiguous sub-boxes of at most `limit` bytes (at least one row of the last dim). */
export function* boxChunks(box: Box, es: number, limit: number): Generator<Box> {
  const rank = box.shape.length;
  if (rank === 0 || volume(box.shape) * es <= limit) {
    yield box;
    return;
  }
  const inner = volume(box.shape.slice(1)) * es;
  const d0 = box.shape[0] as number;
  const s0 = box.start[0] as number;
  if (inner <= limit || rank === 1) {
    const rows = rank === 1 ? Math.max(1, Math.floor(limit / es)) : Math.max(1, Math.floor(limit / inner));
    for (let r = 0; r < d0; r += rows) {
      const n = Math.min(rows, d0 - r);
      yield { start: [s0 + r, ...box.start.slice(1)], shape: [n, ...box.shape.slice(1)] };
    }
    return;
  }
  for (let r = 0; r < d0; r++) {
    const sub: Box = { start: box.start.slice(1), shape: box.shape.slice(1) };
    for (const c of boxChunks(sub, es, limit)) yield { start: [s0 + r, ...c.start], shape: [1, ...c.shape] };
  }
}

class Buffers {
  private w: Uint8Array[] = [new Uint8Array(0), new Uint8Array(0)];
  a: Float32Array = new Float32Array(0);
  private b: Float32Array[] = [new Float32Array(0), new Float32Array(0)];
  constructor(readonly shared: boolean) {}
  private alloc(bytes: number): ArrayBufferLike {
    return this.shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
  }
  /** W bytes in one of two slots (one being computed while the next is read). */
  wBytes(n: number, slot = 0): Uint8Array {
    if ((this.w[slot] as Uint8Array).byteLength < n) this.w[slot] = new Uint8Array(this.alloc(Math.max(n, 8)));
    return (this.w[slot] as Uint8Array).subarray(0, n);
  }
  aFloats(n: number): Float32Array {
    if (this.a.length < n) this.a = new Float32Array(this.alloc(Math.max(n, 2) * 4));
    return this.a.subarray(0, n);
  }
  bFloats(n: number, slot = 0): Float32Array {
    if ((this.b[slot] as Float32Array).length < n) this.b[slot] = new Float32Array(this.alloc(Math.max(n, 2) * 4));
    return (this.b[slot] as Float32Array).subarray(0, n);
  }
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

/** Merge LoRA weights (see the file comment). */
export async function mergeLora(opts: LoraMergeOptions): Promise<LoraMergeResult> {
  const scale = scalingValue(opts.scaling);
  const prefix = opts.prefix ?? 'checkpoint_';
  if (prefix.includes('/') || prefix.includes('\\')) throw new InputError(`--prefix must be a file name prefix, got '${prefix}'`, { key: 'prefix' });
  const chunkLimit = Math.max(1024, Math.min(opts.chunkBytes ?? DEFAULT_CHUNK, 1 << 30));
  const threads = Math.max(1, Math.floor(opts.threads ?? Math.min(2, availableParallelism())));
  const view = await openSourceView(opts.src, opts.srcStrategy);
  const pool = new KernelPool(threads);
  let sink: TensorSink | null = null;
  let productMs = 0;
  let ioMs = 0;
  const files: string[] = [];
  const tensorsPerFile: number[] = [];
  let bytesWritten = 0;
  try {
    const sc = typeof opts.scaling === 'number' ? undefined : opts.scaling;
    const expectedRank = sc !== undefined && sc.rank !== undefined && sc.hasPatterns !== true ? sc.rank : undefined;
    const { pairs, dropped } = validateLoraModel(view, opts.src, expectedRank);
    const dest: DestinationPlan = await openDestination(opts.dstStrategy);
    const names = view.order.filter((n) => !dropped.has(n));

    // Output paths: never over a source file; never over an existing file unless asked.
    const outputs = dest.ranks.map((r) => resolve(join(opts.dstDir, `rank_${r}`, `${prefix}${r}.ckpt`)));
    const srcPaths = new Set(view.sources.map((s) => resolve(s.source.path)));
    for (const out of outputs) {
      if (srcPaths.has(out)) throw new InputError('output would replace a source checkpoint; choose another --dst-ckpt-dir', { file: out });
      if (!opts.overwrite && (await exists(out))) throw new InputError('output exists (pass --overwrite to replace it)', { file: out });
    }

    const bufs = new Buffers(threads > 1);
    let total = 0;
    const plans = dest.ranks.map((rank) => {
      const list: Array<{ name: string; box: Box; t: ViewTensor }> = [];
      for (const name of names) {
        const t = view.tensor(name) as ViewTensor;
        const box = dest.boxOf(name, t.fullShape, rank);
        if (box === null) continue;
        list.push({ name, box, t });
        const es = t.dtype === 'str' || t.dtype === 'Int4' ? 0 : elementSize(t.dtype);
        total += es === 0 ? t.pieces[0]?.entry.byteLength ?? 0 : volume(box.shape) * es;
      }
      return list;
    });
    const progress = opts.progress?.(total);

    for (let di = 0; di < dest.ranks.length; di++) {
      const out = outputs[di] as string;
      const list = plans[di] as Array<{ name: string; box: Box; t: ViewTensor }>;
      const s = await createCheckpointSink(out, { crc: opts.crc === true });
      sink = s;
      let t0 = performance.now();
      for (const { name, box, t } of list) {
        progress?.label(name);
        const src0 = t.pieces[0];
        const isFull = box.shape.every((d, i) => d === t.fullShape[i]);
        const hints = src0 !== undefined && src0.entry.ckpt !== undefined && src0.box.shape.every((d, i) => d === box.shape[i])
          ? { ckpt: src0.entry.ckpt }
          : {};
        if (t.dtype === 'str' || t.dtype === 'Int4') {
          if (!isFull || src0 === undefined) throw new InputError(`cannot slice ${t.dtype} tensor '${name}'`);
          const desc: SinkTensor = { name, dtype: t.dtype, shape: t.fullShape, byteLength: src0.entry.byteLength, ...hints };
          await s.beginTensor(desc);
          const piece = bufs.wBytes(Math.min(chunkLimit, Math.max(1, src0.entry.byteLength)));
          for (let off = 0; off < src0.entry.byteLength; off += piece.byteLength) {
            const n = Math.min(piece.byteLength, src0.entry.byteLength - off);
            await src0.source.readBytes(name, off, n, piece, 0);
            await s.write(piece.subarray(0, n));
            bytesWritten += n;
            progress?.advance(n);
          }
          await s.endTensor();
          continue;
        }
        const es = elementSize(t.dtype);
        const desc: SinkTensor = { name, dtype: t.dtype, shape: [...box.shape], byteLength: volume(box.shape) * es, ...hints };
        await s.beginTensor(desc);
        const lora = pairs.get(name);
        if (lora === undefined) {
          for (const c of boxChunks(box, es, chunkLimit)) {
            const n = volume(c.shape) * es;
            const buf = bufs.wBytes(n);
            await view.readRegion(name, c, buf);
            await s.write(buf);
            bytesWritten += n;
            progress?.advance(n);
          }
        } else {
          // W box [r0, r0+R) x [c0, c0+C): A columns once, B rows and W rows per chunk.
          const r = lora.rank;
          const [r0, c0] = box.start as [number, number];
          const [R, C] = box.shape as [number, number];
          const aF = bufs.aFloats(r * C);
          await readAsF32(view, lora.a, { start: [0, c0], shape: [r, C] }, aF);
          const rowsPer = Math.max(1, Math.floor(chunkLimit / Math.max(1, C * es)));
          const steps = Math.ceil(R / rowsPer);
          // read chunk q+1 while chunk q is in the kernel (two buffer slots)
          const load = async (q: number): Promise<{ k: number; wb: Uint8Array; bF: Float32Array }> => {
            const i = q * rowsPer;
            const k = Math.min(rowsPer, R - i);
            const bF = bufs.bFloats(k * r, q % 2);
            await readAsF32(view, lora.b, { start: [r0 + i, 0], shape: [k, r] }, bF);
            const wb = bufs.wBytes(k * C * es, q % 2);
            await view.readRegion(name, { start: [r0 + i, c0], shape: [k, C] }, wb);
            return { k, wb, bF };
          };
          let next: Promise<{ k: number; wb: Uint8Array; bF: Float32Array }> | null = load(0);
          try {
            for (let q = 0; q < steps; q++) {
              const { k, wb, bF } = await (next as Promise<{ k: number; wb: Uint8Array; bF: Float32Array }>);
              next = q + 1 < steps ? load(q + 1) : null;
              const tk = performance.now();
              ioMs += tk - t0;
              await pool.run({
                w: wb.buffer, wOffset: wb.byteOffset, dtype: kernelDTypeCode(t.dtype) as number,
                rowBegin: 0, rowEnd: k, cols: C,
                b: bF.buffer, bOffset: bF.byteOffset, a: aF.buffer, aOffset: aF.byteOffset,
                r, scale,
              }, opts.kernelMinWork);
              t0 = performance.now();
              productMs += t0 - tk;
              await s.write(wb);
              bytesWritten += wb.byteLength;
              progress?.advance(wb.byteLength);
            }
          } finally {
            // never leave a read in flight (or its rejection unhandled) when leaving early
            if (next !== null) await next.catch(() => undefined);
          }
        }
        await s.endTensor();
      }
      await s.close();
      sink = null;
      ioMs += performance.now() - t0;
      files.push(out);
      tensorsPerFile.push(list.length);
    }
    progress?.done();
    const merged: LoraMergedWeight[] = [...pairs.values()].map((p) => ({
      base: p.pair.baseName, a: p.pair.aName, b: p.pair.bName, scheme: p.pair.scheme, rank: p.rank,
      shape: p.w.fullShape, dtype: p.w.dtype,
    }));
    return {
      files, scaling: scale, merged, dropped: [...dropped], tensorsPerFile,
      sourceRanks: view.sources.length, destinationRanks: dest.ranks.length, bytesWritten,
      productSeconds: productMs / 1000, ioSeconds: ioMs / 1000, threads,
    };
  } finally {
    if (sink !== null) await sink.abort().catch(() => undefined);
    await pool.close();
    await view.close();
  }
}

/** Read a box of a floating tensor as float32 into `dst`. */
async function readAsF32(view: ModelView, t: ViewTensor, box: Box, dst: Float32Array): Promise<void> {
  const es = elementSize(t.dtype);
  const n = volume(box.shape);
  if (t.dtype === 'Float32') {
    await view.readRegion(t.name, box, new Uint8Array(dst.buffer, dst.byteOffset, n * 4));
    return;
  }
  const raw = new Uint8Array(n * es);
  await view.readRegion(t.name, box, raw);
  dst.set(toFloat32(raw, t.dtype as FloatDType));
}

