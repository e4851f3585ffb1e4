/**
 * Fault-injection suite (issue 11): a multi-process transform (`--process-num 2`, 8 destination
 * ranks) is killed at seeded random points, then run again. Every time: the rerun exits 0, its
 * outputs and manifest are byte-identical to an uninterrupted run, no temporary file or plan
 * folder is left, every process of the killed run is gone, and the source is unchanged. Files a
 * killed run committed are never wrong, and the rerun writes at least the ranks that were missing
 * and skips only ranks that were there.
 *
 * The seed and the points are fixed here and printed; the kinds of points are all drawn at least
 * once (the list is checked), so that a later change cannot quietly shrink the suite.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { verifyTransform } from '../../plugin/transform/index.js';
import { mulberry32 } from '../helpers/prng.js';
import { runCli } from '../helpers/cli.js';
import { withTempDir } from './helpers.js';
import { leftovers, makeModel, rankFiles, sha256, startCli, taggedPids, until } from './safety-helpers.js';

const SEED = 0x5afe11;
const POINTS = 6;
const RANKS = 8;

type Point =
  | { kind: 'worker-dies'; worker: number; n: number }
  | { kind: 'worker-kills-parent'; worker: number; n: number }
  | { kind: 'worker-dies-mid-group'; worker: number }
  | { kind: 'parent-dies-after-plan' }
  | { kind: 'parent-dies-writing-manifest' }
  | { kind: 'parent-sigkilled'; after: number };

const KINDS: readonly Point['kind'][] = [
  'worker-dies', 'worker-kills-parent', 'worker-dies-mid-group', 'parent-dies-after-plan', 'parent-dies-writing-manifest', 'parent-sigkilled',
];

/** The points: every kind once (in a seeded order), the rest drawn at random. */
function points(seed: number): Point[] {
  const rnd = mulberry32(seed);
  const pick = (n: number): number => Math.floor(rnd() * n);
  const kinds = [...KINDS];
  for (let i = kinds.length - 1; i > 0; i--) {
    const j = pick(i + 1);
    [kinds[i], kinds[j]] = [kinds[j] as Point['kind'], kinds[i] as Point['kind']];
  }
  while (kinds.length < POINTS) kinds.push(KINDS[pick(KINDS.length)] as Point['kind']);
  return kinds.map((kind): Point => {
    switch (kind) {
      case 'worker-dies':
      case 'worker-kills-parent':
        return { kind, worker: pick(2), n: 1 + pick(RANKS / 2) };
      case 'worker-dies-mid-group':
        return { kind, worker: pick(2) };
      case 'parent-sigkilled':
        return { kind, after: 1 + pick(RANKS - 1) };
      default:
        return { kind };
    }
  });
}

function faultFlag(p: Point): string[] {
  switch (p.kind) {
    case 'worker-dies':
      return ['--test-fault', `at=files,n=${p.n},worker=${p.worker},action=kill`];
    case 'worker-kills-parent':
      return ['--test-fault', `at=files,n=${p.n},worker=${p.worker},action=kill-parent`];
    case 'worker-dies-mid-group':
      return ['--test-fault', `at=mid-group,n=1,worker=${p.worker},action=kill`];
    case 'parent-dies-after-plan':
      return ['--test-fault', 'at=plan,action=kill'];
    case 'parent-dies-writing-manifest':
      return ['--test-fault', 'at=manifest,action=kill'];
    case 'parent-sigkilled':
      return [];
  }
}

describe('fault injection: a 2-process transform killed at seeded points, then rerun', () => {
  it(`seed ${SEED}: outputs byte-identical to an uninterrupted run, nothing left over, the source unchanged`, async () => {
    const list = points(SEED);
    expect(new Set(list.map((p) => p.kind)).size).toBe(KINDS.length);
    console.log(`fault suite seed ${SEED}: ${list.map((p) => JSON.stringify(p)).join(' ')}`);
    await withTempDir(async (dir) => {
      const m = await makeModel(dir, 16);
      const srcHash = sha256(m.complete);
      const args = (dst: string): string[] => ['transform', '--src-checkpoint', m.complete, '--dst-strategy', m.s8, '--dst-checkpoint-dir', dst, '--process-num', '2'];
      const ref = join(dir, 'ref');
      const r0 = await runCli([...args(ref), '--json']);
      expect(r0.exitCode, r0.stderr).toBe(0);
      const refFiles = await rankFiles(ref);
      expect(Object.keys(refFiles)).toHaveLength(RANKS);
      const refManifest = JSON.parse(await readFile(join(ref, 'transform_manifest.json'), 'utf8')) as { files: unknown; fingerprintHash: string };
      const figures: string[] = [];
      for (const [i, p] of list.entries()) {
        const out = join(dir, `p${i}`);
        const run = startCli([...args(out), ...faultFlag(p)]);
        if (p.kind === 'parent-sigkilled') {
          await until(() => committedCount(out) >= p.after || run.child.exitCode !== null, `point ${i}: ${p.after} file(s)`);
          run.child.kill('SIGKILL');
        }
        const end = await run.exited;
        // an injected fault always interrupts; an outside SIGKILL may come after the last file (then it is a plain rerun)
        if (p.kind !== 'parent-sigkilled') expect(end.code, `point ${i} ${JSON.stringify(p)}: not interrupted (${run.stderr})`).not.toBe(0);
        await until(() => taggedPids(run.tag).length === 0, `point ${i}: every process of the killed run to exit`, 15_000);
        const before = await rankFiles(out).catch(() => ({}) as Record<string, string>);
        for (const [k, h] of Object.entries(before)) expect(h, `point ${i}: ${k} committed with wrong bytes`).toBe(refFiles[k]);
        const again = await runCli([...args(out), '--json']);
        expect(again.exitCode, `point ${i} rerun: ${again.stderr}`).toBe(0);
        const rep = JSON.parse(again.stdout) as { written: number[]; skipped: number[]; bytesWritten: number };
        const present = new Set(Object.keys(before).map((k) => Number(/^rank_(\d+)/.exec(k)?.[1])));
        for (const r of rep.skipped) expect(present.has(r), `point ${i}: rank ${r} skipped but was not there`).toBe(true);
        for (let r = 0; r < RANKS; r++) if (!present.has(r)) expect(rep.written, `point ${i}: missing rank ${r} not written`).toContain(r);
        expect([...rep.written, ...rep.skipped].sort((a, b) => a - b)).toEqual([...Array(RANKS).keys()]);
        expect(await rankFiles(out)).toEqual(refFiles);
        const man = JSON.parse(await readFile(join(out, 'transform_manifest.json'), 'utf8')) as { files: unknown; fingerprintHash: string };
        expect(man.files).toEqual(refManifest.files);
        expect(man.fingerprintHash).toBe(refManifest.fingerprintHash);
        expect(leftovers(out)).toEqual([]);
        expect((await verifyTransform(out)).ok).toBe(true);
        figures.push(`${p.kind}: ${present.size}/${RANKS} ranks kept, ${rep.written.length} rewritten (${rep.bytesWritten} bytes)`);
      }
      expect(sha256(m.complete)).toBe(srcHash);
      console.log(`fault suite figures:\n  ${figures.join('\n  ')}`);
    });
  });
});

function committedCount(dir: string): number {
  let n = 0;
  for (let r = 0; r < RANKS; r++) if (existsSync(join(dir, `rank_${r}`, `checkpoint_${r}.ckpt`))) n++;
  return n;
}
