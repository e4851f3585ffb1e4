/**
 * The one table of dtypes: byte size and names in every format we touch, plus whole-buffer
 * casts between the floating types (round to nearest even, NaN and Inf kept).
 */
import { InputError } from '../errors.js';

/** Canonical dtype names are MindSpore's `tensor_type` strings. */
export type DType =
  | 'Bool' | 'Int8' | 'UInt8' | 'Int16' | 'UInt16' | 'Int32' | 'UInt32' | 'Int64' | 'UInt64'
  | 'Float16' | 'BFloat16' | 'Float32' | 'Float64' | 'Int4' | 'str'
  | 'Float8E4M3FN';

export interface DTypeInfo {
  readonly name: DType;
  /** Bytes per element; 0 for `str` (4 per character) and Int4 (packed, 2 per byte). */
  readonly size: number;
  /** Safetensors header name, when safetensors can hold it. */
  readonly safetensors?: string;
  /** numpy name (used by MapTensor chunks and for display). */
  readonly numpy: string;
  readonly float: boolean;
}

const TABLE: readonly DTypeInfo[] = [
  { name: 'Bool', size: 1, safetensors: 'BOOL', numpy: 'bool', float: false },
  { name: 'Int8', size: 1, safetensors: 'I8', numpy: 'int8', float: false },
  { name: 'UInt8', size: 1, safetensors: 'U8', numpy: 'uint8', float: false },
  { name: 'Int16', size: 2, safetensors: 'I16', numpy: 'int16', float: false },
  { name: 'UInt16', size: 2, safetensors: 'U16', numpy: 'uint16', float: false },
  { name: 'Int32', size: 4, safetensors: 'I32', numpy: 'int32', float: false },
  { name: 'UInt32', size: 4, safetensors: 'U32', numpy: 'uint32', float: false },
  { name: 'Int64', size: 8, safetensors: 'I64', numpy: 'int64', float: false },
  { name: 'UInt64', size: 8, safetensors: 'U64', numpy: 'uint64', float: false },
  { name: 'Float16', size: 2, safetensors: 'F16', numpy: 'float16', float: true },
  { name: 'BFloat16', size: 2, safetensors: 'BF16', numpy: 'bfloat16', float: true },
  { name: 'Float32', size: 4, safetensors: 'F32', numpy: 'float32', float: true },
  { name: 'Float64', size: 8, safetensors: 'F64', numpy: 'float64', float: true },
  { name: 'Int4', size: 0, numpy: 'qint4x2', float: false },
  { name: 'str', size: 0, numpy: 'str', float: false },
  // FP8 (DeepSeek-V3 HF weights); not castable here, dequantised by plugin/convert/fp8.ts.
  { name: 'Float8E4M3FN', size: 1, safetensors: 'F8_E4M3', numpy: 'float8_e4m3fn', float: false },
];

const BY_NAME = new Map<string, DTypeInfo>(TABLE.map((d) => [d.name, d]));
const BY_SAFETENSORS = new Map<string, DTypeInfo>(
  TABLE.filter((d) => d.safetensors !== undefined).map((d) => [d.safetensors as string, d]),
);
const BY_NUMPY = new Map<string, DTypeInfo>(TABLE.map((d) => [d.numpy, d]));

export function isDType(name: string): name is DType {
  return BY_NAME.has(name);
}

/** Info for a MindSpore dtype name; undefined when unknown. */
export function dtypeInfo(name: string): DTypeInfo | undefined {
  return BY_NAME.get(name);
}

/** Info for a MindSpore dtype name, or an InputError naming what was expected. */
export function requireDType(name: string, where: { file?: string; tensor?: string; offset?: number } = {}): DTypeInfo {
  const info = BY_NAME.get(name);
  if (info === undefined) {
    throw new InputError(`unknown dtype '${name}' (expected one of ${TABLE.map((d) => d.name).join(', ')})`, where);
  }
  return info;
}

export function dtypeFromSafetensors(name: string): DTypeInfo | undefined {
  return BY_SAFETENSORS.get(name);
}

export function dtypeFromNumpy(name: string): DTypeInfo | undefined {
  return BY_NUMPY.get(name);
}

export function safetensorsName(dtype: DType): string | undefined {
  return BY_NAME.get(dtype)?.safetensors;
}

/** Element size in bytes; throws for str/Int4 which have no fixed element size. */
export function elementSize(dtype: DType): number {
  const s = BY_NAME.get(dtype)?.size ?? 0;
  if (s === 0) throw new InputError(`dtype ${dtype} has no fixed element size`);
  return s;
}

export function isFloat(dtype: DType): boolean {
  return BY_NAME.get(dtype)?.float ?? false;
}

/** Product of dims as a safe integer; null when it would overflow 2^53. */
export function elementCount(shape: readonly number[]): number | null {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) return null;
    n *= d;
    if (!Number.isSafeInteger(n)) return null;
  }
  return n;
}

/** Bytes of a tensor of this dtype and shape; null when unknowable (str) or overflowing. */
export function byteLength(dtype: DType, shape: readonly number[]): number | null {
  const n = elementCount(shape);
  if (n === null) return null;
  if (dtype === 'str') return null;
  if (dtype === 'Int4') return Math.ceil(n / 2);
  const b = n * elementSize(dtype);
  return Number.isSafeInteger(b) ? b : null;
}

// ---------------------------------------------------------------------------------------------
// Casts. Element-wise loops are allowed here (they are the one place the hot path converts).

export type FloatDType = 'Float16' | 'BFloat16' | 'Float32' | 'Float64';

export function isCastable(dtype: DType): dtype is FloatDType {
  return dtype === 'Float16' || dtype === 'BFloat16' || dtype === 'Float32' || dtype === 'Float64';
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 bits -> bfloat16 bits, round to nearest even, NaN kept quiet. */
export function f32BitsToBf16(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x0040) & 0xffff;
  const rounded = (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 0;
  return (rounded >>> 16) & 0xffff;
}

/** float32 bits -> float16 bits, round to nearest even, overflow to Inf, NaN kept. */
export function f32BitsToF16(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rem = mant & ((1 << shift) - 1);
    let r = mant >>> shift;
    if (rem > half || (rem === half && (r & 1) === 1)) r += 1;
    return sign | r;
  }
  const rem = mant & 0x1fff;
  let r = (e << 10) | (mant >>> 13);
  if (rem > 0x1000 || (rem === 0x1000 && (r & 1) === 1)) r += 1;
  return sign | r;
}

/** 2^(e - 15) for the float16 exponents (a table: `2 ** e` with a variable e calls Math.pow). */
const F16_SCALE = Float64Array.from({ length: 32 }, (_, e) => 2 ** (e - 15));

/** float16 bits -> float32 value (exact). */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant !== 0 ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * (F16_SCALE[exp] as number);
}

export function bf16BitsToF32(h: number): number {
  u32[0] = (h << 16) >>> 0;
  return f32[0] as number;
}

export function f32ToBits(x: number): number {
  f32[0] = x;
  return u32[0] as number;
}

/**
 * Decode `count` elements of a floating (or integer) dtype from `src` into a Float64Array of
 * values (used by inspect statistics and the LoRA product reference).
 */
export function decodeToF64(src: Uint8Array, dtype: DType, count: number): Float64Array {
  const out = new Float64Array(count);
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  for (let i = 0; i < count; i++) {
    switch (dtype) {
      case 'Float16': out[i] = f16BitsToF32(dv.getUint16(i * 2, true)); break;
      case 'BFloat16': out[i] = bf16BitsToF32(dv.getUint16(i * 2, true)); break;
      case 'Float32': out[i] = dv.getFloat32(i * 4, true); break;
      case 'Float64': out[i] = dv.getFloat64(i * 8, true); break;
      case 'Bool': case 'UInt8': out[i] = dv.getUint8(i); break;
      case 'Int8': out[i] = dv.getInt8(i); break;
      case 'Int16': out[i] = dv.getInt16(i * 2, true); break;
      case 'UInt16': out[i] = dv.getUint16(i * 2, true); break;
      case 'Int32': out[i] = dv.getInt32(i * 4, true); break;
      case 'UInt32': out[i] = dv.getUint32(i * 4, true); break;
      case 'Int64': out[i] = Number(dv.getBigInt64(i * 8, true)); break;
      case 'UInt64': out[i] = Number(dv.getBigUint64(i * 8, true)); break;
      default: throw new InputError(`cannot decode values of dtype ${dtype}`);
    }
  }
  return out;
}

/** Decode a floating buffer into float32 values. */
export function toFloat32(src: Uint8Array, dtype: FloatDType): Float32Array {
  const size = elementSize(dtype);
  const n = Math.floor(src.byteLength / size);
  const out = new Float32Array(n);
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  switch (dtype) {
    case 'Float32':
      new Uint8Array(out.buffer).set(src.subarray(0, n * 4));
      break;
    case 'BFloat16': {
      const ou = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) ou[i] = (dv.getUint16(i * 2, true) << 16) >>> 0;
      break;
    }
    case 'Float16':
      for (let i = 0; i < n; i++) out[i] = f16BitsToF32(dv.getUint16(i * 2, true));
      break;
    case 'Float64':
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(i * 8, true);
      break;
  }
  return out;
}

/** Encode float32 values into bytes of a floating dtype (RNE). */
export function fromFloat32(values: Float32Array, dtype: FloatDType): Uint8Array {
  const n = values.length;
  const out = new Uint8Array(n * elementSize(dtype));
  const dv = new DataView(out.buffer);
  const bits = new Uint32Array(values.buffer, values.byteOffset, n);
  switch (dtype) {
    case 'Float32':
      out.set(new Uint8Array(values.buffer, values.byteOffset, n * 4));
      break;
    case 'BFloat16':
      for (let i = 0; i < n; i++) dv.setUint16(i * 2, f32BitsToBf16(bits[i] as number), true);
      break;
    case 'Float16':
      for (let i = 0; i < n; i++) dv.setUint16(i * 2, f32BitsToF16(bits[i] as number), true);
      break;
    case 'Float64':
      for (let i = 0; i < n; i++) dv.setFloat64(i * 8, values[i] as number, true);
      break;
  }
  return out;
}

/**
 * Cast a whole buffer between floating dtypes with round to nearest even. Float64 -> Float16 /
 * BFloat16 rounds once (through the exact double, not through float32). Returns `src` itself
 * when the dtypes are equal.
 */
export function castBuffer(src: Uint8Array, from: FloatDType, to: FloatDType): Uint8Array {
  if (from === to) return src;
  const inSize = elementSize(from);
  const n = Math.floor(src.byteLength / inSize);
  if (from === 'Float64') {
    const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
    const out = new Uint8Array(n * elementSize(to));
    const ov = new DataView(out.buffer);
    for (let i = 0; i < n; i++) {
      const x = dv.getFloat64(i * 8, true);
      if (to === 'Float32') ov.setFloat32(i * 4, x, true);
      else ov.setUint16(i * 2, to === 'Float16' ? f64ToF16Bits(x) : f64ToBf16Bits(x), true);
    }
    return out;
  }
  return fromFloat32(toFloat32(src, from), to);
}

/** float64 -> float16 bits with a single rounding. */
export function f64ToF16Bits(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === Infinity) return sign | 0x7c00;
  // Largest finite half is 65504; halfway to the next (65520) rounds to Inf.
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) {
    // subnormal: units of 2^-24
    const q = roundHalfEven(a / 2 ** -24);
    return sign | q; // q may reach 0x400 which is the smallest normal: correct encoding
  }
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e -= 1;
  if (2 ** (e + 1) <= a) e += 1;
  const m = roundHalfEven((a / 2 ** e - 1) * 1024);
  let bits = ((e + 15) << 10) + m; // m === 1024 carries into the exponent correctly
  if (bits >= 0x7c00) bits = 0x7c00;
  return sign | bits;
}

/** float64 -> bfloat16 bits with a single rounding. */
export function f64ToBf16Bits(x: number): number {
  if (Number.isNaN(x)) return 0x7fc0;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === Infinity) return sign | 0x7f80;
  const maxHalfway = (2 - 2 ** -8) * 2 ** 127; // halfway between max bf16 and 2^128
  if (a >= maxHalfway) return sign | 0x7f80;
  if (a < 2 ** -126) {
    const q = roundHalfEven(a / 2 ** -133);
    return sign | q;
  }
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e -= 1;
  if (2 ** (e + 1) <= a) e += 1;
  const m = roundHalfEven((a / 2 ** e - 1) * 128);
  return sign | (((e + 127) << 7) + m);
}

function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}
