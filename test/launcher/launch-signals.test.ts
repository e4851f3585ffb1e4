/**
 * `msckpt launch` and SIGINT/SIGTERM: real processes through the msrun stand-in, real signals.
 * Before training a signalled rank stops (a converter between two bands, its temporary files
 * removed), tells the other ranks (they stop naming it and the signal), prints one line and exits
 * 128 + the signal's number; during training the command gets the signal and its exit code is
 * the rank's. Each rank is held at the point under test (`--test-fault RANK:POINT:hold`, or a
 * strategy pass that does not end) and signalled once the test sees it there.
 */
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  exitCodes, filesAppear, hashTree, ledgerProblems, logShows, runJob, tempFilesUnder, trainReports, useJobDirs, writeFourRankJob, type JobRun,
} from './launch-helpers.js';

const jobDir = useJobDirs();

/** A 4-rank job (mp4, converters 0 and 2) on the complete stand-in model. */
const fourRankJob = async (): Promise<string> => writeFourRankJob(await jobDir());

const notOutput = (rel: string): boolean => rel.startsWith('logs') || rel.startsWith('output');

/** Start a job whose ranks run in their own process groups; `pids` fills as they start. */
function start(dir: string, launchArgs: string[], env: Record<string, string> = {}): { job: Promise<JobRun>; pids: Map<number, number> } {
  const pids = new Map<number, number>();
  const job = runJob({ nodeDirs: [dir], workerNum: 4, logDir: join(dir, 'logs'), launchArgs, env, onSpawn: (r, pid) => pids.set(r, pid) });
  return { job, pids };
}

/** The other ranks' exit after the signal, in ms (the slowest), printed for the report. */
function detection(r: JobRun, signalled: number, at: number, what: string): number {
  const others = r.results.filter((x) => x.rank !== signalled);
  const ms = Math.max(...others.map((x) => x.ended - at));
  process.stdout.write(`[signals] ${what}: the other ${others.length} ranks exited ${ms} ms after rank ${signalled} was signalled\n`);
  return ms;
}

describe('launch: SIGINT/SIGTERM before training', () => {
  it('SIGTERM to a converter in the middle of a file: it removes its temporary files, tells the others, exits 143', async () => {
    const dir = await fourRankJob();
    const before = await hashTree(dir, notOutput);
    const { job, pids } = start(dir, ['--dst-strategy', './dst.ckpt', '--memory', '4M', '--test-fault', '2:1+:hold']);
    // rank 2 committed one file and holds in the middle of the next (its temporary file is there)
    const model = join(dir, 'output', 'transformed_checkpoint', 'model');
    await logShows(join(dir, 'logs', 'worker_2.log'), /holds at the middle of converted file 2/, job);
    expect((await readdir(join(model, 'rank_3'))).filter((n) => n.endsWith('.tmp'))).toHaveLength(1);
    const at = Date.now();
    process.kill(pids.get(2) as number, 'SIGTERM');
    const r = await job;
    expect(exitCodes(r), r.logs.join('\n')).toEqual([1, 1, 143, 1]);
    expect(r.logs[2]).toMatch(/stopped by SIGTERM during 'convert'; the other ranks were told, the temporary files of this rank removed/);
    expect(r.logs[2]?.match(/stopped by SIGTERM/g)).toHaveLength(1);
    for (const k of [0, 1, 3]) expect(r.logs[k]).toMatch(/rank 2 \(host .*\) failed during 'convert': stopped by SIGTERM/);
    expect(await tempFilesUnder(join(dir, 'output'))).toEqual([]);
    // what was committed is recorded; the source is untouched; nobody trained
    expect(existsSync(join(model, 'rank_2', 'checkpoint_2.ckpt'))).toBe(true);
    expect(existsSync(join(model, 'rank_3', 'checkpoint_3.ckpt'))).toBe(false);
    expect(await ledgerProblems(join(dir, 'output'))).toEqual([]);
    expect(await hashTree(dir, notOutput)).toEqual(before);
    expect(await trainReports(join(dir, 'logs'))).toEqual(new Map());
    detection(r, 2, at, 'SIGTERM to a converter');
  });

  it('SIGINT to a rank (and its strategy pass) during the strategy step: exit 130, the others name it', async () => {
    const dir = await fourRankJob();
    const { job, pids } = start(dir, [], { STANDIN_STRATEGY_HOLD_RANK: '1' });
    await filesAppear(join(dir, 'logs'), ['reports/strategy_rank_1.json'], job);
    const at = Date.now();
    process.kill(-(pids.get(1) as number), 'SIGINT'); // as a terminal's Ctrl-C: the launcher and its pass
    const r = await job;
    expect(exitCodes(r), r.logs.join('\n')).toEqual([1, 130, 1, 1]);
    expect(r.logs[1]).toMatch(/stopped by SIGINT during 'strategy'/);
    for (const k of [0, 2, 3]) expect(r.logs[k]).toMatch(/rank 1 \(host .*\) failed during 'strategy': stopped by SIGINT/);
    expect(await tempFilesUnder(join(dir, 'output'))).toEqual([]);
    detection(r, 1, at, 'SIGINT during the strategy pass');
  });

  for (const [point, signal, stage, code] of [['clean', 'SIGINT', 'clean', 130], ['planned', 'SIGTERM', 'check', 143]] as const) {
    it(`${signal} to the coordinating rank during '${stage}': exit ${code}, every other rank stops naming it`, async () => {
      const dir = await fourRankJob();
      const { job, pids } = start(dir, ['--dst-strategy', './dst.ckpt', '--test-fault', `0:${point}:hold`]);
      await logShows(join(dir, 'logs', 'worker_0.log'), /holds at/, job);
      const at = Date.now();
      process.kill(pids.get(0) as number, signal);
      const r = await job;
      expect(exitCodes(r), r.logs.join('\n')).toEqual([code, 1, 1, 1]);
      expect(r.logs[0]).toMatch(new RegExp(`stopped by ${signal} during '${stage}'`));
      for (const k of [1, 2, 3]) expect(r.logs[k]).toMatch(new RegExp(`rank 0 \\(host .*\\) failed during '${stage}': stopped by ${signal}`));
      expect(await tempFilesUnder(join(dir, 'output'))).toEqual([]);
      detection(r, 0, at, `${signal} during '${stage}'`);
    });
  }
});

describe('launch: signals during training', () => {
  it("go to the training command, and its exit code is the rank's", async () => {
    const dir = await fourRankJob();
    const { job, pids } = start(dir, ['--dst-strategy', './dst.ckpt'], { STANDIN_HOLD: '1', STANDIN_TERM_EXIT: '42' });
    await filesAppear(join(dir, 'logs'), [0, 1, 2, 3].map((k) => `reports/train_rank_${k}.json`), job);
    process.kill(pids.get(0) as number, 'SIGTERM'); // the launcher only: it forwards to its training command
    for (const k of [1, 2, 3]) process.kill(-(pids.get(k) as number), 'SIGKILL');
    const r = await job;
    expect(exitCodes(r)).toEqual([42, 'SIGKILL', 'SIGKILL', 'SIGKILL']);
    for (const rep of (await trainReports(join(dir, 'logs'))).values()) expect(rep.problems).toEqual([]);
  });
});
