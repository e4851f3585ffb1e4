import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InputError } from '../../plugin/errors.js';
import { assignConverters, substituteConfig } from '../../plugin/launcher/launch.js';
import { cleanJobOutputs, Ledger, planClean, readLedger } from '../../plugin/launcher/ledger.js';
import { jobPaths, type JobPaths } from '../../plugin/launcher/paths.js';

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

describe('launch: cleaning by record', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'msckpt-clean-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const paths = (): JobPaths => jobPaths({ outputDir: './output', baseDir: dir });
  async function put(p: string, text = 'x'): Promise<string> {
    await mkdir(dirname(p), { recursive: true });
    await writeFile(p, text);
    return p;
  }

  it('removes what the ledger records (unchanged), planned files, our temporary names and mindformers\' strategy names; refuses anything else, removing nothing', async () => {
    const p = paths();
    const ledger = new Ledger(p, 0, 'job1');
    const conv = [0, 1].map((r) => p.transformedRankFile('llama', r));
    await ledger.planned([...conv, p.transformedRankFile('llama', 2)], 'the conversion plan');
    await put(conv[0] as string);
    await ledger.written([conv[0] as string], 'converter rank 0');
    await put(conv[1] as string); // renamed by a converter killed before it could record it
    await put(join(p.transformedRankDir('llama', 2), '.checkpoint_2.ckpt.4242.7.tmp')); // a killed converter's temporary file
    await put(p.strategyFile(3)); // mindformers' own strategy pass (r < world size)
    await put(p.mergedStrategy);
    await put(join(p.strategyDir, '.merged_ckpt_strategy.ckpt.99.1.tmp'));
    const derived = await put(p.derivedConfig('train_rank_0'));
    await ledger.written([derived], 'derived run YAML');
    await put(join(p.msckptDir, '.train_rank_5.yaml.77.3.tmp'));
    const keepMsckpt = await put(join(p.msckptDir, 'notes.txt'));
    // not ours: a user's backup, a teacher model, a strategy of a larger job, an empty folder of the user's
    const user = [
      await put(join(p.transformedDir, 'backup', 'rank_0', 'checkpoint_0.ckpt')),
      await put(join(p.strategyDir, 'teacher_model_rank_0.ckpt')),
      await put(p.strategyFile(8)),
    ];
    await mkdir(join(p.transformedDir, 'empty'), { recursive: true });
    const plan = await planClean({ paths: p, worldSize: 8 });
    expect([...plan.unknown].sort()).toEqual([...user, `${join(p.transformedDir, 'empty')}/`].sort());
    await expect(cleanJobOutputs({ paths: p, worldSize: 8 })).rejects.toThrow(InputError);
    await expect(cleanJobOutputs({ paths: p, worldSize: 8 })).rejects.toThrow(/4 file\(s\) in .* were not written by msckpt .*teacher_model_rank_0\.ckpt.*Nothing was removed\. .*move these files elsewhere, or set a different output_dir/);
    for (const f of [...conv, p.strategyFile(3), p.mergedStrategy, derived, ...user]) expect(existsSync(f)).toBe(true);

    // the user moves their files away: the rerun removes exactly ours, then the ledger
    for (const f of user) await rm(f);
    await rm(join(p.transformedDir, 'backup'), { recursive: true });
    await rm(join(p.transformedDir, 'empty'), { recursive: true });
    const rep = await cleanJobOutputs({ paths: p, worldSize: 8 });
    expect(rep.removed).toBe(8);
    expect(await readdir(p.strategyDir)).toEqual([]);
    expect(await readdir(p.transformedDir)).toEqual([]);
    expect((await readdir(p.msckptDir)).sort()).toEqual(['ledger', 'notes.txt']);
    expect(existsSync(keepMsckpt)).toBe(true);
    expect(await readLedger(p)).toEqual({ files: [], entries: new Map() });
  });

  it('a recorded file the user replaced (size or mtime differ) is not ours any more', async () => {
    const p = paths();
    const ledger = new Ledger(p, 4, 'job1');
    const f = await put(p.transformedRankFile('llama', 4), 'ours');
    await ledger.written([f], 'converter rank 4');
    await writeFile(f, 'the user\'s');
    const plan = await planClean({ paths: p, worldSize: 8 });
    expect(plan.unknown).toEqual([f]);
    // a torn last line (a killed writer) is skipped
    await writeFile(ledger.file, `${await readFile(ledger.file, 'utf8')}{"path":"transf`);
    expect((await readLedger(p)).entries.size).toBe(1);
  });

  it("per node, leaves other ranks' files alone", async () => {
    const p = paths();
    const ledger = new Ledger(p, 4, 'job1');
    for (const r of [0, 1, 4, 5]) {
      await put(p.strategyFile(r));
      await ledger.written([await put(p.transformedRankFile('m', r))], `converter rank ${r}`);
    }
    await put(join(p.transformedRankDir('m', 0), 'not-ours.ckpt'));
    const rep = await cleanJobOutputs({ paths: p, worldSize: 8, ranks: [4, 5, 6, 7] });
    expect(rep).toEqual({ removed: 4 });
    expect((await readdir(p.strategyDir)).sort()).toEqual(['ckpt_strategy_rank_0.ckpt', 'ckpt_strategy_rank_1.ckpt']);
    expect((await readdir(join(p.transformedDir, 'm'))).sort()).toEqual(['rank_0', 'rank_1']);
  });

  it('is fine with folders that do not exist', async () => {
    expect(await cleanJobOutputs({ paths: paths(), worldSize: 2 })).toEqual({ removed: 0 });
  });
});
