/**
 * transformCheckpoints with worker processes (transform/worker.ts, started from the TypeScript
 * sources here): the same files and manifest as one process, the plan file removed afterwards,
 * and a worker's input error reported as one.
 */
import { utimesSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../plugin/errors.js';
import { transformCheckpoints } from '../../plugin/transform/index.js';
import { bytes } from '../helpers/mem-tensors.js';
import { layout, saveStrategy, withTempDir, writeCkpt } from './helpers.js';

describe('transform workers', () => {
  it('processNum 2 writes the same files and manifest as one process; a changed source is an input error of the worker', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'full.ckpt');
      await writeCkpt(src, [
        { name: 'w', dtype: 'Float32', shape: [16, 8], data: bytes(16 * 8 * 4, 1) },
        { name: 'v', dtype: 'BFloat16', shape: [8, 12], data: bytes(8 * 12 * 2, 2) },
        { name: 'global_step', dtype: 'Int32', shape: [1], data: bytes(4, 3) },
      ]);
      const s4 = await saveStrategy(join(dir, 's4.ckpt'), [layout('w', [4], [0, -1]), layout('v', [4], [-1, 0])]);
      const one = await transformCheckpoints({ srcCheckpoint: src, dstStrategy: s4, dstDir: join(dir, 'one') });
      const two = await transformCheckpoints({ srcCheckpoint: src, dstStrategy: s4, dstDir: join(dir, 'two'), processNum: 2 });
      expect(two.processes).toBe(2);
      expect(two.files).toEqual(one.files);
      expect(await readdir(join(dir, 'two'))).toEqual(['rank_0', 'rank_1', 'rank_2', 'rank_3', 'transform_manifest.json']);
      for (const f of one.files) expect((await readFile(join(dir, 'two', f.path))).equals(await readFile(join(dir, 'one', f.path)))).toBe(true);

      // a worker that finds its source changed since planning fails with an input error naming it:
      // the source's mtime moves between planning and the workers' start (the progress factory
      // is called once the plan is made)
      const run = transformCheckpoints({
        srcCheckpoint: src, dstStrategy: s4, dstDir: join(dir, 'three'), processNum: 2,
        progress: () => {
          const later = new Date(Date.now() + 3_600_000);
          utimesSync(src, later, later);
          return { advance() {}, label() {}, done() {} };
        },
      });
      const err = await run.then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(InputError);
      expect(String(err)).toMatch(/converter for ranks \d-\d failed: .*full\.ckpt: changed since it was planned/);
      expect((await readdir(join(dir, 'three'))).filter((n) => n.startsWith('.msckpt-plan-'))).toEqual([]);
    });
  });
});
