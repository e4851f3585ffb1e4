/**
 * Issue 14.4: `msckpt transform --cluster` run as several local processes standing in for nodes
 * (RANK_ID/RANK_SIZE as msrun sets them, and slurm's SLURM_PROCID/SLURM_NTASKS): each writes its
 * block of destination ranks, the output is byte-identical to a single-process run, with one
 * manifest (written by process 0, the last to finish) and nothing of the coordination left.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { verifyTransform } from '../../plugin/transform/index.js';
import { runCli } from '../helpers/cli.js';
import { withTempDir } from './helpers.js';
import { leftovers, makeModel, rankFiles, startCli } from './safety-helpers.js';

interface Report {
  written: number[];
  manifest: string | null;
}

describe('transform --cluster', () => {
  it('3 processes with RANK_ID/RANK_SIZE, and 2 with slurm variables, write what one process writes; one manifest', async () => {
    await withTempDir(async (dir) => {
      const m = await makeModel(dir, 4);
      const args = (dst: string, extra: string[] = []): string[] => [
        'transform', '--src-checkpoint', m.complete, '--dst-strategy', m.s8, '--dst-checkpoint-dir', dst, '--json', ...extra,
      ];
      const one = join(dir, 'one');
      const r1 = await runCli(args(one));
      expect(r1.exitCode, r1.stderr).toBe(0);
      const refFiles = await rankFiles(one);
      const refManifest = await readFile(join(one, 'transform_manifest.json'), 'utf8');

      const runs: { name: string; envs: Record<string, string>[]; extra: string[]; blocks: number[][] }[] = [
        {
          name: 'msrun', extra: ['--cluster'],
          envs: [0, 1, 2].map((i) => ({ RANK_ID: String(i), RANK_SIZE: '3' })), blocks: [[0, 1], [2, 3, 4], [5, 6, 7]],
        },
        {
          name: 'slurm', extra: ['--cluster', 'slurm'],
          envs: [0, 1].map((i) => ({ SLURM_PROCID: String(i), SLURM_NTASKS: '2' })), blocks: [[0, 1, 2, 3], [4, 5, 6, 7]],
        },
      ];
      for (const run of runs) {
        const out = join(dir, run.name);
        const procs = run.envs.map((env) => startCli(args(out, run.extra), env));
        const ends = await Promise.all(procs.map((p) => p.exited));
        ends.forEach((e, i) => expect(e.code, `${run.name} process ${i}: ${procs[i]?.stderr}`).toBe(0));
        const reports = procs.map((p) => JSON.parse(p.stdout) as Report);
        // process 0 reports the whole run; each other process its own block
        expect(reports[0]?.written).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
        reports.slice(1).forEach((r, i) => expect(r.written, `${run.name} process ${i + 1}`).toEqual(run.blocks[i + 1]));
        for (const r of reports) expect(r.manifest).toBe(join(out, 'transform_manifest.json'));
        expect(await rankFiles(out)).toEqual(refFiles);
        expect(await readFile(join(out, 'transform_manifest.json'), 'utf8')).toBe(refManifest);
        expect((await readdir(out)).sort()).toEqual([...Array(8).keys()].map((r) => `rank_${r}`).concat('transform_manifest.json').sort());
        expect(leftovers(out)).toEqual([]);
        expect((await verifyTransform(out)).ok).toBe(true);
      }
      // msrun's scheduler process takes no part
      const sched = await runCli(args(join(dir, 'sched'), ['--cluster']).filter((a) => a !== '--json'), { env: { ...process.env, RANK_SIZE: '2', MS_WORKER_NUM: '2', MS_ROLE: 'MS_SCHED' } as Record<string, string> });
      expect(sched.exitCode, sched.stderr).toBe(0);
      expect(sched.stderr).toMatch(/scheduler process: nothing to convert here/);
    });
  });

  it('a process killed mid-run is named by the others, which stop; the same command again redoes only the missing ranks', async () => {
    await withTempDir(async (dir) => {
      const m = await makeModel(dir, 4);
      const args = (dst: string, extra: string[] = []): string[] => [
        'transform', '--src-checkpoint', m.complete, '--dst-strategy', m.s8, '--dst-checkpoint-dir', dst, '--cluster', '--json', ...extra,
      ];
      const one = join(dir, 'one');
      expect((await runCli(args(one).filter((a) => a !== '--cluster'))).exitCode).toBe(0);
      const refFiles = await rankFiles(one);
      const out = join(dir, 'out');
      // process 1 (ranks 2-4) is SIGKILLed after its first file
      const procs = [0, 1, 2].map((i) => startCli(args(out, i === 1 ? ['--test-fault', 'at=files,n=1,action=kill'] : []), { RANK_ID: String(i), RANK_SIZE: '3' }));
      const ends = await Promise.all(procs.map((p) => p.exited));
      expect(ends[1]?.signal).toBe('SIGKILL');
      for (const i of [0, 2]) {
        expect(ends[i]?.code, procs[i]?.stderr).toBe(1);
        expect(procs[i]?.stderr).toMatch(/rank 1 \(host .*, pid \d+\) failed .*ended without reporting: killed/);
      }
      const kept = await rankFiles(out);
      for (const [k, h] of Object.entries(kept)) expect(h, k).toBe(refFiles[k]);
      const missing = [...Array(8).keys()].filter((r) => kept[`rank_${r}/checkpoint_${r}.ckpt`] === undefined);
      expect(missing).toContain(3);
      const again = [0, 1, 2].map((i) => startCli(args(out), { RANK_ID: String(i), RANK_SIZE: '3' }));
      const ends2 = await Promise.all(again.map((p) => p.exited));
      ends2.forEach((e, i) => expect(e.code, again[i]?.stderr).toBe(0));
      const rep = JSON.parse(again[0]?.stdout ?? '') as Report & { skipped: number[] };
      expect(rep.written).toEqual(missing);
      expect(await rankFiles(out)).toEqual(refFiles);
      expect(leftovers(out)).toEqual([]);
      expect((await verifyTransform(out)).ok).toBe(true);
    });
  });
});
