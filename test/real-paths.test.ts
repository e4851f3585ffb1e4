import { mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../plugin/errors.js';
import { refuseOverlaps } from '../plugin/real-paths.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-real-paths-'));
  await mkdir(join(dir, 'src/rank_0'), { recursive: true });
  await mkdir(join(dir, 'out'), { recursive: true });
  await symlink(join(dir, 'src'), join(dir, 'link_to_src'));
  await symlink(join(dir, 'out'), join(dir, 'src/link_to_out'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('refuseOverlaps: outputs against inputs after resolving symlinks on both sides', () => {
  it('an output that is a symlink to the source folder', async () => {
    const p = refuseOverlaps([{ what: '--dst-checkpoint-dir', path: join(dir, 'link_to_src') }], [{ what: '--src-checkpoint', path: join(dir, 'src') }]);
    await expect(p).rejects.toThrow(InputError);
    await expect(p).rejects.toThrow(/--dst-checkpoint-dir .*link_to_src \(.*\/src\) is --src-checkpoint/);
  });
  it('an input reached through a symlink that lies inside the output', async () => {
    await expect(
      refuseOverlaps([{ what: 'output', path: join(dir, 'out') }], [{ what: 'input', path: join(dir, 'src/link_to_out/x.ckpt') }]),
    ).rejects.toThrow(/contains input/);
  });
  it('an output inside the input, through `..` and a trailing slash', async () => {
    await expect(
      refuseOverlaps([{ what: 'output', path: `${dir}/out/../link_to_src/rank_0/new/` }], [{ what: 'input', path: join(dir, 'src') }]),
    ).rejects.toThrow(/lies inside input/);
  });
  it('siblings are fine, also when the output does not exist yet', async () => {
    await expect(refuseOverlaps([{ what: 'output', path: join(dir, 'out/new/deeper') }], [{ what: 'input', path: join(dir, 'src') }])).resolves.toBeUndefined();
  });
});
