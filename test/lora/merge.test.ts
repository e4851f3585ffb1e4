import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FloatDType } from '../../plugin/formats/dtype.js';
import type { ParamLayout } from '../../plugin/formats/strategy/model.js';
import { sliceBox } from '../../plugin/layout/index.js';
import { mergeLora } from '../../plugin/lora/index.js';
import { ckptToSafetensors } from '../../plugin/unify/index.js';
import {
  int32Tensor,
  layout,
  maxUlp,
  randomTensor,
  readCkpt,
  referenceMerge,
  rng,
  sliceOf,
  writeCkpt,
  writeSliced,
  writeStrategyFile,
  type T,
} from './helpers.js';

type Scheme = 'mindpet' | 'peft';

const OUT = 24;
const IN = 16;
const R = 4;
const SCALE = 2;

function loraNames(module: string, scheme: Scheme): { a: string; b: string } {
  return scheme === 'mindpet'
    ? { a: `${module}.mindpet_delta_lora_a`, b: `${module}.mindpet_delta_lora_b` }
    : { a: `base_model.model.${module}.lora_A.weight`, b: `base_model.model.${module}.lora_B.weight` };
}

interface Model {
  tensors: T[];
  /** Expected output (merged weights by reference), in order. */
  expected: T[];
  /** Layouts for a model-parallel split over the rightmost device axis. */
  layouts: (dev: number[]) => ParamLayout[];
  merged: string[];
}

function buildModel(dtype: FloatDType, scheme: Scheme, seed: number): Model {
  const rand = rng(seed);
  const wq = 'model.layers.0.attention.wq';
  const wo = 'model.layers.0.attention.wo';
  const q = loraNames(wq, scheme);
  const o = loraNames(wo, scheme);
  const t = {
    emb: randomTensor('model.tok_embeddings.embedding_weight', dtype, [32, IN], rand),
    wq: randomTensor(`${wq}.weight`, dtype, [OUT, IN], rand),
    qa: randomTensor(q.a, dtype, [R, IN], rand, 0.5),
    qb: randomTensor(q.b, dtype, [OUT, R], rand, 0.5),
    wo: randomTensor(`${wo}.weight`, dtype, [IN, OUT], rand),
    oa: randomTensor(o.a, dtype, [R, OUT], rand, 0.5),
    ob: randomTensor(o.b, dtype, [IN, R], rand, 0.5),
    norm: randomTensor('model.layers.0.attention_norm.weight', 'Float32', [IN], rand),
    mW: randomTensor(`adam_m.${wq}.weight`, 'Float32', [OUT, IN], rand),
    mA: randomTensor(`adam_m.${q.a}`, 'Float32', [R, IN], rand),
    vB: randomTensor(`adam_v.${q.b}`, 'Float32', [OUT, R], rand),
    step: int32Tensor('global_step', [1], [1234]),
  };
  const tensors = [t.emb, t.wq, t.qa, t.qb, t.norm, t.wo, t.oa, t.ob, t.mW, t.mA, t.vB, t.step];
  const expected = [
    t.emb,
    referenceMerge(t.wq, t.qa, t.qb, SCALE),
    t.norm,
    referenceMerge(t.wo, t.oa, t.ob, SCALE),
    t.mW,
    t.step,
  ];
  const layouts = (dev: number[]): ParamLayout[] => [
    layout(t.emb.name, dev, [0, -1]),
    layout(t.wq.name, dev, [0, -1]),
    layout(t.qa.name, dev, [-1, -1]),
    layout(t.qb.name, dev, [0, -1]),
    layout(t.norm.name, dev, [-1]),
    layout(t.wo.name, dev, [-1, 0]),
    layout(t.oa.name, dev, [-1, 0]),
    layout(t.ob.name, dev, [-1, -1]),
    layout(t.mW.name, dev, [0, -1]),
    layout(t.mA.name, dev, [-1, -1]),
    layout(t.vB.name, dev, [0, -1]),
  ];
  return { tensors, expected, layouts, merged: [t.wq.name, t.wo.name] };
}

function expectSame(actual: readonly T[], expected: readonly T[], merged: readonly string[]): void {
  expect(actual.map((x) => x.name)).toEqual(expected.map((x) => x.name));
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i] as T;
    const e = expected[i] as T;
    expect(a.dtype, e.name).toBe(e.dtype);
    expect(a.shape, e.name).toEqual(e.shape);
    if (merged.includes(e.name)) expect(maxUlp(a.data, e.data, e.dtype), e.name).toBeLessThanOrEqual(1);
    else expect(Buffer.from(a.data).equals(Buffer.from(e.data)), e.name).toBe(true);
  }
}

let root = '';
let n = 0;
async function dir(): Promise<string> {
  n++;
  return join(root, `case${n}`);
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'msckpt-lora-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('lora-merge: complete source, complete output', () => {
  for (const dtype of ['Float32', 'Float16', 'BFloat16'] as const) {
    for (const scheme of ['mindpet', 'peft'] as const) {
      it(`${dtype} ${scheme}`, async () => {
        const d = await dir();
        const m = buildModel(dtype, scheme, 7 + dtype.length + scheme.length);
        await writeCkpt(join(d, 'src.ckpt'), m.tensors);
        const res = await mergeLora({ src: join(d, 'src.ckpt'), dstDir: join(d, 'out'), scaling: SCALE, threads: 1 });
        expect(res.files).toEqual([join(d, 'out', 'rank_0', 'checkpoint_0.ckpt')]);
        expect(res.merged.map((x) => x.base).sort()).toEqual([...m.merged].sort());
        expect(res.dropped.length).toBe(6);
        expectSame(await readCkpt(res.files[0] as string), m.expected, m.merged);
      });
    }
  }

  it('splits rows over two threads and small chunks with the same result', async () => {
    const d = await dir();
    const m = buildModel('BFloat16', 'mindpet', 99);
    await writeCkpt(join(d, 'src.ckpt'), m.tensors);
    const res = await mergeLora({
      src: join(d, 'src.ckpt'), dstDir: join(d, 'out'), scaling: SCALE, threads: 2, kernelMinWork: 1, chunkBytes: 1024, prefix: 'merged_',
    });
    expect(res.files).toEqual([join(d, 'out', 'rank_0', 'merged_0.ckpt')]);
    expectSame(await readCkpt(res.files[0] as string), m.expected, m.merged);
  });

  it('refuses to replace an existing output unless asked', async () => {
    const d = await dir();
    const m = buildModel('Float16', 'mindpet', 3);
    await writeCkpt(join(d, 'src.ckpt'), m.tensors);
    await mergeLora({ src: join(d, 'src.ckpt'), dstDir: join(d, 'out'), scaling: SCALE });
    await expect(mergeLora({ src: join(d, 'src.ckpt'), dstDir: join(d, 'out'), scaling: SCALE })).rejects.toThrow(/output exists/);
    await mergeLora({ src: join(d, 'src.ckpt'), dstDir: join(d, 'out'), scaling: SCALE, overwrite: true });
    expect(await readdir(join(d, 'out', 'rank_0'))).toEqual(['checkpoint_0.ckpt']);
  });
});

describe('lora-merge: distributed sources', () => {
  const cases: Array<{ label: string; dtype: FloatDType; scheme: Scheme; dev: number[] }> = [
    { label: 'mp=2 Float16 mindpet', dtype: 'Float16', scheme: 'mindpet', dev: [2] },
    { label: 'mp=4 BFloat16 peft', dtype: 'BFloat16', scheme: 'peft', dev: [4] },
    { label: 'dp=2 x mp=2 Float32 mindpet', dtype: 'Float32', scheme: 'mindpet', dev: [2, 2] },
  ];
  for (const c of cases) {
    it(`${c.label} -> complete`, async () => {
      const d = await dir();
      const m = buildModel(c.dtype, c.scheme, 42 + c.dev.length * 10 + (c.dev[0] as number));
      const devices = c.dev.reduce((x, y) => x * y, 1);
      const layouts = m.layouts(c.dev);
      await writeSliced(join(d, 'src'), m.tensors, layouts, devices);
      await writeStrategyFile(join(d, 'strategy.ckpt'), layouts);
      const res = await mergeLora({
        src: join(d, 'src'), srcStrategy: join(d, 'strategy.ckpt'), dstDir: join(d, 'out'), scaling: SCALE, threads: 2, kernelMinWork: 1,
      });
      expect(res.sourceRanks).toBe(devices);
      expect(res.files.length).toBe(1);
      expectSame(await readCkpt(res.files[0] as string), m.expected, m.merged);
    });
  }

  it('reads a folder of per-rank strategies without touching it', async () => {
    const d = await dir();
    const m = buildModel('Float16', 'peft', 5);
    const layouts = m.layouts([2]);
    await writeSliced(join(d, 'src'), m.tensors, layouts, 2);
    await writeStrategyFile(join(d, 'strategies', 'strategy_0.ckpt'), layouts);
    await writeStrategyFile(join(d, 'strategies', 'strategy_1.ckpt'), layouts);
    const res = await mergeLora({ src: join(d, 'src'), srcStrategy: join(d, 'strategies'), dstDir: join(d, 'out'), scaling: SCALE });
    expectSame(await readCkpt(res.files[0] as string), m.expected, m.merged);
    expect((await readdir(join(d, 'strategies'))).sort()).toEqual(['strategy_0.ckpt', 'strategy_1.ckpt']);
  });

  it('a sliced source without a strategy is an input error', async () => {
    const d = await dir();
    const m = buildModel('Float16', 'mindpet', 6);
    await writeSliced(join(d, 'src'), m.tensors, m.layouts([2]), 2);
    await expect(mergeLora({ src: join(d, 'src'), dstDir: join(d, 'out'), scaling: SCALE })).rejects.toThrow(/--src-ckpt-strategy is required/);
  });
});

describe('lora-merge: safetensors sources, the same bytes as from .ckpt', () => {
  it('a complete safetensors file and distributed safetensors (mp=2 -> complete, and -> mp=2 swapped) equal the .ckpt results bit for bit', async () => {
    const d = await dir();
    const m = buildModel('BFloat16', 'peft', 21);
    const layouts = m.layouts([2]);
    await writeCkpt(join(d, 'full.ckpt'), m.tensors);
    await writeSliced(join(d, 'sliced'), m.tensors, layouts, 2);
    await writeStrategyFile(join(d, 'strategy.ckpt'), layouts);
    const dstLayouts = layouts.map((l) =>
      l.name.endsWith('wq.weight') ? layout(l.name, [2], [-1, 0]) : l.name.endsWith('wo.weight') ? layout(l.name, [2], [0, -1]) : l,
    );
    await writeStrategyFile(join(d, 'dst.ckpt'), dstLayouts);
    await ckptToSafetensors(join(d, 'full.ckpt'), join(d, 'full.safetensors'));
    await ckptToSafetensors(join(d, 'sliced'), join(d, 'sliced-st'));
    const run = async (src: string, out: string, extra: { srcStrategy?: string; dstStrategy?: string } = {}): Promise<Buffer[]> => {
      const r = await mergeLora({ src: join(d, src), dstDir: join(d, out), scaling: SCALE, threads: 2, kernelMinWork: 1, chunkBytes: 1024, ...extra });
      return Promise.all(r.files.map((f) => readFile(f)));
    };
    const ref = await run('full.ckpt', 'ref');
    expectSame(await readCkpt(join(d, 'ref', 'rank_0', 'checkpoint_0.ckpt')), m.expected, m.merged);
    expect(await run('full.safetensors', 'st')).toEqual(ref);
    const strat = { srcStrategy: join(d, 'strategy.ckpt') };
    expect(await run('sliced', 'ck2', strat)).toEqual(ref);
    expect(await run('sliced-st', 'st2', strat)).toEqual(ref);
    const sliceRef = await run('sliced', 'ck4', { ...strat, dstStrategy: join(d, 'dst.ckpt') });
    expect(sliceRef).toHaveLength(2);
    expect(await run('sliced-st', 'st4', { ...strat, dstStrategy: join(d, 'dst.ckpt') })).toEqual(sliceRef);
    expect(await run('full.safetensors', 'st5', { dstStrategy: join(d, 'dst.ckpt') })).toEqual(sliceRef);
  });
});

describe('lora-merge: destination strategy', () => {
  async function checkSlices(files: readonly string[], m: Model, dstLayouts: ParamLayout[]): Promise<void> {
    const byName = new Map(dstLayouts.map((l) => [l.name, l]));
    for (let r = 0; r < files.length; r++) {
      const got = await readCkpt(files[r] as string);
      const want = m.expected.map((t) => {
        const l = byName.get(t.name);
        return l === undefined ? t : sliceOf(t, sliceBox(l, t.shape, r));
      });
      expectSame(got, want, m.merged);
    }
  }

  it('complete Float16 source -> mp=2 slices', async () => {
    const d = await dir();
    const m = buildModel('Float16', 'mindpet', 11);
    await writeCkpt(join(d, 'src.ckpt'), m.tensors);
    const dstLayouts = m.layouts([2]);
    await writeStrategyFile(join(d, 'dst.ckpt'), dstLayouts);
    const res = await mergeLora({ src: join(d, 'src.ckpt'), dstDir: join(d, 'out'), dstStrategy: join(d, 'dst.ckpt'), scaling: SCALE });
    expect(res.files).toEqual([0, 1].map((r) => join(d, 'out', `rank_${r}`, `checkpoint_${r}.ckpt`)));
    await checkSlices(res.files, m, dstLayouts);
  });

  it('mp=4 BFloat16 source -> mp=2 slices with the splits swapped', async () => {
    const d = await dir();
    const m = buildModel('BFloat16', 'peft', 12);
    const srcLayouts = m.layouts([4]);
    await writeSliced(join(d, 'src'), m.tensors, srcLayouts, 4);
    await writeStrategyFile(join(d, 'src.ckpt'), srcLayouts);
    // destination: wq split by columns, wo by rows
    const dstLayouts = m.layouts([2]).map((l) =>
      l.name.endsWith('wq.weight') ? layout(l.name, [2], [-1, 0]) : l.name.endsWith('wo.weight') ? layout(l.name, [2], [0, -1]) : l,
    );
    await writeStrategyFile(join(d, 'dst.ckpt'), dstLayouts);
    const res = await mergeLora({
      src: join(d, 'src'), srcStrategy: join(d, 'src.ckpt'), dstDir: join(d, 'out'), dstStrategy: join(d, 'dst.ckpt'),
      scaling: SCALE, threads: 2, kernelMinWork: 1, chunkBytes: 1024,
    });
    expect(res.files.length).toBe(2);
    await checkSlices(res.files, m, dstLayouts);
  });
});

describe('lora-merge: problems', () => {
  it('lists every naming and shape problem in one input error', async () => {
    const d = await dir();
    const rand = rng(1);
    await writeCkpt(join(d, 'bad.ckpt'), [
      randomTensor('a.weight', 'Float16', [8, 6], rand),
      randomTensor('a.mindpet_delta_lora_a', 'Float16', [2, 5], rand),
      randomTensor('a.mindpet_delta_lora_b', 'Float16', [8, 2], rand),
      randomTensor('ghost.lora_A.weight', 'Float16', [2, 6], rand),
      randomTensor('ghost.lora_B.weight', 'Float16', [8, 2], rand),
      randomTensor('lonely.mindpet_delta_lora_a', 'Float16', [2, 6], rand),
    ]);
    const err = await mergeLora({ src: join(d, 'bad.ckpt'), dstDir: join(d, 'out'), scaling: 1 }).then(
      () => null,
      (e: unknown) => e as Error & { exitCode?: number },
    );
    expect(err).not.toBeNull();
    expect(err?.exitCode).toBe(2);
    expect(err?.message).toMatch(/A a\.mindpet_delta_lora_a \[2,5\] Float16 has 5 columns but W a\.weight \[8,6\] Float16 has 6/);
    expect(err?.message).toMatch(/'ghost\.lora_A\.weight' has no base weight/);
    expect(err?.message).toMatch(/'lonely\.mindpet_delta_lora_a' has no LoRA B partner/);
  });

  it('a checkpoint without LoRA tensors is an input error', async () => {
    const d = await dir();
    await writeCkpt(join(d, 'plain.ckpt'), [randomTensor('w.weight', 'Float32', [2, 2], rng(2))]);
    await expect(mergeLora({ src: join(d, 'plain.ckpt'), dstDir: join(d, 'out'), scaling: 1 })).rejects.toThrow(/no LoRA pairs/);
    await writeFile(join(d, 'x.txt'), 'x');
  });
});
