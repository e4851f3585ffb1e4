/**
 * `msckpt launch` end to end: real processes through the msrun stand-in, each rank running the
 * real CLI, the training stand-in checking every rank's bytes.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeStrategyForRank } from '../../examples/stand-ins/model.js';
import { runCli } from '../helpers/cli.js';
import { exitCodes, trainReports, useJobDirs, runJob, runYaml, writeComplete, writeFourRankJob, writeSliced, writeYaml } from './launch-helpers.js';

const jobDir = useJobDirs();

async function rankFiles(node: string, name: string): Promise<string[]> {
  const base = join(node, 'output', 'transformed_checkpoint', name);
  if (!existsSync(base)) return [];
  return (await readdir(base)).filter((d) => /^rank_\d+$/.test(d)).sort();
}

describe('launch: 8 ranks on 2 nodes', () => {
  it('shared disk (polling): complete -> dp2·mp2·pp2 with 2 converters, then a rerun over stale outputs -> dp4·mp2 with 1', async () => {
    const dir = await jobDir();
    await writeComplete(dir);
    await writeYaml(dir, runYaml({ load: './weights/model.ckpt', par: { dp: 2, mp: 2, pp: 2 }, tpn: 2, msckpt: { shared_disk: true, poll_interval: '100ms' } }));
    const logs1 = join(dir, 'logs1');
    const r1 = await runJob({ nodeDirs: [dir, dir], logDir: logs1 });
    expect(exitCodes(r1), r1.logs.join('\n')).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    const rep1 = await trainReports(logs1);
    expect([...rep1.keys()].sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    for (const [rank, rep] of rep1) {
      expect(rep.problems).toEqual([]);
      expect(rep.file).toBe(join(dir, 'output', 'transformed_checkpoint', 'model', `rank_${rank}`, `checkpoint_${rank}.ckpt`));
      expect(rep.autoTrans).toBe(false);
    }
    expect(r1.logs[0]).toMatch(/polling every 100 ms/);
    expect(r1.logs[0]).toMatch(/merged 8 strategy files \(stages 0, 1\)/);
    expect(r1.logs[0]).toMatch(/converted slices 0\.\.3 \(4 file\(s\)\)/);
    expect(r1.logs[4]).toMatch(/converted slices 4\.\.7 \(4 file\(s\)\)/);
    expect(r1.logs[5]).toMatch(/waiting for converter rank\(s\) 0, 4/);
    // the user's YAML is untouched
    expect(await readFile(join(dir, 'run.yaml'), 'utf8')).toContain('auto_trans_ckpt: True');

    // Second run in the same folders: every file, marker and generation of run 1 is still there.
    // A new layout makes any reuse of run 1's slices visible as wrong bytes.
    await writeYaml(dir, runYaml({ load: './weights/model.ckpt', par: { dp: 4, mp: 2, pp: 1 }, tpn: 1, msckpt: { shared_disk: true, poll_interval: '100ms' } }));
    const logs2 = join(dir, 'logs2');
    const r2 = await runJob({ nodeDirs: [dir, dir], logDir: logs2 });
    expect(exitCodes(r2), r2.logs.join('\n')).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    for (const rep of (await trainReports(logs2)).values()) expect(rep.problems).toEqual([]);
    // run 1 wrote, and recorded: 8 strategy files, the merged strategy, 8 converted files, 16 derived YAMLs
    expect(r2.logs[0]).toMatch(/cleaned 33 file\(s\) msckpt or a strategy pass wrote before/);
    expect(r2.logs[0]).toMatch(/converted slices 0\.\.7 \(8 file\(s\)\)/);
    expect(existsSync(join(dir, 'output', 'strategy', 'merged_ckpt_strategy.ckpt'))).toBe(false);
    // one generation of coordination files: run 2's
    expect(await readdir(join(dir, 'output', 'msckpt', 'coord', 'gen'))).toHaveLength(1);
  });

  it('no shared disk: mp2 slices -> dp2·mp4, 4 converters, each node converting its own ranks', async () => {
    const nodes = [await jobDir(), await jobDir()];
    for (const node of nodes) {
      // each node has its own copy of the source and of the job's strategy
      await writeSliced(node, { dp: 1, mp: 2, pp: 1 });
      await mkdir(join(node, 'dst'), { recursive: true });
      await writeStrategyForRank(join(node, 'dst', 'ckpt_strategy_rank_0.ckpt'), { dp: 2, mp: 4, pp: 1 }, 0);
      await writeYaml(node, runYaml({ load: './sliced', srcStrategy: './src_strategy', par: { dp: 2, mp: 4, pp: 1 }, tpn: 4 }));
    }
    const logs = join(nodes[0] as string, 'logs');
    const r = await runJob({ nodeDirs: nodes, logDir: logs, launchArgs: ['--no-shared-disk', '--dst-strategy', './dst/ckpt_strategy_rank_0.ckpt'] });
    expect(exitCodes(r), r.logs.join('\n')).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    const reps = await trainReports(logs);
    for (const [rank, rep] of reps) {
      expect(rep.problems).toEqual([]);
      expect(rep.file.startsWith(rank < 4 ? (nodes[0] as string) : (nodes[1] as string))).toBe(true);
    }
    expect(reps.size).toBe(8);
    expect(await rankFiles(nodes[0] as string, 'sliced')).toEqual(['rank_0', 'rank_1', 'rank_2', 'rank_3']);
    expect(await rankFiles(nodes[1] as string, 'sliced')).toEqual(['rank_4', 'rank_5', 'rank_6', 'rank_7']);
    expect(r.logs[0]).toMatch(/no shared disk: node 0 converts its own ranks 0\.\.3/);
    expect(r.logs[4]).toMatch(/no shared disk: node 1 converts its own ranks 4\.\.7/);
    for (const k of [0, 2, 4, 6]) expect(r.logs[k]).toMatch(new RegExp(`converted slices ${k}\\.\\.${k + 1} \\(2 file`));
  });
});

describe('launch: failures stop every rank', () => {
  const fourRankJob = async (): Promise<string> => writeFourRankJob(await jobDir());

  it('a converter killed with SIGKILL mid-way: all ranks fail promptly, naming it', async () => {
    const dir = await fourRankJob();
    const r = await runJob({
      nodeDirs: [dir],
      workerNum: 4,
      logDir: join(dir, 'logs'),
      launchArgs: ['--dst-strategy', './dst.ckpt', '--heartbeat-timeout', '3600', '--test-fault', '2:1:kill'],
    });
    expect(exitCodes(r)).toEqual([1, 1, 'SIGKILL', 1]);
    for (const k of [0, 1, 3]) {
      expect(r.logs[k]).toMatch(/rank 2 \(host .*\) failed during 'convert': its process \(pid \d+ on .*\) ended without reporting: killed \(SIGKILL, out of memory\)/);
    }
    expect(await trainReports(join(dir, 'logs'))).toEqual(new Map());
  });

  it('a converter killed on another machine is found by its stale heartbeat', async () => {
    const dir = await fourRankJob();
    // one converter (rank 0), so no other rank's heartbeat is judged on this loaded machine
    await writeYaml(dir, runYaml({ load: './weights/model.ckpt', par: { dp: 1, mp: 4, pp: 1 }, tpn: 1 }));
    // four "machines" of one rank each: no rank can look at another's process
    const r = await runJob({
      nodeDirs: [dir, dir, dir, dir],
      workerNum: 4,
      machinePerNode: true,
      logDir: join(dir, 'logs'),
      launchArgs: ['--dst-strategy', './dst.ckpt', '--shared-disk', '--local-worker-num', '1', '--heartbeat-timeout', '1', '--poll-interval', '100ms', '--test-fault', '0:1:kill'],
    });
    expect(exitCodes(r)).toEqual(['SIGKILL', 1, 1, 1]);
    for (const k of [1, 2, 3]) {
      expect(r.logs[k]).toMatch(/rank 0 \(host .*\) failed during 'convert': no heartbeat for [\d.]+ s \(limit 1\.0 s; last: /);
    }
  });

  it('a converter that throws: all ranks fail with its error text', async () => {
    const dir = await fourRankJob();
    const r = await runJob({
      nodeDirs: [dir],
      workerNum: 4,
      logDir: join(dir, 'logs'),
      launchArgs: ['--dst-strategy', './dst.ckpt', '--test-fault', '2:1:throw'],
    });
    expect(exitCodes(r)).toEqual([1, 1, 1, 1]);
    expect(r.logs[2]).toMatch(/msckpt: injected failure after 1 file\(s\)/);
    for (const k of [0, 1, 3]) expect(r.logs[k]).toMatch(/rank 2 \(host .*\) failed during 'convert': injected failure after 1 file\(s\)/);
  });

  it('a weight the job needs but the source lacks stops every rank with one report', async () => {
    const dir = await jobDir();
    await writeSliced(dir, { dp: 1, mp: 2, pp: 1 });
    // the job's layout names a parameter the checkpoint does not have
    const { makeStrategy } = await import('../../plugin/formats/strategy/names.js');
    const { writeStrategy } = await import('../../plugin/formats/strategy/io.js');
    const { strategyForRank } = await import('../../examples/stand-ins/model.js');
    const base = strategyForRank({ dp: 1, mp: 2, pp: 1 }, 0);
    const extra = { ...(base.layouts[1] as (typeof base.layouts)[number]), name: 'model.layers.9.attention.wq.weight' };
    await writeStrategy(join(dir, 'dst.ckpt'), makeStrategy({ currentStage: 1, layouts: [...base.layouts, extra], items: base.items }));
    await writeYaml(dir, runYaml({ load: './sliced', srcStrategy: './src_strategy', par: { dp: 1, mp: 2, pp: 1 } }));
    const r = await runJob({ nodeDirs: [dir], workerNum: 2, logDir: join(dir, 'logs'), launchArgs: ['--dst-strategy', './dst.ckpt'] });
    const codes = exitCodes(r);
    expect(codes[0]).toBe(2); // the checking rank: the input is wrong
    expect(codes[1]).toBe(1); // the others stop with its report
    expect(r.logs[0]).toMatch(/model\.layers\.9\.attention\.wq\.weight/);
    expect(r.logs[1]).toMatch(/rank 0 .*failed during 'check': .*model\.layers\.9\.attention\.wq\.weight/);
    expect(await trainReports(join(dir, 'logs'))).toEqual(new Map());
  });

  it('refuses a load_checkpoint inside output/ and deletes nothing', async () => {
    const dir = await jobDir();
    await writeSliced(dir, { dp: 1, mp: 2, pp: 1 });
    // the previous run's converted slices, now given as the source
    const inside = join(dir, 'output', 'transformed_checkpoint', 'llama');
    await mkdir(join(inside, 'rank_0'), { recursive: true });
    await mkdir(join(inside, 'rank_1'), { recursive: true });
    for (const k of [0, 1]) await writeFile(join(inside, `rank_${k}`, `checkpoint_${k}.ckpt`), await readFile(join(dir, 'sliced', `rank_${k}`, `checkpoint_${k}.ckpt`)));
    await writeYaml(dir, runYaml({ load: './output/transformed_checkpoint/llama/', srcStrategy: './src_strategy', par: { dp: 1, mp: 2, pp: 1 } }));
    const r = await runJob({ nodeDirs: [dir], workerNum: 2, logDir: join(dir, 'logs') });
    expect(exitCodes(r)).toEqual([2, 2]);
    for (const log of r.logs) expect(log).toMatch(/load_checkpoint: '\.\/output\/transformed_checkpoint\/llama\/' lies inside output_dir\/transformed_checkpoint/);
    for (const k of [0, 1]) expect(existsSync(join(inside, `rank_${k}`, `checkpoint_${k}.ckpt`))).toBe(true);
  });
});

describe('launch: modes', () => {
  it('strategy-only dry run: collects strategies, prints the plan, converts nothing, exits 0', async () => {
    const dir = await jobDir();
    await writeComplete(dir);
    await writeYaml(dir, runYaml({ load: './weights/model.ckpt', par: { dp: 1, mp: 2, pp: 2 }, tpn: 2, onlySaveStrategy: true }));
    const r = await runJob({ nodeDirs: [dir], workerNum: 4, logDir: join(dir, 'logs') });
    expect(exitCodes(r), r.logs.join('\n')).toEqual([0, 0, 0, 0]);
    expect(r.logs[0]).toMatch(/dry run \(only_save_strategy: True\)/);
    expect(r.logs[0]).toMatch(/converter rank 0: slices 0\.\.1 \(2 files, [\d.]+ KiB written, buffers/);
    expect(r.logs[0]).toMatch(/converter rank 2: slices 2\.\.3 \(2 files/);
    expect(r.logs[0]).toMatch(/total: .* read, .* written \(disk needed\)/);
    for (let k = 0; k < 4; k++) expect(existsSync(join(dir, 'output', 'strategy', `ckpt_strategy_rank_${k}.ckpt`))).toBe(true);
    expect(await rankFiles(dir, 'model')).toEqual([]);
    expect(await trainReports(join(dir, 'logs'))).toEqual(new Map());
  });

  it('weights that already match the layout are used as they are', async () => {
    const dir = await jobDir();
    await writeSliced(dir, { dp: 1, mp: 2, pp: 1 });
    await writeYaml(dir, runYaml({ load: './sliced', srcStrategy: './src_strategy', par: { dp: 1, mp: 2, pp: 1 }, tpn: 2 }));
    const r = await runJob({ nodeDirs: [dir], workerNum: 2, logDir: join(dir, 'logs'), launchArgs: ['--dst-strategy', './src_strategy/ckpt_strategy_rank_0.ckpt'] });
    expect(exitCodes(r), r.logs.join('\n')).toEqual([0, 0]);
    expect(r.logs[0]).toMatch(/already holds this job's slices; no conversion/);
    for (const [rank, rep] of await trainReports(join(dir, 'logs'))) {
      expect(rep.problems).toEqual([]);
      expect(rep.file).toBe(join(dir, 'sliced', `rank_${rank}`, `checkpoint_${rank}.ckpt`));
    }
    expect(await rankFiles(dir, 'sliced')).toEqual([]);
  });

  it('without auto_trans_ckpt the command starts unchanged with the user\'s YAML', async () => {
    const dir = await jobDir();
    await writeComplete(dir);
    await writeYaml(dir, runYaml({ load: './weights/model.ckpt', par: { dp: 1, mp: 1, pp: 1 }, autoTrans: false, useParallel: false }));
    const r = await runJob({ nodeDirs: [dir], workerNum: 1, logDir: join(dir, 'logs') });
    expect(exitCodes(r), r.logs.join('\n')).toEqual([0]);
    const rep = (await trainReports(join(dir, 'logs'))).get(0);
    expect(rep?.problems).toEqual([]);
    expect(rep?.file).toBe(join(dir, 'weights', 'model.ckpt'));
    expect(existsSync(join(dir, 'output', 'msckpt'))).toBe(false);
  });
});

describe('launch: command line', () => {
  it('rejects a missing training command and bad numbers with exit code 2', async () => {
    const noCmd = await runCli(['launch', '--config', 'run.yaml']);
    expect(noCmd.exitCode).toBe(2);
    expect(noCmd.stderr).toMatch(/missing required argument 'command'/);
    const bad = await runCli(['launch', '--config', 'run.yaml', '--barrier_timeout', 'soon', '--', 'true']);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toMatch(/--barrier-timeout: cannot read 'soon'/);
  });
});
