import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../plugin/errors.js';
import { createCheckpointSink } from '../../plugin/formats/ckpt/index.js';
import { detectKind } from '../../plugin/formats/detect.js';
import { fromFloat32 } from '../../plugin/formats/dtype.js';
import { inspectWeights, previewTensor } from '../../plugin/formats/inspect.js';
import { createWeightsSink, openWeights } from '../../plugin/formats/open.js';
import type { SinkTensor } from '../../plugin/formats/types.js';
import { runCli } from '../helpers/cli.js';
import { describeFixtures, fixture } from '../helpers/fixtures.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-inspect-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface CkptJson {
  kind: string;
  path: string;
  crc: null | { present: boolean; valid: boolean | null };
  tensors: Array<{ name: string; dtype: string; shape: number[]; chunks: number; bytes: number }>;
}

const LLAMA: Array<[string, string, number[]]> = [
  ['model.tok_embeddings.embedding_weight', 'Float16', [32000, 40]],
  ['model.layers.0.ffn_norm.weight', 'Float32', [40]],
  ['model.layers.0.attention_norm.weight', 'Float32', [40]],
  ['model.layers.0.attention.wq.weight', 'Float16', [20, 40]],
  ['model.layers.0.attention.wk.weight', 'Float16', [20, 40]],
  ['model.layers.0.attention.wv.weight', 'Float16', [20, 40]],
  ['model.layers.0.attention.wo.weight', 'Float16', [40, 20]],
  ['model.layers.0.feed_forward.w1.weight', 'Float16', [128, 40]],
  ['model.layers.0.feed_forward.w2.weight', 'Float16', [40, 128]],
  ['model.layers.0.feed_forward.w3.weight', 'Float16', [128, 40]],
  ['model.norm_out.weight', 'Float32', [40]],
  ['lm_head.weight', 'Float16', [16000, 40]],
];

describeFixtures('inspect --json on the fixtures (CLI)', () => {
  it('llama2 rank files: 12 tags, slice shapes and dtypes of the README', async () => {
    for (const f of ['llama2_tiny_tp2/rank_0/checkpoint_0.ckpt', 'llama2_tiny_tp2/rank_1/checkpoint_1.ckpt']) {
      // the CLI for rank 0, the API (same object) for rank 1: CLI start-up is the slow part
      let j: CkptJson;
      if (f.includes('rank_0')) {
        const r = await runCli(['inspect', fixture(f), '--json']);
        expect(r.exitCode, r.stderr).toBe(0);
        j = JSON.parse(r.stdout) as CkptJson;
      } else {
        j = (await inspectWeights(fixture(f))) as CkptJson;
      }
      expect(j.kind).toBe('checkpoint');
      expect(j.path).toBe(fixture(f));
      expect(j.crc).toBeNull();
      expect(j.tensors.map((t) => [t.name, t.dtype, t.shape])).toEqual(LLAMA);
      expect(j.tensors.every((t) => t.chunks === 1)).toBe(true);
      expect(j.tensors[0]?.bytes).toBe(32000 * 40 * 2);
    }
  });

  it('the llama2 directory is a distributed checkpoint of two ranks (API)', async () => {
    expect(await inspectWeights(fixture('llama2_tiny_tp2'))).toEqual({
      kind: 'distributed',
      format: 'ckpt',
      rule: 'newest',
      notices: [],
      ranks: [0, 1].map((r) => ({
        rank: r,
        file: fixture(`llama2_tiny_tp2/rank_${r}/checkpoint_${r}.ckpt`),
        candidates: [fixture(`llama2_tiny_tp2/rank_${r}/checkpoint_${r}.ckpt`)],
      })),
    });
  });

  it('the merged pipeline strategy: 2 stages, 148 layouts (72 + 76), dev_matrix [2]', async () => {
    const r = await runCli(['inspect', fixture('mindformers_pp2/strategy_4_npus.ckpt'), '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as {
      kind: string;
      merged: boolean;
      stages: number[];
      layouts: Array<{ name: string; stage: number; devMatrix: number[]; tensorMap: unknown[]; optShardStep: number; optShardSize: number; field: number }>;
    };
    expect(j.kind).toBe('strategy');
    expect(j.merged).toBe(true);
    expect(j.stages).toEqual([0, 1]);
    expect(j.layouts.length).toBe(148);
    expect(j.layouts.filter((l) => l.stage === 0).length).toBe(72);
    expect(j.layouts.filter((l) => l.stage === 1).length).toBe(76);
    expect(j.layouts.every((l) => JSON.stringify(l.devMatrix) === '[2]' && l.optShardStep === 0 && l.optShardSize === 0)).toBe(true);
    const maps = new Set(j.layouts.map((l) => JSON.stringify(l.tensorMap)));
    expect([...maps].sort()).toEqual(['[-1,-1]', '[-1,0]', '[-1]', '[0,-1]', '[0]']);
    const emb = j.layouts.filter((l) => l.name === 'backbone.embedding.word_embedding.embedding_table').map((l) => l.stage);
    expect(emb.sort()).toEqual([0, 1]);
    expect(Object.keys(j.layouts[0] ?? {}).sort()).toEqual(['devMatrix', 'field', 'name', 'optShardSize', 'optShardStep', 'stage', 'tensorMap']);
  });

  it('the single checkpoints with legacy scalars (API)', async () => {
    const lenet = (await inspectWeights(fixture('single/checkpoint_lenet-10_1875.ckpt'))) as CkptJson;
    expect(lenet.kind).toBe('checkpoint');
    const byName = new Map(lenet.tensors.map((t) => [t.name, t]));
    expect(byName.get('learning_rate')).toMatchObject({ dtype: 'Float64', shape: [], bytes: 8 });
    expect(byName.get('momentum')).toMatchObject({ dtype: 'Float64', shape: [], bytes: 8 });
    expect(byName.get('conv1.weight')).toMatchObject({ dtype: 'Float32', shape: [6, 1, 5, 5] });
    expect(lenet.tensors.filter((t) => t.name.startsWith('moments.')).length).toBe(8);

    const mlp = (await inspectWeights(fixture('single/example_net_10000.ckpt'))) as CkptJson;
    const m = new Map(mlp.tensors.map((t) => [t.name, t]));
    expect(m.get('optimizer.global_step')).toMatchObject({ dtype: 'Int32', shape: [1], bytes: 4 });
    for (const n of ['optimizer.learning_rate', 'optimizer.beta1_power', 'optimizer.beta2_power']) {
      expect(m.get(n)).toMatchObject({ dtype: 'Float32', shape: [], bytes: 4 });
    }
    expect(mlp.tensors.filter((t) => t.name.startsWith('optimizer.moment1.')).length).toBe(6);
  });

  it('human table and --tensor statistics (CLI)', async () => {
    const r = await runCli(['inspect', fixture('single/checkpoint_lenet-10_1875.ckpt')]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/checkpoint .*: 18 tensors/);
    expect(r.stdout).toMatch(/learning_rate\s+Float64\s+\[\]\s+1\s+8/);
    const t = await runCli(['inspect', fixture('single/checkpoint_lenet-10_1875.ckpt'), '--tensor', 'momentum', '--json']);
    expect(t.exitCode, t.stderr).toBe(0);
    const p = JSON.parse(t.stdout) as { kind: string; head: number[]; stats: { count: number; min: number; max: number } };
    expect(p.kind).toBe('tensor');
    expect(p.stats.count).toBe(1);
    expect(p.head.length).toBe(1);
    expect(p.stats.min).toBe(p.head[0]);
  });
});

async function makeCkpt(path: string, tensors: Array<[SinkTensor, Uint8Array]>, crc = false): Promise<void> {
  const sink = await createCheckpointSink(path, { crc });
  for (const [t, d] of tensors) {
    await sink.beginTensor(t);
    await sink.write(d);
    await sink.endTensor();
  }
  await sink.close();
}

describe('detection and inspect on generated files', () => {
  it('detects every kind by content, whatever the file is called', async () => {
    const ck = join(dir, 'weights.bin');
    await makeCkpt(ck, [[{ name: 'a', dtype: 'Float32', shape: [2], byteLength: 8 }, new Uint8Array(8)]]);
    const st = join(dir, 'model.ckpt');
    const sink = await createWeightsSink(st, 'safetensors', [{ name: 'a', dtype: 'Float16', shape: [3], byteLength: 6 }], {
      metadata: { format: 'ms' },
    });
    await sink.beginTensor({ name: 'a', dtype: 'Float16', shape: [3], byteLength: 6 });
    await sink.write(new Uint8Array(6));
    await sink.endTensor();
    await sink.close();
    const idx = join(dir, 'model.safetensors.index.json');
    await writeFile(idx, JSON.stringify({ metadata: { total_size: 6 }, weight_map: { a: 'model.ckpt' } }));
    const sj = join(dir, 'strategy.json');
    await writeFile(sj, JSON.stringify({ current_stage: 1, parallel_layout_item: {}, parallel_strategy_item: {} }));
    const sp = join(dir, 'strategy.pb');
    await writeFile(sp, Buffer.from([0x08, 0x01]));
    const enc = join(dir, 'enc.ckpt');
    const eb = Buffer.alloc(40);
    eb.writeUInt32LE(0x7f3a5ed8, 0);
    await writeFile(enc, eb);
    const junk = join(dir, 'junk.ckpt');
    await writeFile(junk, 'hello');
    const uni = join(dir, 'unified');
    await mkdir(uni);
    await writeFile(join(uni, 'param_name_map.json'), JSON.stringify({ metadata: { total_size: 6 }, weight_map: {} }));
    const dist = join(dir, 'dist');
    await mkdir(join(dist, 'rank_0'), { recursive: true });
    await mkdir(join(dist, 'rank_10'), { recursive: true });
    await mkdir(join(dist, 'rank_2'), { recursive: true });
    for (const n of ['net-1_10.ckpt', 'net-2_5.ckpt', 'net-1_90.ckpt']) {
      await makeCkpt(join(dist, 'rank_0', n), [[{ name: 'a', dtype: 'Int8', shape: [1], byteLength: 1 }, new Uint8Array(1)]]);
    }
    await makeCkpt(join(dist, 'rank_10', 'checkpoint_10.ckpt'), [[{ name: 'a', dtype: 'Int8', shape: [1], byteLength: 1 }, new Uint8Array(1)]]);
    await writeFile(join(dist, 'rank_10', 'strategy.ckpt'), Buffer.from([0x08, 0x01]));

    expect(await detectKind(ck)).toBe('checkpoint');
    expect(await detectKind(st)).toBe('safetensors');
    expect(await detectKind(idx)).toBe('safetensors-index');
    expect(await detectKind(sj)).toBe('strategy-json');
    expect(await detectKind(sp)).toBe('strategy');
    expect(await detectKind(enc)).toBe('encrypted');
    expect(await detectKind(junk)).toBe('unknown');
    expect(await detectKind(uni)).toBe('unified');
    expect(await detectKind(dist)).toBe('distributed');
    expect(await detectKind(dir)).toBe('unknown');
    await expect(detectKind(join(dir, 'missing'))).rejects.toBeInstanceOf(InputError);
    // a rank tree with a gap is refused, naming the missing folder
    await expect(inspectWeights(dist)).rejects.toThrow(/rank_1 is missing/);

    // openWeights dispatches by content
    const s1 = await openWeights(st);
    expect(s1.entries().map((e) => [e.name, e.dtype, e.shape])).toEqual([['a', 'Float16', [3]]]);
    await s1.close();
    const s2 = await openWeights(ck);
    expect(s2.entries().map((e) => e.name)).toEqual(['a']);
    await s2.close();
    await expect(openWeights(sp)).rejects.toThrow(/strategy file/);
    await expect(openWeights(enc)).rejects.toThrow(/encrypted/);

    const rep = await inspectWeights(st);
    expect(rep).toEqual({ kind: 'safetensors', metadata: { format: 'ms' }, tensors: [{ name: 'a', dtype: 'Float16', shape: [3], bytes: 6 }] });
    const repIdx = await inspectWeights(idx);
    expect(repIdx.kind).toBe('safetensors');
  });

  it('previews values and statistics streaming in pieces; str text', async () => {
    const path = join(dir, 'values.ckpt');
    const vals = new Float32Array(1000);
    for (let i = 0; i < vals.length; i++) vals[i] = i - 100;
    vals[3] = NaN;
    vals[500] = Infinity;
    vals[501] = -Infinity;
    const bf = fromFloat32(vals, 'BFloat16');
    const text = 'step=42 ✓';
    const t32 = new Uint8Array([...text].length * 4);
    [...text].forEach((c, i) => new DataView(t32.buffer).setUint32(i * 4, c.codePointAt(0) as number, true));
    await makeCkpt(path, [
      [{ name: 'v', dtype: 'BFloat16', shape: [10, 100], byteLength: bf.byteLength }, bf],
      [{ name: 'note', dtype: 'str', shape: [], byteLength: t32.byteLength }, t32],
    ]);
    const src = await openWeights(path);
    try {
      const p = await previewTensor(src, 'v', { edge: 4, pieceBytes: 64 });
      expect(p.head.slice(0, 3)).toEqual([-100, -99, -98]);
      expect(Number.isNaN(p.head[3])).toBe(true);
      expect(p.tail).toEqual([896, 896, 896, 900]); // bf16 rounding of 896..899
      expect(p.stats).toMatchObject({ count: 1000, nan: 1, inf: 2, min: -100 });
      expect(p.stats?.max).toBe(900);
      const n = await previewTensor(src, 'note');
      expect(n.text).toBe(text);
      await expect(previewTensor(src, 'nope')).rejects.toBeInstanceOf(InputError);
    } finally {
      await src.close();
    }
  });

  it('CLI: bad inputs exit 2 with one line; the CRC trailer is reported', async () => {
    const enc = join(dir, 'e.ckpt');
    const eb = Buffer.alloc(40);
    eb.writeUInt32LE(0x7f3a5ed9, 0);
    await writeFile(enc, eb);
    const r1 = await runCli(['inspect', enc]);
    expect(r1.exitCode).toBe(2);
    expect(r1.stderr.trim().split('\n')).toHaveLength(1);
    expect(r1.stderr).toContain('encrypted checkpoint (AES-CBC)');

    const trunc = join(dir, 't.ckpt');
    await writeFile(trunc, Buffer.from([0x0a, 0x40, 0x0a, 0x01, 0x61]));
    const r2 = await runCli(['inspect', trunc, '--json']);
    expect(r2.exitCode).toBe(2);
    expect(r2.stdout).toBe('');
    expect(r2.stderr).toMatch(/t\.ckpt, byte 1: .*runs past the end/);
    expect(r2.stderr).not.toMatch(/\n\s+at /);

    const crc = join(dir, 'crc.ckpt');
    await makeCkpt(crc, [[{ name: 'a', dtype: 'Float32', shape: [4], byteLength: 16 }, new Uint8Array(16).fill(7)]], true);
    expect(((await inspectWeights(crc, { verifyCrc: true })) as CkptJson).crc).toEqual({ present: true, valid: true });
    expect(((await inspectWeights(crc)) as CkptJson).crc).toEqual({ present: true, valid: null });
    const raw = await readFile(crc);
    raw[raw.byteLength - 20] = (raw[raw.byteLength - 20] as number) ^ 1; // a content byte
    await writeFile(crc, raw);
    const bad = await runCli(['inspect', crc, '--json', '--verify_crc']);
    expect(bad.exitCode).toBe(2);
    expect((JSON.parse(bad.stdout) as CkptJson).crc).toEqual({ present: true, valid: false });
    expect(bad.stderr).toContain('crc_num trailer does not match');
  });
});
