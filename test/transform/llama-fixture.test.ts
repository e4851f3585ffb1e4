import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { transformCheckpoints, verifyTransform } from '../../plugin/transform/index.js';
import { describeFixtures, fixture } from '../helpers/fixtures.js';
import { llamaTp2Layouts, readCkpt, saveStrategy, withTempDir } from './helpers.js';


describeFixtures('real llama2 tp2 fixture', () => {
  it('merges into a complete checkpoint and re-slices to mp=2 byte-identical', async () => {
    await withTempDir(async (dir) => {
      const strategy = await saveStrategy(join(dir, 'tp2.ckpt'), llamaTp2Layouts());
      const src = fixture('llama2_tiny_tp2');
      const merged = join(dir, 'merged');
      const r1 = await transformCheckpoints({ srcCheckpoint: src, srcStrategy: strategy, dstDir: merged, progress: false });
      expect(r1.worldSize).toBe(1);
      const full = await readCkpt(join(merged, 'rank_0', 'checkpoint_0.ckpt'));
      const r0 = await readCkpt(join(src, 'rank_0', 'checkpoint_0.ckpt'));
      const r1f = await readCkpt(join(src, 'rank_1', 'checkpoint_1.ckpt'));
      expect([...full.keys()]).toEqual([...r0.keys()]);
      expect(full.get('model.layers.0.attention.wq.weight')?.shape).toEqual([40, 40]);
      expect(full.get('model.layers.0.feed_forward.w2.weight')?.shape).toEqual([40, 256]);
      expect(full.get('lm_head.weight')?.shape).toEqual([32000, 40]);
      // wq: rows 0..19 from rank 0, rows 20..39 from rank 1
      const wq = full.get('model.layers.0.attention.wq.weight')!.data;
      expect(Buffer.from(wq.subarray(0, 1600)).equals(Buffer.from(r0.get('model.layers.0.attention.wq.weight')!.data))).toBe(true);
      expect(Buffer.from(wq.subarray(1600)).equals(Buffer.from(r1f.get('model.layers.0.attention.wq.weight')!.data))).toBe(true);
      // wo: columns 20r..20r+20 of each row
      const wo = full.get('model.layers.0.attention.wo.weight')!.data;
      const wo1 = r1f.get('model.layers.0.attention.wo.weight')!.data;
      expect(Buffer.from(wo.subarray(80 + 40, 160)).equals(Buffer.from(wo1.subarray(40, 80)))).toBe(true);

      const resliced = join(dir, 'resliced');
      await transformCheckpoints({ srcCheckpoint: join(merged, 'rank_0', 'checkpoint_0.ckpt'), dstStrategy: strategy, dstDir: resliced, progress: false });
      for (const r of [0, 1]) {
        const a = await readFile(join(src, `rank_${r}`, `checkpoint_${r}.ckpt`));
        const b = await readFile(join(resliced, `rank_${r}`, `checkpoint_${r}.ckpt`));
        expect(b.equals(a)).toBe(true);
      }
      expect((await verifyTransform(resliced)).ok).toBe(true);
      expect((await readdir(resliced)).sort()).toEqual(['rank_0', 'rank_1', 'transform_manifest.json']);
    });
  });
});
