import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertWeights } from '../../plugin/convert/index.js';
import { openCheckpoint } from '../../plugin/formats/ckpt/index.js';
import { openSafetensors } from '../../plugin/formats/safetensors/index.js';
import type { TensorSource } from '../../plugin/formats/types.js';
import {
  DEEPSEEK_CONFIG, GLM_CONFIG, LLAMA_CONFIG, MIXTRAL_CONFIG, QWEN_CONFIG, deepseekHf, deepseekMs, glmHf, glmMs, llamaHf, llamaMs,
  makeTensors, mixtralHf, mixtralMs, type HfTensor, type Spec, writeHfFolder,
} from './hf.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-convert-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function readAll(src: TensorSource, name: string): Promise<Uint8Array> {
  const e = src.entry(name);
  if (e === undefined) throw new Error(`no ${name}`);
  const buf = new Uint8Array(e.byteLength);
  await src.readBytes(name, 0, e.byteLength, buf, 0);
  return buf;
}

const ST_TO_MS: Record<string, string> = { BF16: 'BFloat16', F16: 'Float16', F32: 'Float32', F64: 'Float64' };

function sortedSpecs(s: readonly Spec[]): Array<[string, number[]]> {
  return [...s].map(([n, sh]): [string, number[]] => [n, [...sh]]).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/** Convert there and back; assert the MS side's names/shapes and a bit-exact HF round trip. */
async function roundTrip(
  name: string, model: string, config: object, tensors: HfTensor[], msSpecs: readonly Spec[],
  opts: { shards?: number; qkvConcat?: boolean; maxShardSize?: number; extra?: Record<string, string | boolean> } = {},
): Promise<{ ms: TensorSource; back: TensorSource; hfDir: string; backDir: string; ckpt: string }> {
  const hfDir = join(dir, `${name}-hf`);
  await writeHfFolder(hfDir, config, tensors, opts.shards ?? 1);
  const ckpt = join(dir, `${name}.ckpt`);
  const options = {
    ...(opts.qkvConcat !== undefined ? { qkvConcat: opts.qkvConcat } : {}),
    ...(opts.extra !== undefined ? { extra: opts.extra } : {}),
  };
  const fwd = await convertWeights({ model, inputPath: hfDir, outputPath: ckpt, options });
  expect(fwd.files).toEqual([ckpt]);
  const ms = await openCheckpoint(ckpt);
  const got = ms.entries().map((e): [string, number[]] => [e.name, [...e.shape]]);
  expect(sortedSpecs(got)).toEqual(sortedSpecs(msSpecs));
  for (const e of ms.entries()) expect(e.dtype).toBe('BFloat16');
  const backDir = join(dir, `${name}-back`);
  await convertWeights({
    model, inputPath: ckpt, outputPath: backDir, reversed: true,
    options: { ...options, configPath: join(hfDir, 'config.json'), ...(opts.maxShardSize !== undefined ? { maxShardSize: opts.maxShardSize } : {}) },
  });
  const back = await openSafetensors(join(backDir, 'model.safetensors.index.json'));
  expect(back.entries().map((e) => e.name).sort()).toEqual(tensors.map((t) => t.name).sort());
  for (const t of tensors) {
    const e = back.entry(t.name);
    expect(e?.dtype, t.name).toBe(ST_TO_MS[t.dtype]);
    expect(e?.shape, t.name).toEqual(t.shape);
    expect(Buffer.from(await readAll(back, t.name)).equals(Buffer.from(t.data)), t.name).toBe(true);
  }
  expect(JSON.parse(await readFile(join(backDir, 'config.json'), 'utf8'))).toEqual(config);
  return { ms, back, hfDir, backDir, ckpt };
}

function byName(tensors: HfTensor[], name: string): Uint8Array {
  const t = tensors.find((x) => x.name === name);
  if (t === undefined) throw new Error(name);
  return t.data;
}

describe('HF <-> MindSpore round trips, one per model', () => {
  it('llama (Llama 3.1): spec names, bit-exact back', async () => {
    const tensors = makeTensors(llamaHf(), 1);
    const { ms, back } = await roundTrip('llama', 'llama', LLAMA_CONFIG, tensors, llamaMs());
    expect(Buffer.from(await readAll(ms, 'model.layers.1.feed_forward.w1.weight')).equals(Buffer.from(byName(tensors, 'model.layers.1.mlp.gate_proj.weight')))).toBe(true);
    await ms.close();
    await back.close();
  });

  it('llama with --qkv-concat: Megatron w_qkv and interleaved w_gate_hidden, and back', async () => {
    const tensors = makeTensors(llamaHf(), 2);
    const c = LLAMA_CONFIG;
    const fused = llamaMs().filter(([n]) => !/attention\.w[qkv]\.|feed_forward\.w[13]\./.test(n));
    for (let i = 0; i < c.num_hidden_layers; i++) {
      fused.push([`model.layers.${i}.attention.w_qkv.weight`, [(c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim, c.hidden_size]]);
      fused.push([`model.layers.${i}.feed_forward.w_gate_hidden.weight`, [2 * c.intermediate_size, c.hidden_size]]);
    }
    const { ms, back } = await roundTrip('llama-qkv', 'llama', c, tensors, fused, { qkvConcat: true });
    // layout: per kv group g: q rows of heads 2g, 2g+1, then k_g, then v_g (rows of H bf16 = 32 bytes)
    const row = c.hidden_size * 2;
    const hd = c.head_dim;
    const q = byName(tensors, 'model.layers.0.self_attn.q_proj.weight');
    const k = byName(tensors, 'model.layers.0.self_attn.k_proj.weight');
    const v = byName(tensors, 'model.layers.0.self_attn.v_proj.weight');
    const want = Buffer.concat([
      q.subarray(0, 2 * hd * row), k.subarray(0, hd * row), v.subarray(0, hd * row),
      q.subarray(2 * hd * row, 4 * hd * row), k.subarray(hd * row, 2 * hd * row), v.subarray(hd * row, 2 * hd * row),
    ]);
    expect(Buffer.from(await readAll(ms, 'model.layers.0.attention.w_qkv.weight')).equals(want)).toBe(true);
    const g = byName(tensors, 'model.layers.0.mlp.gate_proj.weight');
    const u = byName(tensors, 'model.layers.0.mlp.up_proj.weight');
    const gh = await readAll(ms, 'model.layers.0.feed_forward.w_gate_hidden.weight');
    expect(Buffer.from(gh.subarray(0, row)).equals(Buffer.from(g.subarray(0, row)))).toBe(true);
    expect(Buffer.from(gh.subarray(row, 2 * row)).equals(Buffer.from(u.subarray(0, row)))).toBe(true);
    expect(Buffer.from(gh.subarray(2 * row, 3 * row)).equals(Buffer.from(g.subarray(row, 2 * row)))).toBe(true);
    await ms.close();
    await back.close();
  });

  it('qwen (Qwen2.5, q/k/v biases, tied embeddings: no lm_head)', async () => {
    const tensors = makeTensors(llamaHf(QWEN_CONFIG, true), 3);
    const { ms, back } = await roundTrip('qwen', 'qwen', QWEN_CONFIG, tensors, llamaMs(QWEN_CONFIG, true));
    expect(ms.entry('lm_head.weight')).toBeUndefined();
    await ms.close();
    await back.close();
  });

  it('qwen with --qkv-concat fuses the biases too', async () => {
    const tensors = makeTensors(llamaHf(QWEN_CONFIG, true), 4);
    const c = QWEN_CONFIG;
    const fused = llamaMs(c, true).filter(([n]) => !/attention\.w[qkv]\.|feed_forward\.w[13]\./.test(n));
    for (let i = 0; i < c.num_hidden_layers; i++) {
      const rows = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim;
      fused.push([`model.layers.${i}.attention.w_qkv.weight`, [rows, c.hidden_size]], [`model.layers.${i}.attention.w_qkv.bias`, [rows]]);
      fused.push([`model.layers.${i}.feed_forward.w_gate_hidden.weight`, [2 * c.intermediate_size, c.hidden_size]]);
    }
    const { ms, back } = await roundTrip('qwen-qkv', 'qwen2_5', c, tensors, fused, { qkvConcat: true });
    await ms.close();
    await back.close();
  });

  it('glm-n (GLM4, ChatGLM format): only the embedding renamed by default', async () => {
    const tensors = makeTensors(glmHf(), 5);
    const { ms, back } = await roundTrip('glm', 'glm-n', GLM_CONFIG, tensors, glmMs());
    await ms.close();
    await back.close();
  });

  it('glm-n with --qkv-concat false splits query_key_value into wq/wk/wv', async () => {
    const tensors = makeTensors(glmHf(), 6);
    const { ms, back } = await roundTrip('glm-split', 'glm4', GLM_CONFIG, tensors, glmMs(GLM_CONFIG, true), { qkvConcat: false });
    const qkv = byName(tensors, 'transformer.encoder.layers.1.self_attention.query_key_value.bias');
    const wk = await readAll(ms, 'transformer.encoder.layers.1.self_attention.wk.bias');
    expect(Buffer.from(wk).equals(Buffer.from(qkv.subarray(16 * 2, 24 * 2)))).toBe(true);
    await ms.close();
    await back.close();
  });

  it('mixtral: 10 experts (from config.json) stacked [E, out, in] in numeric order', async () => {
    const tensors = makeTensors(mixtralHf(), 7);
    const { ms, back } = await roundTrip('mixtral', 'mixtral', MIXTRAL_CONFIG, tensors, mixtralMs());
    const w2 = await readAll(ms, 'model.layers.1.feed_forward.ffn.w2.weight');
    const per = 16 * 24 * 2;
    for (const e of [0, 2, 9]) {
      const want = byName(tensors, `model.layers.1.block_sparse_moe.experts.${e}.w2.weight`);
      expect(Buffer.from(w2.subarray(e * per, (e + 1) * per)).equals(Buffer.from(want))).toBe(true);
    }
    await ms.close();
    await back.close();
  });

  it('deepseek (V3): MLA splits with de-interleaved rope rows, experts, router bias, MTP; sharded output', async () => {
    const specs = deepseekHf();
    const tensors = makeTensors(specs, 8, (n) => (n.endsWith('e_score_correction_bias') ? 'F32' : 'BF16'));
    // the MTP layer's embed/head are copies of the main ones in real checkpoints
    const L = DEEPSEEK_CONFIG.num_hidden_layers;
    const set = (n: string, from: string): void => {
      const t = tensors.find((x) => x.name === n);
      if (t) t.data = byName(tensors, from);
    };
    set(`model.layers.${L}.embed_tokens.weight`, 'model.embed_tokens.weight');
    set(`model.layers.${L}.shared_head.head.weight`, 'lm_head.weight');
    const hfDir = join(dir, 'ds-hf');
    await writeHfFolder(hfDir, DEEPSEEK_CONFIG, tensors, 3);
    const ckpt = join(dir, 'ds.ckpt');
    await convertWeights({ model: 'deepseekv3', inputPath: hfDir, outputPath: ckpt });
    const ms = await openCheckpoint(ckpt);
    expect(sortedSpecs(ms.entries().map((e): Spec => [e.name, [...e.shape]]))).toEqual(sortedSpecs(deepseekMs()));
    expect(ms.entry('model.layers.1.feed_forward.routed_experts.router.router.topk_bias')?.dtype).toBe('Float32');
    // q_b_proj rows per head: [nope 4 | rope 4]; l2q_pe_proj head h = rope rows 0,2,1,3
    const row = DEEPSEEK_CONFIG.q_lora_rank * 2;
    const qb = byName(tensors, 'model.layers.0.self_attn.q_b_proj.weight');
    const pe = await readAll(ms, 'model.layers.0.attention.l2q_pe_proj.weight');
    const nope = await readAll(ms, 'model.layers.0.attention.l2q_nope_proj.weight');
    const qbRow = (r: number): Buffer => Buffer.from(qb.subarray(r * row, (r + 1) * row));
    const order = [4, 6, 5, 7, 12, 14, 13, 15];
    order.forEach((r, i) => expect(Buffer.from(pe.subarray(i * row, (i + 1) * row)).equals(qbRow(r))).toBe(true));
    [0, 1, 2, 3, 8, 9, 10, 11].forEach((r, i) => expect(Buffer.from(nope.subarray(i * row, (i + 1) * row)).equals(qbRow(r))).toBe(true));
    await ms.close();
    // back, in several shards of at most 4 KB
    const backDir = join(dir, 'ds-back');
    const res = await convertWeights({ model: 'deepseek', inputPath: ckpt, outputPath: backDir, reversed: true, options: { configPath: join(hfDir, 'config.json'), maxShardSize: 4096 } });
    const shards = (await readdir(backDir)).filter((f) => f.endsWith('.safetensors')).sort();
    expect(shards.length).toBeGreaterThan(3);
    expect(shards[0]).toBe(`model-00001-of-${String(shards.length).padStart(5, '0')}.safetensors`);
    expect(res.files.length).toBe(shards.length + 2);
    const index = JSON.parse(await readFile(join(backDir, 'model.safetensors.index.json'), 'utf8')) as { metadata: { total_size: number }; weight_map: Record<string, string> };
    expect(Object.keys(index.weight_map).sort()).toEqual(tensors.map((t) => t.name).sort());
    expect(index.metadata.total_size).toBe(tensors.reduce((s, t) => s + t.data.byteLength, 0));
    const back = await openSafetensors(join(backDir, 'model.safetensors.index.json'));
    for (const t of tensors) {
      expect(back.entry(t.name)?.dtype, t.name).toBe(ST_TO_MS[t.dtype]);
      expect(Buffer.from(await readAll(back, t.name)).equals(Buffer.from(t.data)), t.name).toBe(true);
    }
    await back.close();
  });

  it('sharded HF input (index + 4 shards) to a MindSpore safetensors file and back', async () => {
    const tensors = makeTensors(llamaHf(), 9);
    const hfDir = join(dir, 'sharded-hf');
    await writeHfFolder(hfDir, LLAMA_CONFIG, tensors, 4);
    const out = join(dir, 'sharded-ms.safetensors');
    await convertWeights({ model: 'llama', inputPath: join(hfDir, 'model.safetensors.index.json'), outputPath: out });
    const ms = await openSafetensors(out);
    expect(sortedSpecs(ms.entries().map((e): Spec => [e.name, [...e.shape]]))).toEqual(sortedSpecs(llamaMs()));
    await ms.close();
    await writeFile(join(dir, 'config.json'), JSON.stringify(LLAMA_CONFIG));
    const backDir = join(dir, 'sharded-back');
    await convertWeights({ model: 'llama', inputPath: out, outputPath: backDir, reversed: true, options: { maxShardSize: 2000 } });
    const back = await openSafetensors(join(backDir, 'model.safetensors.index.json'));
    expect((await readdir(backDir)).filter((f) => f.endsWith('.safetensors')).length).toBeGreaterThan(4);
    for (const t of tensors) expect(Buffer.from(await readAll(back, t.name)).equals(Buffer.from(t.data)), t.name).toBe(true);
    await back.close();
  });
});
