import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertWeights, decodeFp8E4M3, dequantizingSource } from '../../plugin/convert/index.js';
import { openCheckpoint } from '../../plugin/formats/ckpt/index.js';
import { openSafetensors } from '../../plugin/formats/safetensors/index.js';
import type { TensorEntry, TensorSource } from '../../plugin/formats/types.js';
import { DEEPSEEK_CONFIG, LLAMA_CONFIG, deepseekHf, llamaHf, makeTensors, randomBytes, writeHfFolder, type HfTensor } from './hf.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-convert-dtype-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function readAll(src: TensorSource, name: string): Promise<Uint8Array> {
  const e = src.entry(name) as TensorEntry;
  const buf = new Uint8Array(e.byteLength);
  await src.readBytes(name, 0, e.byteLength, buf, 0);
  return buf;
}

// --- independent references --------------------------------------------------------------------

/** Nearest representable value from a sorted list of non-negative finite values, ties to the even code. */
function nearestCode(values: Float64Array, x: number): number {
  let lo = 0;
  let hi = values.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if ((values[mid] as number) <= x) lo = mid;
    else hi = mid;
  }
  const dl = x - (values[lo] as number);
  const dh = (values[hi] as number) - x;
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return lo % 2 === 0 ? lo : hi;
}

const F16_POS = (() => {
  const v = new Float64Array(0x7c00);
  for (let c = 0; c < 0x7c00; c++) {
    const e = c >> 10;
    const m = c & 0x3ff;
    v[c] = e === 0 ? m * 2 ** -24 : (1 + m / 1024) * 2 ** (e - 15);
  }
  return v;
})();

function refF16(x: number): number | 'nan' {
  if (Number.isNaN(x)) return 'nan';
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00; // halfway past the largest finite rounds to Inf
  return sign | nearestCode(F16_POS, a);
}

function refBf16(x: number): number | 'nan' {
  if (Number.isNaN(x)) return 'nan';
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === Infinity) return sign | 0x7f80;
  const f = new Float32Array([a]);
  const hiBits = new Uint32Array(f.buffer)[0] as number;
  const base = hiBits >>> 16;
  const val = (code: number): number => new Float32Array(new Uint32Array([code << 16]).buffer)[0] as number;
  const lo = val(base);
  const hi = base + 1 >= 0x7f80 ? 2 ** 128 : val(base + 1); // rounding boundary past the largest finite
  const dl = a - lo;
  const dh = hi - a;
  if (dl < dh) return sign | base;
  if (dh < dl) return sign | (base + 1);
  return sign | (base % 2 === 0 ? base : base + 1);
}

const SPECIAL = [
  0, -0, 1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 65504, 65519.99, 65520, 1e-8, 2 ** -24, 3 * 2 ** -25, 2 ** -25,
  NaN, Infinity, -Infinity, 3.4e38, -1e-40, -2.5,
];

function f32Bytes(values: readonly number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

function u16(bytes: Uint8Array): number[] {
  return Array.from(new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2));
}

function isNanBits(g: number, ref: (x: number) => number | 'nan'): boolean {
  const exp = ref === refF16 ? 0x7c00 : 0x7f80;
  return (g & exp) === exp && (g & (~exp & 0x7fff)) !== 0;
}

function checkBits(got: number[], values: readonly number[], ref: (x: number) => number | 'nan'): void {
  values.forEach((x, i) => {
    const want = ref(Math.fround(x));
    const g = got[i] as number;
    if (want === 'nan') expect(isNanBits(g, ref), `NaN at ${i}: ${g.toString(16)}`).toBe(true);
    else expect(g, `value ${x}`).toBe(want);
  });
}

describe('--dtype casts (round to nearest even, NaN and Inf kept)', () => {
  let hfDir: string;
  let specials: number[];
  beforeAll(async () => {
    hfDir = join(dir, 'f32-hf');
    const c = { ...LLAMA_CONFIG, hidden_size: SPECIAL.length, head_dim: 5 };
    const tensors = makeTensors(llamaHf(c), 11, () => 'F32');
    const rnd = new Float32Array(randomBytes(4 * 64, 99).buffer).map((v) => (Number.isFinite(v) ? v : 1.5));
    specials = [...SPECIAL];
    (tensors.find((t) => t.name === 'model.norm.weight') as HfTensor).data = f32Bytes(specials);
    (tensors.find((t) => t.name === 'model.layers.0.input_layernorm.weight') as HfTensor).data = f32Bytes(Array.from(rnd.subarray(0, SPECIAL.length)));
    specials.push(...Array.from(rnd.subarray(0, SPECIAL.length)));
    await writeHfFolder(hfDir, c, tensors);
  });

  async function normBits(dtype: 'bf16' | 'fp16', out: string): Promise<number[]> {
    await convertWeights({ model: 'llama', inputPath: hfDir, outputPath: out, dtype });
    const ms = await openCheckpoint(out);
    expect(ms.entry('model.norm_out.weight')?.dtype).toBe(dtype === 'bf16' ? 'BFloat16' : 'Float16');
    expect(ms.entries().every((e) => e.dtype === (dtype === 'bf16' ? 'BFloat16' : 'Float16'))).toBe(true);
    const bits = [...u16(await readAll(ms, 'model.norm_out.weight')), ...u16(await readAll(ms, 'model.layers.0.attention_norm.weight'))];
    await ms.close();
    return bits;
  }

  it('fp32 -> bf16', async () => {
    checkBits(await normBits('bf16', join(dir, 'bf16.ckpt')), specials, refBf16);
  });

  it('fp32 -> fp16', async () => {
    checkBits(await normBits('fp16', join(dir, 'fp16.ckpt')), specials, refF16);
  });

  it('bf16 -> fp32 (exact) -> fp16 through both directions', async () => {
    const bf = join(dir, 'chain-bf16.ckpt');
    const bits = await normBits('bf16', bf);
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...LLAMA_CONFIG, hidden_size: SPECIAL.length, head_dim: 5 }));
    const f32Dir = join(dir, 'chain-f32');
    await convertWeights({ model: 'llama', inputPath: bf, outputPath: f32Dir, reversed: true, dtype: 'fp32' });
    const hf = await openSafetensors(join(f32Dir, 'model.safetensors.index.json'));
    expect(hf.entry('model.norm.weight')?.dtype).toBe('Float32');
    const f = new Float32Array((await readAll(hf, 'model.norm.weight')).slice().buffer);
    bits.slice(0, SPECIAL.length).forEach((b, i) => {
      const want = new Float32Array(new Uint32Array([b << 16]).buffer)[0] as number;
      if (Number.isNaN(want)) expect(Number.isNaN(f[i])).toBe(true);
      else expect(f[i]).toBe(want);
    });
    await hf.close();
    const f16 = join(dir, 'chain-f16.ckpt');
    await convertWeights({ model: 'llama', inputPath: f32Dir, outputPath: f16, dtype: 'fp16' });
    const ms = await openCheckpoint(f16);
    checkBits(u16(await readAll(ms, 'model.norm_out.weight')), Array.from(f), refF16);
    await ms.close();
  });
});

describe('FP8 E4M3 block dequantisation', () => {
  function refFp8(b: number): number {
    const s = b & 0x80 ? -1 : 1;
    const e = (b >> 3) & 15;
    const m = b & 7;
    if (e === 15 && m === 7) return NaN;
    return e === 0 ? s * m * 2 ** -9 : s * (8 + m) * 2 ** (e - 10);
  }

  it('decodes every code', () => {
    const all = decodeFp8E4M3(Uint8Array.from({ length: 256 }, (_x, i) => i));
    for (let b = 0; b < 256; b++) {
      if (Number.isNaN(refFp8(b))) expect(Number.isNaN(all[b])).toBe(true);
      else expect(all[b]).toBe(refFp8(b));
    }
    expect(all[0x7e]).toBe(448);
  });

  it('dequantises in 128x128 blocks (partial edge blocks) read in any pieces', async () => {
    const R = 130;
    const C = 260;
    const w = randomBytes(R * C, 5);
    const scales = new Float32Array([0.5, 2, 1.25, -3, 1e-3, 7]); // [2, 3]
    const mem: Record<string, { e: TensorEntry; b: Uint8Array }> = {
      w: { e: { name: 'w', dtype: 'Float8E4M3FN', shape: [R, C], byteLength: R * C }, b: w },
      w_scale_inv: { e: { name: 'w_scale_inv', dtype: 'Float32', shape: [2, 3], byteLength: 24 }, b: new Uint8Array(scales.buffer) },
    };
    const src: TensorSource = {
      path: 'mem',
      entries: () => Object.values(mem).map((x) => x.e),
      entry: (n) => mem[n]?.e,
      readBytes: async (n, off, len, dst, at = 0) => {
        dst.set((mem[n] as { b: Uint8Array }).b.subarray(off, off + len), at);
      },
      close: async () => undefined,
    };
    const dq = dequantizingSource(src, 'Float32');
    expect(dq.entries().map((e) => [e.name, e.dtype])).toEqual([['w', 'Float32']]);
    const out = new Uint8Array(R * C * 4);
    for (let off = 0; off < out.length; off += 7777 * 4) await dq.readBytes('w', off, Math.min(7777 * 4, out.length - off), out, off);
    const f = new Float32Array(out.buffer);
    for (let r = 0; r < R; r++) {
      for (let c = 0; c < C; c++) {
        const want = Math.fround(refFp8(w[r * C + c] as number) * (scales[Math.floor(r / 128) * 3 + Math.floor(c / 128)] as number));
        const got = f[r * C + c] as number;
        if (Number.isNaN(want)) expect(Number.isNaN(got)).toBe(true);
        else if (got !== want) throw new Error(`(${r},${c}) ${got} != ${want}`);
      }
    }
  });

  it('deepseek with FP8 weights: scale_inv consumed, weights arrive as bf16', async () => {
    const tensors = makeTensors(deepseekHf(), 21);
    const fp8 = 'model.layers.1.self_attn.kv_b_proj.weight';
    const t = tensors.find((x) => x.name === fp8) as HfTensor;
    t.dtype = 'F8_E4M3';
    t.data = randomBytes(t.data.byteLength / 2, 3).map((b) => (b & 0x7f) === 0x7f ? 0x10 : b);
    tensors.push({ name: `${fp8}_scale_inv`, dtype: 'F32', shape: [1, 1], data: new Uint8Array(new Float32Array([0.25]).buffer) });
    const hfDir = join(dir, 'ds-fp8');
    await writeHfFolder(hfDir, DEEPSEEK_CONFIG, tensors);
    const out = join(dir, 'ds-fp8.ckpt');
    await convertWeights({ model: 'deepseek', inputPath: hfDir, outputPath: out });
    const ms = await openCheckpoint(out);
    const k = ms.entry('model.layers.1.attention.lkv2kv_k_nope.weight');
    expect(k?.dtype).toBe('BFloat16');
    const got = u16(await readAll(ms, 'model.layers.1.attention.lkv2kv_k_nope.weight'));
    // head 0 nope rows 0..3 of kv_b_proj (kv_lora_rank 8 columns)
    for (let i = 0; i < 32; i++) expect(got[i]).toBe(refBf16(Math.fround(refFp8(t.data[i] as number) * 0.25)));
    expect(ms.entries().some((e) => e.name.includes('scale_inv'))).toBe(false);
    await ms.close();
  });
});
