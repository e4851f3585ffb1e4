/**
 * The one executor: destination ranks of a plan, one rank or a group executed together, with a
 * bounded buffer budget. Every tensor is assembled in bands along dim 0 (one band when it fits)
 * from the source boxes; for a group each source span is read once and copied into every rank's
 * band: large runs are read with positioned reads straight into place, many small runs (and runs
 * several ranks share) through a scratch buffer (one read of the covering span, then in-memory
 * copies). An optional hook sees every assembled band of a tensor with an element size before it
 * is written (the tensor, its dtype, the band's box in full-tensor coordinates, the bytes, which
 * it may change in place: the LoRA product). The next band is assembled while the previous one
 * is written.
 */
import { elementSize, type DType } from '../formats/dtype.js';
import { forEachRun } from '../formats/box.js';
import type { Box, SinkTensor, TensorSink, TensorSource } from '../formats/types.js';
import { FailureError } from '../errors.js';
import { bufferSizes, planRank, type BufferSizes, type CopyOp, type Plan, type PlannedTensor, type RankPlan } from '../plan/index.js';
import type { WeightsFormat } from '../formats/resolve.js';

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
 * Reusable buffers of an executor: per lane (destination rank of a group) two band buffers (one
 * is assembled while the other is written), and one scratch buffer. With `shared`, band buffers
 * live in SharedArrayBuffers (a band hook may hand them to worker threads).
 */
export class TransformBuffers {
  readonly sizes: BufferSizes;
  private readonly bandBufs: (Uint8Array | null)[][] = [[null, null]];
  private scratchBuf: Uint8Array | null = null;
  constructor(sizes: BufferSizes, private readonly shared = false) {
    this.sizes = sizes;
  }
  /** Band buffer `slot` (0 or 1) of lane `lane`, at least `bytes` long. */
  laneBand(lane: number, bytes: number, slot = 0): Uint8Array {
    while (this.bandBufs.length <= lane) this.bandBufs.push([null, null]);
    const bufs = this.bandBufs[lane] as (Uint8Array | null)[];
    const cur = bufs[slot] ?? null;
    if (cur === null || cur.byteLength < bytes) {
      bufs[slot] = null;
      const n = Math.max(bytes, 1);
      const fresh = this.shared ? new Uint8Array(new SharedArrayBuffer(n)) : new Uint8Array(n);
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

/** One assembled band of a destination tensor, as a band hook sees it. */
export interface Band {
  /** The destination tensor's name (as written). */
  readonly tensor: string;
  readonly dtype: DType;
  /** The band's box in full-tensor coordinates. */
  readonly box: Box;
  /** The band's bytes (C order of the box); the hook may change them in place. */
  readonly bytes: Uint8Array;
  /** Which destination rank of the group (0 for one rank). */
  readonly lane: number;
}

/** Called for every assembled band of a tensor with an element size, before the band is written. */
export type BandHook = (band: Band) => void | Promise<void>;

export interface ExecuteOptions {
  /** Called with the byte count of every piece written. */
  readonly onBytes?: (n: number) => void;
  readonly onBand?: BandHook;
}

/**
 * A rank plan in the order its output is best written: safetensors outputs lay keys out sorted
 * (MindSpore's convention), so writing them in that order streams the file sequentially (and
 * lets the sink compute `crc_num` and the file CRC as it goes); `.ckpt` keeps the source order.
 */
export function rankPlanInWriteOrder(rp: RankPlan, format: WeightsFormat): RankPlan {
  if (format !== 'safetensors') return rp;
  const key = (t: PlannedTensor): Buffer => Buffer.from(t.outputName ?? t.name, 'utf8');
  return { ...rp, tensors: [...rp.tensors].sort((x, y) => Buffer.compare(key(x), key(y))) };
}

/** The sink description of a planned tensor. */
export function sinkTensorOf(t: PlannedTensor): SinkTensor {
  return {
    name: t.outputName ?? t.name, dtype: t.dtype, shape: t.shape, byteLength: t.byteLength,
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
 * The sink's operations in order, off the critical path: the next band is assembled while the
 * previous one is processed (band hook) and written, and a band's hook runs while the band before
 * it is being written. A band buffer is reused only after its write finished.
 */
class WritePipeline {
  private tail: Promise<void> = Promise.resolve();
  private hookTail: Promise<void> = Promise.resolve();
  private readonly busy: Promise<void>[] = [Promise.resolve(), Promise.resolve()];
  private slot = 0;
  private failed: unknown = undefined;
  constructor(private readonly sink: TensorSink, private readonly buffers: TransformBuffers, private readonly lane: number, private readonly opts: ExecuteOptions) {}

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

  /** Queue the band hook (when `band` is given) and the write of `buf` (taken with `take`), then report it. */
  write(buf: Uint8Array, band?: { t: PlannedTensor; box: Box }): void {
    const hook = this.opts.onBand;
    const onBytes = this.opts.onBytes;
    // band hooks run in band order on their own chain: the hook of this band may run while the
    // previous band is being written (each band has its own buffer until its write finished)
    let hooked: Promise<void> | undefined;
    if (hook !== undefined && band !== undefined) {
      hooked = this.hookTail.then(() => hook({ tensor: band.t.outputName ?? band.t.name, dtype: band.t.dtype, box: band.box, bytes: buf, lane: this.lane }));
      this.hookTail = hooked.catch(() => undefined);
    }
    this.busy[this.slot] = this.push(async () => {
      if (hooked !== undefined) await hooked;
      await this.sink.write(buf);
      onBytes?.(buf.byteLength);
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

/** Rows per band of a tensor with an element size (dim-0 bands of at most the band budget, at least one row). */
function banding(t: PlannedTensor, band: number): { rows: number; rowBytes: number; rowsPerBand: number; bands: number } {
  const rows = t.shape.length === 0 ? 1 : (t.shape[0] as number);
  const rowBytes = rows === 0 ? 0 : t.byteLength / rows;
  const rowsPerBand = Math.max(1, Math.floor(band / Math.max(rowBytes, 1)));
  return { rows, rowBytes, rowsPerBand, bands: t.byteLength === 0 ? 0 : Math.ceil(rows / rowsPerBand) };
}

/** The box of rows [r0, r1) of a destination slice, in full-tensor coordinates. */
function bandBox(t: PlannedTensor, r0: number, r1: number): Box {
  if (t.shape.length === 0) return { start: [], shape: [] };
  return { start: [(t.start[0] as number) + r0, ...t.start.slice(1)], shape: [r1 - r0, ...t.shape.slice(1)] };
}

function hasElementSize(dtype: DType): boolean {
  return dtype !== 'str' && dtype !== 'Int4';
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
async function writeShardedGroup(ts: readonly PlannedTensor[], pool: TransformSourcePool, outs: readonly WritePipeline[], buffers: TransformBuffers): Promise<number> {
  const es = elementSize((ts[0] as PlannedTensor).dtype);
  const lanes = ts.map((t) => (t.byteLength === 0 ? null : { t, ...banding(t, buffers.sizes.band) }));
  const nBands = lanes.reduce((m, l) => Math.max(m, l?.bands ?? 0), 0);
  let read = 0;
  for (let b = 0; b < nBands; b++) {
    const bufs: (Uint8Array | null)[] = [];
    const boxes: (Box | null)[] = [];
    const bySource = new Map<number, LanePiece[]>();
    for (let k = 0; k < lanes.length; k++) {
      const l = lanes[k];
      if (l === null || l === undefined || b >= l.bands) {
        bufs.push(null);
        boxes.push(null);
        continue;
      }
      const r0 = b * l.rowsPerBand;
      const r1 = Math.min(l.rows, r0 + l.rowsPerBand);
      const shape = l.t.shape;
      const bandShape = shape.length === 0 ? [] : [r1 - r0, ...shape.slice(1)];
      bufs.push(await (outs[k] as WritePipeline).take((r1 - r0) * l.rowBytes));
      boxes.push(bandBox(l.t, r0, r1));
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
      if (buf !== null && buf !== undefined) (outs[k] as WritePipeline).write(buf, { t: ts[k] as PlannedTensor, box: boxes[k] as Box });
    }
  }
  return read;
}

/**
 * One verbatim entry for every rank of a group: in dim-0 bands (byte pieces for entries without
 * an element size), read once when all copy the same source entry.
 */
async function writeVerbatimGroup(ts: readonly PlannedTensor[], pool: TransformSourcePool, outs: readonly WritePipeline[], buffers: TransformBuffers): Promise<number> {
  const t0 = ts[0] as PlannedTensor;
  const src = t0.ops[0]?.srcRank;
  if (src === undefined) throw new FailureError('no source for verbatim entry', { tensor: t0.name });
  const same = ts.every((t) => t.ops[0]?.srcRank === src && t.byteLength === t0.byteLength);
  const groups = same ? [ts.map((_, k) => k)] : ts.map((_, k) => [k]);
  for (const lanes of groups) {
    const t = ts[lanes[0] as number] as PlannedTensor;
    const source = await pool.get(t.ops[0]?.srcRank as number);
    const sized = hasElementSize(t.dtype);
    const { rows, rowBytes, rowsPerBand } = sized ? banding(t, buffers.sizes.band) : { rows: t.byteLength, rowBytes: 1, rowsPerBand: Math.max(1, buffers.sizes.band) };
    for (let r0 = 0; r0 < rows && t.byteLength > 0; r0 += rowsPerBand) {
      const r1 = Math.min(rows, r0 + rowsPerBand);
      const n = (r1 - r0) * rowBytes;
      const bufs: Uint8Array[] = [];
      for (const k of lanes) bufs.push(await (outs[k] as WritePipeline).take(n));
      const head = bufs[0] as Uint8Array;
      await source.readBytes(t.name, r0 * rowBytes, n, head, 0);
      for (let i = 1; i < bufs.length; i++) (bufs[i] as Uint8Array).set(head);
      lanes.forEach((k, i) => (outs[k] as WritePipeline).write(bufs[i] as Uint8Array, sized ? { t: ts[k] as PlannedTensor, box: bandBox(t, r0, r1) } : undefined));
    }
  }
  return ts.reduce((a, t) => a + t.byteLength, 0);
}

/**
 * Destination ranks in groups that can be converted together: consecutive ranks (in `ranks`
 * order) whose plans list the same tensors, at most `groupSize` each. Plans are computed lazily,
 * in write order for `format`.
 */
export function* rankPlanGroups(plan: Plan, ranks: readonly number[], format: WeightsFormat, groupSize: number): Generator<RankPlan[]> {
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

/**
 * Write several destination ranks together, `rps[k]` into `sinks[k]` (which the caller created
 * and closes or aborts): the rank plans must list the same tensors in the same order
 * (`rankPlansShareTensors`). For every tensor and dim-0 band, each needed source span is read
 * once and copied into every rank's band, so column splits are not read once per rank. Band
 * buffers are per rank (`buffers.sizes.band` each, see `transformGroupBufferSizes`); the scratch
 * buffer is shared. Returns bytes delivered.
 */
export async function executeRankPlanGroup(
  rps: readonly RankPlan[],
  pool: TransformSourcePool,
  sinks: readonly TensorSink[],
  buffers: TransformBuffers,
  opts: ExecuteOptions | ((n: number) => void) = {},
): Promise<number> {
  const o: ExecuteOptions = typeof opts === 'function' ? { onBytes: opts } : opts;
  if (rps.length !== sinks.length) throw new FailureError(`internal: ${rps.length} rank plans but ${sinks.length} sinks`);
  const head = rps[0];
  if (head === undefined) return 0;
  for (const rp of rps) {
    if (!rankPlansShareTensors(head, rp)) throw new FailureError(`internal: rank ${rp.rank} cannot be converted together with rank ${head.rank} (different tensors)`);
  }
  const outs = sinks.map((s, k) => new WritePipeline(s, buffers, k, o));
  let read = 0;
  try {
    for (let i = 0; i < head.tensors.length; i++) {
      const ts = rps.map((rp) => rp.tensors[i] as PlannedTensor);
      ts.forEach((t, k) => (outs[k] as WritePipeline).begin(sinkTensorOf(t)));
      read += (ts[0] as PlannedTensor).verbatim ? await writeVerbatimGroup(ts, pool, outs, buffers) : await writeShardedGroup(ts, pool, outs, buffers);
      for (const out of outs) out.end();
    }
  } finally {
    // never leave writes running past a failure (the caller aborts the sinks next)
    await Promise.all(outs.map((x) => x.drain().catch(() => undefined)));
  }
  for (const out of outs) await out.drain();
  return read;
}

/** One destination rank: a group of one. */
export async function executeRankPlan(
  rp: RankPlan,
  pool: TransformSourcePool,
  sink: TensorSink,
  buffers: TransformBuffers,
  opts: ExecuteOptions | ((n: number) => void) = {},
): Promise<number> {
  return executeRankPlanGroup([rp], pool, [sink], buffers, opts);
}

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

