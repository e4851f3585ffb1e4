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
import { bufferSizes, planRank, type BufferSizes, type CopyOp, type Plan, type PlannedTensor, type RankPlan } from '../plan/index.js';

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
  /** Per lane (destination rank of a group; lane 0 for one rank): two band buffers. */
  private readonly bandBufs: (Uint8Array | null)[][] = [[null, null]];
  private scratchBuf: Uint8Array | null = null;
  constructor(sizes: BufferSizes) {
    this.sizes = sizes;
  }
  /** Band buffer `slot` (0 or 1) of at least `bytes` bytes. */
  band(bytes: number, slot = 0): Uint8Array {
    return this.laneBand(0, bytes, slot);
  }
  /** Band buffer `slot` (0 or 1) of lane `lane` (one lane per destination rank executed together). */
  laneBand(lane: number, bytes: number, slot = 0): Uint8Array {
    while (this.bandBufs.length <= lane) this.bandBufs.push([null, null]);
    const bufs = this.bandBufs[lane] as (Uint8Array | null)[];
    const cur = bufs[slot] ?? null;
    if (cur === null || cur.byteLength < bytes) {
      bufs[slot] = null;
      const fresh = new Uint8Array(Math.max(bytes, 1));
      bufs[slot] = fresh;
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
 * The element copies moving `srcBox` of a C-order source slice (shape `srcShape`) to `dstBox` of a
 * C-order destination buffer (shape `dstShape`), as flat triplets (srcElem, dstElem, elems),
 * merged where both sides continue.
 */
function copyTriplets(srcShape: readonly number[], srcBox: Box, dstShape: readonly number[], dstBox: Box): number[] {
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
  return trip;
}

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
  const trip = copyTriplets(srcShape, srcBox, dstShape, dstBox);
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
  constructor(private readonly sink: TensorSink, private readonly buffers: TransformBuffers, private readonly lane = 0) {}

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
    return this.buffers.laneBand(this.lane, bytes, this.slot);
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

/** The part of a copy that lands in destination rows [r0, r1), in band coordinates; null when none. */
function clipToBand(op: CopyOp, rank: number, r0: number, r1: number): { srcBox: Box; dstBox: Box } | null {
  if (rank === 0) return { srcBox: op.srcBox, dstBox: op.dstBox };
  const s = op.dstBox.start[0] as number;
  const n = op.dstBox.shape[0] as number;
  const lo = Math.max(s, r0);
  const hi = Math.min(s + n, r1);
  if (hi <= lo) return null;
  return {
    srcBox: {
      start: [(op.srcBox.start[0] as number) + (lo - s), ...op.srcBox.start.slice(1)],
      shape: [hi - lo, ...op.srcBox.shape.slice(1)],
    },
    dstBox: { start: [lo - r0, ...op.dstBox.start.slice(1)], shape: [hi - lo, ...op.dstBox.shape.slice(1)] },
  };
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
      const clipped = clipToBand(op, shape.length, r0, r1);
      if (clipped === null) continue;
      const source = await pool.get(op.srcRank);
      read += await transferBox(source, t.name, es, op.srcShape, clipped.srcBox, buf, bandShape, clipped.dstBox, buffers);
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

// ---------------------------------------------------------------------------------------------
// Several destination ranks at once: each source span is read once for the whole group.

/** Most destination ranks executed together. */
export const TRANSFORM_MAX_GROUP = 8;
/** Smallest per-rank band buffer a group may shrink to. */
const MIN_LANE_BAND = 4 * 1024 * 1024;

/**
 * How many destination ranks one converter executes together within a buffer budget of `memory`
 * bytes: each rank needs two band buffers of at least 4 MiB besides the shared scratch buffer.
 */
export function transformGroupSize(memory: number, maxGroup: number = TRANSFORM_MAX_GROUP): number {
  const base = bufferSizes(memory);
  const avail = Math.max(0, Math.max(memory, 1024 * 1024) - base.scratch);
  return Math.max(1, Math.min(Math.floor(maxGroup), Math.floor(avail / (2 * MIN_LANE_BAND))));
}

/** Buffer sizes for groups of `groupSize` ranks: the band budget is split across the ranks. */
export function transformGroupBufferSizes(memory: number, groupSize: number): BufferSizes {
  const base = bufferSizes(memory);
  const avail = Math.max(0, Math.max(memory, 1024 * 1024) - base.scratch);
  const band = Math.min(base.band, Math.floor(avail / (2 * Math.max(1, groupSize))));
  return { band: Math.max(64 * 1024, band), scratch: base.scratch };
}

/**
 * Whether two rank plans can be executed together: the same pipeline stage and the same tensors
 * (name, dtype, verbatim or not) in the same order.
 */
export function rankPlansShareTensors(a: RankPlan, b: RankPlan): boolean {
  if (a.stage !== b.stage || a.tensors.length !== b.tensors.length) return false;
  for (let i = 0; i < a.tensors.length; i++) {
    const x = a.tensors[i] as PlannedTensor;
    const y = b.tensors[i] as PlannedTensor;
    if (x.name !== y.name || x.dtype !== y.dtype || x.verbatim !== y.verbatim) return false;
  }
  return true;
}

/** Copies of one band from one source: element triplets (srcElem, dstElem, elems) into a lane's buffer. */
interface LanePiece {
  readonly lane: number;
  readonly trip: readonly number[];
}

/**
 * Read what `pieces` need of one source tensor and copy it into the lanes' buffers: large
 * non-overlapping runs go straight into place with positioned reads; many small runs, and runs
 * that several lanes share, are read once per covering span into the scratch buffer and copied
 * to every lane. Returns bytes delivered.
 */
async function transferGroup(
  source: TensorSource,
  name: string,
  es: number,
  pieces: readonly LanePiece[],
  dsts: readonly (Uint8Array | null)[],
  buffers: TransformBuffers,
): Promise<number> {
  // merge the (each ascending) triplet lists into one stream ascending by source offset
  let count = 0;
  for (const p of pieces) count += p.trip.length / 3;
  if (count === 0) return 0;
  const S = new Float64Array(count);
  const D = new Float64Array(count);
  const N = new Float64Array(count);
  const L = new Uint16Array(count);
  const at = new Array<number>(pieces.length).fill(0);
  let sorted = true;
  for (const p of pieces) {
    for (let u = 3; u < p.trip.length; u += 3) if ((p.trip[u] as number) < (p.trip[u - 3] as number)) sorted = false;
  }
  if (sorted && pieces.length <= 64) {
    for (let o = 0; o < count; o++) {
      let best = -1;
      let bestS = Infinity;
      for (let q = 0; q < pieces.length; q++) {
        const trip = (pieces[q] as LanePiece).trip;
        const u = at[q] as number;
        if (u < trip.length && (trip[u] as number) < bestS) {
          bestS = trip[u] as number;
          best = q;
        }
      }
      const p = pieces[best] as LanePiece;
      const u = at[best] as number;
      S[o] = p.trip[u] as number;
      D[o] = p.trip[u + 1] as number;
      N[o] = p.trip[u + 2] as number;
      L[o] = p.lane;
      at[best] = u + 3;
    }
  } else {
    const all: number[] = [];
    for (const p of pieces) for (let u = 0; u < p.trip.length; u += 3) all.push(p.trip[u] as number, p.trip[u + 1] as number, p.trip[u + 2] as number, p.lane);
    const idx = Array.from({ length: count }, (_, k) => k).sort((x, y) => (all[x * 4] as number) - (all[y * 4] as number));
    idx.forEach((k, o) => {
      S[o] = all[k * 4] as number;
      D[o] = all[k * 4 + 1] as number;
      N[o] = all[k * 4 + 2] as number;
      L[o] = all[k * 4 + 3] as number;
    });
  }
  let total = 0;
  let overlap = false;
  let maxEnd = -1;
  for (let o = 0; o < count; o++) {
    total += N[o] as number;
    if ((S[o] as number) < maxEnd) overlap = true;
    maxEnd = Math.max(maxEnd, (S[o] as number) + (N[o] as number));
  }
  const direct = async (o: number): Promise<void> => {
    const dst = dsts[L[o] as number];
    if (dst === null || dst === undefined) throw new FailureError('internal: no band buffer for a lane', { tensor: name });
    await source.readBytes(name, (S[o] as number) * es, (N[o] as number) * es, dst, (D[o] as number) * es);
  };
  const totalBytes = total * es;
  if (!overlap && (count <= 4 || totalBytes / count >= DIRECT_RUN_BYTES)) {
    for (let o = 0; o < count; o++) await direct(o);
    return totalBytes;
  }
  const scratch = buffers.scratch();
  let t = 0;
  while (t < count) {
    const first = S[t] as number;
    let end = t;
    let hi = first;
    let cover = 0;
    // extend the group while the covering span fits the scratch buffer
    while (end < count) {
      const s0 = S[end] as number;
      const e = s0 + (N[end] as number);
      const nextHi = Math.max(hi, e);
      if ((nextHi - first) * es > scratch.byteLength && end > t) break;
      cover += Math.max(0, e - Math.max(s0, hi));
      hi = nextHi;
      end++;
    }
    const span = (hi - first) * es;
    if (span > scratch.byteLength || cover * es * 8 < span) {
      // too sparse (or one run larger than the scratch): read each run straight into place
      for (let o = t; o < end; o++) await direct(o);
    } else {
      await source.readBytes(name, first * es, span, scratch, 0);
      for (let o = t; o < end; o++) {
        const dst = dsts[L[o] as number];
        if (dst === null || dst === undefined) throw new FailureError('internal: no band buffer for a lane', { tensor: name });
        const from = ((S[o] as number) - first) * es;
        dst.set(scratch.subarray(from, from + (N[o] as number) * es), (D[o] as number) * es);
      }
    }
    t = end;
  }
  return totalBytes;
}

/** One tensor of every rank of a group, assembled band by band with shared reads. */
async function writeShardedGroup(ts: readonly PlannedTensor[], pool: TransformSourcePool, outs: readonly WritePipeline[], buffers: TransformBuffers, onBytes: (n: number) => void): Promise<number> {
  const es = elementSize((ts[0] as PlannedTensor).dtype);
  const lanes = ts.map((t) => {
    if (t.byteLength === 0) return null;
    const rows = t.shape.length === 0 ? 1 : (t.shape[0] as number);
    const rowBytes = t.byteLength / rows;
    const rowsPerBand = Math.max(1, Math.floor(buffers.sizes.band / rowBytes));
    return { t, rows, rowBytes, rowsPerBand, bands: Math.ceil(rows / rowsPerBand) };
  });
  const nBands = lanes.reduce((m, l) => Math.max(m, l?.bands ?? 0), 0);
  let read = 0;
  for (let b = 0; b < nBands; b++) {
    const bufs: (Uint8Array | null)[] = [];
    const bySource = new Map<number, LanePiece[]>();
    for (let k = 0; k < lanes.length; k++) {
      const l = lanes[k];
      if (l === null || l === undefined || b >= l.bands) {
        bufs.push(null);
        continue;
      }
      const r0 = b * l.rowsPerBand;
      const r1 = Math.min(l.rows, r0 + l.rowsPerBand);
      const shape = l.t.shape;
      const bandShape = shape.length === 0 ? [] : [r1 - r0, ...shape.slice(1)];
      bufs.push(await (outs[k] as WritePipeline).take((r1 - r0) * l.rowBytes));
      for (const op of l.t.ops) {
        const clipped = clipToBand(op, shape.length, r0, r1);
        if (clipped === null) continue;
        const trip = copyTriplets(op.srcShape, clipped.srcBox, bandShape, clipped.dstBox);
        if (trip.length === 0) continue;
        let list = bySource.get(op.srcRank);
        if (list === undefined) bySource.set(op.srcRank, (list = []));
        list.push({ lane: k, trip });
      }
    }
    for (const [srcRank, pieces] of bySource) {
      const source = await pool.get(srcRank);
      read += await transferGroup(source, (ts[0] as PlannedTensor).name, es, pieces, bufs, buffers);
    }
    for (let k = 0; k < bufs.length; k++) {
      const buf = bufs[k];
      if (buf !== null && buf !== undefined) (outs[k] as WritePipeline).write(buf, onBytes);
    }
  }
  return read;
}

/** One verbatim entry for every rank of a group: read once when all copy the same source entry. */
async function writeVerbatimGroup(ts: readonly PlannedTensor[], pool: TransformSourcePool, outs: readonly WritePipeline[], buffers: TransformBuffers, onBytes: (n: number) => void): Promise<number> {
  const t0 = ts[0] as PlannedTensor;
  const src = t0.ops[0]?.srcRank;
  const same = src !== undefined && ts.every((t) => t.ops[0]?.srcRank === src && t.byteLength === t0.byteLength);
  if (!same) {
    let read = 0;
    for (let k = 0; k < ts.length; k++) read += await writeVerbatim(ts[k] as PlannedTensor, pool, outs[k] as WritePipeline, buffers, onBytes);
    return read;
  }
  const source = await pool.get(src);
  const piece = Math.max(1, Math.min(buffers.sizes.band, t0.byteLength));
  for (let off = 0; off < t0.byteLength; off += piece) {
    const n = Math.min(piece, t0.byteLength - off);
    const bufs: Uint8Array[] = [];
    for (const out of outs) bufs.push(await out.take(n));
    const head = bufs[0] as Uint8Array;
    await source.readBytes(t0.name, off, n, head, 0);
    for (let k = 1; k < bufs.length; k++) (bufs[k] as Uint8Array).set(head);
    for (let k = 0; k < bufs.length; k++) (outs[k] as WritePipeline).write(bufs[k] as Uint8Array, onBytes);
  }
  return t0.byteLength * ts.length;
}

/**
 * Write several destination ranks together, `rps[k]` into `sinks[k]` (which the caller created
 * and closes or aborts): the rank plans must list the same tensors in the same order
 * (`rankPlansShareTensors`). For every tensor and dim-0 band, each needed source span is read
 * once and copied into every rank's band, so column splits are not read once per rank. Band
 * buffers are per rank (`buffers.sizes.band` each, see `transformGroupBufferSizes`); the scratch
 * buffer is shared. Output bytes are identical to `executeRankPlan` of each rank. Returns bytes
 * delivered (as the sum of `executeRankPlan` of each rank would).
 */
/**
 * Destination ranks in groups that can be converted together: consecutive ranks (in `ranks`
 * order) whose plans list the same tensors, at most `groupSize` each. Plans are computed lazily,
 * in write order for `format`.
 */
export function* rankPlanGroups(
  plan: Plan,
  ranks: readonly number[],
  format: 'ckpt' | 'safetensors',
  groupSize: number,
): Generator<RankPlan[]> {
  let group: RankPlan[] = [];
  for (const rank of ranks) {
    const rp = rankPlanInWriteOrder(planRank(plan, rank), format);
    const head = group[0];
    if (head !== undefined && (group.length >= groupSize || !rankPlansShareTensors(head, rp))) {
      yield group;
      group = [];
    }
    group.push(rp);
  }
  if (group.length > 0) yield group;
}

export async function executeRankPlanGroup(
  rps: readonly RankPlan[],
  pool: TransformSourcePool,
  sinks: readonly TensorSink[],
  buffers: TransformBuffers,
  onBytes: (n: number) => void = () => {},
): Promise<number> {
  if (rps.length !== sinks.length) throw new FailureError(`internal: ${rps.length} rank plans but ${sinks.length} sinks`);
  const head = rps[0];
  if (head === undefined) return 0;
  if (rps.length === 1) return executeRankPlan(head, pool, sinks[0] as TensorSink, buffers, onBytes);
  for (const rp of rps) {
    if (!rankPlansShareTensors(head, rp)) throw new FailureError(`internal: rank ${rp.rank} cannot be converted together with rank ${head.rank} (different tensors)`);
  }
  const outs = sinks.map((s, k) => new WritePipeline(s, buffers, k));
  let read = 0;
  try {
    for (let i = 0; i < head.tensors.length; i++) {
      const ts = rps.map((rp) => rp.tensors[i] as PlannedTensor);
      ts.forEach((t, k) => (outs[k] as WritePipeline).begin(sinkTensorOf(t)));
      read += (ts[0] as PlannedTensor).verbatim
        ? await writeVerbatimGroup(ts, pool, outs, buffers, onBytes)
        : await writeShardedGroup(ts, pool, outs, buffers, onBytes);
      for (const out of outs) out.end();
    }
  } finally {
    // never leave writes running past a failure (the caller aborts the sinks next)
    await Promise.all(outs.map((o) => o.drain().catch(() => undefined)));
  }
  for (const out of outs) await out.drain();
  return read;
}
