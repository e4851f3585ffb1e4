/**
 * Issue 11's numbered cases on the launcher side, on real processes (the msrun and training
 * stand-ins, each rank the real `bin/msckpt.js launch`) and real files; what must survive is
 * compared by sha256. Case 3 (a second job) and case 8 (the join deadline) are in
 * launch-job.test.ts, case 7 (signals) in launch-signals.test.ts.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeStrategyForRank } from '../../examples/stand-ins/model.js';
import {
  exitCodes, hashTree, ledgerProblems, runJob, runYaml, tempFilesUnder, trainReports, useJobDirs, writeComplete, writeSliced, writeYaml,
} from './launch-helpers.js';

const jobDir = useJobDirs();

const MP2 = { dp: 1, mp: 2, pp: 1 };

/**
 * Words after the stand-in's `{config}` that make the command read as `... run_mindformer.py
 * FLAGS` (launch reads run_mindformer.py's flags after that word; the stand-in ignores them).
 */
const MF = ['run_mindformer.py'];

describe('issue 11 case 1: a path the run reads, reached through a symlink into a folder launch empties', () => {
  it('load_checkpoint and the source strategy through a symlink into output/, in the YAML and as training-command flags, and --dst-strategy through one: exit 2, nothing changed', async () => {
    const dir = await jobDir();
    await writeSliced(dir, MP2);
    // an earlier run's outputs, now reached through links from outside output/
    const llama = join(dir, 'output', 'transformed_checkpoint', 'llama');
    const strategy = join(dir, 'output', 'strategy');
    await mkdir(strategy, { recursive: true });
    for (const k of [0, 1]) {
      await mkdir(join(llama, `rank_${k}`), { recursive: true });
      await writeFile(join(llama, `rank_${k}`, `checkpoint_${k}.ckpt`), await readFile(join(dir, 'sliced', `rank_${k}`, `checkpoint_${k}.ckpt`)));
      await writeStrategyForRank(join(strategy, `ckpt_strategy_rank_${k}.ckpt`), MP2, k);
    }
    await symlink(llama, join(dir, 'ck'));
    await symlink(strategy, join(dir, 'st'));
    await symlink(join(strategy, 'ckpt_strategy_rank_0.ckpt'), join(dir, 'dl'));
    const links = new Set(['ck', 'st', 'dl']);
    const skip = (rel: string): boolean => rel.startsWith('logs') || links.has(rel) || rel === 'run.yaml';
    const before = await hashTree(dir, skip);
    expect([...before.keys()]).toContain(join('output', 'strategy', 'ckpt_strategy_rank_0.ckpt'));

    const cases: Array<{ what: string; yaml: Parameters<typeof runYaml>[0]; trainArgs?: string[]; launchArgs?: string[]; says: RegExp }> = [
      { what: 'YAML load_checkpoint', yaml: { load: './ck', srcStrategy: './src_strategy', par: MP2 }, says: /load_checkpoint: '\.\/ck' .*(is|lies inside) output_dir\/transformed_checkpoint/ },
      { what: 'YAML src_strategy_path_or_dir', yaml: { load: './sliced', srcStrategy: './st', par: MP2 }, says: /src_strategy_path_or_dir: '\.\/st' .*is output_dir\/strategy/ },
      {
        what: 'training command --load_checkpoint', yaml: { load: './sliced', srcStrategy: './src_strategy', par: MP2 }, trainArgs: [...MF, '--load_checkpoint', './ck'],
        says: /training command's --load_checkpoint .*(is|lies inside) output_dir\/transformed_checkpoint/,
      },
      {
        what: 'training command --src_strategy_path_or_dir', yaml: { load: './sliced', srcStrategy: './src_strategy', par: MP2 }, trainArgs: [...MF, '--src_strategy_path_or_dir', './st'],
        says: /src_strategy_path_or_dir: .*is output_dir\/strategy/,
      },
      { what: '--dst-strategy', yaml: { load: './sliced', srcStrategy: './src_strategy', par: MP2 }, launchArgs: ['--dst-strategy', './dl'], says: /--dst-strategy: '\.\/dl' .*lies inside output_dir\/strategy/ },
    ];
    for (const [i, c] of cases.entries()) {
      await writeYaml(dir, runYaml(c.yaml));
      const r = await runJob({
        nodeDirs: [dir], workerNum: 2, logDir: join(dir, `logs${i}`),
        ...(c.trainArgs !== undefined ? { trainArgs: c.trainArgs } : {}), ...(c.launchArgs !== undefined ? { launchArgs: c.launchArgs } : {}),
      });
      expect(exitCodes(r), `${c.what}\n${r.logs.join('\n')}`).toEqual([2, 2]);
      for (const log of r.logs) expect(log, c.what).toMatch(c.says);
      expect(await hashTree(dir, skip), c.what).toEqual(before);
      expect(await trainReports(join(dir, `logs${i}`))).toEqual(new Map());
    }
  });
});

describe('issue 11 case 2: cleaning removes only what msckpt wrote', () => {
  it("user files in output/strategy and output/transformed_checkpoint refuse the job (exit 2, listed, intact); --dst-strategy inside output/strategy is refused, not deleted; once they are moved, the earlier run's recorded files are cleaned", async () => {
    const dir = await jobDir();
    await writeComplete(dir);
    await writeYaml(dir, runYaml({ load: './weights/model.ckpt', par: MP2 }));
    const out = join(dir, 'output');
    // run 1: strategy pass and conversion, recorded in the ledger
    const r1 = await runJob({ nodeDirs: [dir], workerNum: 2, logDir: join(dir, 'logs1') });
    expect(exitCodes(r1), r1.logs.join('\n')).toEqual([0, 0]);
    expect(await ledgerProblems(out)).toEqual([]);
    const ours = [...(await hashTree(out, (rel) => rel.startsWith('msckpt'))).keys()];
    expect(ours).toEqual(
      expect.arrayContaining([join('strategy', 'ckpt_strategy_rank_1.ckpt'), join('transformed_checkpoint', 'model', 'rank_1', 'checkpoint_1.ckpt')]),
    );

    // the user keeps their own files there
    const user = [
      join('transformed_checkpoint', 'backup', 'rank_0', 'x.ckpt'),
      join('transformed_checkpoint', 'teacher_model_rank_0.ckpt'),
      join('strategy', 'teacher_model_rank_0.ckpt'),
    ];
    const weights = await readFile(join(dir, 'weights', 'model.ckpt'));
    for (const [i, u] of user.entries()) {
      await mkdir(join(out, u, '..'), { recursive: true });
      await writeFile(join(out, u), Buffer.concat([weights, Buffer.from([i])]));
    }
    const skip = (rel: string): boolean => rel.startsWith('logs') || rel.startsWith(join('output', 'msckpt'));
    const before = await hashTree(dir, skip);
    expect([...before.keys()]).toEqual(expect.arrayContaining(user.map((u) => join('output', u))));

    const r2 = await runJob({ nodeDirs: [dir], workerNum: 2, logDir: join(dir, 'logs2') });
    expect(exitCodes(r2), r2.logs.join('\n')).toEqual([2, 1]);
    expect(r2.logs[0]).toMatch(/3 file\(s\) in .* were not written by msckpt \(or were changed since\): .*Nothing was removed/);
    for (const u of user) expect(r2.logs[0]).toContain(join(out, u));
    for (const u of ours) expect(r2.logs[0]).not.toContain(join(out, u));
    expect(r2.logs[1]).toMatch(/rank 0 \(host .*\) failed during 'clean': \d file\(s\) in .* were not written by msckpt/);
    expect(await hashTree(dir, skip)).toEqual(before);
    expect(await trainReports(join(dir, 'logs2'))).toEqual(new Map());

    // --dst-strategy naming a file in output/strategy (which the clean would empty): refused, kept
    const r3 = await runJob({ nodeDirs: [dir], workerNum: 2, logDir: join(dir, 'logs3'), launchArgs: ['--dst-strategy', './output/strategy/ckpt_strategy_rank_0.ckpt'] });
    expect(exitCodes(r3), r3.logs.join('\n')).toEqual([2, 2]);
    for (const log of r3.logs) expect(log).toMatch(/--dst-strategy: '\.\/output\/strategy\/ckpt_strategy_rank_0\.ckpt' lies inside output_dir\/strategy/);
    expect(await hashTree(dir, skip)).toEqual(before);

    // the user moves their files out; the rerun cleans exactly the earlier run's files
    for (const u of user) await rm(join(out, u));
    await rm(join(out, 'transformed_checkpoint', 'backup'), { recursive: true });
    const earlier = (await readdir(join(out, 'msckpt'))).filter((n) => n.endsWith('.yaml')).length + ours.length;
    const r4 = await runJob({ nodeDirs: [dir], workerNum: 2, logDir: join(dir, 'logs4') });
    expect(exitCodes(r4), r4.logs.join('\n')).toEqual([0, 0]);
    expect(r4.logs[0]).toMatch(new RegExp(`cleaned ${earlier} file\\(s\\) msckpt or a strategy pass wrote before`));
    for (const rep of (await trainReports(join(dir, 'logs4'))).values()) expect(rep.problems).toEqual([]);
    expect(await ledgerProblems(out)).toEqual([]);
    expect((await hashTree(dir, skip)).get(join('weights', 'model.ckpt'))).toBe(before.get(join('weights', 'model.ckpt')));
  });
});

describe('issue 11 case 9: system errors in plain words with the path', () => {
  it('a full disk while converting: "no space left on the device (ENOSPC)" once, the folder, what to do; every rank exits 1', async () => {
    const dir = await jobDir();
    await writeComplete(dir);
    await writeStrategyForRank(join(dir, 'dst.ckpt'), MP2, 0);
    await writeYaml(dir, runYaml({ load: './weights/model.ckpt', par: MP2 }));
    const r = await runJob({ nodeDirs: [dir], workerNum: 2, logDir: join(dir, 'logs'), launchArgs: ['--dst-strategy', './dst.ckpt', '--test-fault', '0:0+:enospc'] });
    expect(exitCodes(r), r.logs.join('\n')).toEqual([1, 1]);
    // a write's ENOSPC carries no path: the folder of the files being written is named
    const folder = join(dir, 'output', 'transformed_checkpoint', 'model');
    expect(r.logs[0]).toContain(`msckpt: ${folder}: writing the converted weights: no space left on the device (ENOSPC); free space or choose another output folder`);
    expect(r.logs[1]).toContain(`failed during 'convert': ${folder}: writing the converted weights: no space left on the device (ENOSPC)`);
    for (const log of r.logs) expect(log).not.toMatch(/ENOSPC: ENOSPC|ENOSPC: no space/);
    expect(await tempFilesUnder(join(dir, 'output'))).toEqual([]);
  });

  it('an output_dir under a regular file: exit 2 naming the path, not a raw ENOTDIR', async () => {
    const dir = await jobDir();
    await writeComplete(dir);
    await writeStrategyForRank(join(dir, 'dst.ckpt'), MP2, 0);
    await writeFile(join(dir, 'afile'), 'not a folder\n');
    await writeYaml(dir, runYaml({ load: './weights/model.ckpt', par: MP2 }).replace('output_dir: ./output', 'output_dir: ./afile/output'));
    const r = await runJob({ nodeDirs: [dir], workerNum: 2, logDir: join(dir, 'logs'), launchArgs: ['--dst-strategy', './dst.ckpt'] });
    expect(exitCodes(r), r.logs.join('\n')).toEqual([2, 2]);
    for (const log of r.logs) {
      expect(log).toMatch(/a part of the path is not a directory \(ENOTDIR\); check the path/);
      expect(log).toContain(join(dir, 'afile'));
      expect(log).not.toMatch(/ENOTDIR: /);
    }
    expect(existsSync(join(dir, 'afile'))).toBe(true);
    expect(await readFile(join(dir, 'afile'), 'utf8')).toBe('not a folder\n');
  });
});
