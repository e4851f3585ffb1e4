/**
 * Executing one destination rank's plan with bounded buffers: every tensor is assembled in bands
 * along dim 0 (one band when it fits the budget) from the source boxes, read with positioned
 * reads straight into place when the source runs are large, or through a scratch buffer (one
 * read of the covering span, then in-memory copies) when they are many and small. Each band is
 * streamed to the sink.
 */
import { forEachRun } from '../formats/box.js';
import { elementSize } from '../formats/dtype.js';
import type { Box, SinkTensor, TensorSink, TensorSource } from '../formats/types.js';
import { FailureError } from '../errors.js';
import type { BufferSizes, PlannedTensor, RankPlan } from '../plan/build.js';

/** Gives the open source of a global source rank. */
export interface TransformSourcePool {
  get(rank: number): Promise<TensorSource>;
  close(): Promise<void>;
}

/** A pool that opens sources lazily and keeps at most `limit` open (least recently used closed first). */
export function createTransformSourcePool(open: (rank: number) => Promise<TensorSource>, limit = 32): TransformSourcePool {
  const openNow = new Map<number, TensorSource>();
  return {
    async get(rank) {
      const s = openNow.get(rank);
      if (s !== undefined) {
        openNow.delete(rank);
        openNow.set(rank, s);
        return s;
      }
      while (openNow.size >= limit) {
        const [oldest, src] = openNow.entries().next().value as [number, TensorSource];
        openNow.delete(oldest);
        await src.close();
      }
      const fresh = await open(rank);
      openNow.set(rank, fresh);
      return fresh;
    },
    async close() {
      const all = [...openNow.values()];
      openNow.clear();
      for (const s of all) await s.close();
    },
  };
}

/**
 * Reusable buffers of an executor: two band buffers (one is assembled while the other is being
 * written) and a scratch buffer.
 */
export class TransformBuffers {
  readonly sizes: BufferSizes;
  private readonly bandBufs: (Uint8Array | null)[] = [null, null];
  private scratchBuf: Uint8Array | null = null;
  constructor(sizes: BufferSizes) {
    this.sizes = sizes;
  }
  /** Band buffer `slot` (0 or 1) of at least `bytes` bytes. */
  band(bytes: number, slot = 0): Uint8Array {
    const cur = this.bandBufs[slot] ?? null;
    if (cur === null || cur.byteLength < bytes) {
      this.bandBufs[slot] = null;
      const fresh = new Uint8Array(Math.max(bytes, 1));
      this.bandBufs[slot] = fresh;
      return fresh.subarray(0, bytes);
    }
    return cur.subarray(0, bytes);
  }
  scratch(): Uint8Array {
    if (this.scratchBuf === null) this.scratchBuf = new Uint8Array(Math.max(this.sizes.scratch, 64 * 1024));
    return this.scratchBuf;
  }
}

/**
 * A rank plan in the order its output is best written: safetensors outputs lay keys out sorted
 * (MindSpore's convention), so writing them in that order streams the file sequentially (and
 * lets the sink compute `crc_num` and the manifest CRC as it goes); `.ckpt` keeps the source order.
 */
export function rankPlanInWriteOrder(rp: RankPlan, format: 'ckpt' | 'safetensors'): RankPlan {
  if (format !== 'safetensors') return rp;
  const key = (n: string): Buffer => Buffer.from(n, 'utf8');
  return { ...rp, tensors: [...rp.tensors].sort((x, y) => Buffer.compare(key(x.name), key(y.name))) };
}

/** The sink description of a planned tensor. */
export function sinkTensorOf(t: PlannedTensor): SinkTensor {
  return {
    name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.byteLength,
    ...(t.ckpt !== undefined ? { ckpt: t.ckpt } : {}),
  };
}

const DIRECT_RUN_BYTES = 256 * 1024;

/**
 * Copy `srcBox` of a source slice (shape `srcShape`) into `dstBox` of a C-order buffer `dst`
 * of shape `dstShape`. Returns bytes read.
 */
export async function transferBox(
  source: TensorSource,
  name: string,
  es: number,
  srcShape: readonly number[],
  srcBox: Box,
  dst: Uint8Array,
  dstShape: readonly number[],
  dstBox: Box,
  buffers: TransformBuffers,
): Promise<number> {
  // triplets (srcElem, dstElem, elems), merged where both sides continue
  const src: number[] = [];
  forEachRun(srcShape, srcBox, (o, n) => {
    src.push(o, n);
  });
  const dstRuns: number[] = [];
  forEachRun(dstShape, dstBox, (o, n) => {
    dstRuns.push(o, n);
  });
  const trip: number[] = [];
  let i = 0;
  let j = 0;
  let si = src[0] ?? 0;
  let sn = src[1] ?? 0;
  let di = dstRuns[0] ?? 0;
  let dn = dstRuns[1] ?? 0;
  while (i < src.length && j < dstRuns.length) {
    const n = Math.min(sn, dn);
    const k = trip.length;
    if (k > 0 && (trip[k - 3] as number) + (trip[k - 1] as number) === si && (trip[k - 2] as number) + (trip[k - 1] as number) === di) {
      trip[k - 1] = (trip[k - 1] as number) + n;
    } else trip.push(si, di, n);
    si += n; sn -= n; di += n; dn -= n;
    if (sn === 0) {
      i += 2;
      if (i < src.length) { si = src[i] as number; sn = src[i + 1] as number; }
    }
    if (dn === 0) {
      j += 2;
      if (j < dstRuns.length) { di = dstRuns[j] as number; dn = dstRuns[j + 1] as number; }
    }
  }
  const count = trip.length / 3;
  let total = 0;
  for (let t = 2; t < trip.length; t += 3) total += trip[t] as number;
  const totalBytes = total * es;
  if (count === 0) return 0;
  const avg = totalBytes / count;
  if (count <= 4 || avg >= DIRECT_RUN_BYTES) {
    for (let t = 0; t < trip.length; t += 3) {
      await source.readBytes(name, (trip[t] as number) * es, (trip[t + 2] as number) * es, dst, (trip[t + 1] as number) * es);
    }
    return totalBytes;
  }
  const scratch = buffers.scratch();
  let t = 0;
  while (t < trip.length) {
    const first = trip[t] as number;
    let end = t;
    let need = 0;
    // extend the group while the span fits the scratch buffer
    while (end < trip.length) {
      const spanEnd = ((trip[end] as number) + (trip[end + 2] as number)) * es;
      if (spanEnd - first * es > scratch.byteLength && end > t) break;
      need += (trip[end + 2] as number) * es;
      end += 3;
    }
    const lastEnd = ((trip[end - 3] as number) + (trip[end - 1] as number)) * es;
    const span = lastEnd - first * es;
    if (span > scratch.byteLength || need * 8 < span) {
      // too sparse (or one run larger than the scratch): read each run straight into place
      for (let u = t; u < end; u += 3) {
        await source.readBytes(name, (trip[u] as number) * es, (trip[u + 2] as number) * es, dst, (trip[u + 1] as number) * es);
      }
    } else {
      await source.readBytes(name, first * es, span, scratch, 0);
      for (let u = t; u < end; u += 3) {
        const from = ((trip[u] as number) - first) * es;
        const len = (trip[u + 2] as number) * es;
        dst.set(scratch.subarray(from, from + len), (trip[u + 1] as number) * es);
      }
    }
    t = end;
  }
  return totalBytes;
}

/**
 * The sink's operations in order, off the critical path: the next band is assembled while the
 * previous one is being written. A band buffer is reused only after its write finished.
 */
class WritePipeline {
  private tail: Promise<void> = Promise.resolve();
  private readonly busy: Promise<void>[] = [Promise.resolve(), Promise.resolve()];
  private slot = 0;
  private failed: unknown = undefined;
  constructor(private readonly sink: TensorSink, private readonly buffers: TransformBuffers) {}

  private push(fn: () => Promise<void>): Promise<void> {
    const p = this.tail.then(fn);
    p.catch((err: unknown) => {
      if (this.failed === undefined) this.failed = err ?? new FailureError('write failed');
    });
    this.tail = p;
    return p;
  }

  /** A free band buffer of `bytes` (waits for the write that last used it). */
  async take(bytes: number): Promise<Uint8Array> {
    this.slot ^= 1;
    await this.busy[this.slot]!.catch(() => undefined);
    if (this.failed !== undefined) throw this.failed;
    return this.buffers.band(bytes, this.slot);
  }

  /** Queue writing `buf` (taken with `take`) and then report it. */
  write(buf: Uint8Array, onBytes: (n: number) => void): void {
    this.busy[this.slot] = this.push(async () => {
      await this.sink.write(buf);
      onBytes(buf.byteLength);
    });
  }

  begin(t: SinkTensor): void {
    void this.push(() => this.sink.beginTensor(t));
  }

  end(): void {
    void this.push(() => this.sink.endTensor());
  }

  /** Wait for everything queued; throws the first failure. */
  async drain(): Promise<void> {
    await this.tail;
  }
}

async function writeVerbatim(t: PlannedTensor, pool: TransformSourcePool, out: WritePipeline, buffers: TransformBuffers, onBytes: (n: number) => void): Promise<number> {
  const op = t.ops[0];
  if (op === undefined) throw new FailureError(`no source for verbatim entry`, { tensor: t.name });
  const source = await pool.get(op.srcRank);
  const piece = Math.max(1, Math.min(buffers.sizes.band, t.byteLength));
  for (let off = 0; off < t.byteLength; off += piece) {
    const n = Math.min(piece, t.byteLength - off);
    const buf = await out.take(n);
    await source.readBytes(t.name, off, n, buf, 0);
    out.write(buf, onBytes);
  }
  return t.byteLength;
}

/** Assemble one tensor band by band and queue each band for the sink. */
async function writeSharded(t: PlannedTensor, pool: TransformSourcePool, out: WritePipeline, buffers: TransformBuffers, onBytes: (n: number) => void): Promise<number> {
  const es = elementSize(t.dtype);
  const shape = t.shape;
  if (t.byteLength === 0) return 0;
  const rows = shape.length === 0 ? 1 : (shape[0] as number);
  const rowBytes = t.byteLength / rows;
  const rowsPerBand = Math.max(1, Math.floor(buffers.sizes.band / rowBytes));
  let read = 0;
  for (let r0 = 0; r0 < rows; r0 += rowsPerBand) {
    const r1 = Math.min(rows, r0 + rowsPerBand);
    const bandShape = shape.length === 0 ? [] : [r1 - r0, ...shape.slice(1)];
    const buf = await out.take((r1 - r0) * rowBytes);
    for (const op of t.ops) {
      let srcBox = op.srcBox;
      let dstBox = op.dstBox;
      if (shape.length > 0) {
        const s = op.dstBox.start[0] as number;
        const n = op.dstBox.shape[0] as number;
        const lo = Math.max(s, r0);
        const hi = Math.min(s + n, r1);
        if (hi <= lo) continue;
        srcBox = {
          start: [(op.srcBox.start[0] as number) + (lo - s), ...op.srcBox.start.slice(1)],
          shape: [hi - lo, ...op.srcBox.shape.slice(1)],
        };
        dstBox = { start: [lo - r0, ...op.dstBox.start.slice(1)], shape: [hi - lo, ...op.dstBox.shape.slice(1)] };
      }
      const source = await pool.get(op.srcRank);
      read += await transferBox(source, t.name, es, op.srcShape, srcBox, buf, bandShape, dstBox, buffers);
    }
    out.write(buf, onBytes);
  }
  return read;
}

/**
 * Write every tensor of a rank plan into `sink` (which the caller created and closes). Reading
 * the next band overlaps writing the previous one (two band buffers). Returns bytes read.
 */
export async function executeRankPlan(
  rp: RankPlan,
  pool: TransformSourcePool,
  sink: TensorSink,
  buffers: TransformBuffers,
  onBytes: (n: number) => void = () => {},
): Promise<number> {
  const out = new WritePipeline(sink, buffers);
  let read = 0;
  try {
    for (const t of rp.tensors) {
      out.begin(sinkTensorOf(t));
      read += t.verbatim ? await writeVerbatim(t, pool, out, buffers, onBytes) : await writeSharded(t, pool, out, buffers, onBytes);
      out.end();
    }
  } finally {
    // never leave writes running past a failure (the caller aborts the sink next)
    await out.drain().catch(() => undefined);
  }
  await out.drain();
  return read;
}
