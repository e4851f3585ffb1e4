/**
 * `msckpt launch`: one job per output_dir, and the join deadline. Real processes through the
 * msrun stand-in; the job identity is derived from msrun's environment and the YAML.
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadRunConfig } from '../../plugin/launcher/config.js';
import { writeStrategyForRank } from '../../examples/stand-ins/model.js';
import { jobIdentity, msrunClusterTimeoutMs } from '../../plugin/launcher/identity.js';
import { runCli } from '../helpers/cli.js';
import { exitCodes, filesAppear, hashTree, useJobDirs, runJob, runYaml, writeComplete, writeYaml } from './launch-helpers.js';

const jobDir = useJobDirs();

describe('launch: one job per output_dir', () => {
  it('a second job on the same output_dir is refused at once on every rank, naming the first, which stays untouched; a rerun after the first was SIGKILLed works', async () => {
    const dir = await jobDir();
    await writeComplete(dir);
    // job A (run.yaml, mp2) and job B (other.yaml, dp2) share ./output (strategies given: no strategy pass)
    await writeStrategyForRank(join(dir, 'a.ckpt'), { dp: 1, mp: 2, pp: 1 }, 0);
    await writeStrategyForRank(join(dir, 'b.ckpt'), { dp: 2, mp: 1, pp: 1 }, 0);
    await writeYaml(dir, runYaml({ load: './weights/model.ckpt', par: { dp: 1, mp: 2, pp: 1 }, msckpt: { dst_strategy: './a.ckpt' } }));
    await writeFile(join(dir, 'other.yaml'), runYaml({ load: './weights/model.ckpt', par: { dp: 2, mp: 1, pp: 1 }, msckpt: { dst_strategy: './b.ckpt' } }));
    const groups: number[] = [];
    const a = runJob({ nodeDirs: [dir], workerNum: 2, logDir: join(dir, 'logsA'), env: { STANDIN_HOLD: '1' }, onSpawn: (_r, pid) => groups.push(pid) });
    // job A converts and trains (its training does not end)
    await filesAppear(join(dir, 'logsA'), ['reports/train_rank_0.json', 'reports/train_rank_1.json'], a);
    const skip = (rel: string): boolean => rel.startsWith('logs') || rel === join('output', 'msckpt', 'job.beat');
    const before = await hashTree(dir, skip);
    expect([...before.keys()]).toContain(join('output', 'msckpt', 'job.json'));
    expect([...before.keys()]).toContain(join('output', 'transformed_checkpoint', 'model', 'rank_1', 'checkpoint_1.ckpt'));

    const b = await runJob({ nodeDirs: [dir], workerNum: 2, logDir: join(dir, 'logsB'), config: 'other.yaml', masterPort: 8119 });
    expect(exitCodes(b), b.logs.join('\n')).toEqual([2, 2]);
    for (const log of b.logs) {
      expect(log).toMatch(
        /output\/msckpt is in use by another job: job [0-9a-f]{12} \(rank 0, pid \d+ on host \S+, started \d{4}-\d\d-\d\dT[\d:.]+Z, YAML \S+\/run\.yaml\) is alive \(its process is running on this machine\)\. Nothing was changed\./,
      );
    }
    expect(await hashTree(dir, skip)).toEqual(before);
    expect(existsSync(join(dir, 'logsB', 'reports'))).toBe(false);

    // job A dies (its ranks and their training, SIGKILL); B started again takes output/ over
    for (const pid of groups) process.kill(-pid, 'SIGKILL');
    expect(exitCodes(await a)).toEqual(['SIGKILL', 'SIGKILL']);
    const b2 = await runJob({ nodeDirs: [dir], workerNum: 2, logDir: join(dir, 'logsB2'), config: 'other.yaml', masterPort: 8119 });
    expect(exitCodes(b2), b2.logs.join('\n')).toEqual([0, 0]);
    expect(b2.logs[0]).toMatch(/job [0-9a-f]{16} holds .*output\/msckpt \(msrun scheduler 127\.0\.0\.1:8119 on \S+\); all 2 ranks joined/);
    for (const k of [0, 1]) {
      const rep = JSON.parse(await readFile(join(dir, 'logsB2', 'reports', `train_rank_${k}.json`), 'utf8')) as { problems: string[]; file: string };
      expect(rep.problems).toEqual([]);
      expect(rep.file).toBe(join(dir, 'output', 'transformed_checkpoint', 'model', `rank_${k}`, `checkpoint_${k}.ckpt`));
    }
    // the job ended: it gave output/msckpt up
    expect(existsSync(join(dir, 'output', 'msckpt', 'job.json'))).toBe(false);
  });
});

describe('launch: join deadline', () => {
  it('a node that never starts is named on every rank after --join-timeout, not the barrier timeout', async () => {
    const dir = await jobDir();
    await writeComplete(dir);
    await writeYaml(dir, runYaml({ load: './weights/model.ckpt', par: { dp: 1, mp: 4, pp: 1 }, msckpt: { shared_disk: true, poll_interval: '100ms' } }));
    // 4 ranks on 2 nodes; node 1 (ranks 2 and 3) never starts
    const r = await runJob({ nodeDirs: [dir, dir], workerNum: 4, logDir: join(dir, 'logs'), onlyNodes: [0], launchArgs: ['--join-timeout', '3s'] });
    expect(exitCodes(r)).toEqual([1, 1]);
    for (const log of r.logs) expect(log).toMatch(/ranks 2, 3 did not join within the join timeout of 3\.0 s \(2 of 4 joined\): not started, or died before joining/);
  });

  it('reads msckpt.join_timeout as a duration and --join-timeout with the same reader', async () => {
    const dir = await jobDir();
    const yaml = (v: string): string => runYaml({ load: './weights/model.ckpt', par: { dp: 1, mp: 1, pp: 1 }, useParallel: false, msckpt: { join_timeout: v } });
    await writeComplete(dir);
    for (const [text, ms] of [['90s', 90_000], ['30', 30_000], ['10m', 600_000]] as const) {
      await writeYaml(dir, yaml(text));
      expect((await loadRunConfig(join(dir, 'run.yaml'), { cwd: dir })).msckpt.joinTimeout).toBe(ms / 1000);
    }
    await writeYaml(dir, yaml('soon'));
    await expect(loadRunConfig(join(dir, 'run.yaml'), { cwd: dir })).rejects.toThrow(/msckpt\.join_timeout: cannot read 'soon'/);
    const bad = await runCli(['launch', '--config', 'run.yaml', '--join-timeout', 'soon', '--', 'true']);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toMatch(/--join-timeout: cannot read 'soon'/);
    expect(msrunClusterTimeoutMs({ MS_TOPO_TIMEOUT: '900' })).toBe(900_000);
    expect(msrunClusterTimeoutMs({ MS_TOPO_TIMEOUT: '-1' })).toBeUndefined();
  });
});

describe('launch: job identity', () => {
  const env = { MS_SCHED_HOST: '10.1.2.3', MS_SCHED_PORT: '8118', MS_WORKER_NUM: '16' };
  it('is the same on every rank of a job and differs between jobs', () => {
    const a = jobIdentity({ ...env, RANK_ID: '0' }, '/shared/run.yaml', 16, 'node-a');
    const a2 = jobIdentity({ ...env, RANK_ID: '9', DEVICE_ID: '1' }, '/shared/run.yaml', 16, 'node-b');
    expect(a.id).toBe(a2.id);
    expect(a.from).toBe('msrun');
    expect(a.details).toEqual({ yaml: '/shared/run.yaml', workers: '16', scheduler: '10.1.2.3:8118' });
    expect(jobIdentity({ ...env, MS_SCHED_PORT: '8119' }, '/shared/run.yaml', 16).id).not.toBe(a.id);
    expect(jobIdentity(env, '/shared/other.yaml', 16).id).not.toBe(a.id);
    expect(jobIdentity(env, '/shared/run.yaml', 8).id).not.toBe(a.id);
    // a loopback scheduler is the same address on every machine: the host tells jobs apart
    const lo = { MS_SCHED_HOST: '127.0.0.1', MS_SCHED_PORT: '8118' };
    expect(jobIdentity(lo, '/shared/run.yaml', 8, 'h1').id).not.toBe(jobIdentity(lo, '/shared/run.yaml', 8, 'h2').id);
    // without msrun's scheduler variables: the YAML and the world size only
    const f = jobIdentity({ RANK_ID: '0', RANK_SIZE: '8' }, '/shared/run.yaml', 8);
    expect(f.from).toBe('fallback');
    expect(f.id).toBe(jobIdentity({ RANK_ID: '5', RANK_SIZE: '8' }, '/shared/run.yaml', 8).id);
  });
});
