/**
 * `inspect` summaries: strategy files and folders of per-rank strategy files (device count,
 * stages, dp/mp/pp, parameter count), HF model folders (model type, tensors, bytes, shards) and
 * folders of complete weights files, on the real fixtures and on generated folders.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCheckpointSink, openCheckpoint } from '../../plugin/formats/ckpt/index.js';
import { inspectWeights, type HfModelInspectReport, type StrategyInspectReport } from '../../plugin/formats/inspect.js';
import { resolvePath } from '../../plugin/formats/resolve.js';
import { createSafetensorsSink, writeShardedSafetensors } from '../../plugin/formats/safetensors/index.js';
import { makeStrategy, readStrategy, writeStrategy } from '../../plugin/formats/strategy/index.js';
import type { ParamLayout, Strategy, StrategyItem, TensorMapEntry } from '../../plugin/formats/strategy/model.js';
import { summarizeStrategy } from '../../plugin/formats/strategy/summary.js';
import { runCli } from '../helpers/cli.js';
import { describeFixtures, fixture } from '../helpers/fixtures.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-inspect-summary-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function layout(name: string, devMatrix: number[], tensorMap: TensorMapEntry[], extra: Partial<ParamLayout> = {}): ParamLayout {
  return { name, stage: 0, devMatrix, tensorMap, paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0, ...extra };
}

/** One stage's per-rank strategy (unprefixed names, items of that stage). */
function perRank(layouts: ParamLayout[], stage: number): Strategy {
  const items: StrategyItem[] = [{ nodeName: `MatMul_${layouts[0]?.name ?? 'x'}`, stage, strategies: [[1, 1]] }];
  return makeStrategy({ currentStage: 1, layouts: layouts.map((l) => ({ ...l, stage: 0 })), items });
}

/** mindformers' output/strategy: one file per rank, ranks of a stage writing identical bytes. */
async function strategyFolder(name: string, stages: Strategy[], ranksPerStage: number, opts: { json?: boolean; skipRanks?: number[] } = {}): Promise<string> {
  const out = join(dir, name);
  await mkdir(out, { recursive: true });
  for (let s = 0; s < stages.length; s++) {
    for (let l = 0; l < ranksPerStage; l++) {
      const rank = s * ranksPerStage + l;
      if (opts.skipRanks?.includes(rank)) continue;
      await writeStrategy(join(out, `ckpt_strategy_rank_${rank}.${opts.json === true ? 'json' : 'ckpt'}`), stages[s] as Strategy, { format: opts.json === true ? 'json' : 'protobuf' });
    }
  }
  return out;
}

describeFixtures('inspect summaries on the real fixtures', () => {
  it('the merged pipeline strategy: 4 devices = 2 stages x mp 2, dp 1; 36 parameters besides 108 optimizer states (CLI)', async () => {
    const r = await runCli(['inspect', fixture('mindformers_pp2/strategy_4_npus.ckpt')]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^strategy .*strategy_4_npus\.ckpt: merged, stages \[0,1\], 148 layouts\n/);
    expect(r.stdout).toMatch(/\n {2}devices +4 {2}2 per stage \(product of dev_matrix\) x 2 stage\(s\)\n/);
    expect(r.stdout).toMatch(/\n {2}pp +2 {2}the \{stage\}- prefixes of the merged strategy\n/);
    expect(r.stdout).toMatch(/\n {2}mp +2 {2}every split parameter is split over 2 devices/);
    expect(r.stdout).toMatch(/\n {2}dp +1 {2}devices per stage \/ mp/);
    expect(r.stdout).toMatch(/\n {2}parameters +36 {2}distinct names, besides 108 optimizer\/accumulator states/);
    // the stage table: 72 and 76 layouts, 40 of each split over 2 devices
    expect(r.stdout).toMatch(/\n +0 +2 +\[2\] +72 +32 over 1, 40 over 2 +2 +1\n/);
    expect(r.stdout).toMatch(/\n +1 +2 +\[2\] +76 +36 over 1, 40 over 2 +2 +1\n/);
  });

  it('its per-rank files in an output/strategy folder: the same job, checked against the rank files; one file alone says what it cannot tell', async () => {
    const merged = await readStrategy(fixture('mindformers_pp2/strategy_4_npus.ckpt'));
    const stage = (s: number): Strategy =>
      makeStrategy({ currentStage: 1, layouts: merged.layouts.filter((l) => l.stage === s).map((l) => ({ ...l, stage: 0 })), items: merged.items.filter((i) => i.stage === s) });
    const folder = await strategyFolder('pp2_output_strategy', [stage(0), stage(1)], 2);
    expect((await resolvePath(folder)).role).toBe('strategy');
    const r = await runCli(['inspect', folder, '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as StrategyInspectReport;
    expect(j).toMatchObject({ kind: 'strategy', source: 'folder', stages: [0, 1] });
    expect(j.layouts).toHaveLength(148);
    const m = j.summary;
    expect([m.devices.value, m.pp.value, m.mp.value, m.dp.value]).toEqual([4, 2, 2, 1]);
    expect(m.devices.how).toContain('matching the 4 per-rank files (ranks 0-3)');
    expect(m.pp.how).toContain('stages of the per-rank files');
    expect([m.parameters, m.optimizerStates, m.elements]).toEqual([36, 108, null]);
    expect(m.stages.map((s) => [s.stage, s.devices, s.files, s.ranks])).toEqual([[0, 2, 2, [0, 1]], [1, 2, 2, [2, 3]]]);
    expect(j.files?.map((f) => [f.path.split('/').pop(), f.stage, f.sameAs?.split('/').pop()])).toEqual([
      ['ckpt_strategy_rank_0.ckpt', 0, undefined],
      ['ckpt_strategy_rank_1.ckpt', 0, 'ckpt_strategy_rank_0.ckpt'],
      ['ckpt_strategy_rank_2.ckpt', 1, undefined],
      ['ckpt_strategy_rank_3.ckpt', 1, 'ckpt_strategy_rank_2.ckpt'],
    ]);

    const one = (await inspectWeights(join(folder, 'ckpt_strategy_rank_2.ckpt'))) as StrategyInspectReport;
    expect(one.source).toBe('file');
    expect([one.summary.devices.value, one.summary.pp.value, one.summary.mp.value, one.summary.dp.value]).toEqual([null, null, 2, 1]);
    expect(one.summary.pp.how).toMatch(/^unknown: a per-rank file holds the layouts of one stage \(this one: stage 1\)/);
    expect(one.summary.devices.how).toContain('2 per stage');
    expect(one.summary.stages.map((s) => s.stage)).toEqual([1]);
  });

  it('llama2_tiny_tp2: its strategy folder (dev_matrix [2]) and an HF model folder of its tensors', async () => {
    // the layouts the README gives for the two rank files
    const maps: Record<string, TensorMapEntry[]> = {
      'model.tok_embeddings.embedding_weight': [-1, -1], 'model.layers.0.ffn_norm.weight': [-1], 'model.layers.0.attention_norm.weight': [-1],
      'model.layers.0.attention.wq.weight': [0, -1], 'model.layers.0.attention.wk.weight': [0, -1], 'model.layers.0.attention.wv.weight': [0, -1],
      'model.layers.0.attention.wo.weight': [-1, 0], 'model.layers.0.feed_forward.w1.weight': [0, -1], 'model.layers.0.feed_forward.w2.weight': [-1, 0],
      'model.layers.0.feed_forward.w3.weight': [0, -1], 'model.norm_out.weight': [-1], 'lm_head.weight': [0, -1],
    };
    const folder = await strategyFolder('llama_strategy', [perRank(Object.entries(maps).map(([n, m]) => layout(n, [2], m)), 0)], 2);
    const s = ((await inspectWeights(folder)) as StrategyInspectReport).summary;
    expect([s.devices.value, s.pp.value, s.mp.value, s.dp.value, s.parameters]).toEqual([2, 1, 2, 1, 12]);

    // an HF model folder holding rank 0's real bytes in shards of at most 2 MB, with an index and config.json
    const hf = join(dir, 'llama_hf');
    const src = await openCheckpoint(fixture('llama2_tiny_tp2/rank_0/checkpoint_0.ckpt'));
    let written;
    try {
      written = await writeShardedSafetensors(src, hf, { maxShardSize: 2_000_000, sortKeys: true, metadata: { format: 'pt' } });
    } finally {
      await src.close();
    }
    await writeFile(join(hf, 'config.json'), JSON.stringify({ model_type: 'llama', architectures: ['LlamaForCausalLM'], torch_dtype: 'float16', hidden_size: 40 }));
    const j = (await inspectWeights(hf)) as HfModelInspectReport;
    expect(j).toMatchObject({ kind: 'hf-model', modelType: 'llama', architectures: ['LlamaForCausalLM'], torchDtype: 'float16', tensorCount: 12, unindexed: [] });
    expect(j.index).toBe(join(hf, 'model.safetensors.index.json'));
    // 32000x40 + 3 x 20x40 + 40x20 + 2 x 128x40 + 40x128 + 16000x40 Float16, three [40] Float32
    const f16 = (32000 * 40 + 3 * 20 * 40 + 40 * 20 + 2 * 128 * 40 + 40 * 128 + 16000 * 40) * 2;
    expect(j.bytes).toBe(f16 + 3 * 40 * 4);
    expect(j.dtypes).toEqual([{ dtype: 'Float16', tensors: 9, bytes: f16 }, { dtype: 'Float32', tensors: 3, bytes: 480 }]);
    expect(j.shards.map((x) => x.file)).toEqual(written.shards);
    for (const sh of j.shards) {
      const names = Object.entries(written.weightMap).filter(([, f]) => join(hf, f) === sh.file).map(([n]) => n);
      expect(sh.tensors).toBe(names.length);
      expect(sh.bytes).toBe(j.tensors.filter((t) => names.includes(t.name)).reduce((a, t) => a + t.bytes, 0));
    }
    expect(j.tensors.find((t) => t.name === 'lm_head.weight')).toMatchObject({ dtype: 'Float16', shape: [16000, 40], bytes: 16000 * 40 * 2 });
  });
});

describe('strategy summaries of generated strategies', () => {
  it('a JSON output/strategy folder of dp2 x mp4 x pp2 with tensor shapes and optimizer sharding: 16 devices, elements counted', async () => {
    const stage = (s: number): Strategy =>
      perRank([
        layout(`model.layers.${s}.wq.weight`, [2, 4], [0, -1], { tensorShape: [64, 32], optShardStep: 4, optShardSize: -1 }),
        layout(`model.layers.${s}.wo.weight`, [2, 4], [-1, 0], { tensorShape: [32, 64] }),
        layout(`model.layers.${s}.norm.weight`, [2, 4], [-1], { tensorShape: [32] }),
        layout(`adam_m.model.layers.${s}.wq.weight`, [2, 4], [0, -1], { tensorShape: [64, 32] }),
        layout('model.embedding', [8], [-1, -1], { tensorShape: [100, 32] }),
      ], s);
    const folder = await strategyFolder('dp2mp4pp2_json', [stage(0), stage(1)], 8, { json: true });
    const j = (await inspectWeights(folder)) as StrategyInspectReport;
    const m = j.summary;
    expect([m.devices.value, m.pp.value, m.mp.value, m.dp.value]).toEqual([16, 2, 4, 2]);
    // the shared embedding counts once; the optimizer state apart
    expect([m.parameters, m.optimizerStates]).toEqual([7, 2]);
    expect(m.elements).toBe(2 * (64 * 32 + 32 * 64 + 32) + 100 * 32);
    expect(m.optimizerSharding).toBe(true);
    expect(m.notes.some((n) => n.includes('optimizer sharding'))).toBe(true);
    expect(m.stages.map((s) => [s.stage, s.devices, s.mp, s.dp, s.files, s.devMatrices])).toEqual([
      [0, 8, 4, 2, 8, [[2, 4], [8]]],
      [1, 8, 4, 2, 8, [[2, 4], [8]]],
    ]);
    expect(j.files?.filter((f) => f.sameAs !== undefined)).toHaveLength(14);
  });

  it('says unknown, with the reason, where the matrices do not tell', () => {
    const s = (layouts: ParamLayout[], merged = true): Strategy => makeStrategy({ currentStage: 1, layouts, items: [], merged });
    // parameters split over 2 and over 4 devices (an expert-parallel weight beside mp 2)
    const mixed = summarizeStrategy({ strategy: s([layout('a', [2, 2], [0, -1]), layout('b', [2, 2], [1, 0])]) });
    expect([mixed.devices.value, mixed.pp.value, mixed.mp.value, mixed.dp.value]).toEqual([4, 1, null, null]);
    expect(mixed.mp.how).toBe('unknown: parameters of stage 0 are split over 2, 4 devices');
    // the same count over different axes of one device matrix: which is mp is not readable
    const axes = summarizeStrategy({ strategy: s([layout('a', [2, 2], [0, -1]), layout('b', [2, 2], [1, -1])]) });
    expect(axes.mp.value).toBeNull();
    expect(axes.mp.how).toContain('split over different axes');
    // device matrices of one stage covering different device counts
    const bad = summarizeStrategy({ strategy: s([layout('a', [4], [0]), layout('b', [2], [0])]) });
    expect([bad.devices.value, bad.mp.value]).toEqual([null, null]);
    expect(bad.devices.how).toContain('stage(s) 0 disagree');
    // a missing stage: pp and the device count unknown
    const gap = summarizeStrategy({ strategy: s([layout('a', [2], [0]), { ...layout('b', [2], [0]), stage: 2 }]) });
    expect([gap.pp.value, gap.devices.value, gap.mp.value, gap.dp.value]).toEqual([null, null, 2, 1]);
    expect(gap.pp.how).toBe('unknown: stage(s) 1 missing (stages present: 0, 2)');
    // nothing split: mp 1, every device a replica
    const dp = summarizeStrategy({ strategy: s([layout('a', [8, 1], [0, -1]), layout('b', [8, 1], [-1])]) });
    expect([dp.devices.value, dp.mp.value, dp.dp.value]).toEqual([8, 1, 8]);
    expect(dp.mp.how).toContain('no parameter is split');
    // a tensor map naming an axis the matrix lacks
    expect(summarizeStrategy({ strategy: s([layout('a', [2], [3])]) }).mp.how).toContain('name device axes their device matrix lacks');
  });

  it('a folder missing a rank file is noted; a folder with a stage missing has pp unknown', async () => {
    const st = (n: number): Strategy => perRank([layout(`w${n}`, [2], [0, -1])], n);
    const holes = await strategyFolder('missing_rank', [st(0), st(1)], 2, { skipRanks: [3] });
    const m = ((await inspectWeights(holes)) as StrategyInspectReport).summary;
    expect([m.devices.value, m.pp.value]).toEqual([4, 2]);
    expect(m.devices.how).not.toContain('matching');
    expect(m.notes).toContain('the folder holds files for rank(s) 0-2, not one for each of the 4 devices');
    const gap = join(dir, 'stage_gap');
    await mkdir(gap);
    await writeStrategy(join(gap, 'ckpt_strategy_rank_0.ckpt'), st(0));
    await writeStrategy(join(gap, 'ckpt_strategy_rank_4.ckpt'), st(2));
    const g = ((await inspectWeights(gap)) as StrategyInspectReport).summary;
    expect([g.pp.value, g.devices.value]).toEqual([null, null]);
    expect(g.pp.how).toBe('unknown: stage(s) 1 missing (stages present: 0, 2)');
  });
});

describe('HF model folders and folders of weights files', () => {
  async function st(path: string, tensors: Array<{ name: string; shape: number[] }>): Promise<void> {
    const ts = tensors.map((t) => ({ name: t.name, dtype: 'BFloat16' as const, shape: t.shape, byteLength: t.shape.reduce((a, b) => a * b, 2) }));
    const sink = await createSafetensorsSink(path, ts, { metadata: { format: 'pt' } });
    for (const t of ts) {
      await sink.beginTensor(t);
      await sink.write(new Uint8Array(t.byteLength).fill(1));
      await sink.endTensor();
    }
    await sink.close();
  }

  it('one model.safetensors beside config.json; an index with a file it does not name; a config without model_type (CLI)', async () => {
    const one = join(dir, 'hf_one');
    await mkdir(one);
    await st(join(one, 'model.safetensors'), [{ name: 'lm_head.weight', shape: [8, 4] }, { name: 'norm.weight', shape: [4] }]);
    await writeFile(join(one, 'config.json'), JSON.stringify({ model_type: 'qwen2', architectures: ['Qwen2ForCausalLM'] }));
    const a = (await inspectWeights(one)) as HfModelInspectReport;
    expect(a).toMatchObject({ kind: 'hf-model', modelType: 'qwen2', torchDtype: null, index: null, tensorCount: 2, bytes: 72, unindexed: [] });
    expect(a.shards).toEqual([{ file: join(one, 'model.safetensors'), size: a.shards[0]?.size, tensors: 2, bytes: 72 }]);

    const idx = join(dir, 'hf_index');
    await mkdir(idx);
    await st(join(idx, 'model-00001-of-00002.safetensors'), [{ name: 'a', shape: [16, 4] }]);
    await st(join(idx, 'model-00002-of-00002.safetensors'), [{ name: 'b', shape: [2] }, { name: 'c', shape: [3] }]);
    await st(join(idx, 'old.safetensors'), [{ name: 'z', shape: [1] }]);
    await writeFile(join(idx, 'model.safetensors.index.json'), JSON.stringify({
      metadata: { total_size: 138 }, weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' },
    }));
    await writeFile(join(idx, 'config.json'), JSON.stringify({ hidden_size: 4 }));
    const r = await runCli(['inspect', idx]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^HF model .*hf_index: model_type unknown \(config.json has none\)\n3 tensors, 138 B in 2 shard\(s\) \(index model\.safetensors\.index\.json\); BFloat16 3 \(138 B\)\n/);
    expect(r.stdout).toContain('not named by the index (not part of the model): old.safetensors\n');
    expect(r.stdout).toMatch(/\nmodel-00001-of-00002\.safetensors +1 +128 +\d+\n/);
    expect(r.stdout).toMatch(/\nmodel-00002-of-00002\.safetensors +2 +10 +\d+\n/);
    expect(r.stdout).toMatch(/\nc +BFloat16 +\[3\] +6 +model-00002-of-00002\.safetensors$/);

    const json = join(dir, 'hf_badconfig');
    await mkdir(json);
    await st(join(json, 'model.safetensors'), [{ name: 'x', shape: [1] }]);
    await writeFile(join(json, 'config.json'), '{"model_type": ');
    await expect(inspectWeights(json)).rejects.toThrow(/config\.json: not valid JSON/);
  });

  it('a folder of complete .ckpt files lists each source; a folder of strategies and one of weights are told apart by content', async () => {
    const ck = join(dir, 'ckpts');
    await mkdir(ck);
    for (const [n, rows] of [['net_a.ckpt', 2], ['net_b.ckpt', 3]] as const) {
      const sink = await createCheckpointSink(join(ck, n));
      await sink.beginTensor({ name: 'w', dtype: 'Float32', shape: [rows, 2], byteLength: rows * 8 });
      await sink.write(new Uint8Array(rows * 8));
      await sink.endTensor();
      await sink.close();
    }
    expect((await resolvePath(ck)).role).toBe('weights');
    const r = await inspectWeights(ck);
    expect(r).toMatchObject({ kind: 'files', format: 'ckpt', tensorCount: 2, bytes: 40 });
    expect(r.kind === 'files' && r.sources.map((s) => [s.name, s.tensors, s.bytes])).toEqual([['net_a', 1, 16], ['net_b', 1, 24]]);
    await expect(inspectWeights(join(dir, 'nothing-here'))).rejects.toThrow(/no such file or directory/);
  });
});
