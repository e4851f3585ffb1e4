/**
 * Fault injection on an 8-rank launch (2 nodes of 4 on a shared disk, issue 11): a tiny generated model converted for dp2·mp4 by
 * two converter ranks (0, the leader, and 4), each writing four rank files. At seeded points a
 * converter or the leader is SIGKILLed (by the hidden `--test-fault RANK:POINT:kill`, or held at
 * the point and SIGKILLed by the test); every rank of the faulted run must exit non-zero, naming
 * the dead rank; the same launch started again must give outputs byte-identical to an
 * uninterrupted launch, leave no temporary file, and change no source or user file.
 *
 * The seed is MSCKPT_FAULT_SEED when set, else fixed (so CI runs the same points every time);
 * the seed, the points and what each run measured (how long the other ranks took to exit after
 * the dead one, the bytes the relaunch wrote again) are printed.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkRankFile, writeStrategyForRank } from '../../examples/stand-ins/model.js';
import { mulberry32 } from '../helpers/prng.js';
import {
  exitCodes, hashTree, logShows, runJob, runYaml, tempFilesUnder, useJobDirs, writeComplete, writeYaml, type JobRun,
} from './launch-helpers.js';

const jobDir = useJobDirs();

const PAR = { dp: 2, mp: 4, pp: 1 };
const CONVERTERS = [0, 4] as const;
/** Rank files each converter writes (mp4: four distinct slices per data-parallel group). */
const FILES_PER_CONVERTER = 4;
const SEED = process.env['MSCKPT_FAULT_SEED'] !== undefined ? Number(process.env['MSCKPT_FAULT_SEED']) : 20261130;
/** A training command that ends at once: the suite judges the converted files, not training. */
const NO_TRAINING = ['true'];
/** Two nodes of four ranks on one shared folder. */
const NODES = (dir: string): string[] => [dir, dir];

interface FaultPoint {
  rank: number;
  /** The launch point (`--test-fault` syntax: N, N+, clean, planned). */
  at: string;
  /** `kill`: the rank SIGKILLs itself there; `external`: it holds there and the test SIGKILLs it. */
  how: 'kill' | 'external';
}

/**
 * Three points from the seed: the leader at a point of its own (the clean, the plan, or one of its
 * files), the other converter in the middle of or after one of its files, and a converter held
 * in the middle of a file and SIGKILLed from outside.
 */
function pickPoints(seed: number): FaultPoint[] {
  const rnd = mulberry32(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
  const filePoint = (): string => {
    const mid = rnd() < 0.5;
    const n = mid ? Math.floor(rnd() * FILES_PER_CONVERTER) : 1 + Math.floor(rnd() * (FILES_PER_CONVERTER - 1));
    return mid ? `${n}+` : String(n);
  };
  return [
    { rank: 0, at: pick(['clean', 'planned', filePoint()]), how: 'kill' },
    { rank: 4, at: filePoint(), how: 'kill' },
    { rank: pick(CONVERTERS), at: `${Math.floor(rnd() * FILES_PER_CONVERTER)}+`, how: 'external' },
  ];
}

/** The bytes the leader's plan says the conversion writes (`total: ... written`). */
function bytesWritten(log: string): string {
  return /total: [^,]+ read, (.+?) written/.exec(log)?.[1] ?? '(no conversion)';
}

describe('launch: fault injection, 8 ranks', () => {
  it(`a converter or the leader SIGKILLed at seeded points, then relaunched: outputs byte-identical, no temporary file, sources and user files intact (seed ${SEED})`, async () => {
    const started = Date.now();
    const points = pickPoints(SEED);
    process.stdout.write(`[faults] seed ${SEED}; points: ${points.map((p) => `rank ${p.rank} at ${p.at} (${p.how})`).join('; ')}\n`);

    const dir = await jobDir();
    await writeComplete(dir);
    await writeStrategyForRank(join(dir, 'dst.ckpt'), PAR, 0);
    await writeYaml(dir, runYaml({ load: './weights/model.ckpt', par: PAR, tpn: CONVERTERS.length, msckpt: { shared_disk: true, poll_interval: '100ms' } }));
    // user files: beside the job and at output_dir's top (which msckpt neither writes nor cleans)
    await mkdir(join(dir, 'output'), { recursive: true });
    await writeFile(join(dir, 'notes.txt'), 'my run\n');
    await writeFile(join(dir, 'output', 'README.user'), 'kept by the user\n');
    const userAndSources = (rel: string): boolean => rel.startsWith('logs') || (rel.startsWith('output') && rel !== join('output', 'README.user'));
    const before = await hashTree(dir, userAndSources);
    // --memory 4M: one rank file per group, so that points fall between and inside files
    const launchArgs = ['--dst-strategy', './dst.ckpt', '--heartbeat-timeout', '3600', '--memory', '4M'];
    const outputs = async (): Promise<Map<string, string>> => hashTree(join(dir, 'output', 'transformed_checkpoint'));

    // the uninterrupted launch; every rank file holds exactly that rank's slices (checked here,
    // in this process, as the training stand-in would)
    const base = await runJob({ nodeDirs: NODES(dir), logDir: join(dir, 'logs-base'), trainCommand: NO_TRAINING, launchArgs });
    expect(exitCodes(base), base.logs.join('\n')).toEqual(Array(8).fill(0));
    const expected = await outputs();
    expect(expected.size).toBe(8);
    for (let k = 0; k < 8; k++) {
      expect(await checkRankFile(join(dir, 'output', 'transformed_checkpoint', 'model', `rank_${k}`, `checkpoint_${k}.ckpt`), PAR, k)).toEqual([]);
    }

    for (const [i, p] of points.entries()) {
      const pids = new Map<number, number>();
      const faulted = runJob({
        nodeDirs: NODES(dir), logDir: join(dir, `logs-${i}`), trainCommand: NO_TRAINING, onSpawn: (r, pid) => pids.set(r, pid),
        launchArgs: [...launchArgs, '--test-fault', `${p.rank}:${p.at}:${p.how === 'kill' ? 'kill' : 'hold'}`],
      });
      if (p.how === 'external') {
        await logShows(join(dir, `logs-${i}`, `worker_${p.rank}.log`), /test fault: holds at/, faulted);
        process.kill(pids.get(p.rank) as number, 'SIGKILL');
      }
      const r: JobRun = await faulted;
      const codes = exitCodes(r);
      const what = `point ${i} (rank ${p.rank} at ${p.at}, ${p.how})\n${r.logs.join('\n')}`;
      expect(codes[p.rank], what).toBe('SIGKILL');
      for (const [k, c] of codes.entries()) {
        if (k === p.rank) continue;
        expect(c, what).toBe(1);
        expect(r.logs[k], what).toMatch(new RegExp(`rank ${p.rank} \\(host .*\\) failed during '\\w+': its process \\(pid \\d+ on .*\\) ended without reporting: killed \\(SIGKILL`));
      }
      const dead = r.results.find((x) => x.rank === p.rank)!.ended;
      const othersOut = Math.max(...r.results.filter((x) => x.rank !== p.rank).map((x) => x.ended)) - dead;
      // no process of the faulted run trained; the temporary files left are the dead rank's only
      for (const log of r.logs) expect(log).not.toMatch(/stand-in rank/);
      const deadPid = pids.get(p.rank) as number;
      const leftovers = await tempFilesUnder(join(dir, 'output'));
      for (const t of leftovers) expect(t, what).toMatch(new RegExp(`\\.${deadPid}\\.\\d+\\.tmp$`));

      const again = await runJob({ nodeDirs: NODES(dir), logDir: join(dir, `logs-${i}-again`), trainCommand: NO_TRAINING, launchArgs });
      expect(exitCodes(again), `relaunch after point ${i}\n${again.logs.join('\n')}`).toEqual(Array(8).fill(0));
      expect(await outputs(), `relaunch after point ${i}`).toEqual(expected);
      expect(await tempFilesUnder(join(dir, 'output')), `relaunch after point ${i}`).toEqual([]);
      expect(await hashTree(dir, userAndSources), `relaunch after point ${i}`).toEqual(before);
      const cleaned = /cleaned (\d+) file\(s\)/.exec(again.logs[0] ?? '')?.[1] ?? '?';
      process.stdout.write(
        `[faults] point ${i}: rank ${p.rank} at ${p.at} (${p.how}): the other 7 ranks exited within ${othersOut} ms of its death; ` +
          `it left ${leftovers.length} temporary file(s); the relaunch cleaned ${cleaned} file(s) and wrote ${bytesWritten(again.logs[0] ?? '')} again\n`,
      );
    }
    expect(await readFile(join(dir, 'output', 'README.user'), 'utf8')).toBe('kept by the user\n');
    process.stdout.write(`[faults] ${points.length} points, ${1 + 2 * points.length} launches of 8 ranks in ${Date.now() - started} ms\n`);
  }, 300_000);
});
