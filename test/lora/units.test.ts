import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../plugin/errors.js';
import { fromFloat32, toFloat32 } from '../../plugin/formats/dtype.js';
import {
  LoraKernelPool,
  parseLoraScaling,
  planLoraNames,
  resolveLoraScaling,
  runLoraKernel,
  scalingFromAdapterConfig,
} from '../../plugin/lora/index.js';
import { maxUlp, randomTensor, referenceMerge, rng } from './helpers.js';

let root = '';
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'msckpt-lora-units-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('scaling', () => {
  it('parses numbers and fractions, rsLoRA needs a fraction', () => {
    expect(parseLoraScaling('0.5').value).toBe(0.5);
    expect(parseLoraScaling('16/8').value).toBe(2);
    expect(parseLoraScaling('16/4', true).value).toBe(8);
    expect(() => parseLoraScaling('2', true)).toThrow(/alpha\/rank/);
    expect(() => parseLoraScaling('abc')).toThrow(InputError);
    expect(() => parseLoraScaling('16/0')).toThrow(/rank must be > 0/);
  });

  it('has no default: missing scaling is an input error', async () => {
    await expect(resolveLoraScaling({})).rejects.toThrow(/no LoRA scaling given/);
  });

  it('reads lora_alpha, r and use_rslora from an adapter config; the flag wins', async () => {
    const p = join(root, 'adapter_config.json');
    await writeFile(p, JSON.stringify({ lora_alpha: 32, r: 16, use_rslora: false }));
    expect((await scalingFromAdapterConfig(p)).value).toBe(2);
    expect((await scalingFromAdapterConfig(p, true)).value).toBe(8);
    expect((await resolveLoraScaling({ adapterConfig: p, loraScaling: '3' })).value).toBe(3);
    await writeFile(p, JSON.stringify({ lora_alpha: 32, r: 16, use_rslora: true }));
    expect((await resolveLoraScaling({ adapterConfig: p })).value).toBe(8);
    await writeFile(p, JSON.stringify({ r: 16 }));
    await expect(scalingFromAdapterConfig(p)).rejects.toThrow(/lora_alpha/);
  });
});

describe('names', () => {
  it('pairs both schemes, finds bases with or without the PEFT prefix, drops optimizer states', () => {
    const plan = planLoraNames([
      'l.q.weight', 'l.q.mindpet_delta_lora_a', 'l.q.mindpet_delta_lora_b',
      'l.k.weight', 'base_model.model.l.k.lora_A.weight', 'base_model.model.l.k.lora_B.weight',
      'base_model.model.l.v.weight', 'l.v.lora_A.weight', 'l.v.lora_B.weight',
      'adam_m.l.q.mindpet_delta_lora_a', 'adam_v.l.q.mindpet_delta_lora_b', 'adam_m.l.q.weight',
    ]);
    expect(plan.problems).toEqual([]);
    expect(plan.pairs.map((p) => [p.baseName, p.aName])).toEqual([
      ['l.q.weight', 'l.q.mindpet_delta_lora_a'],
      ['l.k.weight', 'base_model.model.l.k.lora_A.weight'],
      ['base_model.model.l.v.weight', 'l.v.lora_A.weight'],
    ]);
    expect(plan.dropped.has('adam_m.l.q.mindpet_delta_lora_a')).toBe(true);
    expect(plan.dropped.has('adam_m.l.q.weight')).toBe(false);
  });

  it('prefers the base with the LoRA key own prefix state', () => {
    const plan = planLoraNames(['x.weight', 'base_model.model.x.weight', 'base_model.model.x.lora_A.weight', 'base_model.model.x.lora_B.weight']);
    expect(plan.pairs[0]?.baseName).toBe('base_model.model.x.weight');
  });

  it('reports unrecognised LoRA names and missing partners', () => {
    const plan = planLoraNames(['a.weight', 'a.lora_a', 'b.weight', 'b.lora_B.weight']);
    expect(plan.problems.length).toBe(2);
    expect(plan.problems.join('\n')).toMatch(/'a\.lora_a' looks like a LoRA tensor/);
    expect(plan.problems.join('\n')).toMatch(/'b\.lora_B\.weight' has no LoRA A partner/);
  });
});

describe('kernel', () => {
  for (const [dtype, code] of [['Float32', 0], ['Float16', 1], ['BFloat16', 2]] as const) {
    it(`${dtype}: one thread and two threads agree with the reference within 1 ulp`, async () => {
      const rand = rng(code + 10);
      const rows = 37;
      const cols = 2100; // crosses a column block
      const r = 11; // 8 + remainder
      const w = randomTensor('w', dtype, [rows, cols], rand);
      const a = randomTensor('a', dtype, [r, cols], rand, 0.3);
      const b = randomTensor('b', dtype, [rows, r], rand, 0.3);
      const ref = referenceMerge(w, a, b, 1.5);
      const aF = toFloat32(a.data, dtype);
      const bF = toFloat32(b.data, dtype);
      // one thread, plain buffers
      const w1 = new Uint8Array(w.data);
      runLoraKernel({ w: w1.buffer, wOffset: 0, dtype: code, rowBegin: 0, rowEnd: rows, cols, b: bF.buffer, bOffset: 0, a: aF.buffer, aOffset: 0, r, scale: 1.5 });
      expect(maxUlp(w1, ref.data, dtype)).toBeLessThanOrEqual(1);
      // two threads, shared buffers
      const share = (src: Uint8Array): Uint8Array => {
        const s = new Uint8Array(new SharedArrayBuffer(src.byteLength));
        s.set(src);
        return s;
      };
      const w2 = share(w.data);
      const a2 = share(new Uint8Array(aF.buffer));
      const b2 = share(new Uint8Array(bF.buffer));
      const pool = new LoraKernelPool(2);
      try {
        await pool.run({ w: w2.buffer, wOffset: 0, dtype: code, rowBegin: 0, rowEnd: rows, cols, b: b2.buffer, bOffset: 0, a: a2.buffer, aOffset: 0, r, scale: 1.5 }, 1);
      } finally {
        await pool.close();
      }
      expect(Buffer.from(w2).equals(Buffer.from(w1))).toBe(true);
    });
  }

  it('keeps NaN and overflows to Inf like a cast', () => {
    const w = fromFloat32(new Float32Array([Number.NaN, 60000]), 'Float16');
    const a = new Float32Array([1, 1]);
    const b = new Float32Array([1]);
    runLoraKernel({ w: w.buffer, wOffset: 0, dtype: 1, rowBegin: 0, rowEnd: 1, cols: 2, b: b.buffer, bOffset: 0, a: a.buffer, aOffset: 0, r: 1, scale: 10000 });
    const out = toFloat32(w, 'Float16');
    expect(Number.isNaN(out[0])).toBe(true);
    expect(out[1]).toBe(Infinity);
  });
});
