/**
 * Demo of the launcher hook: an 8-rank job on 2 simulated nodes (msrun stand-in) whose YAML asks
 * for automatic conversion of a small Llama-like checkpoint to dp2·mp2·pp2 with 2 converter
 * ranks. Every rank runs the real `bin/msckpt.js launch -- <training stand-in>`; afterwards the
 * demo prints what each rank did and checks every rank's file byte for byte.
 *
 *   npx tsx examples/demo-launch.ts
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkRankFile, standInParams, writeCompleteModel, type StandInParallel } from '../test/fixtures/model.js';
import { msrun } from '../test/fixtures/msrun.js';

const repo = resolve(fileURLToPath(new URL('..', import.meta.url)));

export async function demoLaunch(): Promise<boolean> {
  const dir = await mkdtemp(join(tmpdir(), 'msckpt-demo-launch-'));
  const par: StandInParallel = { dp: 2, mp: 2, pp: 2 };
  try {
    await mkdir(join(dir, 'weights'), { recursive: true });
    await writeCompleteModel(join(dir, 'weights', 'model.ckpt'));
    await writeFile(
      join(dir, 'run.yaml'),
      [
        'run_mode: train',
        'output_dir: ./output',
        'load_checkpoint: ./weights/model.ckpt   # one complete checkpoint',
        'auto_trans_ckpt: True',
        'transform_process_num: 2                # ranks 0 and 4 convert, the others wait',
        'use_parallel: True',
        'npu_num_per_node: 4',
        'parallel:',
        '  parallel_mode: 1',
        'parallel_config:',
        `  data_parallel: ${par.dp}`,
        `  model_parallel: ${par.mp}`,
        `  pipeline_stage: ${par.pp}`,
        '  micro_batch_num: 2',
        'msckpt:',
        '  shared_disk: True                     # both "nodes" share this folder',
        '  poll_interval: 200ms',
        '',
      ].join('\n'),
    );
    process.stdout.write(`job folder: ${dir}\nmodel: ${standInParams().length} tensors; layout dp${par.dp}·mp${par.mp}·pp${par.pp} on 8 ranks (2 nodes x 4)\n`);
    process.stdout.write('starting 8 ranks: msckpt launch --config run.yaml -- <training stand-in> {config}\n');
    const started = Date.now();
    const results = await msrun({
      workerNum: 8,
      localWorkerNum: 4,
      nodeDirs: [dir, dir],
      logDir: join(dir, 'logs'),
      command: [
        process.execPath, join(repo, 'bin', 'msckpt.js'), 'launch', '--config', 'run.yaml', '--',
        process.execPath, '--import', import.meta.resolve('tsx'), join(repo, 'test', 'fixtures', 'train.ts'), '{config}',
      ],
    });
    process.stdout.write(`all ranks finished in ${((Date.now() - started) / 1000).toFixed(1)} s\n\n`);
    let ok = true;
    for (const r of results.sort((a, b) => a.rank - b.rank)) {
      const log = await readFile(r.log, 'utf8');
      const did =
        /converted slices (\d+\.\.\d+) \((\d+) file/.exec(log)?.slice(1, 3).join(': ') ??
        (/waiting for converter rank\(s\) ([\d, ]+)/.exec(log) !== null ? `waited for converters ${/waiting for converter rank\(s\) ([\d, ]+)/.exec(log)?.[1]}` : '?');
      const role = /converted slices/.test(log) ? `converted slices ${did} file(s)` : did;
      const file = join(dir, 'output', 'transformed_checkpoint', 'model', `rank_${r.rank}`, `checkpoint_${r.rank}.ckpt`);
      const problems = r.exitCode === 0 ? await checkRankFile(file, par, r.rank) : ['did not finish'];
      ok &&= r.exitCode === 0 && problems.length === 0;
      process.stdout.write(
        `rank ${r.rank} (node ${r.node}): ${role}; strategy pass + training stand-in exit ${r.exitCode ?? r.signal}; ` +
          `${problems.length === 0 ? 'rank file holds exactly its slices' : `WRONG: ${problems.join('; ')}`}\n`,
      );
    }
    const lead = await readFile(join(dir, 'logs', 'worker_0.log'), 'utf8');
    process.stdout.write(`\nrank 0's log:\n${lead.split('\n').filter((l) => l.startsWith('msckpt')).map((l) => `  ${l}`).join('\n')}\n`);
    process.stdout.write(`\n${ok ? 'verified: every rank got the right bytes' : 'FAILED: see above'}\n`);
    return ok;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = (await demoLaunch()) ? 0 : 1;
}
