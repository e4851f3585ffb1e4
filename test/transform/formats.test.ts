import { join } from 'node:path';
import { expect, it } from 'vitest';
import { openWeights } from '../../plugin/formats/open.js';
import { transformCheckpoints } from '../../plugin/transform/index.js';
import { layout, readCkpt, saveStrategy, withTempDir, writeCkpt } from './helpers.js';

it('writes safetensors output with the same tensors; small budgets assemble in bands', async () => {
  await withTempDir(async (dir) => {
    const w = new Uint8Array(64 * 32 * 2);
    for (let i = 0; i < w.length; i++) w[i] = (i * 13) & 255;
    const complete = join(dir, 'c.ckpt');
    await writeCkpt(complete, [{ name: 'w', dtype: 'BFloat16', shape: [64, 32], data: w }]);
    const s = await saveStrategy(join(dir, 's.ckpt'), [layout('w', [2], [-1, 0])]);
    await transformCheckpoints({ srcCheckpoint: complete, dstStrategy: s, dstDir: join(dir, 'ck'), progress: false });
    await transformCheckpoints({ srcCheckpoint: complete, dstStrategy: s, dstDir: join(dir, 'st'), outputFormat: 'safetensors', progress: false });
    for (const r of [0, 1]) {
      const ck = (await readCkpt(join(dir, 'ck', `rank_${r}`, `checkpoint_${r}.ckpt`))).get('w')!;
      const src = await openWeights(join(dir, 'st', `rank_${r}`, `checkpoint_${r}.safetensors`));
      const e = src.entry('w')!;
      expect(e.shape).toEqual([64, 16]);
      const got = new Uint8Array(e.byteLength);
      await src.readBytes('w', 0, e.byteLength, got, 0);
      await src.close();
      expect(Buffer.from(got).equals(Buffer.from(ck.data))).toBe(true);
    }
    // merge back with a 1 MiB budget (bands of rows) equals the original
    await transformCheckpoints({ srcCheckpoint: join(dir, 'ck'), srcStrategy: s, dstDir: join(dir, 'back'), memory: 2 ** 20, progress: false });
    const back = (await readCkpt(join(dir, 'back', 'rank_0', 'checkpoint_0.ckpt'))).get('w')!;
    expect(Buffer.from(back.data).equals(Buffer.from(w))).toBe(true);
  });
});
