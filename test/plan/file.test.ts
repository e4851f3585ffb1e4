/**
 * The plan as data: a plan written to a plan file and read back has the same fingerprint and
 * gives the same rank plans; its sources open from their indexes without reading a header, and
 * a source that changed since planning is refused by name.
 */
import { readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { defaultSourceIO, type SourceIndex } from '../../plugin/formats/source-index.js';
import { loadPlan, openPlanSource, planRank, readPlanFile, writePlanFile } from '../../plugin/plan/index.js';
import { layout, saveStrategy, withTempDir, writeCkpt } from '../transform/helpers.js';
import { bytes } from '../helpers/mem-tensors.js';

describe('plan files', () => {
  it('round trip: same fingerprint, same rank plans; sources open from the index; a changed source is refused', async () => {
    await withTempDir(async (dir) => {
      const w = bytes(8 * 6 * 4, 3);
      const b = bytes(6 * 2, 4);
      await writeCkpt(join(dir, 'full.ckpt'), [
        { name: 'w', dtype: 'Float32', shape: [8, 6], data: w },
        { name: 'b', dtype: 'Float16', shape: [6], data: b },
        { name: 'global_step', dtype: 'Int32', shape: [1], data: bytes(4, 5) },
      ]);
      const s2 = await saveStrategy(join(dir, 's2.ckpt'), [layout('w', [2], [-1, 0]), layout('b', [2], [0])]);
      const headerReads: string[] = [];
      const io = { ...defaultSourceIO, index: async (p: string): Promise<SourceIndex> => { headerReads.push(p); return defaultSourceIO.index(p); } };
      const { plan } = await loadPlan({ srcCheckpoint: join(dir, 'full.ckpt'), dstStrategy: s2, io });
      expect(headerReads).toEqual([join(dir, 'full.ckpt')]);
      expect(plan.fingerprint).toMatch(/^[0-9a-f]{64}$/);
      const file = join(dir, 'plan.json');
      await writePlanFile(plan, file);
      const back = await readPlanFile(file, plan.fingerprint);
      expect(back.fingerprint).toBe(plan.fingerprint);
      expect(back.source.files[0]?.entries).toBeUndefined();
      expect(JSON.parse(JSON.stringify(back))).toEqual(back);
      for (const r of [0, 1]) expect(planRank(back, r)).toEqual(planRank(plan, r));

      // open from the plan file's index: bytes of column 3..5 of w for rank 1
      const src = await openPlanSource(back.source.files[0]!);
      const got = new Uint8Array(6 * 4);
      await src.readBytes('w', 4 * 6 * 4, 24, got);
      await src.close();
      expect(Buffer.from(got).equals(Buffer.from(w.subarray(96, 120)))).toBe(true);
      expect(headerReads).toHaveLength(1);

      // another expected fingerprint, a damaged file, a damaged index
      await expect(readPlanFile(file, '0'.repeat(64))).rejects.toThrow(/expected 000000000000/);
      const text = await readFile(file, 'utf8');
      await writeFile(file, text.replace('"memory":', '"memory":1'));
      await expect(readPlanFile(file)).rejects.toThrow(/damaged/);
      await writeFile(file, text);
      const idx = await readFile(`${file}.index`);
      idx[10] = (idx[10] as number) ^ 1;
      await writeFile(`${file}.index`, idx);
      await expect(openPlanSource((await readPlanFile(file)).source.files[0]!)).rejects.toThrow(/damaged/);

      // the source changed after planning
      const later = new Date(Date.now() + 60_000);
      await utimes(join(dir, 'full.ckpt'), later, later);
      await expect(openPlanSource(plan.source.files[0]!)).rejects.toThrow(/full\.ckpt: changed since it was planned/);
    });
  });
});
