/**
 * The one resolver: what a path holds and which file of each rank folder counts (newest by
 * mtime, ties by (epoch, step), then name; or by (epoch, step) with pick 'name'), with the path
 * as given and the real path of every file.
 */
import { mkdir, mkdtemp, readFile, realpath, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../plugin/errors.js';
import { createCheckpointSink } from '../../plugin/formats/ckpt/index.js';
import { detectKind } from '../../plugin/formats/detect.js';
import { pickWeightFile, resolveStrategy, resolveWeights, surveyWeights } from '../../plugin/formats/resolve.js';
import { createSafetensorsSink } from '../../plugin/formats/safetensors/index.js';
import { makeStrategy, writeStrategy } from '../../plugin/formats/strategy/index.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-resolve-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function ckpt(path: string, minute = 0): Promise<void> {
  await mkdir(join(path, '..'), { recursive: true });
  const s = await createCheckpointSink(path);
  await s.beginTensor({ name: 'a', dtype: 'Int8', shape: [1], byteLength: 1 });
  await s.write(new Uint8Array([1]));
  await s.endTensor();
  await s.close();
  const t = new Date(Date.UTC(2024, 0, 1, 0, minute));
  await utimes(path, t, t);
}

async function st(path: string): Promise<void> {
  await mkdir(join(path, '..'), { recursive: true });
  const s = await createSafetensorsSink(path, [{ name: 'a', dtype: 'Int8', shape: [1], byteLength: 1 }]);
  await s.beginTensor({ name: 'a', dtype: 'Int8', shape: [1], byteLength: 1 });
  await s.write(new Uint8Array([1]));
  await s.endTensor();
  await s.close();
}

describe('pickWeightFile: one rule', () => {
  const f = (path: string, mtimeMs: number): { path: string; mtimeMs: number } => ({ path, mtimeMs });
  it('newest by mtime first; equal mtimes by (epoch, step); then by name', () => {
    expect(pickWeightFile([f('net-10_1.ckpt', 1), f('net-1_10.ckpt', 3), f('net-2_5.ckpt', 2)])?.path).toBe('net-1_10.ckpt');
    expect(pickWeightFile([f('net-10_1.ckpt', 5), f('net-9_100.ckpt', 5), f('net-2_5.ckpt', 5)])?.path).toBe('net-10_1.ckpt');
    expect(pickWeightFile([f('b.ckpt', 5), f('a.ckpt', 5), f('c.ckpt', 5)])?.path).toBe('c.ckpt');
    expect(pickWeightFile([])).toBeUndefined();
  });
  it("'name': largest (epoch, step) whatever the mtimes, then by name", () => {
    expect(pickWeightFile([f('net-10_1.ckpt', 1), f('net-1_10.ckpt', 3), f('net-9_100.ckpt', 2)], 'name')?.path).toBe('net-10_1.ckpt');
    expect(pickWeightFile([f('x-1_1.ckpt', 9), f('y-1_1.ckpt', 1)], 'name')?.path).toBe('y-1_1.ckpt');
  });
});

describe('resolveWeights', () => {
  it('a rank tree: the file that counts per folder, its candidates, notices, path as given and real path', async () => {
    const tree = join(dir, 'tree');
    await ckpt(join(tree, 'rank_0', 'net-9_100.ckpt'), 5);
    await ckpt(join(tree, 'rank_0', 'net-10_100.ckpt'), 1);
    // rank_1's file is a symlink to a file elsewhere
    await ckpt(join(dir, 'elsewhere', 'real-1_1.ckpt'), 0);
    await mkdir(join(tree, 'rank_1'));
    await symlink(join(dir, 'elsewhere', 'real-1_1.ckpt'), join(tree, 'rank_1', 'net-1_1.ckpt'));
    await writeFile(join(tree, 'rank_1', 'notes.txt'), 'not weights');
    await ckpt(join(tree, 'loose.ckpt'));
    const r = await resolveWeights(tree);
    if (r.kind !== 'ranks') throw new Error(r.kind);
    expect(r.format).toBe('ckpt');
    expect(r.rule).toBe('newest');
    expect(r.ranks.map((x) => x.file.path)).toEqual([join(tree, 'rank_0', 'net-9_100.ckpt'), join(tree, 'rank_1', 'net-1_1.ckpt')]);
    expect(r.ranks[0]?.candidates.map((c) => c.path)).toEqual([join(tree, 'rank_0', 'net-10_100.ckpt'), join(tree, 'rank_0', 'net-9_100.ckpt')]);
    expect(r.ranks[1]?.file.realPath).toBe(await realpath(join(dir, 'elsewhere', 'real-1_1.ckpt')));
    expect(r.loose.map((x) => x.path)).toEqual([join(tree, 'loose.ckpt')]);
    expect(r.notices).toEqual(['rank_0: 2 .ckpt files, using net-9_100.ckpt (newest by modification time, as mindformers loads)']);
    const byName = await resolveWeights(tree, { pick: 'name' });
    expect(byName.kind === 'ranks' && byName.ranks[0]?.file.path).toBe(join(tree, 'rank_0', 'net-10_100.ckpt'));
  });

  it('refuses a gap (naming the missing folder), an empty rank folder and two folders of one rank', async () => {
    const gap = join(dir, 'gap');
    await ckpt(join(gap, 'rank_0', 'a.ckpt'));
    await ckpt(join(gap, 'rank_2', 'a.ckpt'));
    await expect(resolveWeights(gap)).rejects.toThrow(/rank_1 is missing/);
    const survey = await surveyWeights(gap);
    expect(survey).toMatchObject({ kind: 'folder', rankFolders: [0, 2], missingRank: 1 });
    const empty = join(dir, 'emptyrank');
    await ckpt(join(empty, 'rank_0', 'a.ckpt'));
    await mkdir(join(empty, 'rank_1'));
    await expect(resolveWeights(empty)).rejects.toThrow(/rank_1: holds no \.ckpt file/);
    const dup = join(dir, 'dup');
    await ckpt(join(dup, 'rank_0', 'a.ckpt'));
    await ckpt(join(dup, 'rank_00', 'a.ckpt'));
    await expect(resolveWeights(dup)).rejects.toBeInstanceOf(InputError);
  });

  it('complete sources: a file, a folder of files (named by stem), unified and index folders, an index file', async () => {
    const files = join(dir, 'files');
    await ckpt(join(files, 'base.ckpt'));
    await ckpt(join(files, 'lora.v2.ckpt'));
    const f = await resolveWeights(files);
    expect(f.kind === 'files' && f.sources.map((s) => s.name)).toEqual(['base', 'lora']);
    expect((await resolveWeights(join(files, 'base.ckpt'))).kind).toBe('file');
    const uni = join(dir, 'uni');
    await st(join(uni, 'part0.safetensors'));
    await writeFile(join(uni, 'param_name_map.json'), JSON.stringify({ weight_map: { a: 'part0.safetensors' } }));
    const u = await resolveWeights(uni);
    expect(u.kind).toBe('unified');
    // a ckpt job does not read a unified folder as safetensors
    await expect(resolveWeights(uni, { format: 'ckpt' })).rejects.toThrow(/no \.ckpt files/);
    const hf = join(dir, 'hf');
    await st(join(hf, 'model-00001-of-00001.safetensors'));
    await writeFile(join(hf, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: 'model-00001-of-00001.safetensors' } }));
    const h = await resolveWeights(hf);
    expect(h.kind === 'index' && h.index.path).toBe(join(hf, 'model.safetensors.index.json'));
    expect((await resolveWeights(join(hf, 'model.safetensors.index.json'))).kind).toBe('index');
    await mkdir(join(dir, 'nothing'));
    await expect(resolveWeights(join(dir, 'nothing'))).rejects.toThrow(/no rank_N folders, param_name_map.json or \*\.index\.json/);
    await expect(resolveWeights(join(dir, 'missing'))).rejects.toThrow(/no such file or directory/);
  });

  it("a checkpoint whose first record is 123 bytes long (0x0a 0x7b, like '\\n{') is a checkpoint, not JSON", async () => {
    let found = false;
    for (let n = 1; n < 120 && !found; n++) {
      const p = join(dir, `rec-${n}.ckpt`);
      const s = await createCheckpointSink(p);
      await s.beginTensor({ name: 'x'.repeat(n), dtype: 'Int8', shape: [8], byteLength: 8 });
      await s.write(new Uint8Array(8));
      await s.endTensor();
      await s.close();
      const head = await readFile(p);
      if (head[1] !== 0x7b) continue;
      found = true;
      expect((await resolveWeights(p)).kind).toBe('file');
      expect(await detectKind(p)).toBe('checkpoint');
    }
    expect(found).toBe(true);
  });

  it('strategies: a file is refused as weights; a folder of per-rank files is listed', async () => {
    const sd = join(dir, 'strategies');
    await mkdir(sd);
    for (const r of [1, 0]) await writeStrategy(join(sd, `ckpt_strategy_rank_${r}.ckpt`), makeStrategy({ currentStage: 0, layouts: [], items: [] }));
    await expect(resolveWeights(join(sd, 'ckpt_strategy_rank_0.ckpt'))).rejects.toThrow(/parallel strategy file/);
    const s = await resolveStrategy(sd);
    expect(s.kind === 'strategy-folder' && s.files.map((x) => x.path)).toEqual([0, 1].map((r) => join(sd, `ckpt_strategy_rank_${r}.ckpt`)));
    expect((await resolveStrategy(join(sd, 'ckpt_strategy_rank_1.ckpt'))).kind).toBe('strategy');
  });
});
