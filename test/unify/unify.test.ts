import { mkdtemp, readFile, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyBox, fullBox } from '../../plugin/formats/box.js';
import { elementSize } from '../../plugin/formats/dtype.js';
import { createSafetensorsSink, openSafetensors, openSafetensorsFile } from '../../plugin/formats/safetensors/index.js';
import { makeStrategy, writeStrategy } from '../../plugin/formats/strategy/index.js';
import type { ParamLayout, TensorMapEntry } from '../../plugin/formats/strategy/model.js';
import { sliceBox } from '../../plugin/layout/index.js';
import { safetensorsToCkpt, unifySafetensors } from '../../plugin/unify/index.js';
import { runCli } from '../helpers/cli.js';
import { entryOf, readAll, tensor, writeAll, type MemTensor } from '../helpers/mem-tensors.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-unify-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function layout(name: string, stage: number, tensorMap: TensorMapEntry[]): ParamLayout {
  return { name, stage, devMatrix: [4], tensorMap, paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0 };
}

/** A complete mp=4 x pp=2 model: full tensors, per-stage layouts. */
const params: Array<{ t: MemTensor; stages: number[]; map: TensorMapEntry[] }> = [
  { t: tensor('embedding.weight', 'Float16', [64, 16], 1), stages: [0, 1], map: [0, -1] },
  { t: tensor('layers.0.wq.weight', 'BFloat16', [16, 16], 2), stages: [0], map: [0, -1] },
  { t: tensor('layers.0.wo.weight', 'BFloat16', [16, 16], 3), stages: [0], map: [-1, 0] },
  { t: tensor('layers.0.norm.weight', 'Float32', [16], 4), stages: [0], map: [-1] },
  { t: tensor('layers.1.wq.weight', 'BFloat16', [16, 16], 5), stages: [1], map: [0, -1] },
  { t: tensor('layers.1.w3d', 'Float32', [8, 8, 4], 6), stages: [1], map: [-1, 0, -1] },
  { t: tensor('norm_out.weight', 'Float32', [16], 7), stages: [1], map: [-1] },
  { t: tensor('lm_head.weight', 'Float16', [64, 16], 8), stages: [1], map: [0, -1] },
  { t: tensor('scale', 'Float32', [], 9), stages: [1], map: [] },
];
const hyper = [tensor('global_step', 'Int32', [1], 10), tensor('epoch_num', 'Int64', [], 11)];

async function buildModel(root: string): Promise<string> {
  const layouts = params.flatMap((p) => p.stages.map((s) => layout(p.t.name, s, p.map)));
  const strategyPath = join(root, 'merged_ckpt_strategy.ckpt');
  await writeStrategy(strategyPath, makeStrategy({ currentStage: 1, layouts, items: [], merged: true }));
  for (let r = 0; r < 8; r++) {
    const stage = Math.floor(r / 4);
    const local = r % 4;
    const slices: MemTensor[] = [];
    for (const p of params.filter((x) => x.stages.includes(stage))) {
      const box = sliceBox(layout(p.t.name, stage, p.map), p.t.shape, local);
      const es = elementSize(p.t.dtype);
      const data = new Uint8Array(box.shape.reduce((a, b) => a * b, 1) * es);
      copyBox(p.t.data, p.t.shape, box, data, box.shape, fullBox(box.shape), es);
      slices.push({ name: p.t.name, dtype: p.t.dtype, shape: [...box.shape], data });
    }
    slices.push(...hyper);
    const file = join(root, 'src', `rank_${r}`, `net_rank_${r}-2_10.safetensors`);
    const sink = await createSafetensorsSink(file, slices.map(entryOf), { sortKeys: true, metadata: { format: 'ms' } });
    await writeAll(sink, slices, 1000);
  }
  // An older checkpoint in rank_0 that must not be used.
  const old = join(root, 'src', 'rank_0', 'net_rank_0-1_99.safetensors');
  const sink = await createSafetensorsSink(old, [entryOf(tensor('stale', 'Int8', [1]))]);
  await writeAll(sink, [tensor('stale', 'Int8', [1])]);
  await utimes(old, new Date(2020, 0, 1), new Date(2020, 0, 1));
  return strategyPath;
}

async function checkUnified(out: string, partSize: number): Promise<void> {
  const src = await openSafetensors(out);
  expect(src.layout).toBe('unified');
  const got = await readAll(src);
  for (const p of params) {
    expect(src.entry(p.t.name)).toMatchObject({ dtype: p.t.dtype, shape: p.t.shape });
    expect(Buffer.from(got.get(p.t.name) as Uint8Array).equals(Buffer.from(p.t.data)), p.t.name).toBe(true);
  }
  for (const h of hyper) expect(Buffer.from(got.get(h.name) as Uint8Array).equals(Buffer.from(h.data))).toBe(true);
  expect(src.entry('stale')).toBeUndefined();
  await src.close();
  const map = JSON.parse(await readFile(join(out, 'param_name_map.json'), 'utf8')) as { metadata: { total_size: number }; weight_map: Record<string, string> };
  expect(Object.keys(map.weight_map).sort()).toEqual(params.map((p) => p.t.name).sort());
  expect(map.metadata.total_size).toBe(params.reduce((a, p) => a + p.t.data.byteLength, 0));
  for (const part of new Set(Object.values(map.weight_map))) {
    const f = await openSafetensorsFile(join(out, part));
    const size = f.entries().reduce((a, e) => a + e.byteLength, 0);
    expect(size <= partSize || f.entries().length === 1).toBe(true);
    expect(f.metadata['format']).toBe('ms');
    for (const e of f.entries()) expect(map.weight_map[e.name]).toBe(part);
    await f.close();
  }
  const hp = await openSafetensorsFile(join(out, 'hyper_param.safetensors'));
  expect(hp.entries().map((e) => e.name).sort()).toEqual(['epoch_num', 'global_step']);
  await hp.close();
}

describe('unify (unified_safetensors)', () => {
  let strategy: string;
  beforeAll(async () => {
    strategy = await buildModel(dir);
  });

  it('mp=4 x pp=2 safetensors slices unify to the complete source, in bands, parts within the limit', async () => {
    const notices: string[] = [];
    const out = join(dir, 'unified');
    const r = await unifySafetensors({ srcDir: join(dir, 'src'), srcStrategy: strategy, dstDir: out, partSize: 2048, memory: 100, processes: 2, onNotice: (m) => notices.push(m) });
    expect(r.ranks).toBe(8);
    expect(r.parts.length).toBeGreaterThan(2);
    expect(notices.join('\n')).toMatch(/rank_0: 2 \.safetensors files, using net_rank_0-2_10\.safetensors \(newest/);
    await checkUnified(out, 2048);
  });

  it('unifies .ckpt slices the same way, with a filter and a rename map', async () => {
    await safetensorsToCkpt(join(dir, 'src'), join(dir, 'src-ckpt'), { fileNameRegex: '-2_10' });
    const out = join(dir, 'unified-ckpt');
    const r = await unifySafetensors({
      srcDir: join(dir, 'src-ckpt'),
      srcStrategy: strategy,
      dstDir: out,
      filter: (n) => n !== 'norm_out.weight',
      nameMap: { 'lm_head.weight': 'output.weight' },
    });
    expect(r.parts.length).toBe(1);
    const src = await openSafetensors(out);
    expect(src.entry('norm_out.weight')).toBeUndefined();
    const lm = params.find((p) => p.t.name === 'lm_head.weight')?.t as MemTensor;
    const b = new Uint8Array(lm.data.byteLength);
    await src.readBytes('output.weight', 0, b.byteLength, b);
    expect(Buffer.from(b).equals(Buffer.from(lm.data))).toBe(true);
    await src.close();
  });

  it('CLI: msckpt unify --json, and a strategy that does not fit the rank count is exit 2', async () => {
    const out = join(dir, 'unified-cli');
    const r = await runCli(['unify', join(dir, 'src'), out, '--src_strategy', strategy, '--part-size', '3K', '--json']);
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    const j = JSON.parse(r.stdout) as { kind: string; parts: unknown[]; notices: string[] };
    expect(j.kind).toBe('unify');
    expect(j.notices.length).toBe(1);
    await checkUnified(out, 3072);
    const small = join(dir, 'small_strategy.ckpt');
    await writeStrategy(small, makeStrategy({ currentStage: 0, layouts: [layout('embedding.weight', 0, [0, -1])], items: [] }));
    const bad = await runCli(['unify', join(dir, 'src'), join(dir, 'x'), '--src-strategy', small]);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toMatch(/4 devices = 4 ranks, but there are 8 rank folders/);
  });
});
