/**
 * Re-sharding with safetensors on either side (and mixtures) gives the same bytes for
 * every tensor as with .ckpt.
 */
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyBox, fullBox } from '../../plugin/formats/box.js';
import { elementSize } from '../../plugin/formats/dtype.js';
import { openWeights } from '../../plugin/formats/open.js';
import { createSafetensorsSink, openSafetensorsFile } from '../../plugin/formats/safetensors/index.js';
import { makeStrategy, writeStrategy } from '../../plugin/formats/strategy/index.js';
import type { ParamLayout, TensorMapEntry } from '../../plugin/formats/strategy/model.js';
import { sliceBox } from '../../plugin/layout/index.js';
import { transformCheckpoints } from '../../plugin/transform/index.js';
import { safetensorsToCkpt, unifySafetensors } from '../../plugin/unify/index.js';
import { entryOf, readAll, tensor, writeAll, type MemTensor } from '../helpers/mem-tensors.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-sttr-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function layout(name: string, stage: number, devMatrix: number[], tensorMap: TensorMapEntry[]): ParamLayout {
  return { name, stage, devMatrix, tensorMap, paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0 };
}

const params: Array<{ t: MemTensor; stages: number[]; src: TensorMapEntry[]; dst: TensorMapEntry[] }> = [
  { t: tensor('embedding.weight', 'Float16', [32, 8], 1), stages: [0, 1], src: [0, -1], dst: [-1, 0] },
  { t: tensor('layers.0.wq.weight', 'BFloat16', [8, 8], 2), stages: [0], src: [0, -1], dst: [-1, 0] },
  { t: tensor('layers.0.norm.weight', 'Float32', [8], 3), stages: [0], src: [-1], dst: [0] },
  { t: tensor('layers.1.wo.weight', 'BFloat16', [8, 8], 4), stages: [1], src: [-1, 0], dst: [0, -1] },
  { t: tensor('lm_head.weight', 'Float16', [32, 8], 5), stages: [1], src: [0, -1], dst: [0, -1] },
];

async function build(): Promise<{ src: string; srcStrategy: string; dstStrategy: string }> {
  const srcLayouts = params.flatMap((p) => p.stages.map((s) => layout(p.t.name, s, [4], p.src)));
  const srcStrategy = join(dir, 'src_strategy.ckpt');
  await writeStrategy(srcStrategy, makeStrategy({ currentStage: 1, layouts: srcLayouts, items: [], merged: true }));
  const dstStrategy = join(dir, 'dst_strategy.ckpt');
  await writeStrategy(dstStrategy, makeStrategy({ currentStage: 0, layouts: params.map((p) => layout(p.t.name, 0, [2], p.dst)), items: [] }));
  const src = join(dir, 'src');
  for (let r = 0; r < 8; r++) {
    const stage = Math.floor(r / 4);
    const slices: MemTensor[] = [];
    for (const p of params.filter((x) => x.stages.includes(stage))) {
      const box = sliceBox(layout(p.t.name, stage, [4], p.src), p.t.shape, r % 4);
      const es = elementSize(p.t.dtype);
      const data = new Uint8Array(box.shape.reduce((a, b) => a * b, 1) * es);
      copyBox(p.t.data, p.t.shape, box, data, box.shape, fullBox(box.shape), es);
      slices.push({ name: p.t.name, dtype: p.t.dtype, shape: [...box.shape], data });
    }
    const sink = await createSafetensorsSink(join(src, `rank_${r}`, `net_rank_${r}-1_4.safetensors`), slices.map(entryOf), { sortKeys: true, metadata: { format: 'ms' } });
    await writeAll(sink, slices, 1000);
  }
  return { src, srcStrategy, dstStrategy };
}

async function expectDstSlices(out: string, ext: string): Promise<void> {
  for (let r = 0; r < 2; r++) {
    const files = await readdir(join(out, `rank_${r}`));
    expect(files).toEqual([`checkpoint_${r}.${ext}`]);
    const s = await openWeights(join(out, `rank_${r}`, `checkpoint_${r}.${ext}`));
    const got = await readAll(s);
    for (const p of params) {
      const box = sliceBox(layout(p.t.name, 0, [2], p.dst), p.t.shape, r);
      const es = elementSize(p.t.dtype);
      const want = new Uint8Array(box.shape.reduce((a, b) => a * b, 1) * es);
      copyBox(p.t.data, p.t.shape, box, want, box.shape, fullBox(box.shape), es);
      expect(s.entry(p.t.name)).toMatchObject({ dtype: p.t.dtype, shape: box.shape });
      expect(Buffer.from(got.get(p.t.name) as Uint8Array).equals(Buffer.from(want)), `${out} rank ${r} ${p.t.name}`).toBe(true);
    }
    await s.close();
  }
}

describe('transform with safetensors on either side', () => {
  let m: { src: string; srcStrategy: string; dstStrategy: string };
  beforeAll(async () => {
    m = await build();
    await safetensorsToCkpt(m.src, join(dir, 'src-ckpt'));
  });

  it('safetensors in (mp=4 x pp=2) -> safetensors out (mp=2): every slice has the right bytes', async () => {
    const out = join(dir, 'st-st');
    await transformCheckpoints({ srcCheckpoint: m.src, srcStrategy: m.srcStrategy, dstStrategy: m.dstStrategy, dstDir: out, outputFormat: 'safetensors', progress: false });
    await expectDstSlices(out, 'safetensors');
    const f = await openSafetensorsFile(join(out, 'rank_0', 'checkpoint_0.safetensors'));
    expect(f.entries().length).toBe(params.length);
    // MindSpore's conventions: keys sorted, format ms
    const names = f.entries().map((e) => e.name);
    expect(names).toEqual([...names].sort());
    expect(f.metadata['format']).toBe('ms');
    await f.close();
  });

  it('mixtures: ckpt in -> safetensors out, safetensors in -> ckpt out; ckpt results byte-identical', async () => {
    await transformCheckpoints({ srcCheckpoint: join(dir, 'src-ckpt'), srcStrategy: m.srcStrategy, dstStrategy: m.dstStrategy, dstDir: join(dir, 'ck-st'), outputFormat: 'safetensors', progress: false });
    await expectDstSlices(join(dir, 'ck-st'), 'safetensors');
    await transformCheckpoints({ srcCheckpoint: m.src, srcStrategy: m.srcStrategy, dstStrategy: m.dstStrategy, dstDir: join(dir, 'st-ck'), outputFormat: 'ckpt', progress: false });
    await expectDstSlices(join(dir, 'st-ck'), 'ckpt');
    await transformCheckpoints({ srcCheckpoint: join(dir, 'src-ckpt'), srcStrategy: m.srcStrategy, dstStrategy: m.dstStrategy, dstDir: join(dir, 'ck-ck'), outputFormat: 'ckpt', progress: false });
    for (let r = 0; r < 2; r++) {
      const a = await readFile(join(dir, 'st-ck', `rank_${r}`, `checkpoint_${r}.ckpt`));
      const b = await readFile(join(dir, 'ck-ck', `rank_${r}`, `checkpoint_${r}.ckpt`));
      expect(a.equals(b)).toBe(true);
    }
    // and back: the safetensors output re-sharded to the source layout... as a complete file
    await transformCheckpoints({ srcCheckpoint: join(dir, 'ck-st'), srcStrategy: m.dstStrategy, dstDir: join(dir, 'full'), outputFormat: 'safetensors', progress: false });
    const full = await openWeights(join(dir, 'full', 'rank_0', 'checkpoint_0.safetensors'));
    const got = await readAll(full);
    for (const p of params) expect(Buffer.from(got.get(p.t.name) as Uint8Array).equals(Buffer.from(p.t.data)), p.t.name).toBe(true);
    await full.close();
  });

  it('a unified directory (through its param_name_map.json) is a complete source', async () => {
    const uni = join(dir, 'unified');
    await unifySafetensors({ srcDir: m.src, srcStrategy: m.srcStrategy, dstDir: uni, partSize: 300 });
    const out = join(dir, 'uni-st');
    await transformCheckpoints({ srcCheckpoint: join(uni, 'param_name_map.json'), dstStrategy: m.dstStrategy, dstDir: out, outputFormat: 'safetensors', progress: false });
    await expectDstSlices(out, 'safetensors');
  });
});
