import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ParamLayout, Strategy } from '../../plugin/formats/strategy/model.js';
import { encodeStrategy, makeStrategy, mergeStrategies, readStrategy } from '../../plugin/formats/strategy/index.js';
import { stageCount, stageDeviceCount, stagesOfParam } from '../../plugin/layout/index.js';
import { runCli } from '../helpers/cli.js';
import { describeFixtures, fixture } from '../helpers/fixtures.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-merge-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The per-rank (unprefixed) strategy file one stage's ranks write. */
function stageFile(stage: number, params: string[], devMatrix: number[] = [2]): Strategy {
  const layouts: ParamLayout[] = params.map((name) => ({
    name,
    stage: 0,
    devMatrix,
    tensorMap: [0, -1],
    paramSplitShape: [],
    indicesOffset: [],
    field: 0,
    optShardStep: 0,
    optShardSize: 0,
  }));
  return makeStrategy({
    currentStage: 1,
    layouts,
    items: params.map((p) => ({ nodeName: `MatMul_${p}`, stage, strategies: [[1, 1], [2, 1]] })),
  });
}

/** Split a merged strategy into the per-stage files MindSpore's ranks would have written. */
function splitByStage(merged: Strategy): Map<number, Strategy> {
  const out = new Map<number, Strategy>();
  for (const stage of merged.stages) {
    out.set(
      stage,
      makeStrategy({
        currentStage: 1,
        layouts: merged.layouts.filter((l) => l.stage === stage).map((l) => ({ ...l, stage: 0 })),
        items: merged.items.filter((i) => i.stage === stage),
      }),
    );
  }
  return out;
}

describe('mergeStrategies', () => {
  it('merges stages, skips byte duplicates and repeated stages, never touches inputs', async () => {
    const src = join(dir, 'basic');
    await mkdir(src);
    // ranks 0,1 = stage 0 (identical bytes); ranks 2,3 = stage 1; rank 4 = stage 1 again but different bytes
    const s0 = encodeStrategy(stageFile(0, ['emb', 'a']));
    const s1 = encodeStrategy(stageFile(1, ['emb', 'b', 'c']));
    const s1b = encodeStrategy(stageFile(1, ['emb', 'other']));
    await writeFile(join(src, 'strategy_0.ckpt'), s0);
    await writeFile(join(src, 'strategy_1.ckpt'), s0);
    await writeFile(join(src, 'strategy_2.ckpt'), s1);
    await writeFile(join(src, 'strategy_3.ckpt'), s1);
    await writeFile(join(src, 'strategy_10.ckpt'), s1b); // sorts after 3 (numeric order): stage 1 already taken
    await writeFile(join(src, 'notes.txt'), 'not a strategy');
    const out = join(dir, 'basic-merged.ckpt');
    const report = await mergeStrategies(src, out);
    expect(report).toMatchObject({ files: 5, duplicates: 2, skippedStages: 1, stages: [0, 1], layouts: 5, items: 5, missingStages: [], format: 'protobuf' });
    expect(report.sources).toEqual([
      { stage: 0, file: join(src, 'strategy_0.ckpt') },
      { stage: 1, file: join(src, 'strategy_2.ckpt') },
    ]);
    const m = await readStrategy(out);
    expect(m.merged).toBe(true);
    expect(m.currentStage).toBe(1);
    expect(m.layouts.map((l) => `${l.stage}-${l.name}`)).toEqual(['0-emb', '0-a', '1-emb', '1-b', '1-c']);
    expect(stagesOfParam(m, 'emb')).toEqual([0, 1]);
    expect(stageCount(m)).toBe(2);
    expect(stageDeviceCount(m)).toBe(2);
    expect((await readdir(src)).sort()).toEqual(['notes.txt', 'strategy_0.ckpt', 'strategy_1.ckpt', 'strategy_10.ckpt', 'strategy_2.ckpt', 'strategy_3.ckpt']);
  });

  it('merges JSON files into JSON when the output ends in .json, and reports missing stages', async () => {
    const src = join(dir, 'json');
    await mkdir(src);
    await writeFile(join(src, 'a.json'), encodeStrategy(stageFile(0, ['x']), 'json'));
    await writeFile(join(src, 'b.json'), encodeStrategy(stageFile(2, ['y']), 'json'));
    const out = join(dir, 'merged.json');
    const report = await mergeStrategies([src], out);
    expect(report.format).toBe('json');
    expect(report.missingStages).toEqual([1]);
    const text = JSON.parse(await readFile(out, 'utf8')) as { current_stage: number; parallel_layout_item: Record<string, unknown> };
    expect(text.current_stage).toBe(1);
    expect(Object.keys(text.parallel_layout_item)).toEqual(['0-x', '2-y']);
  });

  it('refuses mixed kinds, merged inputs, files without strategy items, empty folders', async () => {
    const mixed = join(dir, 'mixed');
    await mkdir(mixed);
    await writeFile(join(mixed, 'a.ckpt'), encodeStrategy(stageFile(0, ['x'])));
    await writeFile(join(mixed, 'b.json'), encodeStrategy(stageFile(1, ['y']), 'json'));
    await expect(mergeStrategies(mixed, join(dir, 'o1.ckpt'))).rejects.toThrow(/mixed: holds both \*\.ckpt and \*\.json/);
    await expect(mergeStrategies([join(mixed, 'a.ckpt'), join(mixed, 'b.json')], join(dir, 'o2.ckpt'))).rejects.toThrow(/b\.json: is a json strategy but .*a\.ckpt is protobuf/);

    const m = join(dir, 'already.ckpt');
    await writeFile(m, encodeStrategy(makeStrategy({ ...stageFile(0, ['x']), merged: true })));
    await expect(mergeStrategies([m], join(dir, 'o3.ckpt'))).rejects.toThrow(/already\.ckpt: is already a merged strategy/);

    const noItems = join(dir, 'noitems.ckpt');
    await writeFile(noItems, encodeStrategy(makeStrategy({ currentStage: 1, layouts: stageFile(0, ['x']).layouts, items: [] })));
    await expect(mergeStrategies([noItems], join(dir, 'o4.ckpt'))).rejects.toThrow(/noitems\.ckpt: has no parallel_strategy_item/);

    const empty = join(dir, 'empty');
    await mkdir(empty);
    await expect(mergeStrategies(empty, join(dir, 'o5.ckpt'))).rejects.toThrow(/holds no \*\.ckpt or \*\.json/);
    await expect(mergeStrategies(join(dir, 'missing'), join(dir, 'o6.ckpt'))).rejects.toThrow(/missing: no such file or directory/);
    for (const o of ['o1', 'o2', 'o3', 'o4', 'o5', 'o6']) await expect(stat(join(dir, `${o}.ckpt`))).rejects.toThrow();
  });

  it('merges a folder of 1024 per-rank files (512 stages x 2 identical ranks) quickly', async () => {
    const src = join(dir, 'many');
    await mkdir(src);
    const stages = 512;
    const writes: Promise<void>[] = [];
    for (let s = 0; s < stages; s++) {
      const bytes = encodeStrategy(stageFile(s, [`layers.${s}.w1`, `layers.${s}.w2`, `adam_m.layers.${s}.w1`, 'shared.emb']));
      for (let r = 0; r < 2; r++) writes.push(writeFile(join(src, `ckpt_strategy_rank_${s * 2 + r}.ckpt`), bytes));
    }
    await Promise.all(writes);
    // the output goes into the same folder; it must not be taken as an input
    const out = join(src, 'merged_ckpt_strategy.ckpt');
    const report = await mergeStrategies(src, out);
    expect(report.files).toBe(1024);
    expect(report.duplicates).toBe(512);
    expect(report.stages).toHaveLength(512);
    expect(report.layouts).toBe(2048);
    const m = await readStrategy(out);
    expect(stageCount(m)).toBe(512);
    expect(stagesOfParam(m, 'shared.emb')).toHaveLength(512);
    expect(m.layouts[2047]).toMatchObject({ stage: 511, name: 'shared.emb' });
    // a re-run with the merged file present in the folder gives the same result
    const again = await mergeStrategies(src, out);
    expect(again.files).toBe(1024);
  });
});

describeFixtures('merging the real pipeline strategy from per-stage files', () => {
  it('splitting the fixture into 2 stages x 2 ranks and merging reproduces its bytes', async () => {
    const path = fixture('mindformers_pp2/strategy_4_npus.ckpt');
    const original = await readFile(path);
    const parts = splitByStage(await readStrategy(path));
    const src = join(dir, 'pp2');
    await mkdir(src);
    let rank = 0;
    for (const [, s] of parts) {
      const bytes = encodeStrategy(s);
      for (let r = 0; r < 2; r++) await writeFile(join(src, `ckpt_strategy_rank_${rank++}.ckpt`), bytes);
    }
    const out = join(dir, 'pp2-merged.ckpt');
    const report = await mergeStrategies(src, out);
    expect(report).toMatchObject({ files: 4, duplicates: 2, stages: [0, 1], layouts: 148, items: 34 });
    expect(Buffer.compare(await readFile(out), original)).toBe(0);
  });
});

describe('msckpt merge-strategy', () => {
  it('writes merged_ckpt_strategy.ckpt into the current folder and prints JSON', async () => {
    const src = join(dir, 'cli-src');
    const cwd = join(dir, 'cli-cwd');
    await mkdir(src);
    await mkdir(cwd);
    await writeFile(join(src, 'r0.ckpt'), encodeStrategy(stageFile(0, ['a'])));
    await writeFile(join(src, 'r1.ckpt'), encodeStrategy(stageFile(1, ['b'])));
    const r = await runCli(['merge-strategy', src, '--json'], { cwd });
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    const report = JSON.parse(r.stdout) as { output: string; stages: number[] };
    expect(report.stages).toEqual([0, 1]);
    expect(report.output).toBe(join(cwd, 'merged_ckpt_strategy.ckpt'));
    expect((await readStrategy(report.output)).layouts.map((l) => `${l.stage}-${l.name}`)).toEqual(['0-a', '1-b']);

    const outDir = join(dir, 'cli-out');
    await mkdir(outDir);
    const h = await runCli(['merge-strategy', join(src, 'r0.ckpt'), join(src, 'r1.ckpt'), '-o', outDir]);
    expect(h.exitCode).toBe(0);
    expect(h.stdout).toMatch(/merged 2 stage\(s\) \[0,1\] from 2 file\(s\)/);
    expect(await readdir(outDir)).toEqual(['merged_ckpt_strategy.ckpt']);
    expect(await readdir(src)).toEqual(['r0.ckpt', 'r1.ckpt']);

    const bad = await runCli(['merge-strategy', join(dir, 'nowhere')], { cwd });
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toMatch(/^msckpt: .*nowhere: no such file or directory$/);
  });
});
