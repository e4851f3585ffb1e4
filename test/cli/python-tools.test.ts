/**
 * The command lines of mindformers' Python tools, pasted with `msckpt <command>` in place of
 * `python .../<tool>.py`, on real files: what the tool writes, where it writes it.
 */
import { copyFile, mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { transformCheckpoints } from '../../plugin/transform/index.js';
import { runCli } from '../helpers/cli.js';
import { describeFixtures, fixture } from '../helpers/fixtures.js';
import { layout, llamaTp2Layouts, readCkpt, saveStrategy, withTempDir, writeCkpt, type GenTensor } from '../transform/helpers.js';
import { LLAMA_CONFIG, llamaHf, makeTensors, writeHfFolder } from '../convert/hf.js';
import { randomTensor, readCkpt as readLoraCkpt, rng, writeCkpt as writeLoraCkpt } from '../lora/helpers.js';


const bytes = (p: string): Promise<Buffer> => readFile(p);

describeFixtures('transform_checkpoint.py and .sh command lines on the real llama2 tp2 checkpoint', () => {
  it('4->1 and 1->N as documented: <dst>/<name>/rank_N/, byte-identical to the real slices; the strategy folder is left alone', async () => {
    await withTempDir(async (dir) => {
      const strategyDir = join(dir, 'output', 'strategy');
      await mkdir(strategyDir, { recursive: true });
      const strategy = await saveStrategy(join(strategyDir, 'ckpt_strategy_rank_0.ckpt'), llamaTp2Layouts());
      const src = fixture('llama2_tiny_tp2');
      // the doc's "4 -> 1" line, with `--dst_checkpoint` (argparse prefix of --dst_checkpoint_dir) and a trailing slash
      const merge = await runCli(['transform', `--src_checkpoint=${src}/`, `--src_strategy=${strategy}`, `--dst_checkpoint=${join(dir, 'to1')}/`]);
      expect(merge.exitCode, merge.stderr).toBe(0);
      expect(merge.stderr).toMatch(/transform_checkpoint\.py command line: writing .*to1\/llama2_tiny_tp2\/rank_N\/checkpoint_N\.ckpt/);
      const complete = join(dir, 'to1', 'llama2_tiny_tp2', 'rank_0', 'checkpoint_0.ckpt');
      expect((await readCkpt(complete)).get('model.layers.0.attention.wq.weight')?.shape).toEqual([40, 40]);

      // the doc's "1 -> 8" line: a complete file (name = its stem), a strategy folder
      const slice = await runCli(['transform', `--src_checkpoint=${complete}`, `--dst_checkpoint=${join(dir, 'to2')}`, `--dst_strategy=${strategyDir}/`]);
      expect(slice.exitCode, slice.stderr).toBe(0);
      for (const r of [0, 1]) {
        const got = await bytes(join(dir, 'to2', 'checkpoint_0', `rank_${r}`, `checkpoint_${r}.ckpt`));
        expect(got.equals(await bytes(join(src, `rank_${r}`, `checkpoint_${r}.ckpt`))), `rank ${r}`).toBe(true);
      }
      // the tool merges a strategy folder into it; msckpt merges in memory and leaves the folder as it was
      expect(await readdir(strategyDir)).toEqual(['ckpt_strategy_rank_0.ckpt']);

      // transform_checkpoint.sh's positional form, two processes: the same bytes, the same layout
      const sh = await runCli(['transform', complete, 'None', join(dir, 'sh'), strategy, '2', '2']);
      expect(sh.exitCode, sh.stderr).toBe(0);
      expect(sh.stderr).toMatch(/transform_checkpoint\.sh command line/);
      for (const r of [0, 1]) {
        const got = await bytes(join(dir, 'sh', 'checkpoint_0', `rank_${r}`, `checkpoint_${r}.ckpt`));
        expect(got.equals(await bytes(join(src, `rank_${r}`, `checkpoint_${r}.ckpt`)))).toBe(true);
      }
      // --output-layout msckpt overrides the dialect's layout
      const flat = await runCli(['transform', `--src_checkpoint=${complete}`, `--dst_checkpoint=${join(dir, 'flat')}`, `--dst_strategy=${strategy}`, '--output-layout', 'msckpt']);
      expect(flat.exitCode, flat.stderr).toBe(0);
      expect((await bytes(join(dir, 'flat', 'rank_1', 'checkpoint_1.ckpt'))).equals(await bytes(join(src, 'rank_1', 'checkpoint_1.ckpt')))).toBe(true);
    });
  });
});

function tensors(seed: number): GenTensor[] {
  const mk = (name: string, shape: number[]): GenTensor => {
    const data = new Uint8Array(shape.reduce((a, b) => a * b, 4));
    for (let i = 0; i < data.length; i++) data[i] = (i * 13 + seed * 5) & 255;
    return { name, dtype: 'Float32', shape, data };
  };
  return [mk('w1', [8, 4]), mk('w2', [4, 8])];
}

describe('transform_checkpoint.py: rank_id, world_size, transform_process_num, transform_by_rank', () => {
  it('chooses the destination ranks as TransformCkpt does; a quirky --transform_by_rank False is taken as false', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'model.v2.ckpt');
      await writeCkpt(src, tensors(3));
      const s4 = await saveStrategy(join(dir, 's4.ckpt'), [layout('w1', [4], [0, -1]), layout('w2', [4], [-1, 0])]);
      const ref = join(dir, 'ref');
      await transformCheckpoints({ srcCheckpoint: src, dstStrategy: s4, dstDir: ref, progress: false });
      const base = ['transform', '--src_checkpoint', src, '--dst_strategy', s4];
      const ranksIn = async (d: string): Promise<string[]> => (await readdir(d)).filter((n) => n.startsWith('rank_')).sort();

      // converter rank_id 2 of world_size 4 with 2 processes writes ranks 2 and 3 (name: the file's text up to its first dot)
      const two = await runCli([...base, '--dst_checkpoint_dir', join(dir, 'b'), '--rank_id', '2', '--world_size', '4', '--transform_process_num', '2']);
      expect(two.exitCode, two.stderr).toBe(0);
      expect(await ranksIn(join(dir, 'b', 'model'))).toEqual(['rank_2', 'rank_3']);
      expect((await bytes(join(dir, 'b', 'model', 'rank_3', 'checkpoint_3.ckpt'))).equals(await bytes(join(ref, 'rank_3', 'checkpoint_3.ckpt')))).toBe(true);

      // rank_id 1 is no converter: nothing to do, said in one line, exit 0
      const idle = await runCli([...base, '--dst_checkpoint_dir', join(dir, 'c'), '--rank_id', '1', '--world_size', '4', '--transform_process_num', '2']);
      expect(idle.exitCode, idle.stderr).toBe(0);
      expect(idle.stderr).toMatch(/rank_id 1 converts nothing: the converters .* are rank_id 0, 2/);
      await expect(stat(join(dir, 'c'))).rejects.toThrow();

      // type=bool reads "False" as true and would convert ranks 0-1 only; msckpt converts all 4 and says so
      const quirk = await runCli([...base, '--dst_checkpoint_dir', join(dir, 'd'), '--world_size', '2', '--transform_by_rank', 'False']);
      expect(quirk.exitCode, quirk.stderr).toBe(0);
      expect(quirk.stderr).toMatch(/--transform_by_rank False: taken as false/);
      expect(await ranksIn(join(dir, 'd', 'model'))).toEqual(['rank_0', 'rank_1', 'rank_2', 'rank_3']);

      // by rank with a world_size below the strategy's devices: ranks 0-1, and a note about the rest
      const part = await runCli([...base, '--dst_checkpoint_dir', join(dir, 'e'), '--world_size', '2', '--transform_by_rank', 'True']);
      expect(part.exitCode, part.stderr).toBe(0);
      expect(await ranksIn(join(dir, 'e', 'model'))).toEqual(['rank_0', 'rank_1']);
      expect(part.stderr).toMatch(/world_size 2 covers ranks 0-1 of the destination strategy's 4/);

      // the same command line through plan and rank-list
      const plan = await runCli(['plan', ...base.slice(1), '--rank_id', '2', '--world_size', '4', '--transform_process_num', '2', '--json']);
      expect(plan.exitCode, plan.stderr).toBe(0);
      expect((JSON.parse(plan.stdout) as { ranks: Array<{ rank: number }> }).ranks.map((r) => r.rank)).toEqual([2, 3]);

      // usage errors in the tool's terms
      const notDiv = await runCli([...base, '--world_size', '4', '--transform_process_num', '3']);
      expect(notDiv.exitCode).toBe(2);
      expect(notDiv.stderr).toMatch(/world_size 4 must be divisible by transform_process_num 3/);
      const shortSh = await runCli(['transform', src, 'None', join(dir, 'x'), s4, '4']);
      expect(shortSh.exitCode).toBe(2);
      expect(shortSh.stderr).toMatch(/takes 6 or 7 arguments, got 5: transform_checkpoint\.sh <src_ckpt>/);
      const mixed = await runCli(['transform', src, 'None', join(dir, 'x'), s4, '4', '2', '--src_checkpoint', src]);
      expect(mixed.exitCode).toBe(2);
      expect(mixed.stderr).toMatch(/either transform_checkpoint\.sh's positional form or flags/);
    });
  });

  it('a folder of complete .ckpt files is one job per file, as the tool does it', async () => {
    await withTempDir(async (dir) => {
      const folder = join(dir, 'complete');
      await mkdir(folder);
      await writeCkpt(join(folder, 'a.ckpt'), tensors(1));
      await writeCkpt(join(folder, 'b.ckpt'), tensors(2));
      const s2 = await saveStrategy(join(dir, 's2.ckpt'), [layout('w1', [2], [0, -1]), layout('w2', [2], [-1, 0])]);
      const r = await runCli(['transform', '--src_checkpoint', folder, '--dst_checkpoint', join(dir, 'out'), '--dst_strategy', s2]);
      expect(r.exitCode, r.stderr).toBe(0);
      expect((await readdir(join(dir, 'out'))).sort()).toEqual(['a', 'b']);
      const a1 = await readCkpt(join(dir, 'out', 'b', 'rank_1', 'checkpoint_1.ckpt'));
      expect(a1.get('w1')?.shape).toEqual([4, 4]);
    });
  });
});

describe('transform_ckpt_lora.py command line', () => {
  it('writes <dst>/merged_lora.ckpt (or .safetensors); refuses the silent scaling 1, zero and negative scalings', async () => {
    await withTempDir(async (dir) => {
      const rand = rng(5);
      const src = join(dir, 'lora.ckpt');
      await writeLoraCkpt(src, [
        randomTensor('m.q.weight', 'Float32', [6, 4], rand),
        randomTensor('m.q.mindpet_delta_lora_a', 'Float32', [2, 4], rand),
        randomTensor('m.q.mindpet_delta_lora_b', 'Float32', [6, 2], rand),
      ]);
      const line = ['lora-merge', '--src_ckpt_path_or_dir', src, '--dst_ckpt_dir', join(dir, 'out'), '--prefix', 'checkpoint_'];
      const ok = await runCli([...line, '--lora_scaling', '4/2']);
      expect(ok.exitCode, ok.stderr).toBe(0);
      expect(ok.stderr).toMatch(/transform_ckpt_lora\.py command line: writing .*out\/merged_lora\.ckpt/);
      expect(await readdir(join(dir, 'out'))).toEqual(['merged_lora.ckpt']);
      const ref = await runCli(['lora-merge', '--src-ckpt-path-or-dir', src, '--dst-ckpt-dir', join(dir, 'ref'), '--lora-scaling', '2']);
      expect(ref.exitCode, ref.stderr).toBe(0);
      expect((await bytes(join(dir, 'out', 'merged_lora.ckpt'))).equals(await bytes(join(dir, 'ref', 'rank_0', 'checkpoint_0.ckpt')))).toBe(true);
      // again: the result exists, nothing is replaced without --overwrite
      const again = await runCli([...line, '--lora_scaling', '2']);
      expect(again.exitCode).toBe(2);
      expect(again.stderr).toMatch(/merged_lora\.ckpt exists; pass --overwrite/);

      const st = await runCli([...line, '--dst_ckpt_dir', join(dir, 'st'), '--lora_scaling', '2', '--save_format', 'safetensors']);
      expect(st.exitCode, st.stderr).toBe(0);
      expect(await readdir(join(dir, 'st'))).toEqual(['merged_lora.safetensors']);
      const back = await runCli(['inspect', join(dir, 'st', 'merged_lora.safetensors'), '--json']);
      expect((JSON.parse(back.stdout) as { tensors: Array<{ name: string }> }).tensors.map((t) => t.name)).toEqual(['m.q.weight']);

      const none = await runCli([...line, '--dst_ckpt_dir', join(dir, 'n')]);
      expect(none.exitCode).toBe(2);
      expect(none.stderr).toMatch(/--lora_scaling not given: transform_ckpt_lora\.py would silently use 1/);
      for (const v of ['0', '-2', '0/8']) {
        const bad = await runCli(['lora-merge', '--src-ckpt-path-or-dir', src, '--dst-ckpt-dir', join(dir, 'z'), `--lora-scaling=${v}`]);
        expect(bad.exitCode, v).toBe(2);
        expect(bad.stderr).toMatch(/--lora-scaling gives the scaling -?0|--lora-scaling gives the scaling -2/);
        expect(bad.stderr).toMatch(/must be positive/);
      }
      await expect(stat(join(dir, 'z'))).rejects.toThrow();
      expect((await readLoraCkpt(join(dir, 'out', 'merged_lora.ckpt'))).map((t) => t.name)).toEqual(['m.q.weight']);
    });
  });
});

describe('convert_weight.py command lines', () => {
  it('forward and --reversed for llama without config.json; unknown options refused; glm4 reads its mindformers YAML', async () => {
    await withTempDir(async (dir) => {
      const hf = join(dir, 'hf');
      const hfTensors = makeTensors(llamaHf(), 7);
      await writeHfFolder(hf, LLAMA_CONFIG, hfTensors);
      const ms = join(dir, 'ms', 'llama.ckpt');
      await mkdir(join(dir, 'ms'));
      const fwd = await runCli(['convert', '--model', 'llama', '--input_path', hf, '--output_path', ms, '--dtype', 'bf16']);
      expect(fwd.exitCode, fwd.stderr).toBe(0);
      // reversed: no config.json beside the .ckpt, llama's names and shapes tell all
      const rev = await runCli(['convert', '--model', 'llama', '--input_path', ms, '--output_path', join(dir, 'back'), '--reversed']);
      expect(rev.exitCode, rev.stderr).toBe(0);
      const written = await readdir(join(dir, 'back'));
      expect(written).not.toContain('config.json');
      const shard = written.find((n) => n.endsWith('.safetensors')) as string;
      const back = await runCli(['inspect', join(dir, 'back', shard), '--json']);
      expect(back.exitCode, back.stderr).toBe(0);
      const names = (JSON.parse(back.stdout) as { tensors: Array<{ name: string }> }).tensors.map((t) => t.name);
      expect(names.sort()).toEqual(hfTensors.map((t) => t.name).sort());

      // the tool passes unknown `--key value` on silently; msckpt names them
      const typo = await runCli(['convert', '--model', 'llama', '--input_path', hf, '--output_path', join(dir, 'x.ckpt'), '--dtpye', 'bf16']);
      expect(typo.exitCode).toBe(2);
      expect(typo.stderr).toMatch(/unknown option '--dtpye' for --model llama \(did you mean '--dtype'\?\)/);
      const bloom = await runCli(['convert', '--model', 'llama', '--input_path', hf, '--output_path', join(dir, 'x.ckpt'), '--n_head', '16']);
      expect(bloom.exitCode).toBe(2);
      expect(bloom.stderr).toMatch(/convert_weight\.py reads --n_head for bloom/);
      // `--reverse` is an unambiguous prefix of --reversed, as argparse reads it
      const pre = await runCli(['convert', '--model', 'llama', '--input_path', ms, '--output_path', join(dir, 'back2'), '--reverse']);
      expect(pre.exitCode, pre.stderr).toBe(0);
      const bin = await runCli(['convert', '--model', 'llama', '--input_path', ms, '--output_path', join(dir, 'x.bin'), '--reversed']);
      expect(bin.exitCode).toBe(2);
      expect(bin.stderr).toMatch(/never PyTorch pickles/);
      await expect(stat(join(dir, 'x.ckpt'))).rejects.toThrow();
    });
  });

  it('glm4 with --config <mindformers yaml>: qkv_concat/mlp_concat from model_config, both directions', async () => {
    await withTempDir(async (dir) => {
      const { GLM_CONFIG, glmHf } = await import('../convert/hf.js');
      const hf = join(dir, 'glm');
      await writeHfFolder(hf, GLM_CONFIG, makeTensors(glmHf(), 9));
      const yamlPath = join(dir, 'finetune_glm4.yaml');
      const mc = Object.entries({ ...GLM_CONFIG, qkv_concat: false, mlp_concat: false })
        .filter(([, v]) => typeof v !== 'object')
        .map(([k, v]) => `    ${k}: ${typeof v === 'boolean' ? (v ? 'True' : 'False') : String(v)}`);
      await writeFile(yamlPath, ['model:', '  model_config:', '    type: ChatGLM2Config', ...mc, ''].join('\n'));
      const out = join(dir, 'glm.ckpt');
      const fwd = await runCli(['convert', '--model', 'glm4', '--input_path', hf, '--output_path', out, '--dtype', 'bf16', '--config', yamlPath]);
      expect(fwd.exitCode, fwd.stderr).toBe(0);
      const names = [...(await readCkpt(out)).keys()];
      expect(names.some((n) => n.endsWith('self_attention.wq.weight'))).toBe(true);
      expect(names.some((n) => n.endsWith('mlp.dense_left.weight'))).toBe(true);
      // reversed without config.json: the YAML's model_config gives the geometry, as the tool's glm-n does
      await copyFile(out, join(dir, 'alone.ckpt'));
      const rev = await runCli(['convert', '--model', 'glm4', '--input_path', join(dir, 'alone.ckpt'), '--output_path', join(dir, 'glm-back'), '--reversed', '--config', yamlPath]);
      expect(rev.exitCode, rev.stderr).toBe(0);
      const shard = (await readdir(join(dir, 'glm-back'))).find((n) => n.endsWith('.safetensors')) as string;
      const back = await runCli(['inspect', join(dir, 'glm-back', shard), '--json']);
      expect(back.stdout).toContain('self_attention.query_key_value.weight');
    });
  });
});
