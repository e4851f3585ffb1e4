/**
 * Protobuf wire helpers for the `.ckpt` format (schemas/checkpoint.proto): varints and the exact
 * byte layout MindSpore writes for one chunk (spec §1.2), plus the rules shared by reader and
 * writer (how stored `dims` map to a logical shape, the default 512 MiB cutting, the CRC trailer).
 */
import { crc32 as zlibCrc32 } from 'node:zlib';
import { InputError } from '../../errors.js';
import { byteLength as dtypeByteLength, type DType } from '../dtype.js';

/** MindSpore cuts tensor bytes every 1024 * SLICE_SIZE KiB = 536,870,912 bytes. */
export const CKPT_CHUNK_BYTES = 536_870_912;
/** Trailer appended with crc_check=True: b"crc_num" + 10-byte big-endian CRC-32. */
export const CRC_TRAILER_BYTES = 17;
export const CRC_MAGIC = 'crc_num';
/** Bounds on metadata sizes (never allocate from untrusted lengths beyond these). */
export const MAX_TAG_BYTES = 1 << 20;
export const MAX_TYPE_BYTES = 256;
export const MAX_DIMS = 64;

/** Encryption magics (little-endian u32 at offset 0), spec §1.7. */
export const ENCRYPTION_MAGICS: ReadonlyMap<number, string> = new Map([
  [0x7f3a5ed8, 'AES-GCM'],
  [0x7f3a5ed9, 'AES-CBC'],
  [0x7f3a5eda, 'SM4-CBC'],
]);

/** Bytes a varint of a non-negative safe integer takes. */
export function varintSize(n: number): number {
  let size = 1;
  while (n >= 128) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

/** Write a varint of a non-negative safe integer at `pos`; returns the next position. */
export function putVarint(buf: Uint8Array, pos: number, n: number): number {
  while (n >= 128) {
    buf[pos++] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[pos++] = n;
  return pos;
}

export interface Varint {
  /** Value; exact when `safe`, else only known to exceed 2^53 - 1. */
  value: number;
  safe: boolean;
  next: number;
}

/**
 * Decode a varint from `buf[pos ...]`, not reading at or past `limit`. Returns null when the
 * varint runs past `limit` (truncated); throws InputError (via `fail`) when it is longer than
 * 10 bytes.
 */
export function getVarint(buf: Uint8Array, pos: number, limit: number, fail: (msg: string) => never): Varint | null {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    if (pos + i >= limit) return null;
    const b = buf[pos + i] as number;
    value += (b & 0x7f) * scale;
    scale *= 128;
    if ((b & 0x80) === 0) return { value, safe: Number.isSafeInteger(value), next: pos + i + 1 };
  }
  return fail('varint longer than 10 bytes (overflows 64 bits)');
}

/** Byte length of the bytes of one chunk's header (everything before tensor_content's bytes). */
export interface ChunkHeaderParts {
  tag: Uint8Array;
  dims: readonly number[];
  type: Uint8Array;
  contentLength: number;
}

/**
 * The bytes MindSpore writes before a chunk's content:
 * `0x0A len Value{ 0x0A len tag, 0x12 len TensorProto{ (0x08 dim)*, 0x12 len type, 0x1A len` .
 */
export function encodeChunkHeader(p: ChunkHeaderParts): Uint8Array {
  let dimsBytes = 0;
  for (const d of p.dims) dimsBytes += 1 + varintSize(d);
  const tensorLen =
    dimsBytes + 1 + varintSize(p.type.byteLength) + p.type.byteLength + 1 + varintSize(p.contentLength) + p.contentLength;
  const valueLen = 1 + varintSize(p.tag.byteLength) + p.tag.byteLength + 1 + varintSize(tensorLen) + tensorLen;
  const headerLen = 1 + varintSize(valueLen) + (valueLen - p.contentLength);
  const out = new Uint8Array(headerLen);
  let at = 0;
  out[at++] = 0x0a;
  at = putVarint(out, at, valueLen);
  out[at++] = 0x0a;
  at = putVarint(out, at, p.tag.byteLength);
  out.set(p.tag, at);
  at += p.tag.byteLength;
  out[at++] = 0x12;
  at = putVarint(out, at, tensorLen);
  for (const d of p.dims) {
    out[at++] = 0x08;
    at = putVarint(out, at, d);
  }
  out[at++] = 0x12;
  at = putVarint(out, at, p.type.byteLength);
  out.set(p.type, at);
  at += p.type.byteLength;
  out[at++] = 0x1a;
  at = putVarint(out, at, p.contentLength);
  if (at !== headerLen) throw new Error(`internal: chunk header length ${at} != ${headerLen}`);
  return out;
}

/** The 17-byte CRC trailer for a body CRC. */
export function encodeCrcTrailer(crc: number): Uint8Array {
  const out = new Uint8Array(CRC_TRAILER_BYTES);
  out.set(Buffer.from(CRC_MAGIC, 'latin1'), 0);
  // 10-byte big-endian integer; a CRC-32 fits in the last 4 bytes.
  new DataView(out.buffer).setUint32(CRC_TRAILER_BYTES - 4, crc >>> 0, false);
  return out;
}

/** Decode a trailer; null when `bytes` is not one. The value is exact up to 2^53. */
export function decodeCrcTrailer(bytes: Uint8Array): number | null {
  if (bytes.byteLength !== CRC_TRAILER_BYTES) return null;
  if (Buffer.from(bytes.subarray(0, 7)).toString('latin1') !== CRC_MAGIC) return null;
  let v = 0;
  for (let i = 7; i < CRC_TRAILER_BYTES; i++) v = v * 256 + (bytes[i] as number);
  return v;
}

// CRC-32 (zlib polynomial): node:zlib's when present (Node >= 20.15), else a table.
let table: Uint32Array | null = null;
function crcTable(): Uint32Array {
  if (table !== null) return table;
  table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
}

/** Continue a CRC-32 over `data` (start with 0). */
export function crc32(data: Uint8Array, prev = 0): number {
  if (typeof zlibCrc32 === 'function') return zlibCrc32(data, prev);
  const t = crcTable();
  let c = (prev ^ 0xffffffff) >>> 0;
  for (let i = 0; i < data.byteLength; i++) c = (t[(c ^ (data[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** The `dims` MindSpore writes for an entry of this dtype and shape (str: [0], scalar: []). */
export function defaultDims(dtype: DType, shape: readonly number[]): readonly number[] {
  return dtype === 'str' ? [0] : shape;
}

/** Chunk byte lengths of MindSpore's default cutting (one empty chunk for 0 bytes). */
export function defaultChunks(total: number): number[] {
  if (total === 0) return [0];
  const out: number[] = [];
  for (let left = total; left > 0; left -= CKPT_CHUNK_BYTES) out.push(Math.min(left, CKPT_CHUNK_BYTES));
  return out;
}

export function sameNumbers(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * The logical shape of an entry stored with `dims` (from the last chunk), `dtype` and `total`
 * content bytes, checked against the byte count. `dims=[0]` is the legacy scalar (or an empty
 * 1-D tensor when there are no bytes); `str` is a scalar of UTF-32LE characters.
 */
export function shapeFromStored(
  dims: readonly number[],
  dtype: DType,
  total: number,
  where: { file?: string; offset?: number; tensor?: string },
): number[] {
  const legacyScalar = dims.length === 1 && dims[0] === 0;
  if (dtype === 'str') {
    if (dims.length !== 0 && !legacyScalar) {
      throw new InputError(`str entry has dims [${dims.join(',')}]; expected [] or [0]`, where);
    }
    if (total % 4 !== 0) throw new InputError(`str entry holds ${total} bytes; expected a multiple of 4 (UTF-32LE)`, where);
    return [];
  }
  if (legacyScalar) {
    const scalar = dtypeByteLength(dtype, []);
    if (total === scalar) return [];
    if (total === 0) return [0];
    throw new InputError(`dims [0] (legacy scalar) of ${dtype} needs ${scalar} bytes but the values hold ${total}`, where);
  }
  const expected = dtypeByteLength(dtype, dims);
  if (expected === null) throw new InputError(`dims [${dims.join(',')}] overflow (product too large)`, where);
  if (expected !== total) {
    throw new InputError(`dims [${dims.join(',')}] of ${dtype} need ${expected} bytes but the values hold ${total}`, where);
  }
  return [...dims];
}
