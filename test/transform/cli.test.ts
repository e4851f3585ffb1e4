import { mkdir, readdir, readFile, stat, writeFile, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, it, describe } from 'vitest';
import { InputError } from '../../plugin/errors.js';
import { transformCheckpoints, type TransformOptions } from '../../plugin/transform/index.js';
import { runCli } from '../helpers/cli.js';
import { layout, readCkpt, saveStrategy, withTempDir, writeCkpt, type GenTensor } from './helpers.js';

function tensors(seed: number): GenTensor[] {
  const mk = (name: string, shape: number[], dtype: 'BFloat16' | 'Float32'): GenTensor => {
    const es = dtype === 'Float32' ? 4 : 2;
    const data = new Uint8Array(shape.reduce((a, b) => a * b, es));
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + seed * 7) & 255;
    return { name, dtype, shape, data };
  };
  return [
    { name: 'global_step', dtype: 'Int32', shape: [1], data: new Uint8Array([9, 0, 0, 0]) },
    mk('w1', [16, 8], 'BFloat16'),
    mk('w2', [8, 16], 'Float32'),
    mk('norm', [8], 'Float32'),
  ];
}

async function setup(dir: string): Promise<{ complete: string; s4: string }> {
  const complete = join(dir, 'complete.ckpt');
  await writeCkpt(complete, tensors(1));
  const s4 = await saveStrategy(join(dir, 's4.ckpt'), [layout('w1', [2, 2], [0, -1]), layout('w2', [2, 2], [-1, 1]), layout('norm', [2, 2], [-1])]);
  return { complete, s4 };
}

describe('msckpt transform / plan / verify / rank-list (CLI)', () => {
  it('--process-num 2 through the real CLI equals one process; verify; resume skips', async () => {
    await withTempDir(async (dir) => {
      const { complete, s4 } = await setup(dir);
      const one = await runCli(['transform', '--src-checkpoint', complete, '--dst-strategy', s4, '--dst-checkpoint-dir', join(dir, 'one'), '--json']);
      expect(one.exitCode, one.stderr).toBe(0);
      const two = await runCli(['transform', '--src-checkpoint', complete, '--dst-strategy', s4, '--dst-checkpoint-dir', join(dir, 'two'), '--process-num', '2', '--json']);
      expect(two.exitCode, two.stderr).toBe(0);
      const rep = JSON.parse(two.stdout) as { processes: number; written: number[]; files: unknown[] };
      expect(rep.processes).toBe(2);
      expect(rep.written).toEqual([0, 1, 2, 3]);
      for (let r = 0; r < 4; r++) {
        const a = await readFile(join(dir, 'one', `rank_${r}`, `checkpoint_${r}.ckpt`));
        const b = await readFile(join(dir, 'two', `rank_${r}`, `checkpoint_${r}.ckpt`));
        expect(b.equals(a)).toBe(true);
      }
      const v = await runCli(['verify', join(dir, 'two'), '--json']);
      expect(v.exitCode, v.stderr).toBe(0);
      expect(JSON.parse(v.stdout).ok).toBe(true);

      // resume: a re-run skips everything; a deleted file is redone
      const again = await transformCheckpoints({ srcCheckpoint: complete, dstStrategy: s4, dstDir: join(dir, 'two'), progress: false });
      expect(again.skipped).toEqual([0, 1, 2, 3]);
      expect(again.written).toEqual([]);
      const before = await stat(join(dir, 'two', 'rank_1', 'checkpoint_1.ckpt'));
      await writeFile(join(dir, 'two', 'rank_2', 'checkpoint_2.ckpt'), 'x');
      const third = await transformCheckpoints({ srcCheckpoint: complete, dstStrategy: s4, dstDir: join(dir, 'two'), progress: false });
      expect(third.written).toEqual([2]);
      expect((await stat(join(dir, 'two', 'rank_1', 'checkpoint_1.ckpt'))).mtimeMs).toBe(before.mtimeMs);
      // corrupt one byte of a file: verify fails (exit 1)
      const p = join(dir, 'two', 'rank_3', 'checkpoint_3.ckpt');
      const bytes = await readFile(p);
      bytes[bytes.length - 1] ^= 0xff;
      await writeFile(p, bytes);
      const bad = await runCli(['verify', join(dir, 'two')]);
      expect(bad.exitCode).toBe(1);
      expect(bad.stdout).toMatch(/rank 3/);

      // merge back with --ranks and the human report
      const back = await runCli(['transform', '--src-checkpoint', join(dir, 'one'), '--src-strategy', s4, '--dst-checkpoint-dir', join(dir, 'back'), '--rank', '0']);
      expect(back.exitCode, back.stderr).toBe(0);
      expect(back.stdout).toMatch(/1 file\(s\) written/);
      const got = await readCkpt(join(dir, 'back', 'rank_0', 'checkpoint_0.ckpt'));
      for (const t of tensors(1)) expect(Buffer.from(got.get(t.name)!.data).equals(Buffer.from(t.data))).toBe(true);
    });
  });

  it('plan and rank-list', async () => {
    await withTempDir(async (dir) => {
      const { complete, s4 } = await setup(dir);
      await transformCheckpoints({ srcCheckpoint: complete, dstStrategy: s4, dstDir: join(dir, 's'), progress: false });
      const s2 = await saveStrategy(join(dir, 's2.ckpt'), [layout('w1', [2], [0, -1]), layout('w2', [2], [-1, -1]), layout('norm', [2], [-1])]);
      const human = await runCli(['plan', '--src-checkpoint', join(dir, 's'), '--src-strategy', s4, '--dst-strategy', s2]);
      expect(human.exitCode, human.stderr).toBe(0);
      expect(human.stdout).toMatch(/destination: 2 rank/);
      const json = await runCli(['plan', '--src-checkpoint', join(dir, 's'), '--src-strategy', s4, '--dst-strategy', s2, '--json']);
      expect(json.exitCode, json.stderr).toBe(0);
      const plan = JSON.parse(json.stdout) as { ranks: Array<{ rank: number; sourceRanks: number[]; tensors: Array<{ name: string; ops: unknown[] }> }> };
      expect(plan.ranks.length).toBe(2);
      // w2 (split on dim 1 over the mp axis) is gathered from two source ranks
      expect(plan.ranks[1]!.tensors.find((t) => t.name === 'w2')!.ops.length).toBe(2);
      const rl = await runCli(['rank-list', '--rank', '1', '--src-strategy', s4, '--dst-strategy', s2, '--json']);
      expect(rl.exitCode, rl.stderr).toBe(0);
      expect(JSON.parse(rl.stdout).sourceRanks).toEqual(plan.ranks[1]!.sourceRanks.filter((r) => r !== 1 || true));
    });
  });

  it('bad input: exit 2 and nothing written', async () => {
    await withTempDir(async (dir) => {
      const { complete, s4 } = await setup(dir);
      const sliced = join(dir, 's');
      await transformCheckpoints({ srcCheckpoint: complete, dstStrategy: s4, dstDir: sliced, progress: false });
      const cases: Array<[Omit<TransformOptions, 'dstDir'>, RegExp]> = [
        [{ srcCheckpoint: sliced }, /no source strategy/],
        [{ srcCheckpoint: sliced, srcStrategy: await saveStrategy(join(dir, 's8.ckpt'), [layout('w1', [8], [0, -1])]) }, /8 devices/],
        [{ srcCheckpoint: complete, dstStrategy: await saveStrategy(join(dir, 's3.ckpt'), [layout('w1', [3], [0, -1])]) }, /cannot be split evenly/],
        [{ srcCheckpoint: complete, dstStrategy: await saveStrategy(join(dir, 'sx.ckpt'), [layout('w1', [2], [0, -1]), layout('nope', [2], [-1])]) }, /no source file holds it/],
        [{ srcCheckpoint: join(dir, 'absent') }, /no such file/],
      ];
      for (const [i, [opts, re]] of cases.entries()) {
        const out = join(dir, `out${i}`);
        const err = await transformCheckpoints({ ...opts, dstDir: out, progress: false }).catch((e: unknown) => e);
        expect(err, `case ${i}`).toBeInstanceOf(InputError);
        expect((err as Error).message).toMatch(re);
        await expect(stat(out)).rejects.toThrow();
      }
      // through the CLI: exit 2, one line, nothing written
      const cliBad = await runCli(['transform', '--src-checkpoint', sliced, '--dst-checkpoint-dir', join(dir, 'outc')]);
      expect(cliBad.exitCode).toBe(2);
      expect(cliBad.stderr).toMatch(/^msckpt: .*no source strategy/);
      expect(cliBad.stderr.trim().split('\n').length).toBe(1);
      await expect(stat(join(dir, 'outc'))).rejects.toThrow();
      // non-contiguous rank folders
      await mkdir(join(dir, 'gap', 'rank_0'), { recursive: true });
      await mkdir(join(dir, 'gap', 'rank_2'), { recursive: true });
      await expect(transformCheckpoints({ srcCheckpoint: join(dir, 'gap'), srcStrategy: s4, dstDir: join(dir, 'g'), progress: false })).rejects.toThrow(/rank_1 is missing/);
      // several files in a rank folder: the last in name order is used and announced
      const multi = join(dir, 'multi', 'rank_0');
      await mkdir(multi, { recursive: true });
      await writeCkpt(join(multi, 'a-1_1.ckpt'), tensors(5));
      await writeCkpt(join(multi, 'a-2_1.ckpt'), tensors(1));
      const m = await runCli(['transform', '--src-checkpoint', join(dir, 'multi'), '--dst-checkpoint-dir', join(dir, 'm')]);
      expect(m.exitCode, m.stderr).toBe(0);
      expect(m.stderr).toMatch(/using a-2_1\.ckpt/);
      expect(await readdir(join(dir, 'm'))).toContain('transform_manifest.json');
    });
  });

  it('safetensors through the CLI: safetensors rank tree, --process-num 2 --crc, picked files announced, output safetensors by default', async () => {
    await withTempDir(async (dir) => {
      const { complete, s4 } = await setup(dir);
      // slice to safetensors, then put a stale older file beside each slice
      const st = join(dir, 'st');
      const a = await runCli(['transform', '--src-checkpoint', complete, '--dst-strategy', s4, '--dst-checkpoint-dir', st, '--output-format', 'safetensors', '--prefix', 'net_1_', '--json']);
      expect(a.exitCode, a.stderr).toBe(0);
      for (let r = 0; r < 4; r++) {
        const cur = join(st, `rank_${r}`, `net_1_${r}.safetensors`);
        const stale = join(st, `rank_${r}`, `net_0_${r + 100}.safetensors`);
        await writeFile(stale, await readFile(cur));
        await utimes(stale, new Date(2020, 0, 1), new Date(2020, 0, 1));
      }
      const out = join(dir, 'out');
      const b = await runCli(['transform', '--src-checkpoint', st, '--src-strategy', s4, '--dst-checkpoint-dir', out, '--process-num', '2', '--crc']);
      expect(b.exitCode, b.stderr).toBe(0);
      expect(b.stderr).toMatch(/rank_0: 2 \.safetensors files, using net_1_0\.safetensors \(newest by modification time/);
      expect(await readdir(join(out, 'rank_0'))).toEqual(['checkpoint_0.safetensors']);
      const raw = await readFile(join(out, 'rank_0', 'checkpoint_0.safetensors'));
      const header = JSON.parse(raw.subarray(8, 8 + Number(raw.readBigUInt64LE(0))).toString('utf8')) as { __metadata__: Record<string, string> };
      expect(header.__metadata__['format']).toBe('ms');
      expect(header.__metadata__['crc_num']).toMatch(/^\d+$/);
      const v = await runCli(['verify', out, '--json']);
      expect(v.exitCode, v.stdout + v.stderr).toBe(0);
    });
  });
});
