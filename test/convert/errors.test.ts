import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertWeights, loadConverterModule, type ConvertWeightsRequest } from '../../plugin/convert/index.js';
import { InputError, exitCodeOf } from '../../plugin/errors.js';
import { DEEPSEEK_CONFIG, LLAMA_CONFIG, MIXTRAL_CONFIG, deepseekHf, llamaHf, makeTensors, mixtralHf, writeHfFolder, writeSafetensors } from './hf.js';

let dir: string;
let good: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-convert-err-'));
  good = join(dir, 'good');
  await writeHfFolder(good, LLAMA_CONFIG, makeTensors(llamaHf(), 41));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function inputError(req: ConvertWeightsRequest): Promise<string> {
  try {
    await convertWeights(req);
  } catch (err) {
    expect(err).toBeInstanceOf(InputError);
    expect(exitCodeOf(err)).toBe(2);
    return (err as Error).message;
  }
  throw new Error('expected an InputError');
}

describe('bad input: InputError (exit 2), nothing left behind', () => {
  it('folders without config.json or weights, .bin only, an index naming missing shards', async () => {
    const noCfg = join(dir, 'nocfg');
    await mkdir(noCfg);
    await writeSafetensors(join(noCfg, 'model.safetensors'), makeTensors(llamaHf(), 1));
    const noW = join(dir, 'noweights');
    await mkdir(noW);
    await writeFile(join(noW, 'config.json'), JSON.stringify(LLAMA_CONFIG));
    const bin = join(dir, 'bin');
    await mkdir(bin);
    await writeFile(join(bin, 'config.json'), JSON.stringify(LLAMA_CONFIG));
    await writeFile(join(bin, 'pytorch_model-00001-of-00002.bin'), 'x');
    const idx = join(dir, 'idx');
    await writeHfFolder(idx, LLAMA_CONFIG, makeTensors(llamaHf(), 2), 4);
    await rm(join(idx, 'model-00002-of-00004.safetensors'));
    await rm(join(idx, 'model-00004-of-00004.safetensors'));
    const cases: Array<[string, RegExp]> = [
      [noCfg, /config\.json/],
      [noW, /no weights/],
      [bin, /never read.*safetensors/],
      [join(dir, 'does-not-exist'), /no such file/],
      [idx, /2 missing shard\(s\): model-00002-of-00004\.safetensors, model-00004-of-00004\.safetensors/],
    ];
    const outDir = join(dir, 'out1');
    await mkdir(outDir);
    for (const [input, msg] of cases) {
      expect(await inputError({ model: 'llama', inputPath: input, outputPath: join(outDir, 'o.ckpt') }), input).toMatch(msg);
    }
    expect(await readdir(outDir)).toEqual([]);
  });

  it('config.json disagreeing with the tensors, or missing a key', async () => {
    const d = join(dir, 'cfg');
    await writeHfFolder(d, { ...LLAMA_CONFIG, intermediate_size: 32 }, makeTensors(llamaHf(), 3));
    const m = await inputError({ model: 'llama', inputPath: d, outputPath: join(dir, 'cfg.ckpt') });
    expect(m).toMatch(/model\.layers\.0\.mlp\.gate_proj\.weight is \[24,16\], expected \[32,16\]/);
    expect(m).toMatch(/model\.layers\.1\.mlp\.down_proj\.weight is \[16,24\], expected \[16,32\]/);
    const { hidden_size: _h, ...noHidden } = LLAMA_CONFIG;
    await writeFile(join(d, 'config.json'), JSON.stringify(noHidden));
    expect(await inputError({ model: 'llama', inputPath: d, outputPath: join(dir, 'cfg.ckpt') })).toMatch(/key 'hidden_size'/);
    expect(existsSync(join(dir, 'cfg.ckpt'))).toBe(false);
  });

  it('mixtral: expert count from config.json or --num-experts, and they must agree', async () => {
    const { num_local_experts: _e, ...noE } = MIXTRAL_CONFIG;
    const d = join(dir, 'mix');
    await writeHfFolder(d, noE, makeTensors(mixtralHf(), 4));
    expect(await inputError({ model: 'mixtral', inputPath: d, outputPath: join(dir, 'm.ckpt') })).toMatch(/--num-experts/);
    const ok = await convertWeights({ model: 'mixtral', inputPath: d, outputPath: join(dir, 'm.ckpt'), options: { numExperts: 10 } });
    expect(ok.tensorsOut).toBe(1 + 2 * 10 + 2);
    await writeFile(join(d, 'config.json'), JSON.stringify(MIXTRAL_CONFIG));
    expect(await inputError({ model: 'mixtral', inputPath: d, outputPath: join(dir, 'm2.ckpt'), options: { numExperts: 8 } })).toMatch(/disagrees/);
    // wrong count in config: the 10 experts of the file are then partly unexpected
    await writeFile(join(d, 'config.json'), JSON.stringify({ ...MIXTRAL_CONFIG, num_local_experts: 8 }));
    const m = await inputError({ model: 'mixtral', inputPath: d, outputPath: join(dir, 'm3.ckpt') });
    expect(m).toMatch(/unexpected 12: .*experts\.8\.w1\.weight.*experts\.9\.w3\.weight/);
  });

  it('FP8 weight without its scale_inv', async () => {
    const tensors = makeTensors(deepseekHf(), 5);
    const t = tensors.find((x) => x.name === 'model.layers.0.self_attn.o_proj.weight')!;
    t.dtype = 'F8_E4M3';
    t.data = t.data.subarray(0, t.data.byteLength / 2);
    const d = join(dir, 'fp8');
    await writeHfFolder(d, DEEPSEEK_CONFIG, tensors);
    expect(await inputError({ model: 'deepseek', inputPath: d, outputPath: join(dir, 'f.ckpt') })).toMatch(/o_proj\.weight_scale_inv/);
  });

  it('unknown model lists the known ones; a reverse that needs config.json names the values; output must not be the input', async () => {
    const m = await inputError({ model: 'bloom', inputPath: good, outputPath: join(dir, 'b.ckpt') });
    expect(m).toMatch(/deepseek.*glm-n.*llama.*mixtral.*qwen/);
    const ck = join(dir, 'rev.ckpt');
    await convertWeights({ model: 'llama', inputPath: good, outputPath: ck });
    // fused q/k/v cannot be split without the head counts, which only config.json gives
    const fused = join(dir, 'rev-fused.ckpt');
    await convertWeights({ model: 'llama', inputPath: good, outputPath: fused, options: { qkvConcat: true } });
    const need = await inputError({ model: 'llama', inputPath: fused, outputPath: join(dir, 'rev-out'), reversed: true, options: { qkvConcat: true } });
    expect(need).toMatch(/needs num_attention_heads, num_key_value_heads from the model's HuggingFace config\.json/);
    expect(existsSync(join(dir, 'rev-out'))).toBe(false);
    // mixtral reads its shapes from config.json only: every value it needs is named
    expect(await inputError({ model: 'mixtral', inputPath: ck, outputPath: join(dir, 'rev-out'), reversed: true })).toMatch(/needs hidden_size, .*num_hidden_layers/);
    expect(await inputError({ model: 'llama', inputPath: ck, outputPath: good, reversed: true, options: { configPath: join(good, 'config.json') } })).toMatch(/already holds/);
    expect(await inputError({ model: 'llama', inputPath: ck, outputPath: ck })).toMatch(/input/);
  });

  it('reverse: an MS checkpoint of another model lists missing and unexpected tensors; no folder created', async () => {
    const ck = join(dir, 'llama-for-mixtral.ckpt');
    await convertWeights({ model: 'llama', inputPath: good, outputPath: ck });
    await writeFile(join(dir, 'config.json'), JSON.stringify(MIXTRAL_CONFIG));
    const out = join(dir, 'wrong-out');
    const m = await inputError({ model: 'mixtral', inputPath: ck, outputPath: out, reversed: true, options: { configPath: join(dir, 'config.json') } });
    expect(m).toMatch(/missing \d+: .*feed_forward\.ffn\.w1\.weight/);
    expect(m).toMatch(/unexpected \d+: .*feed_forward\.w1\.weight/);
    expect(existsSync(out)).toBe(false);
  });

  it('a converter module that cannot be loaded or registers nothing', async () => {
    await expect(loadConverterModule(join(dir, 'nope.mjs'))).rejects.toBeInstanceOf(InputError);
    const empty = join(dir, 'empty.mjs');
    await writeFile(empty, 'export const x = 1;\n');
    await expect(loadConverterModule(empty)).rejects.toThrow(/registered no model/);
  });
});
