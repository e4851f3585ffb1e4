import { describe, expect, it } from 'vitest';
import {
  castBuffer, f32BitsToBf16, f32BitsToF16, f16BitsToF32, f32ToBits, f64ToBf16Bits, f64ToF16Bits,
} from '../../plugin/formats/dtype.js';
import { copyBox, forEachRun } from '../../plugin/formats/box.js';

function u16(values: number[]): Uint8Array {
  const b = new Uint8Array(values.length * 2);
  const dv = new DataView(b.buffer);
  values.forEach((v, i) => dv.setUint16(i * 2, v, true));
  return b;
}

describe('float casts round to nearest even', () => {
  it('float32 -> bfloat16 reference values', () => {
    expect(f32BitsToBf16(0x3f800000)).toBe(0x3f80); // 1.0
    expect(f32BitsToBf16(0x3f808000)).toBe(0x3f80); // tie, even stays
    expect(f32BitsToBf16(0x3f818000)).toBe(0x3f82); // tie, odd rounds up
    expect(f32BitsToBf16(0x3f808001)).toBe(0x3f81); // above half
    expect(f32BitsToBf16(0x7f800000)).toBe(0x7f80); // +Inf
    expect(f32BitsToBf16(0xff800000)).toBe(0xff80); // -Inf
    expect(f32BitsToBf16(0x7fc00000) & 0x7fc0).toBe(0x7fc0); // NaN stays NaN
    expect(f32BitsToBf16(0x7f800001) & 0x7f80).toBe(0x7f80); // signalling NaN not turned into Inf
    expect(f32BitsToBf16(0x7f800001) & 0x7f).not.toBe(0);
    expect(f32BitsToBf16(0x7f7fffff)).toBe(0x7f80); // max float rounds to Inf
  });
  it('float32 -> float16 reference values', () => {
    expect(f32BitsToF16(f32ToBits(1))).toBe(0x3c00);
    expect(f32BitsToF16(f32ToBits(65504))).toBe(0x7bff);
    expect(f32BitsToF16(f32ToBits(65520))).toBe(0x7c00); // halfway to overflow -> Inf
    expect(f32BitsToF16(f32ToBits(65519))).toBe(0x7bff);
    expect(f32BitsToF16(f32ToBits(2 ** -24))).toBe(0x0001); // smallest subnormal
    expect(f32BitsToF16(f32ToBits(2 ** -25))).toBe(0x0000); // tie to even (0)
    expect(f32BitsToF16(f32ToBits(3 * 2 ** -25))).toBe(0x0002); // tie to even (2)
    expect(f32BitsToF16(f32ToBits(1 + 2 ** -11))).toBe(0x3c00); // tie, even
    expect(f32BitsToF16(f32ToBits(1 + 3 * 2 ** -11))).toBe(0x3c02); // tie, odd up
    expect(f32BitsToF16(f32ToBits(-Infinity))).toBe(0xfc00);
    expect(f32BitsToF16(f32ToBits(NaN)) & 0x7c00).toBe(0x7c00);
    expect(f32BitsToF16(f32ToBits(NaN)) & 0x3ff).not.toBe(0);
  });
  it('float16 decode is exact and float64 casts round once', () => {
    expect(f16BitsToF32(0x3c00)).toBe(1);
    expect(f16BitsToF32(0x0001)).toBe(2 ** -24);
    expect(f16BitsToF32(0x7c00)).toBe(Infinity);
    expect(Number.isNaN(f16BitsToF32(0x7e00))).toBe(true);
    for (let h = 0; h < 0x7c00; h += 7) {
      expect(f64ToF16Bits(f16BitsToF32(h))).toBe(h);
    }
    // a double just above a float16 tie must round up, though through float32 it would tie
    expect(f64ToF16Bits(1 + 2 ** -11 + 2 ** -40)).toBe(0x3c01);
    expect(f64ToBf16Bits(1 + 2 ** -8 + 2 ** -40)).toBe(0x3f81);
    expect(f64ToBf16Bits(1 + 2 ** -8)).toBe(0x3f80);
  });
  it('castBuffer round-trips bf16 -> f32 -> bf16 and keeps NaN/Inf', () => {
    const src = u16([0x3f80, 0xc0a0, 0x7f80, 0xff80, 0x7fc1, 0x0001, 0x8000]);
    const f32 = castBuffer(src, 'BFloat16', 'Float32');
    expect(f32.byteLength).toBe(28);
    expect(Buffer.from(castBuffer(f32, 'Float32', 'BFloat16'))).toEqual(Buffer.from(src));
    const f16 = castBuffer(src, 'BFloat16', 'Float16');
    const back = new DataView(f16.buffer);
    expect(back.getUint16(0, true)).toBe(0x3c00);
    expect(back.getUint16(4, true)).toBe(0x7c00);
    expect(back.getUint16(6, true)).toBe(0xfc00);
    expect(back.getUint16(8, true) & 0x7c00).toBe(0x7c00);
  });
});

describe('boxes', () => {
  it('merges covered trailing dims into one run', () => {
    const runs: Array<[number, number]> = [];
    forEachRun([4, 6], { start: [2, 0], shape: [2, 6] }, (o, n) => runs.push([o, n]));
    expect(runs).toEqual([[12, 12]]);
    const cols: Array<[number, number]> = [];
    forEachRun([4, 6], { start: [0, 3], shape: [4, 3] }, (o, n) => cols.push([o, n]));
    expect(cols).toEqual([[3, 3], [9, 3], [15, 3], [21, 3]]);
  });
  it('copyBox moves a sub-rectangle between differently shaped buffers', () => {
    const src = Uint8Array.from({ length: 24 }, (_, i) => i); // [4,6]
    const dst = new Uint8Array(3 * 5).fill(255); // [3,5]
    copyBox(src, [4, 6], { start: [1, 2], shape: [2, 3] }, dst, [3, 5], { start: [1, 1], shape: [2, 3] }, 1);
    expect([...dst.subarray(5, 10)]).toEqual([255, 8, 9, 10, 255]);
    expect([...dst.subarray(10, 15)]).toEqual([255, 14, 15, 16, 255]);
    expect(dst[0]).toBe(255);
  });
});
