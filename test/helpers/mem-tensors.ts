/** Test helpers: an in-memory TensorSource and sinks/readers over it. */
import type { DType, TensorEntry, TensorSource, TensorSink, SinkTensor, CkptHints } from '../../plugin/formats/index.js';
import { byteLength } from '../../plugin/formats/dtype.js';

export interface MemTensor {
  name: string;
  dtype: DType;
  shape: number[];
  data: Uint8Array;
  ckpt?: CkptHints;
}

/** Deterministic pseudo-random bytes. */
export function bytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

export function tensor(name: string, dtype: DType, shape: number[], seed = 1, ckpt?: CkptHints): MemTensor {
  const n = byteLength(dtype, shape) as number;
  const t: MemTensor = { name, dtype, shape, data: bytes(n, seed) };
  if (ckpt !== undefined) t.ckpt = ckpt;
  return t;
}

export function strTensor(name: string, text: string, ckpt?: CkptHints): MemTensor {
  const cps = [...text].map((c) => c.codePointAt(0) as number);
  const data = new Uint8Array(cps.length * 4);
  const dv = new DataView(data.buffer);
  cps.forEach((c, i) => dv.setUint32(i * 4, c, true));
  const t: MemTensor = { name, dtype: 'str', shape: [], data };
  if (ckpt !== undefined) t.ckpt = ckpt;
  return t;
}

export function entryOf(t: MemTensor): TensorEntry {
  return t.ckpt !== undefined
    ? { name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.data.byteLength, ckpt: t.ckpt }
    : { name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.data.byteLength };
}

export class MemSource implements TensorSource {
  readonly path = '<memory>';
  constructor(readonly tensors: MemTensor[]) {}
  entries(): readonly TensorEntry[] {
    return this.tensors.map(entryOf);
  }
  entry(name: string): TensorEntry | undefined {
    const t = this.tensors.find((x) => x.name === name);
    return t === undefined ? undefined : entryOf(t);
  }
  async readBytes(name: string, offset: number, length: number, dst: Uint8Array, dstOffset = 0): Promise<void> {
    const t = this.tensors.find((x) => x.name === name);
    if (t === undefined) throw new Error(`no ${name}`);
    dst.set(t.data.subarray(offset, offset + length), dstOffset);
  }
  async close(): Promise<void> {}
}

/** Write tensors into a sink in the given order, in pieces of `piece` bytes. */
export async function writeAll(sink: TensorSink, tensors: MemTensor[], piece = 7): Promise<void> {
  for (const t of tensors) {
    const st: SinkTensor = entryOf(t);
    await sink.beginTensor(st);
    for (let o = 0; o < t.data.byteLength; o += piece) await sink.write(t.data.subarray(o, Math.min(o + piece, t.data.byteLength)));
    await sink.endTensor();
  }
  await sink.close();
}

/** Read every entry of a source fully. */
export async function readAll(src: TensorSource): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for (const e of src.entries()) {
    const b = new Uint8Array(e.byteLength);
    await src.readBytes(e.name, 0, e.byteLength, b, 0);
    out.set(e.name, b);
  }
  return out;
}
