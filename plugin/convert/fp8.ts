/**
 * FP8 E4M3 (the `fn` variant: no infinities, NaN = S.1111.111) decoding and block
 * dequantisation of DeepSeek-V3 style weights: `w.float() * scale_inv[r/128][c/128]`, computed in
 * float32 and rounded to the target dtype (round to nearest even).
 *
 * `dequantizingSource` wraps a TensorSource: every FP8 weight with a `<name>_scale_inv` partner
 * appears as a tensor of the target dtype, the `_scale_inv` tensors disappear. Bytes are computed
 * in bands of rows on demand, so memory stays bounded whatever the tensor size.
 */
import { InputError } from '../errors.js';
import { decodeToF64, elementSize, fromFloat32, type DType, type FloatDType } from '../formats/dtype.js';
import type { TensorEntry, TensorSource } from '../formats/types.js';

export const FP8_DTYPE: DType = 'Float8E4M3FN';
export const SCALE_SUFFIX = '_scale_inv';

/** float32 values of the 256 FP8 E4M3FN codes. */
export const FP8_E4M3_TABLE: Float32Array = (() => {
  const t = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const sign = b & 0x80 ? -1 : 1;
    const exp = (b >> 3) & 0xf;
    const mant = b & 0x7;
    if (exp === 0xf && mant === 0x7) t[b] = NaN;
    else if (exp === 0) t[b] = sign * (mant / 8) * 2 ** -6;
    else t[b] = sign * (1 + mant / 8) * 2 ** (exp - 7);
  }
  return t;
})();

/** Decode FP8 E4M3FN bytes into float32 values. */
export function decodeFp8E4M3(bytes: Uint8Array): Float32Array {
  const out = new Float32Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = FP8_E4M3_TABLE[bytes[i] as number] as number;
  return out;
}

const BAND_BYTES = 16 * 1024 * 1024;

interface Dequant {
  readonly entry: TensorEntry; // virtual entry (target dtype)
  readonly weight: TensorEntry;
  readonly scale: TensorEntry;
  readonly block: number;
}

/** A source where FP8 weights read as `target` (default BFloat16) and `_scale_inv` are hidden. */
export function dequantizingSource(src: TensorSource, target: FloatDType = 'BFloat16', block = 128): TensorSource {
  const dq = new Map<string, Dequant>();
  const hidden = new Set<string>();
  for (const e of src.entries()) {
    if (e.dtype !== FP8_DTYPE) continue;
    const scale = src.entry(e.name + SCALE_SUFFIX);
    if (scale === undefined) {
      throw new InputError(`FP8 weight without its '${e.name}${SCALE_SUFFIX}' block scales (cannot dequantise)`, { file: src.path, tensor: e.name });
    }
    if (e.shape.length !== 2) throw new InputError(`FP8 weight must be 2-D, found shape [${e.shape}]`, { file: src.path, tensor: e.name });
    const [r, c] = e.shape as [number, number];
    const want = [Math.ceil(r / block), Math.ceil(c / block)];
    if (scale.shape.length !== 2 || scale.shape[0] !== want[0] || scale.shape[1] !== want[1]) {
      throw new InputError(`scale shape [${scale.shape}] does not match ${block}x${block} blocks of [${e.shape}] (expected [${want}])`, { file: src.path, tensor: scale.name });
    }
    if (!['Float32', 'BFloat16', 'Float16', 'Float64'].includes(scale.dtype)) {
      throw new InputError(`scale dtype ${scale.dtype} is not floating`, { file: src.path, tensor: scale.name });
    }
    const entry: TensorEntry = { name: e.name, dtype: target, shape: e.shape, byteLength: r * c * elementSize(target) };
    dq.set(e.name, { entry, weight: e, scale, block });
    hidden.add(scale.name);
  }
  if (dq.size === 0) return src;
  const list = src.entries().filter((e) => !hidden.has(e.name)).map((e) => dq.get(e.name)?.entry ?? e);
  const byName = new Map(list.map((e) => [e.name, e]));
  // one cached band: [name, firstRow, rows, bytes]
  let cache: { name: string; row: number; rows: number; bytes: Uint8Array } | null = null;

  async function band(d: Dequant, row: number): Promise<{ row: number; rows: number; bytes: Uint8Array }> {
    if (cache !== null && cache.name === d.entry.name && row >= cache.row && row < cache.row + cache.rows) return cache;
    const [R, C] = d.entry.shape as [number, number];
    const outRow = C * elementSize(target);
    const rows = Math.max(1, Math.min(R - row, Math.floor(BAND_BYTES / Math.max(outRow, 1))));
    const raw = new Uint8Array(rows * C);
    await src.readBytes(d.weight.name, row * C, rows * C, raw, 0);
    const sCols = d.scale.shape[1] as number;
    const sRow0 = Math.floor(row / d.block);
    const sRow1 = Math.floor((row + rows - 1) / d.block);
    const sEs = elementSize(d.scale.dtype);
    const sRaw = new Uint8Array((sRow1 - sRow0 + 1) * sCols * sEs);
    await src.readBytes(d.scale.name, sRow0 * sCols * sEs, sRaw.byteLength, sRaw, 0);
    const scales = decodeToF64(sRaw, d.scale.dtype, (sRow1 - sRow0 + 1) * sCols);
    const vals = new Float32Array(rows * C);
    for (let i = 0; i < rows; i++) {
      const sBase = (Math.floor((row + i) / d.block) - sRow0) * sCols;
      const base = i * C;
      for (let j = 0; j < C; j++) {
        const s = Math.fround(scales[sBase + Math.floor(j / d.block)] as number);
        vals[base + j] = (FP8_E4M3_TABLE[raw[base + j] as number] as number) * s; // stored as float32: one rounding
      }
    }
    cache = { name: d.entry.name, row, rows, bytes: fromFloat32(vals, target) };
    return cache;
  }

  return {
    path: src.path,
    entries: () => list,
    entry: (name) => byName.get(name),
    async readBytes(name, offset, length, dst, dstOffset = 0) {
      const d = dq.get(name);
      if (d === undefined) {
        if (hidden.has(name)) throw new InputError('scale tensor is consumed by dequantisation', { file: src.path, tensor: name });
        return src.readBytes(name, offset, length, dst, dstOffset);
      }
      const outRow = (d.entry.shape[1] as number) * elementSize(target);
      let done = 0;
      while (done < length) {
        const at = offset + done;
        const r = Math.floor(at / outRow);
        const b = await band(d, r);
        const from = at - b.row * outRow;
        const n = Math.min(length - done, b.bytes.byteLength - from);
        dst.set(b.bytes.subarray(from, from + n), dstOffset + done);
        done += n;
      }
    },
    close: () => src.close(),
  };
}
