import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { assignConverters, cleanJobOutputs, substituteConfig } from '../../plugin/launcher/launch.js';

describe('launch: converter assignment', () => {
  it('ranks 0, W/K, 2W/K, ... convert [r, r + W/K) on a shared disk', () => {
    const all = [0, 1, 2, 3, 4, 5, 6, 7];
    expect(assignConverters(8, 1, all)).toEqual([{ rank: 0, slices: all }]);
    expect(assignConverters(8, 2, all)).toEqual([
      { rank: 0, slices: [0, 1, 2, 3] },
      { rank: 4, slices: [4, 5, 6, 7] },
    ]);
    expect(assignConverters(8, 4, all).map((c) => c.rank)).toEqual([0, 2, 4, 6]);
    expect(assignConverters(8, 16, all)).toHaveLength(8); // clamped to W
    expect(() => assignConverters(8, 3, all)).toThrow(/does not divide the device count 8/);
  });

  it("without a shared disk each node converts only its own ranks", () => {
    // K = 1: the block of rank 0 spans both nodes; node 1's part goes to its first rank
    expect(assignConverters(8, 1, [4, 5, 6, 7])).toEqual([{ rank: 4, slices: [4, 5, 6, 7] }]);
    expect(assignConverters(8, 4, [4, 5, 6, 7])).toEqual([
      { rank: 4, slices: [4, 5] },
      { rank: 6, slices: [6, 7] },
    ]);
  });

  it('substitutes {config} everywhere', () => {
    expect(substituteConfig(['python', 'run.py', '--config', '{config}', '--x={config}'], '/o/t.yaml')).toEqual([
      'python', 'run.py', '--config', '/o/t.yaml', '--x=/o/t.yaml',
    ]);
  });
});

describe('launch: cleaning', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'msckpt-clean-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('removes only what msckpt or a strategy pass writes, and lists the rest', async () => {
    const s = join(dir, 'strategy');
    const t = join(dir, 'transformed_checkpoint');
    await mkdir(s, { recursive: true });
    await mkdir(join(t, 'llama', 'rank_0'), { recursive: true });
    await mkdir(join(t, 'llama', 'rank_1'), { recursive: true });
    for (const f of ['ckpt_strategy_rank_0.ckpt', 'ckpt_strategy_rank_1.ckpt', 'merged_ckpt_strategy.ckpt', 'README']) await writeFile(join(s, f), 'x');
    await writeFile(join(t, 'llama', 'rank_0', 'checkpoint_0.ckpt'), 'x');
    await writeFile(join(t, 'llama', 'rank_1', 'checkpoint_1.ckpt'), 'x');
    await writeFile(join(t, 'llama', 'rank_1', 'my_backup.ckpt'), 'x');
    await writeFile(join(t, 'llama', 'transform_succeed_rank_0.txt'), '');
    const rep = await cleanJobOutputs(s, t);
    expect(rep.removed).toBe(6);
    expect([...rep.kept].sort()).toEqual([join(s, 'README'), join(t, 'llama', 'rank_1', 'my_backup.ckpt')]);
    expect(await readdir(s)).toEqual(['README']);
    expect(existsSync(join(t, 'llama', 'rank_0'))).toBe(false);
    expect(await readdir(join(t, 'llama'))).toEqual(['rank_1']);
  });

  it("per node, leaves other ranks' files alone", async () => {
    const s = join(dir, 'strategy');
    const t = join(dir, 'transformed_checkpoint');
    await mkdir(s, { recursive: true });
    for (const r of [0, 1, 4, 5]) {
      await writeFile(join(s, `ckpt_strategy_rank_${r}.ckpt`), 'x');
      await mkdir(join(t, 'm', `rank_${r}`), { recursive: true });
      await writeFile(join(t, 'm', `rank_${r}`, `checkpoint_${r}.ckpt`), 'x');
    }
    const rep = await cleanJobOutputs(s, t, [4, 5, 6, 7]);
    expect(rep).toEqual({ removed: 4, kept: [] });
    expect((await readdir(s)).sort()).toEqual(['ckpt_strategy_rank_0.ckpt', 'ckpt_strategy_rank_1.ckpt']);
    expect((await readdir(join(t, 'm'))).sort()).toEqual(['rank_0', 'rank_1']);
  });

  it('is fine with folders that do not exist', async () => {
    expect(await cleanJobOutputs(join(dir, 'a'), join(dir, 'b'))).toEqual({ removed: 0, kept: [] });
  });
});
