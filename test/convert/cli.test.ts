import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardedWriter, type ConvertPlannedTensor } from '../../plugin/convert/engine.js';
import { runCli } from '../helpers/cli.js';
import { LLAMA_CONFIG, llamaHf, makeTensors, writeHfFolder } from './hf.js';

let dir: string;
let good: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-convert-cli-'));
  good = join(dir, 'good');
  await writeHfFolder(good, LLAMA_CONFIG, makeTensors(llamaHf(), 31));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function filesIn(d: string): Promise<string[]> {
  return existsSync(d) ? (await readdir(d)).sort() : [];
}

describe('msckpt convert (CLI)', () => {
  it('--list names every model; --json gives one object', async () => {
    const j = await runCli(['convert', '--list', '--json']);
    const parsed = JSON.parse(j.stdout) as { models: Array<{ name: string }> };
    expect(parsed.models.map((m) => m.name).sort()).toEqual(['deepseek', 'glm-n', 'llama', 'mixtral', 'qwen']);
  });

  it('converts with the Python tool\'s snake_case flags, both ways, --json', async () => {
    const out = join(dir, 'cli.ckpt');
    const r = await runCli(['convert', '--model', 'llama', '--input_path', good, '--output_path', out, '--dtype', 'fp16', '--json']);
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    const res = JSON.parse(r.stdout) as { tensorsOut: number; dtype: string; files: string[] };
    expect(res.tensorsOut).toBe(llamaHf().length);
    expect(res.dtype).toBe('Float16');
    expect(existsSync(out)).toBe(true);
    const back = join(dir, 'cli-back');
    const b = await runCli(['convert', '--model', 'llama', '--reversed', '--input-path', out, '--output-path', back, '--config', join(good, 'config.json'), '--max_shard_size', '2KB']);
    expect(b.exitCode).toBe(0);
    const files = await filesIn(back);
    expect(files).toContain('model.safetensors.index.json');
    expect(files).toContain('config.json');
    expect(files.filter((f) => f.endsWith('.safetensors')).length).toBeGreaterThan(1);
  });

  it('unknown model: exit 2 listing the known ones, nothing written', async () => {
    const out = join(dir, 'x.ckpt');
    const r = await runCli(['convert', '--model', 'gpt5', '--input-path', good, '--output-path', out]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/gpt5/);
    for (const m of ['llama', 'glm-n', 'qwen', 'mixtral', 'deepseek']) expect(r.stderr).toContain(m);
    expect(existsSync(out)).toBe(false);
  });

  it('missing, unexpected and mis-shaped tensors are all listed at once; no output or temp file left', async () => {
    const bad = join(dir, 'badtensors');
    const tensors = makeTensors(llamaHf(), 3).filter((t) => t.name !== 'model.layers.1.mlp.up_proj.weight' && t.name !== 'lm_head.weight');
    tensors.push(makeTensors([['model.layers.0.self_attn.rotary_emb.inv_freq', [2]], ['extra.thing', [3]]], 4)[0]!, makeTensors([['extra.thing', [3]]], 5)[0]!);
    const q = tensors.find((t) => t.name === 'model.layers.0.self_attn.k_proj.weight')!;
    q.shape = [4, 32];
    const outDir = join(dir, 'outdir');
    await mkdir(outDir);
    await writeHfFolder(bad, LLAMA_CONFIG, tensors);
    const out = join(outDir, 'bad.ckpt');
    const r = await runCli(['convert', '--model', 'llama', '--input-path', bad, '--output-path', out]);
    expect(r.exitCode).toBe(2);
    for (const n of ['model.layers.1.mlp.up_proj.weight', 'lm_head.weight', 'model.layers.0.self_attn.rotary_emb.inv_freq', 'extra.thing', 'model.layers.0.self_attn.k_proj.weight is [4,32], expected [8,16]']) {
      expect(r.stderr).toContain(n);
    }
    expect(await filesIn(outDir)).toEqual([]);
  });

  it('.bin pickles are refused (exit 2, pointing at safetensors)', async () => {
    const bin = join(dir, 'bin');
    await mkdir(bin);
    await writeFile(join(bin, 'config.json'), JSON.stringify(LLAMA_CONFIG));
    await writeFile(join(bin, 'pytorch_model.bin'), 'not really a pickle');
    const r = await runCli(['convert', '--model', 'llama', '--input-path', bin, '--output-path', join(dir, 'bin.ckpt')]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/safetensors/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(existsSync(join(dir, 'bin.ckpt'))).toBe(false);
  });

  it('--converter adds a model from a user module (declarative layout for the shared engine)', async () => {
    const mod = join(dir, 'my-model.mjs');
    await writeFile(mod, `
export const model = {
  name: 'tiny-mlp',
  description: 'two linears',
  layout(config) {
    const h = config.hidden;
    return { links: [
      { hf: [{ name: 'up.weight', shape: [h, h] }], ms: [{ name: 'net.up.w', shape: [h, h] }], rowElements: h, segments: [[{ from: 0, row: 0, rows: h }]] },
      { hf: [{ name: 'a.weight', shape: [h, h] }, { name: 'b.weight', shape: [h, h] }], ms: [{ name: 'net.ab.w', shape: [2 * h, h] }], rowElements: h,
        segments: [[{ from: 0, row: 0, rows: h }, { from: 1, row: 0, rows: h }]] },
    ] };
  },
};
`);
    const l = await runCli(['convert', '--converter', mod, '--list']);
    expect(l.exitCode).toBe(0);
    expect(l.stdout).toContain('tiny-mlp');
    const hf = join(dir, 'tiny');
    await writeHfFolder(hf, { hidden: 4 }, makeTensors([['up.weight', [4, 4]], ['a.weight', [4, 4]], ['b.weight', [4, 4]]], 6, () => 'F32'));
    const r = await runCli(['convert', '--converter', mod, '--model', 'tiny-mlp', '--input-path', hf, '--output-path', join(dir, 'tiny.ckpt'), '--json']);
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    expect((JSON.parse(r.stdout) as { tensorsOut: number }).tensorsOut).toBe(2);
  });
});

describe('sharded output cleanup', () => {
  it('abort removes the shards already completed and the one being written', async () => {
    const out = join(dir, 'abort');
    await mkdir(out);
    const t = (i: number): ConvertPlannedTensor => ({ name: `t${i}`, shape: [256], from: 'Float32', dtype: 'Float32', byteLength: 1024, parts: [] });
    const plan = [t(0), t(1), t(2), t(3)];
    const w = new ShardedWriter(out, plan, 1024);
    for (const p of plan.slice(0, 3)) {
      await w.begin(p);
      await w.write(new Uint8Array(1024));
      await w.end();
    }
    await w.begin(plan[3]!);
    expect((await readdir(out)).some((f) => f.startsWith('model-00001'))).toBe(true);
    await w.abort();
    expect(await readdir(out)).toEqual([]);
  });
});
