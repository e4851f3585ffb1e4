/**
 * Transform across formats: the output format defaults to the source's, --crc for both formats,
 * the per-rank file choice (newest by mtime, or by (epoch, step) with pick 'name'), unified /
 * HF-index folders as complete sources, and manifest CRCs computed while writing that equal a
 * read-back.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AtomicFile, crc32Combine } from '../../plugin/formats/atomic.js';
import { openCheckpoint } from '../../plugin/formats/ckpt/index.js';
import { copyBox, fullBox } from '../../plugin/formats/box.js';
import { elementSize } from '../../plugin/formats/dtype.js';
import { openWeights } from '../../plugin/formats/open.js';
import { createSafetensorsSink, openSafetensorsFile } from '../../plugin/formats/safetensors/index.js';
import { sliceBox } from '../../plugin/layout/index.js';
import { findSourceFiles } from '../../plugin/plan/index.js';
import { fileCrc32Of, readTransformManifest, transformCheckpoints } from '../../plugin/transform/index.js';
import { entryOf, readAll, tensor, writeAll, type MemTensor } from '../helpers/mem-tensors.js';
import { layout, saveStrategy, withTempDir, writeCkpt } from './helpers.js';

const full: MemTensor[] = [
  tensor('b.weight', 'BFloat16', [8, 6], 11),
  tensor('a.weight', 'Float32', [4, 10], 12),
  tensor('c.bias', 'Float16', [8], 13),
];
const maps: Record<string, (number | number[])[]> = { 'b.weight': [0, -1], 'a.weight': [-1, 0], 'c.bias': [0] };
const dstLayouts = (): ReturnType<typeof layout>[] => full.map((t) => layout(t.name, [2], maps[t.name] as number[]));

function sliceOf(t: MemTensor, rank: number): MemTensor {
  const box = sliceBox(layout(t.name, [2], maps[t.name] as number[]), t.shape, rank);
  const es = elementSize(t.dtype);
  const data = new Uint8Array(box.shape.reduce((a, b) => a * b, 1) * es);
  copyBox(t.data, t.shape, box, data, box.shape, fullBox(box.shape), es);
  return { name: t.name, dtype: t.dtype, shape: [...box.shape], data };
}

async function writeSt(path: string, tensors: MemTensor[]): Promise<void> {
  const sink = await createSafetensorsSink(path, tensors.map(entryOf), { sortKeys: true, metadata: { format: 'ms' } });
  await writeAll(sink, tensors, 1000);
}

async function expectSlices(out: string, ext: string): Promise<void> {
  for (let r = 0; r < 2; r++) {
    expect(await readdir(join(out, `rank_${r}`))).toEqual([`checkpoint_${r}.${ext}`]);
    const s = await openWeights(join(out, `rank_${r}`, `checkpoint_${r}.${ext}`));
    const got = await readAll(s);
    await s.close();
    for (const t of full) expect(Buffer.from(got.get(t.name) as Uint8Array).equals(Buffer.from(sliceOf(t, r).data)), `${out} ${r} ${t.name}`).toBe(true);
  }
}

async function expectManifestCrcs(out: string): Promise<void> {
  const m = await readTransformManifest(out);
  expect(m).not.toBeNull();
  for (const f of m?.files ?? []) {
    const real = await fileCrc32Of(join(out, f.path));
    expect({ size: f.size, crc32: f.crc32 }).toEqual(real);
  }
}

let dir: string;
let strat: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-formats-'));
  strat = await saveStrategy(join(dir, 'mp2.ckpt'), dstLayouts());
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('output format defaults to the source format; manifest CRCs computed while writing', () => {
  it('a complete safetensors file slices to safetensors (sorted keys, format ms); a .ckpt to .ckpt', async () => {
    await writeSt(join(dir, 'full.safetensors'), full);
    const out = join(dir, 'def-st');
    const rep = await transformCheckpoints({ srcCheckpoint: join(dir, 'full.safetensors'), dstStrategy: strat, dstDir: out, progress: false });
    expect(rep.files.map((f) => f.path)).toEqual(['rank_0/checkpoint_0.safetensors', 'rank_1/checkpoint_1.safetensors']);
    await expectSlices(out, 'safetensors');
    const raw = await readFile(join(out, 'rank_0', 'checkpoint_0.safetensors'));
    const header = JSON.parse(raw.subarray(8, 8 + Number(raw.readBigUInt64LE(0))).toString('utf8')) as Record<string, unknown>;
    expect(Object.keys(header).filter((k) => k !== '__metadata__')).toEqual(['a.weight', 'b.weight', 'c.bias']);
    expect(header['__metadata__']).toEqual({ format: 'ms' });
    await expectManifestCrcs(out);

    await writeCkpt(join(dir, 'full.ckpt'), full);
    const out2 = join(dir, 'def-ck');
    await transformCheckpoints({ srcCheckpoint: join(dir, 'full.ckpt'), dstStrategy: strat, dstDir: out2, progress: false });
    await expectSlices(out2, 'ckpt');
    await expectManifestCrcs(out2);
  });

  it('--crc: safetensors get crc_num (CRC over name then bytes in sorted key order); ckpt gets a valid trailer', async () => {
    const out = join(dir, 'crc-st');
    await transformCheckpoints({ srcCheckpoint: join(dir, 'full.safetensors'), dstStrategy: strat, dstDir: out, crc: true, progress: false });
    for (let r = 0; r < 2; r++) {
      const f = await openSafetensorsFile(join(out, `rank_${r}`, `checkpoint_${r}.safetensors`));
      let want = 0;
      for (const t of [...full].sort((a, b) => (a.name < b.name ? -1 : 1))) {
        want = crc32(Buffer.from(t.name, 'utf8'), want);
        want = crc32(sliceOf(t, r).data, want);
      }
      expect(f.metadata['crc_num']).toBe(String(want));
      expect(f.metadata['format']).toBe('ms');
      await f.close();
    }
    await expectSlices(out, 'safetensors');
    await expectManifestCrcs(out);

    const out2 = join(dir, 'crc-ck');
    await transformCheckpoints({ srcCheckpoint: join(dir, 'full.safetensors'), dstStrategy: strat, dstDir: out2, outputFormat: 'ckpt', crc: true, progress: false });
    for (let r = 0; r < 2; r++) {
      const c = await openCheckpoint(join(out2, `rank_${r}`, `checkpoint_${r}.ckpt`), { verifyCrc: true });
      expect(c.crc?.valid).toBe(true);
      await c.close();
    }
    await expectManifestCrcs(out2);
  });
});

describe('complete sources held in folders', () => {
  it('a unified directory (param_name_map.json) given as the folder', async () => {
    const uni = join(dir, 'uni');
    await mkdir(uni);
    await writeSt(join(uni, 'part0.safetensors'), [full[0] as MemTensor]);
    await writeSt(join(uni, 'part1.safetensors'), [full[1] as MemTensor, full[2] as MemTensor]);
    const wm = { 'b.weight': 'part0.safetensors', 'a.weight': 'part1.safetensors', 'c.bias': 'part1.safetensors' };
    await writeFile(join(uni, 'param_name_map.json'), JSON.stringify({ total_size: 0, weight_map: wm }));
    const src = await findSourceFiles(uni);
    expect(src).toMatchObject({ kind: 'file', format: 'safetensors' });
    const out = join(dir, 'uni-out');
    await transformCheckpoints({ srcCheckpoint: uni, dstStrategy: strat, dstDir: out, progress: false });
    await expectSlices(out, 'safetensors');
  });

  it('an HF-style index: the folder holding it, or the *.index.json itself', async () => {
    const hf = join(dir, 'hf');
    await mkdir(hf);
    await writeSt(join(hf, 'model-00001-of-00002.safetensors'), [full[0] as MemTensor, full[2] as MemTensor]);
    await writeSt(join(hf, 'model-00002-of-00002.safetensors'), [full[1] as MemTensor]);
    const wm = { 'b.weight': 'model-00001-of-00002.safetensors', 'c.bias': 'model-00001-of-00002.safetensors', 'a.weight': 'model-00002-of-00002.safetensors' };
    await writeFile(join(hf, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 1 }, weight_map: wm }));
    await transformCheckpoints({ srcCheckpoint: hf, dstStrategy: strat, dstDir: join(dir, 'hf-out1'), progress: false });
    await expectSlices(join(dir, 'hf-out1'), 'safetensors');
    await transformCheckpoints({ srcCheckpoint: join(hf, 'model.safetensors.index.json'), dstStrategy: strat, dstDir: join(dir, 'hf-out2'), outputFormat: 'ckpt', progress: false });
    await expectSlices(join(dir, 'hf-out2'), 'ckpt');
  });

  it('a folder with neither rank_N folders nor an index is exit-2 input error', async () => {
    await mkdir(join(dir, 'empty'));
    await expect(findSourceFiles(join(dir, 'empty'))).rejects.toThrow(/no rank_N folders, param_name_map.json or \*\.index\.json/);
  });
});

describe('which file of a rank_N folder holding several: one rule (newest, then epoch/step, then name), always announced', () => {
  /** rank folders where `right` holds the slices and every other name holds wrong bytes; `newest` gets the latest mtime. */
  async function tree(root: string, names: string[], right: string, newest: string, ext: 'safetensors' | 'ckpt'): Promise<void> {
    for (let r = 0; r < 2; r++) {
      const good = full.map((t) => sliceOf(t, r));
      const bad = good.map((t) => ({ ...t, data: new Uint8Array(t.data.byteLength).fill(7) }));
      for (const [i, n] of names.entries()) {
        const p = join(root, `rank_${r}`, `${n}.${ext}`);
        if (ext === 'safetensors') await writeSt(p, n === right ? good : bad);
        else await writeCkpt(p, n === right ? good : bad);
        const t = new Date(Date.UTC(2024, 0, 1, 0, 0, n === newest ? 59 : i));
        await utimes(p, t, t);
      }
    }
  }
  /** The merged output (one complete file) equals the full tensors. */
  async function expectRight(out: string, ext: string): Promise<void> {
    const f = await openWeights(join(out, 'rank_0', `checkpoint_0.${ext}`));
    const got = await readAll(f);
    await f.close();
    for (const t of full) expect(Buffer.from(got.get(t.name) as Uint8Array).equals(Buffer.from(t.data)), `${out} ${t.name}`).toBe(true);
  }

  it('default: the newest file counts, whatever its name says (safetensors and ckpt)', async () => {
    // by name (epoch, step) net_10_1 would win; by name order net_2_5; the newest is net_1_10
    const st = join(dir, 'pick-newest-st');
    await tree(st, ['net_1_10', 'net_2_5', 'net_10_1'], 'net_1_10', 'net_1_10', 'safetensors');
    const notices: string[] = [];
    await transformCheckpoints({ srcCheckpoint: st, srcStrategy: strat, dstDir: join(dir, 'pick-newest-st-out'), progress: false, onNotice: (m) => notices.push(m) });
    expect(notices.join('\n')).toMatch(/rank_0: 3 \.safetensors files, using net_1_10\.safetensors \(newest by modification time/);
    await expectRight(join(dir, 'pick-newest-st-out'), 'safetensors');

    const ck = join(dir, 'pick-newest-ck');
    await tree(ck, ['net_10', 'net_9'], 'net_10', 'net_10', 'ckpt');
    const rep = await transformCheckpoints({ srcCheckpoint: ck, srcStrategy: strat, dstDir: join(dir, 'pick-newest-ck-out'), progress: false });
    expect(rep.notices.join('\n')).toMatch(/rank_1: 2 \.ckpt files, using net_10\.ckpt \(newest/);
    await expectRight(join(dir, 'pick-newest-ck-out'), 'ckpt');
  });

  it("pick 'name': the largest (epoch, step), then name order (MindSpore's transform_checkpoints)", async () => {
    // the newest is net_2_5 (wrong), name order's last is net_2_5 too; epoch 10 is the largest
    const st = join(dir, 'pick-name-st');
    await tree(st, ['net_1_10', 'net_2_5', 'net_10_1'], 'net_10_1', 'net_2_5', 'safetensors');
    const rep = await transformCheckpoints({ srcCheckpoint: st, srcStrategy: strat, dstDir: join(dir, 'pick-name-st-out'), pick: 'name', progress: false });
    expect(rep.notices.join('\n')).toMatch(/rank_0: 3 \.safetensors files, using net_10_1\.safetensors \(largest epoch\/step/);
    await expectRight(join(dir, 'pick-name-st-out'), 'safetensors');
    // the same tree under the default rule takes the newest, and its wrong bytes show
    await transformCheckpoints({ srcCheckpoint: st, srcStrategy: strat, dstDir: join(dir, 'pick-name-st-default'), progress: false });
    await expect(expectRight(join(dir, 'pick-name-st-default'), 'safetensors')).rejects.toThrow();
  });

  it('folders holding both formats: safetensors by default (announced), ckpt on request', async () => {
    const mixed = join(dir, 'mixed');
    for (let r = 0; r < 2; r++) {
      await writeSt(join(mixed, `rank_${r}`, 'net_1_1.safetensors'), full.map((t) => sliceOf(t, r)));
      await writeCkpt(join(mixed, `rank_${r}`, 'net_1_1.ckpt'), full.map((t) => sliceOf(t, r)));
    }
    const a = await findSourceFiles(mixed);
    expect(a.format).toBe('safetensors');
    expect(a.notices.join('\n')).toMatch(/both \.ckpt and \.safetensors/);
    const b = await findSourceFiles(mixed, undefined, 'ckpt');
    expect(b.format).toBe('ckpt');
    expect(b.files.every((x) => x.path.endsWith('.ckpt'))).toBe(true);
  });
});

describe('CRC-32 while writing (AtomicFile)', () => {
  it('crc32Combine joins CRCs, lengths over 4 GiB included', () => {
    const a = Buffer.from('hello, ');
    const b = Buffer.from('world of checkpoints');
    expect(crc32Combine(crc32(a), crc32(b), b.length)).toBe(crc32(Buffer.concat([a, b])));
    expect(crc32Combine(crc32(a), crc32(Buffer.alloc(0)), 0)).toBe(crc32(a));
    // runs of zeros past 4 GiB: 4 GiB + 1 GiB == 1 GiB + 4 GiB == five 1 GiB runs
    const mib = 1024 ** 2;
    let c = crc32(Buffer.alloc(mib));
    let len = mib;
    const byLen = new Map<number, number>();
    while (len < 4 * 1024 ** 3) {
      c = crc32Combine(c, c, len);
      len *= 2;
      byLen.set(len, c);
    }
    const g1 = byLen.get(1024 ** 3) as number;
    const g4 = byLen.get(4 * 1024 ** 3) as number;
    let five = g1;
    for (let i = 0; i < 4; i++) five = crc32Combine(five, g1, 1024 ** 3);
    expect(crc32Combine(g4, g1, 1024 ** 3)).toBe(five);
    expect(crc32Combine(g1, g4, 4 * 1024 ** 3)).toBe(five);
  });

  it('header written last at 0 tiles with the data; overwritten bytes fall back (null); untracked files report no CRC', async () => {
    await withTempDir(async (d) => {
      const p = join(d, 'x.bin');
      const f = await AtomicFile.create(p, { crc32: true });
      await f.writeAt(Buffer.from('DATA-DATA'), 4);
      await f.writeAt(Buffer.from('MORE'), 13);
      await f.writeAt(Buffer.from('HEAD'), 0);
      const got = await f.commit();
      expect(got).toEqual(await fileCrc32Of(p));
      expect(got.size).toBe(17);

      const q = join(d, 'y.bin');
      const g = await AtomicFile.create(q, { crc32: true });
      await g.write(Buffer.from('abcdef'));
      await g.writeAt(Buffer.from('XY'), 2);
      expect(await g.commit()).toEqual({ size: 6, crc32: null });

      const u = await AtomicFile.create(join(d, 'z.bin'));
      await u.write(Buffer.from('abc'));
      expect(await u.commit()).toEqual({ size: 3, crc32: null });
    });
  });
});
