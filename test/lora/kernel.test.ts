/**
 * The SIMD LoRA kernel against its scalar reference (same arithmetic, one element at a time):
 * identical bytes for every dtype, sizes that are not multiples of the vector width, every rank
 * from 1 to 64, single rows, tiles and column blocks, subnormals, NaN, Inf and negative zero; and
 * the worker pool (the compiled module instantiated in a worker) giving the same bytes.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { FailureError } from '../../plugin/errors.js';
import { f32BitsToBf16, f32BitsToF16 } from '../../plugin/formats/dtype.js';
import { KERNEL_DTYPES, KernelPool, kernelAKey, kernelDTypeCode, runKernel, type KernelJob } from '../../plugin/lora/kernel.js';
import { rng } from './helpers.js';
import { referenceKernel } from './kernel-reference.js';

const ES = [4, 2, 2, 8] as const;
const DTYPES = ['Float32', 'Float16', 'BFloat16', 'Float64'] as const;

interface Case {
  dtype: number;
  rows: number;
  cols: number;
  r: number;
  w: Uint8Array;
  a: Float32Array;
  b: Float32Array;
  scale: number;
}

/** Random W bytes of a dtype: mostly plausible values, some raw bit patterns (subnormals, NaN, Inf). */
function randomW(dtype: number, n: number, rand: () => number, raw = 0.05): Uint8Array {
  const out = new Uint8Array(n * (ES[dtype] as number));
  const dv = new DataView(out.buffer);
  for (let i = 0; i < n; i++) {
    const v = (rand() * 2 - 1) * 2;
    const useRaw = rand() < raw;
    const bits32 = Math.floor(rand() * 0x100000000) >>> 0;
    switch (dtype) {
      case 0: if (useRaw) dv.setUint32(i * 4, bits32, true); else dv.setFloat32(i * 4, v, true); break;
      case 1: dv.setUint16(i * 2, useRaw ? bits32 & 0xffff : f32BitsToF16(f32Bits(v)), true); break;
      case 2: dv.setUint16(i * 2, useRaw ? bits32 & 0xffff : f32BitsToBf16(f32Bits(v)), true); break;
      default:
        if (useRaw) {
          dv.setUint32(i * 8, Math.floor(rand() * 0x100000000) >>> 0, true);
          dv.setUint32(i * 8 + 4, bits32, true);
        } else dv.setFloat64(i * 8, v, true);
    }
  }
  return out;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function f32Bits(x: number): number {
  f32[0] = x;
  return u32[0] as number;
}

function randomFloats(n: number, rand: () => number, amp: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (rand() * 2 - 1) * amp;
  return out;
}

function makeCase(dtype: number, rows: number, cols: number, r: number, seed: number, scale = 1.75): Case {
  const rand = rng(seed);
  return { dtype, rows, cols, r, w: randomW(dtype, rows * cols, rand), a: randomFloats(r * cols, rand, 0.5), b: randomFloats(rows * r, rand, 0.5), scale };
}

function jobOf(c: Case, w: Uint8Array, a: Float32Array, b: Float32Array, rowBegin = 0, rowEnd = c.rows): KernelJob {
  return {
    w: w.buffer, wOffset: w.byteOffset, dtype: c.dtype, rowBegin, rowEnd, cols: c.cols,
    b: b.buffer, bOffset: b.byteOffset, a: a.buffer, aOffset: a.byteOffset, r: c.r, scale: c.scale,
  };
}

/** Run the SIMD kernel and the reference on copies of the case; return both results. */
function both(c: Case): { simd: Uint8Array; ref: Uint8Array } {
  const simd = new Uint8Array(c.w);
  const ref = new Uint8Array(c.w);
  runKernel(jobOf(c, simd, c.a, c.b));
  referenceKernel(jobOf(c, ref, c.a, c.b));
  return { simd, ref };
}

function firstDifference(x: Uint8Array, y: Uint8Array, es: number): string {
  for (let i = 0; i < x.byteLength; i += es) {
    const p = Buffer.from(x.subarray(i, i + es)).toString('hex');
    const q = Buffer.from(y.subarray(i, i + es)).toString('hex');
    if (p !== q) return `element ${i / es}: simd ${p}, reference ${q}`;
  }
  return 'none';
}

function expectSameBytes(simd: Uint8Array, ref: Uint8Array, dtype: number, label: string): void {
  const same = Buffer.from(simd).equals(Buffer.from(ref));
  expect(same, `${label}: ${same ? '' : firstDifference(simd, ref, ES[dtype] as number)}`).toBe(true);
}

function share<T extends Uint8Array | Float32Array>(x: T): T {
  const s = new SharedArrayBuffer(x.byteLength);
  new Uint8Array(s).set(new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
  return (x instanceof Float32Array ? new Float32Array(s) : new Uint8Array(s)) as T;
}

describe('SIMD kernel = scalar reference', () => {
  it('keeps the dtype codes', () => {
    expect(KERNEL_DTYPES).toEqual({ Float32: 0, Float16: 1, BFloat16: 2, Float64: 3 });
    expect(DTYPES.map((d) => kernelDTypeCode(d))).toEqual([0, 1, 2, 3]);
    expect(kernelDTypeCode('Int32')).toBeUndefined();
  });

  for (const dtype of [0, 1, 2, 3]) {
    it(`${DTYPES[dtype]}: odd sizes, every rank from 1 to 64, single rows`, () => {
      let seed = 100 + dtype;
      // ranks 1..64 with varying widths (not multiples of 8 included) and row counts (odd, single)
      for (let r = 1; r <= 64; r++) {
        const cols = [1, 3, 7, 8, 9, 15, 17, 33][r % 8] as number;
        const rows = [1, 2, 3, 5][r % 4] as number;
        const c = makeCase(dtype, rows, cols, r, seed++);
        const { simd, ref } = both(c);
        expectSameBytes(simd, ref, dtype, `rows ${rows} cols ${cols} r ${r}`);
      }
    });

    it(`${DTYPES[dtype]}: several tiles and column blocks, rows of odd width`, () => {
      // tile = 256 KiB of W and column blocks of packed A: cross both, with an odd tile
      const c = makeCase(dtype, dtype === 3 ? 41 : 71, 2101, 24, 7 + dtype, -0.625);
      const { simd, ref } = both(c);
      expectSameBytes(simd, ref, dtype, 'large');
      expect(Buffer.from(simd).equals(Buffer.from(c.w))).toBe(false);
    });
  }

  it('updates only rows [rowBegin, rowEnd) at the given offsets', () => {
    for (const dtype of [0, 1, 2, 3]) {
      const c = makeCase(dtype, 9, 13, 5, 40 + dtype);
      const es = ES[dtype] as number;
      // the same data placed at odd-but-aligned offsets inside larger buffers
      const wBig = new Uint8Array(c.w.byteLength + 64).fill(0xa5);
      wBig.set(c.w, 16);
      const w = wBig.subarray(16, 16 + c.w.byteLength);
      const aBig = new Float32Array(c.a.length + 6);
      aBig.set(c.a, 3);
      const bBig = new Float32Array(c.b.length + 10);
      bBig.set(c.b, 5);
      const simd = new Uint8Array(wBig);
      const ref = new Uint8Array(wBig);
      const job = (x: Uint8Array): KernelJob => ({
        ...jobOf(c, x.subarray(16, 16 + c.w.byteLength), aBig.subarray(3), bBig.subarray(5), 2, 7),
      });
      runKernel(job(simd));
      referenceKernel(job(ref));
      expectSameBytes(simd, ref, dtype, `offsets ${DTYPES[dtype]}`);
      // rows 0-1 and 7-8 and the bytes around the W view are untouched
      expect(Buffer.from(simd.subarray(0, 16 + 2 * 13 * es)).equals(Buffer.from(wBig.subarray(0, 16 + 2 * 13 * es)))).toBe(true);
      const tail = 16 + 7 * 13 * es;
      expect(Buffer.from(simd.subarray(tail)).equals(Buffer.from(wBig.subarray(tail)))).toBe(true);
      expect(Buffer.from(simd.subarray(16 + 2 * 13 * es, tail)).equals(Buffer.from(w.subarray(2 * 13 * es, 7 * 13 * es)))).toBe(false);
    }
  });
});

describe('A packed once per key', () => {
  it('jobs with the same aKey reuse A; a new key with another A (same shape) gets it packed', () => {
    for (const dtype of [1, 3]) {
      const c = makeCase(dtype, 12, 21, 6, 70 + dtype);
      const other = makeCase(dtype, 12, 21, 6, 80 + dtype);
      const k1 = kernelAKey();
      const k2 = kernelAKey();
      const simd = new Uint8Array(c.w);
      const ref = new Uint8Array(c.w);
      // rows in three jobs: A packed by the first, reused by the second; then another A under k2
      runKernel({ ...jobOf(c, simd, c.a, c.b, 0, 5), aKey: k1 });
      runKernel({ ...jobOf(c, simd, c.a, c.b, 5, 9), aKey: k1 });
      runKernel({ ...jobOf(c, simd, other.a, c.b, 9, 12), aKey: k2 });
      referenceKernel(jobOf(c, ref, c.a, c.b, 0, 9));
      referenceKernel(jobOf(c, ref, other.a, c.b, 9, 12));
      expectSameBytes(simd, ref, dtype, `aKey ${DTYPES[dtype]}`);
    }
  });
});

describe('conversions, exactly', () => {
  /** W + (-0) * A is W itself: the kernel's decode and encode must give back every pattern. */
  function roundTrip(dtype: 1 | 2): Uint16Array {
    const n = 65536;
    const w = new Uint16Array(n);
    for (let i = 0; i < n; i++) w[i] = i;
    const c: Case = { dtype, rows: 1, cols: n, r: 1, w: new Uint8Array(w.buffer), a: new Float32Array(n).fill(1), b: new Float32Array([-0]), scale: 1 };
    const { simd, ref } = both(c);
    expectSameBytes(simd, ref, dtype, 'round trip');
    return new Uint16Array(simd.buffer);
  }

  it('Float16: every pattern round-trips, NaNs become the canonical quiet NaN', () => {
    const out = roundTrip(1);
    for (let h = 0; h < 65536; h++) {
      const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (out[h] !== (isNaN ? 0x7e00 : h)) expect.fail(`0x${h.toString(16)} -> 0x${(out[h] as number).toString(16)}`);
    }
  });

  it('BFloat16: every pattern round-trips, NaNs become the canonical quiet NaN', () => {
    const out = roundTrip(2);
    for (let h = 0; h < 65536; h++) {
      const isNaN = (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
      if (out[h] !== (isNaN ? 0x7fc0 : h)) expect.fail(`0x${h.toString(16)} -> 0x${(out[h] as number).toString(16)}`);
    }
  });

  it('float32 -> Float16 / BFloat16 rounding agrees with the cast over a sweep of float32 patterns', () => {
    // W = 0, A = x, B = 1: the result is the cast of x (0 + x = x for every x but -0)
    const bits: number[] = [];
    for (let hi = 0; hi < 0x10000; hi += 3) bits.push(((hi << 16) | ((hi * 2654435761) & 0xffff)) >>> 0);
    // dense around the Float16 subnormal/normal border, its overflow threshold, and midpoints
    for (const base of [0x33000000, 0x387fc000, 0x38800000, 0x477fe000, 0x477ff000, 0x3f800000]) {
      for (let d = -300; d <= 300; d++) bits.push((base + d) >>> 0, (base + d + 0x80000000) >>> 0);
    }
    for (let m = 0; m < 0x2000; m += 0x7ff) bits.push(0x3c001000 + m, 0x3c000fff + m, 0x3c003000 + m);
    const n = bits.length;
    const x = new Float32Array(new Uint32Array(bits).buffer);
    for (const dtype of [1, 2] as const) {
      const c: Case = { dtype, rows: 1, cols: n, r: 1, w: new Uint8Array(n * 2), a: x, b: new Float32Array([1]), scale: 1 };
      const { simd, ref } = both(c);
      expectSameBytes(simd, ref, dtype, 'sweep');
      const out = new Uint16Array(simd.buffer);
      for (let i = 0; i < n; i++) {
        const v = bits[i] as number;
        const isNaN = (v & 0x7fffffff) > 0x7f800000;
        // 0 + (-0) is +0
        const want = isNaN ? (dtype === 1 ? 0x7e00 : 0x7fc0) : v === 0x80000000 ? 0 : dtype === 1 ? f32BitsToF16(v) : f32BitsToBf16(v);
        if (out[i] !== want) expect.fail(`${DTYPES[dtype]} of 0x${v.toString(16)}: 0x${(out[i] as number).toString(16)}, want 0x${want.toString(16)}`);
      }
    }
  });
});

describe('special values', () => {
  it('subnormal inputs and results', () => {
    for (const dtype of [0, 1, 2, 3]) {
      const cols = 19;
      const rand = rng(77 + dtype);
      // W subnormal in its dtype; updates tiny enough to stay or land in the subnormal range
      const w = new Uint8Array(2 * cols * (ES[dtype] as number));
      const dv = new DataView(w.buffer);
      for (let i = 0; i < 2 * cols; i++) {
        const m = 1 + Math.floor(rand() * 0x3ff);
        if (dtype === 0) dv.setUint32(i * 4, (m * 977) | (i % 2 ? 0x80000000 : 0), true);
        else if (dtype === 3) dv.setFloat64(i * 8, (i % 2 ? -1 : 1) * m * 2 ** -1070, true);
        else dv.setUint16(i * 2, (dtype === 1 ? m : m & 0x7f) | (i % 2 ? 0x8000 : 0), true);
      }
      const tiny = dtype === 1 ? 2 ** -22 : dtype === 3 ? 2 ** -1060 : 2 ** -140;
      const a = randomFloats(3 * cols, rand, 1);
      const b = new Float32Array(6).map(() => (rand() * 2 - 1) * Math.fround(Math.max(tiny, 2 ** -149)));
      const c: Case = { dtype, rows: 2, cols, r: 3, w, a, b, scale: 1 };
      const { simd, ref } = both(c);
      expectSameBytes(simd, ref, dtype, `subnormal ${DTYPES[dtype]}`);
    }
  });

  it('NaN in W, A or B gives the canonical NaN; overflow and Inf give Inf; Inf - Inf gives NaN', () => {
    const canon = [0x7fc00000, 0x7e00, 0x7fc0];
    for (const dtype of [0, 1, 2, 3]) {
      const es = ES[dtype] as number;
      const cols = 6;
      const w = new Uint8Array(cols * es);
      const dv = new DataView(w.buffer);
      const vals = [Number.NaN, 1, 1, Number.POSITIVE_INFINITY, 1, Number.NEGATIVE_INFINITY];
      for (let j = 0; j < cols; j++) {
        const v = vals[j] as number;
        if (dtype === 0) dv.setFloat32(j * 4, v, true);
        else if (dtype === 3) dv.setFloat64(j * 8, v, true);
        else dv.setUint16(j * 2, dtype === 1 ? f32BitsToF16(f32Bits(v)) : f32BitsToBf16(f32Bits(v)), true);
      }
      if (dtype === 0) dv.setUint32(0, 0xffc12345, true); // a negative NaN with a payload
      // columns: NaN W; A = NaN; huge update (overflow for 16/32-bit); Inf W; A = -Inf; -Inf W + Inf update
      const big = dtype === 3 ? 3e38 : 1e38;
      const a = new Float32Array([1, Number.NaN, big, 1, Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY]);
      const c: Case = { dtype, rows: 1, cols, r: 1, w, a, b: new Float32Array([1]), scale: dtype === 3 ? 1 : 10 };
      const { simd, ref } = both(c);
      expectSameBytes(simd, ref, dtype, `special ${DTYPES[dtype]}`);
      const out = new DataView(simd.buffer);
      const get = (j: number): number =>
        dtype === 0 ? out.getFloat32(j * 4, true) : dtype === 3 ? out.getFloat64(j * 8, true) : out.getUint16(j * 2, true);
      const bitsAt = (j: number): number | bigint =>
        dtype === 0 ? out.getUint32(j * 4, true) : dtype === 3 ? out.getBigUint64(j * 8, true) : out.getUint16(j * 2, true);
      const nan = dtype === 3 ? 0x7ff8000000000000n : (canon[dtype] as number);
      expect(bitsAt(0)).toBe(nan);
      expect(bitsAt(1)).toBe(nan);
      expect(bitsAt(5)).toBe(nan);
      if (dtype === 0 || dtype === 3) {
        expect(get(3)).toBe(Infinity);
        expect(get(4)).toBe(-Infinity);
        expect(get(2)).toBe(dtype === 0 ? Infinity : 1 + Math.fround(big));
      } else {
        const inf = dtype === 1 ? 0x7c00 : 0x7f80;
        expect(get(3)).toBe(inf);
        expect(get(4)).toBe(inf | 0x8000);
        expect(get(2)).toBe(inf);
      }
    }
  });

  it('negative zero: W = -0 stays -0 under a -0 update and becomes +0 under a +0 update', () => {
    for (const dtype of [0, 1, 2, 3]) {
      const es = ES[dtype] as number;
      const w = new Uint8Array(4 * es);
      const dv = new DataView(w.buffer);
      for (let j = 0; j < 4; j++) {
        if (dtype === 0) dv.setUint32(j * 4, 0x80000000, true);
        else if (dtype === 3) dv.setBigUint64(j * 8, 0x8000000000000000n, true);
        else dv.setUint16(j * 2, 0x8000, true);
      }
      // columns 0, 1: e = -0 -> products -0 (A >= 0); columns 2, 3: e = -0 times A < 0 -> +0
      const c: Case = { dtype, rows: 1, cols: 4, r: 2, w, a: new Float32Array([1, 0, -1, -0, 2, 0, -3, -0]), b: new Float32Array([-0, -0]), scale: 1 };
      const { simd, ref } = both(c);
      expectSameBytes(simd, ref, dtype, `-0 ${DTYPES[dtype]}`);
      const sign = (j: number): number => (simd[j * es + es - 1] as number) >> 7;
      expect([0, 1, 2, 3].map(sign)).toEqual([1, 1, 0, 0]);
    }
  });
});

describe('worker pool', () => {
  const pools: KernelPool[] = [];
  afterAll(async () => {
    await Promise.all(pools.map((p) => p.close()));
  });

  it('two threads (the module instantiated in a worker) write the same bytes as the reference', async () => {
    const pool = new KernelPool(2);
    pools.push(pool);
    for (const dtype of [0, 1, 2, 3]) {
      const c = makeCase(dtype, 53, 37, 16, 300 + dtype);
      const w = share(c.w);
      const a = share(c.a);
      const b = share(c.b);
      await pool.run(jobOf(c, w, a, b), 1);
      const ref = new Uint8Array(c.w);
      referenceKernel(jobOf(c, ref, c.a, c.b));
      expectSameBytes(w, ref, dtype, `pool ${DTYPES[dtype]}`);
    }
  });

  it('a bad job fails with a FailureError on the main thread and in the worker', async () => {
    const c = makeCase(1, 4, 8, 2, 9);
    const bad = { ...jobOf(c, share(c.w), share(c.a), share(c.b)), dtype: 7 };
    expect(() => runKernel(bad)).toThrow(FailureError);
    expect(() => runKernel(bad)).toThrow(/LoRA kernel: unknown dtype code 7/);
    // B too short for the last rows: only the worker's share (rows 2-3) reads past it
    const pool = new KernelPool(2);
    pools.push(pool);
    const short = { ...jobOf(c, share(c.w), share(c.a), share(c.b.subarray(0, 5))) };
    const err = await pool.run(short, 1).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(FailureError);
    expect(String(err)).toMatch(/LoRA kernel worker: .*length/i);
  });
});
