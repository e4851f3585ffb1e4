import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import yaml from 'js-yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checkRunConfig,
  converterRanks,
  deriveRunConfig,
  editDistance,
  inspectCheckpointPath,
  jobPaths,
  loadRunConfig,
  nearMiss,
  RunConfigError,
  summarizeRunConfig,
  launchSources,
  type ConfigProblem,
  type LoadRunConfigOptions,
} from '../../plugin/launcher/index.js';
import { InputError } from '../../plugin/errors.js';
import { runCli } from '../helpers/cli.js';
import { canonicalPath, isSameOrInside } from '../../plugin/real-paths.js';

let dir: string;
let n = 0;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-config-'));
  // a sliced source (2 ranks), a complete file, a strategy folder
  await mkdir(join(dir, 'ck/mp2/rank_0'), { recursive: true });
  await mkdir(join(dir, 'ck/mp2/rank_1'), { recursive: true });
  await writeFile(join(dir, 'ck/mp2/rank_0/checkpoint_0.ckpt'), 'x');
  await writeFile(join(dir, 'ck/mp2/rank_1/checkpoint_1.ckpt'), 'x');
  await mkdir(join(dir, 'ck/full/rank_0'), { recursive: true });
  await writeFile(join(dir, 'ck/full/rank_0/llama.ckpt'), 'x');
  await mkdir(join(dir, 'strategy_src'), { recursive: true });
  await writeFile(join(dir, 'strategy_src/ckpt_strategy_rank_0.ckpt'), 'x');
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function writeYaml(text: string): Promise<string> {
  n += 1;
  const p = join(dir, `run${n}.yaml`);
  await writeFile(p, text);
  return p;
}

async function check(text: string, opts: LoadRunConfigOptions = {}): Promise<{ errors: ConfigProblem[]; warnings: ConfigProblem[] }> {
  const p = await writeYaml(text);
  const r = await checkRunConfig(p, { cwd: dir, env: {}, ...opts });
  return { errors: r.errors, warnings: r.warnings };
}

function one(errors: ConfigProblem[], key: string): ConfigProblem {
  const hits = errors.filter((e) => e.key === key);
  expect(hits, `errors: ${JSON.stringify(errors)}`).toHaveLength(1);
  return hits[0]!;
}

const GOOD = `seed: 0
output_dir: './output'
load_checkpoint: './ck/mp2'
src_strategy_path_or_dir: './strategy_src'
auto_trans_ckpt: True
use_parallel: True
parallel_config:
  data_parallel: 2
  model_parallel: 2
  pipeline_stage: 2
parallel:
  parallel_mode: 1
model:
  model_config:
    hidden_size: 4096
`;

describe('loadRunConfig: good configs', () => {
  it('accepts a full config and types our keys; unknown keys pass through', async () => {
    const p = await writeYaml(`${GOOD}my_custom_section:\n  whatever: [1, 2]\ntrainer:\n  type: CausalLanguageModelingTrainer\n`);
    const cfg = await loadRunConfig(p, { cwd: dir, worldSize: 8 });
    expect(cfg.autoTransCkpt).toBe(true);
    expect(cfg.useParallel).toBe(true);
    expect(cfg.parallelConfig).toMatchObject({ dataParallel: 2, modelParallel: 2, contextParallel: 1, pipelineStage: 2 });
    expect(cfg.parallel.parallelMode).toBe('semi_auto_parallel');
    expect(cfg.transformProcessNum).toBe(1);
    expect(cfg.loadCkptFormat).toBe('ckpt');
    expect(cfg.msckpt).toEqual({ dstStrategy: undefined, barrierTimeout: 7200, heartbeatTimeout: 60, pollInterval: undefined, sharedDisk: undefined, mindformersVersion: undefined });
    expect(cfg.raw['my_custom_section']).toEqual({ whatever: [1, 2] });
    expect(cfg.raw['trainer']).toEqual({ type: 'CausalLanguageModelingTrainer' });
    expect(cfg.source?.kind).toBe('rank-dir');
    expect(cfg.source?.ranks).toEqual([0, 1]);
    expect(cfg.paths.strategyDir).toBe(join(dir, 'output/strategy'));
    expect(cfg.paths.strategyFile(3)).toBe(join(dir, 'output/strategy/ckpt_strategy_rank_3.ckpt'));
    expect(cfg.locate('parallel_config.model_parallel')).toEqual({ line: 9, column: 3 });
    expect(cfg.locate('model.model_config.hidden_size')).toEqual({ line: 15, column: 5 });
  });

  it('reads msckpt settings and the strategy file name', async () => {
    const cfg = await loadRunConfig(
      await writeYaml(
        `${GOOD.replace('  parallel_mode: 1\n', '  parallel_mode: SEMI_AUTO_PARALLEL\n  strategy_ckpt_config:\n    save_file: "./my_strat.ckpt"\n')}msckpt:\n  barrier_timeout: 10m\n  heartbeat_timeout: 5.5\n  poll_interval: 500ms\n  shared_disk: False\n  dst_strategy: ./strategy_src\n  mindformers_version: '1.5.0'\n`,
      ),
      { cwd: dir, worldSize: 8 },
    );
    expect(cfg.msckpt).toEqual({ dstStrategy: './strategy_src', barrierTimeout: 600, heartbeatTimeout: 5.5, pollInterval: 0.5, sharedDisk: false, mindformersVersion: '1.5.0' });
    expect(cfg.release.rules.name).toBe('r1.5.0');
    expect(cfg.release.from).toBe('yaml');
    expect(cfg.paths.strategyFile(0)).toBe(join(dir, 'output/strategy/my_strat_rank_0.ckpt'));
    expect(cfg.paths.mergedStrategy).toBe(join(dir, 'output/strategy/merged_ckpt_strategy.ckpt'));
  });

  it('summarizes what the launcher would do: converters 0, W/K, ...', async () => {
    const cfg = await loadRunConfig(await writeYaml(`${GOOD}transform_process_num: 4\n`), { cwd: dir, worldSize: 8 });
    const s = summarizeRunConfig(cfg, (await launchSources(cfg)).map((x) => x.name));
    expect(s.mode).toBe('convert');
    expect(s.converters).toEqual([
      { rank: 0, from: 0, to: 2 },
      { rank: 2, from: 2, to: 4 },
      { rank: 4, from: 4, to: 6 },
      { rank: 6, from: 6, to: 8 },
    ]);
    expect(s.derived).toEqual({ load_checkpoint: join(dir, 'output/transformed_checkpoint/mp2'), auto_trans_ckpt: false });
    expect(converterRanks(16, 2).map((c) => c.rank)).toEqual([0, 8]);
    expect(converterRanks(4, 8).map((c) => c.rank)).toEqual([0, 1, 2, 3]);
  });

  it('the summary\'s derived load_checkpoint is launch\'s: an HF-index folder is one source named after the folder', async () => {
    await mkdir(join(dir, 'hfdir'), { recursive: true });
    for (const f of ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']) await writeFile(join(dir, 'hfdir', f), 'x');
    const cfg = await loadRunConfig(await writeYaml(`${GOOD.replace("'./ck/mp2'", "'./hfdir'")}load_ckpt_format: safetensors\n`), { cwd: dir, worldSize: 8 });
    const names = (await launchSources(cfg)).map((x) => x.name);
    expect(names).toEqual(['hfdir']);
    expect(summarizeRunConfig(cfg, names).derived['load_checkpoint']).toBe(join(dir, 'output/transformed_checkpoint/hfdir'));
  });

  it('without a world size takes the device count from dp*mp*cp*pp', async () => {
    const cfg = await loadRunConfig(await writeYaml(GOOD), { cwd: dir });
    expect(cfg.deviceCount).toBe(8);
    expect(cfg.deviceCountFrom).toBe('layout');
  });
});

describe('schema and near misses', () => {
  it('warns about near misses of our keys with the right spelling and position (never a refusal)', async () => {
    const { errors, warnings } = await check(`${GOOD}auto_trans_ckp: True\nload_checkpiont: x\nsrc_strategy_path_or_di: y\n`, { worldSize: 8 });
    expect(errors).toEqual([]);
    expect(one(warnings, 'auto_trans_ckp')).toMatchObject({ line: 16, column: 1, message: "unknown key 'auto_trans_ckp'; did you mean 'auto_trans_ckpt'? (mindformers ignores it)" });
    expect(one(warnings, 'load_checkpiont').message).toContain("did you mean 'load_checkpoint'?");
    expect(one(warnings, 'src_strategy_path_or_di').message).toContain("did you mean 'src_strategy_path_or_dir'?");
  });

  it('does not flag mindformers keys or far-away keys', async () => {
    const { errors } = await check(`${GOOD}load_ckpt_async: False\nuse_legacy: True\nrecompute_config:\n  recompute: True\nzzz_custom: 1\n`, { worldSize: 8 });
    expect(errors).toEqual([]);
    expect(nearMiss('use_parallell', ['use_parallel'])).toBe('use_parallel');
    expect(nearMiss('Use_Parallel', ['use_parallel'])).toBe('use_parallel');
    expect(nearMiss('use_parallel', ['use_parallel'])).toBeUndefined();
    expect(editDistance('kitten', 'sitting')).toBe(3);
  });

  it('refuses the types mindformers refuses; values read by their truth only warn', async () => {
    const { errors, warnings } = await check(
      `auto_trans_ckpt: "True"\nuse_parallel: "False"\ntransform_process_num: "2"\nload_ckpt_format: ckpts\nresume_training: 3\nnpu_num_per_node: 0\noutput_dir: 7\n`,
    );
    expect(one(errors, 'auto_trans_ckpt')).toMatchObject({
      line: 1,
      column: 1,
      message: "must be True or False, got the string 'True' (write True or False without quotes) (every mindformers release refuses this at start-up)",
    });
    expect(one(errors, 'resume_training').message).toMatch(/^must be True or False or a string, got 3/);
    expect(one(errors, 'output_dir').message).toMatch(/^must be a string, got 7/);
    expect(errors.map((e) => e.key).sort()).toEqual(['auto_trans_ckpt', 'output_dir', 'resume_training']);
    expect(one(warnings, 'use_parallel').message).toBe("is the string 'False', not True or False; mindformers tests its truth, so it counts as True");
    expect(one(warnings, 'transform_process_num').message).toBe("must be an integer, got the string '2' (write the number without quotes)");
    expect(one(warnings, 'load_ckpt_format').message).toContain("harmless while load_checkpoint is empty");
    expect(one(warnings, 'npu_num_per_node').message).toBe('must be >= 1, got 0');
    // load_ckpt_format is refused once there is a checkpoint to load (r1.5.0+; r1.3.0 does not read it)
    const fmt = await check(`load_checkpoint: ./ck/full\nload_ckpt_format: ckpts\n`);
    expect(one(fmt.warnings, 'load_ckpt_format').message).toMatch(/mindformers r1.5.0, r1.6.0, r1.7.0, r1.8.0 refuse this at start-up; r1.3.0 accepts it/);
    const fmt15 = await check(`load_checkpoint: ./ck/full\nload_ckpt_format: ckpts\n`, { mindformersVersion: { version: '1.5.0', from: 'flag' } });
    expect(one(fmt15.errors, 'load_ckpt_format').message).toBe("must be 'ckpt' or 'safetensors', got the string 'ckpts' (mindformers r1.5.0 refuses this at start-up)");
  });

  it('parallel_mode as mindformers\' PARALLEL_MODE table has it, release by release', async () => {
    for (const v of ['0', '1', '2', '3', 'DATA_PARALLEL', 'SEMI_AUTO_PARALLEL', 'AUTO_PARALLEL', 'HYBRID_PARALLEL', 'STAND_ALONE', 'True', '1.0']) {
      expect((await check(`parallel:\n  parallel_mode: ${v}\n`)).errors, v).toEqual([]);
    }
    const lower = await check('parallel:\n  parallel_mode: semi_auto_parallel\n');
    expect(one(lower.errors, 'parallel.parallel_mode').message).toContain("(write 'SEMI_AUTO_PARALLEL'; the names are case-sensitive)");
    expect(one((await check('parallel:\n  parallel_mode: 4\n')).errors, 'parallel.parallel_mode')).toMatchObject({ line: 2, column: 3 });
    expect(one((await check('parallel:\n  parallel_mode: null\n')).errors, 'parallel.parallel_mode').message).toContain('got nothing (null)');
    // MANUAL_PARALLEL: from r1.6.0; runs as stand-alone
    const manual = 'parallel:\n  parallel_mode: MANUAL_PARALLEL\n';
    expect(one((await check(manual)).warnings, 'parallel.parallel_mode').message).toMatch(/mindformers r1.3.0, r1.5.0 refuse this at start-up; r1.6.0, r1.7.0, r1.8.0 accept it/);
    expect((await check(manual, { mindformersVersion: { version: '1.6.0', from: 'flag' } })).errors).toEqual([]);
    expect(one((await check(manual, { mindformersVersion: { version: '1.5.0', from: 'flag' } })).errors, 'parallel.parallel_mode').message).toContain('(mindformers r1.5.0 refuses this at start-up)');
    const r = await checkRunConfig(await writeYaml(`use_parallel: True\n${manual}`), { cwd: dir, mindformersVersion: { version: '1.6.0', from: 'flag' } });
    expect(r.config!.parallel.effectiveMode).toBe('stand_alone');
  });

  it('parallel_config keys follow the release; unknown ones only warn (not keys msckpt reads)', async () => {
    const { errors, warnings } = await check(`parallel_config:\n  data_parallel: 1\n  model_paralel: 2\n  seq_split_num: 1\n  recompute: True\n`);
    expect(errors).toEqual([]);
    expect(one(warnings, 'parallel_config.model_paralel')).toMatchObject({ line: 3, column: 3 });
    expect(one(warnings, 'parallel_config.model_paralel').message).toContain("did you mean 'model_parallel'?");
    expect(one(warnings, 'parallel_config.seq_split_num').message).toMatch(/mindformers r1.3.0 refuses this at start-up/);
    expect(one(warnings, 'parallel_config.recompute').message).toMatch(/mindformers r1.5.0, r1.6.0, r1.7.0, r1.8.0 refuse this/);
    // the layout values are ours: a float or zero is refused as mindformers refuses it
    const bad = await check(`parallel_config:\n  data_parallel: 2.0\n  model_parallel: 0\n`);
    expect(one(bad.errors, 'parallel_config.data_parallel').message).toMatch(/^must be a positive integer, got the float 2.0/);
    expect(one(bad.errors, 'parallel_config.model_parallel').message).toMatch(/^must be a positive integer, got 0/);
  });

  it('parallel passes unknown keys through but warns on near misses; msckpt settings are errors only when msckpt has work', async () => {
    const text = `parallel:\n  enable_parallel_optimiser: True\n  some_new_mindspore_key: 1\nmsckpt:\n  barrier_timout: 5\n  heartbeat_timeout: -1\n`;
    const idle = await check(text);
    expect(idle.errors).toEqual([]);
    expect(one(idle.warnings, 'parallel.enable_parallel_optimiser').message).toContain("did you mean 'enable_parallel_optimizer'?");
    expect(idle.warnings.some((e) => e.key === 'parallel.some_new_mindspore_key')).toBe(false);
    expect(one(idle.warnings, 'msckpt.barrier_timout').message).toContain("did you mean 'barrier_timeout'? (unused: nothing for msckpt to do)");
    const busy = await check(`${GOOD}${text.replace('parallel:\n', 'zz:\n')}`, { worldSize: 8 });
    expect(one(busy.errors, 'msckpt.barrier_timout').message).toContain("did you mean 'barrier_timeout'?");
    expect(busy.errors.some((e) => e.key === 'msckpt.heartbeat_timeout')).toBe(true);
  });

  it('reports YAML syntax errors with line and column', async () => {
    const p = await writeYaml('a: 1\nb: [1, 2\nc: 3\n');
    const r = await checkRunConfig(p, { cwd: dir });
    expect(r.ok).toBe(false);
    expect(r.errors).toHaveLength(1);
    expect(r.errors[0]!.message).toMatch(/^YAML syntax error/);
    expect(r.errors[0]!.line).toBeGreaterThanOrEqual(2);
    const d = await check('a: 1\na: 2\n');
    expect(d.errors).toEqual([]);
    expect(d.warnings[0]).toMatchObject({ key: 'a', line: 2, message: 'is given twice in one mapping (first at line 1); PyYAML keeps this last one' });
  });

  it('a document that is not a mapping is refused', async () => {
    const { errors } = await check('- a\n- b\n');
    expect(errors[0]!.message).toBe('the run YAML must be a mapping of keys, got a list');
    expect((await check('')).errors[0]!.message).toBe('the run YAML must be a mapping of keys, got an empty document');
    expect((await check('a: 1\non: 2\n')).errors[0]!.message).toContain('mindformers cannot sort the keys');
  });

  it('throws one RunConfigError (InputError) listing every problem as file:line:col key: message', async () => {
    const p = await writeYaml('auto_trans_ckpt: 1\nresume_training: 2.5\n');
    const e = await loadRunConfig(p, { cwd: dir }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(RunConfigError);
    expect(e).toBeInstanceOf(InputError);
    const err = e as RunConfigError;
    expect(err.exitCode).toBe(2);
    expect(err.problems).toHaveLength(2);
    expect(err.message).toContain(`${p}:1:1 auto_trans_ckpt: must be True or False, got 1`);
    expect(err.message).toContain(`${p}:2:1 resume_training: must be True or False or a string, got the float 2.5`);
  });

  it('a missing file is an InputError naming it', async () => {
    await expect(checkRunConfig(join(dir, 'nope.yaml'))).rejects.toThrow(/nope\.yaml: cannot read the run YAML \(ENOENT\)/);
  });
});

describe('cross-field rules (mindformers §1.2 and ours)', () => {
  it('transform_process_num must divide the device count', async () => {
    const { errors } = await check(`${GOOD}transform_process_num: 3\n`, { worldSize: 8 });
    expect(one(errors, 'transform_process_num')).toMatchObject({
      line: 16,
      message: 'does not divide the device count 8; use one of 1, 2, 4, 8'.replace(/^/, '3 '),
    });
    const big = await check(`${GOOD}transform_process_num: 16\n`, { worldSize: 8 });
    expect(big.errors).toEqual([]);
    expect(one(big.warnings, 'transform_process_num').message).toContain('8 converters will be used');
    const fromLayout = await check(`${GOOD}transform_process_num: 3\n`);
    expect(one(fromLayout.errors, 'transform_process_num').message).toContain('the device count 8 (data_parallel * model_parallel');
  });

  it('dp*mp*cp*pp must equal the device count in semi-auto mode', async () => {
    const { errors } = await check(GOOD, { worldSize: 16 });
    const e = one(errors, 'parallel_config');
    expect(e).toMatchObject({ line: 7, column: 1 });
    expect(e.message).toContain('2*2*1*2 = 8 must equal the device count 16');
    const auto = await check(GOOD.replace('parallel_mode: 1', 'parallel_mode: 2'), { worldSize: 4 });
    expect(one(auto.warnings, 'parallel_config').message).toContain('is more than the device count 4');
    const single = await check(GOOD.replace('use_parallel: True', 'use_parallel: False'), { worldSize: 1 });
    expect(single.errors.filter((x) => x.key === 'parallel_config')).toEqual([]);
  });

  it('npu_num_per_node that is not a power of two only warns (mindformers checks it in its own .ckpt conversion)', async () => {
    const six = await check('npu_num_per_node: 6\n');
    expect(six.errors).toEqual([]);
    expect(one(six.warnings, 'npu_num_per_node').message).toContain('is 6, not a power of 2');
    expect((await check('npu_num_per_node: 16\n')).warnings).toEqual([]);
  });

  it('a sliced load_checkpoint needs a source strategy', async () => {
    const { errors } = await check(GOOD.replace("src_strategy_path_or_dir: './strategy_src'\n", ''), { worldSize: 8 });
    expect(one(errors, 'load_checkpoint')).toMatchObject({
      line: 3,
      column: 1,
      message: "'./ck/mp2' is sliced into 2 rank folders; set src_strategy_path_or_dir to the strategy file or strategy folder of the run that wrote it",
    });
    const empty = await check(GOOD.replace("'./strategy_src'", "''"), { worldSize: 8 });
    expect(one(empty.errors, 'src_strategy_path_or_dir').message).toContain('is sliced into 2 rank folders');
    const complete = await check(GOOD.replace('./ck/mp2', './ck/full').replace("src_strategy_path_or_dir: './strategy_src'\n", ''), { worldSize: 8 });
    expect(complete.errors).toEqual([]);
  });

  it('rank folders must have no gaps; the strategy must exist', async () => {
    await mkdir(join(dir, 'ck/gap/rank_0'), { recursive: true });
    await mkdir(join(dir, 'ck/gap/rank_2'), { recursive: true });
    const { errors } = await check(GOOD.replace('./ck/mp2', './ck/gap').replace('./strategy_src', './no_such_strategy'), { worldSize: 8 });
    expect(one(errors, 'load_checkpoint').message).toContain('rank_1 folder not found');
    expect(one(errors, 'src_strategy_path_or_dir').message).toContain("'./no_such_strategy' does not exist");
  });

  it('load_checkpoint must exist (except for strategy-only runs) and hold checkpoints', async () => {
    const { errors } = await check(GOOD.replace('./ck/mp2', './ck/missing'), { worldSize: 8 });
    expect(one(errors, 'load_checkpoint').message).toBe(`'./ck/missing' does not exist (resolved to ${join(dir, 'ck/missing')})`);
    const dry = await check(`${GOOD.replace('./ck/mp2', './ck/missing')}only_save_strategy: True\n`, { worldSize: 8 });
    expect(dry.errors).toEqual([]);
    await mkdir(join(dir, 'ck/empty'), { recursive: true });
    const emptyDir = await check(GOOD.replace('./ck/mp2', './ck/empty'), { worldSize: 8 });
    expect(one(emptyDir.errors, 'load_checkpoint').message).toBe("no rank_0 folder and no .ckpt files under './ck/empty'");
    await writeFile(join(dir, 'ck/weights.bin'), 'x');
    const badExt = await check(GOOD.replace('./ck/mp2', './ck/weights.bin'), { worldSize: 8 });
    expect(one(badExt.errors, 'load_checkpoint').message).toContain("must be a folder or a file with suffix '.ckpt'");
  });

  it('auto_trans_ckpt or resume_training with an empty load_checkpoint is refused', async () => {
    const a = await check(`run_mode: train\nauto_trans_ckpt: True\nload_checkpoint: ''\n`);
    expect(one(a.errors, 'load_checkpoint').message).toMatch(/^must not be empty when auto_trans_ckpt is True .*every mindformers release refuses this/);
    // resume_training: True without a checkpoint: refused up to r1.6.0, turned off from r1.7.0
    const b = await check(`run_mode: train\nresume_training: True\n`);
    expect(b.errors).toEqual([]);
    expect(b.warnings.map((w) => w.message).join('\n')).toMatch(/mindformers r1.3.0, r1.5.0, r1.6.0 refuse this at start-up; r1.7.0, r1.8.0 accept it/);
    expect(one((await check(`run_mode: train\nresume_training: True\n`, { mindformersVersion: { version: '1.6.0', from: 'flag' } })).errors, 'resume_training').message).toMatch(/must not be empty/);
    // train ignores checkpoint_name_or_path; eval/predict with a null load_checkpoint take it
    const cnp = `model:\n  model_config:\n    checkpoint_name_or_path: llama2_7b\n`;
    expect((await check(`run_mode: train\nauto_trans_ckpt: True\n${cnp}`)).errors).toHaveLength(1);
    const pred = await checkRunConfig(await writeYaml(`run_mode: predict\nauto_trans_ckpt: True\nload_checkpoint: null\n${cnp}`), { cwd: dir, checkFiles: false });
    expect(pred.errors).toEqual([]);
    expect(pred.config!.loadCheckpoint).toBe('llama2_7b');
    expect(pred.config!.loadCheckpointFrom).toBe('checkpoint_name_or_path');
    expect((await check(`run_mode: predict\nauto_trans_ckpt: True\nload_checkpoint: ''\n${cnp}`)).errors).toHaveLength(1);
  });

  it('without auto_trans_ckpt, slices must match the device count', async () => {
    const { errors } = await check(GOOD.replace('auto_trans_ckpt: True', 'auto_trans_ckpt: False'), { worldSize: 8 });
    expect(one(errors, 'load_checkpoint').message).toBe("'./ck/mp2' holds 2 rank folders but the job has 8 devices (rank_2 and up are missing); set auto_trans_ckpt: True to convert them");
  });

  it('data_parallel / stand_alone modes write no strategy', async () => {
    const { errors } = await check(GOOD.replace('parallel_mode: 1', 'parallel_mode: 0'), { worldSize: 8 });
    expect(one(errors, 'parallel.parallel_mode').message).toContain('parallel_mode 0 (data_parallel) writes no strategy files');
  });

  it('the rest of mindformers start-up rules: refusals on keys msckpt reads, warnings on the others', async () => {
    const text = `${GOOD.replace('  hidden_size: 4096', '  hidden_size: 4096\n    use_flash_attention: False').replace('  pipeline_stage: 2', '  pipeline_stage: 2\n  context_parallel: 1\n  vocab_emb_dp: True')}runner_config:\n  sink_mode: False\nremote_save_url: 'http://bucket/x'\nrun_mode: eval\n`;
    const { errors, warnings } = await check(text.replace('data_parallel: 2', 'data_parallel: 1').replace('context_parallel: 1', 'context_parallel: 2'), {
      worldSize: 8,
    });
    expect(one(warnings, 'runner_config.sink_mode').message).toContain('must be True when distributed loads are sliced weights');
    expect(one(errors, 'parallel_config.context_parallel').message).toContain('use_flash_attention: True');
    expect(one(errors, 'parallel_config.pipeline_stage').message).toContain('only supported for training');
    expect(one(warnings, 'parallel_config.vocab_emb_dp').message).toBe('is forced to False when pipeline_stage > 1');
    // remote_save_url: only on ModelArts, and only when set
    expect(errors.some((e) => e.key === 'remote_save_url')).toBe(false);
    const placeholder = `remote_save_url: "Please input obs url on AICC platform."\nrun_mode: train\n`;
    expect((await check(placeholder)).errors).toEqual([]);
    const ma = await check(placeholder, { env: { MA_JOB_DIR: '/job' } });
    expect(one(ma.warnings, 'remote_save_url').message).toMatch(/must start with obs:\/\/ or s3:\/\/ on ModelArts.*r1.3.0, r1.5.0 refuse this/);
    expect(one((await check(placeholder, { env: { MA_JOB_DIR: '/job' }, mindformersVersion: { version: '1.5.0', from: 'flag' } })).errors, 'remote_save_url').message).toContain('on ModelArts');
    expect((await check(placeholder, { env: { S3_ACCESS_KEY_ID: 'k' }, mindformersVersion: { version: '1.6.0', from: 'flag' } })).errors).toEqual([]);
    expect((await check(`${placeholder}auto_trans_ckpt: True\nload_checkpoint: ./ck/full\n`, { env: { MA_LOG_DIR: '/l' }, mindformersVersion: { version: '1.6.0', from: 'flag' } })).errors.map((e) => e.key)).toContain('remote_save_url');
    expect((await check(`remote_save_url: ''\n`, { env: { MA_JOB_DIR: '/job' }, mindformersVersion: { version: '1.5.0', from: 'flag' } })).errors).toEqual([]);
  });

  it('pipeline_stages in parallel that disagrees with parallel_config only warns', async () => {
    const { errors, warnings } = await check(GOOD.replace('  parallel_mode: 1', '  parallel_mode: 1\n  pipeline_stages: 4'), { worldSize: 8 });
    expect(errors).toEqual([]);
    expect(one(warnings, 'parallel.pipeline_stages').message).toMatch(/^is 4 but parallel_config.pipeline_stage is 2; they must agree/);
  });

  it('warns about multi-node jobs without a shared-disk setting', async () => {
    const t = GOOD.replace('data_parallel: 2', 'data_parallel: 4');
    const { warnings } = await check(t, { worldSize: 16 });
    expect(one(warnings, 'output_dir').message).toContain('16 devices is more than 8 per node');
    const off = await check(`${t}msckpt:\n  shared_disk: False\n`, { worldSize: 16 });
    expect(off.warnings.filter((w) => w.key === 'output_dir')).toEqual([]);
  });

  it('safetensors rules (§2.7)', async () => {
    await mkdir(join(dir, 'st/full'), { recursive: true });
    await writeFile(join(dir, 'st/full/model-00001-of-00001.safetensors'), 'x');
    await mkdir(join(dir, 'st/ranks/rank_0'), { recursive: true });
    await mkdir(join(dir, 'st/ranks/rank_1'), { recursive: true });
    await mkdir(join(dir, 'st/none'), { recursive: true });
    const base = (lc: string, extra = ''): string => `load_ckpt_format: safetensors\nload_checkpoint: ${lc}\nuse_parallel: True\n${extra}`;
    const file = await check(base('./st/full/model-00001-of-00001.safetensors'));
    expect(one(file.errors, 'load_checkpoint').message).toContain('is a single file and use_parallel is True');
    const noAuto = await check(base('./st/full'));
    expect(one(noAuto.errors, 'load_checkpoint').message).toContain('set auto_trans_ckpt: True');
    expect((await check(base('./st/full', 'auto_trans_ckpt: True\n'))).errors).toEqual([]);
    const ranksSerial = await check(base('./st/ranks').replace('use_parallel: True', 'use_parallel: False'));
    expect(one(ranksSerial.errors, 'load_checkpoint').message).toContain('set use_parallel: True');
    const none = await check(base('./st/none'));
    expect(one(none.errors, 'load_checkpoint').message).toContain('no valid checkpoint files found');
    const fileStrategy = await check(base('./st/ranks', `auto_trans_ckpt: True\nsrc_strategy_path_or_dir: ./strategy_src/ckpt_strategy_rank_0.ckpt\n`));
    expect(one(fileStrategy.errors, 'src_strategy_path_or_dir').message).toContain('must be a folder');
  });
});

describe('output folders may not be, contain or lie inside what the run reads', () => {
  it('refuses load_checkpoint inside output/transformed_checkpoint, via .., trailing slash and relative forms', async () => {
    await mkdir(join(dir, 'output/transformed_checkpoint/llama/rank_0'), { recursive: true });
    for (const lc of [
      './output/transformed_checkpoint/llama',
      './output/transformed_checkpoint/llama/',
      'output//transformed_checkpoint/./llama',
      './ck/../output/transformed_checkpoint/llama',
      `${dir}/output/transformed_checkpoint`,
    ]) {
      const { errors } = await check(`${GOOD.replace("'./ck/mp2'", `'${lc}'`)}`, { worldSize: 8 });
      const e = errors.find((x) => x.key === 'load_checkpoint' && x.message.includes('which msckpt empties'));
      expect(e, `${lc}: ${JSON.stringify(errors)}`).toBeDefined();
      expect(e!.message).toMatch(/(lies inside|is) output_dir\/transformed_checkpoint/);
      expect(e!.line).toBe(3);
    }
  });

  it('refuses a src strategy that is output/strategy, or a load_checkpoint that contains output/strategy', async () => {
    await mkdir(join(dir, 'output/strategy'), { recursive: true });
    const a = await check(GOOD.replace('./strategy_src', './output/strategy/'), { worldSize: 8 });
    expect(one(a.errors, 'src_strategy_path_or_dir').message).toContain("'./output/strategy/' is output_dir/strategy");
    const b = await check(GOOD.replace("output_dir: './output'", "output_dir: './ck/mp2/output'"), { worldSize: 8 });
    expect(b.errors.filter((e) => e.key === 'load_checkpoint').map((e) => e.message.split(' (')[0])).toEqual([
      "'./ck/mp2' contains output_dir/strategy",
      "'./ck/mp2' contains output_dir/transformed_checkpoint",
      "'./ck/mp2' contains output_dir/msckpt",
    ]);
  });

  it('follows symlinks: a link into output/ is refused, the same link elsewhere is not', async () => {
    await symlink(join(dir, 'output/transformed_checkpoint'), join(dir, 'link_to_transformed'));
    await symlink(join(dir, 'ck'), join(dir, 'link_to_ck'));
    const a = await check(GOOD.replace('./ck/mp2', './link_to_transformed/llama'), { worldSize: 8 });
    expect(a.errors.some((e) => e.key === 'load_checkpoint' && e.message.includes('lies inside output_dir/transformed_checkpoint'))).toBe(true);
    const b = await check(GOOD.replace('./ck/mp2', './link_to_ck/mp2'), { worldSize: 8 });
    expect(b.errors).toEqual([]);
    // output_dir itself through a link that points into the checkpoint folder
    await symlink(join(dir, 'ck/full'), join(dir, 'out_link'));
    const c = await check(GOOD.replace("output_dir: './output'", "output_dir: './out_link/..'").replace('./ck/mp2', './ck/full'), { worldSize: 8 });
    // ./out_link/.. is ck/ (symlink followed before ..), so output/strategy = ck/strategy: apart from ck/full
    expect(c.errors).toEqual([]);
  });

  it('does not apply to plain runs (nothing is emptied)', async () => {
    const { errors } = await check(
      GOOD.replace('./ck/mp2', './output/transformed_checkpoint/llama').replace('auto_trans_ckpt: True', 'auto_trans_ckpt: False'),
      { worldSize: 1 },
    );
    expect(errors.filter((e) => e.message.includes('empties'))).toEqual([]);
  });

  it('canonicalPath / isSameOrInside', async () => {
    expect(await canonicalPath('a/b/../c/', '/x')).toBe('/x/a/c');
    expect(await canonicalPath(`${dir}/link_to_ck/mp2/`)).toBe(join(dir, 'ck/mp2'));
    expect(await canonicalPath(`${dir}/link_to_ck/../output`)).toBe(join(dir, 'output'));
    expect(await isSameOrInside(`${dir}/link_to_transformed/x/y`, `${dir}/output/`)).toBe(true);
    expect(await isSameOrInside(`${dir}/output2`, `${dir}/output`)).toBe(false);
    expect(await isSameOrInside(`${dir}/output`, `${dir}/output/strategy`)).toBe(false);
  });
});

describe('deriveRunConfig', () => {
  it('patches our keys and keeps everything else, comments included', async () => {
    const text = `# my run\n${GOOD}# trailing comment\ncallbacks:\n  - type: MFLossMonitor  # keep me\nlr: 1.0e-5\n`;
    const cfg = await loadRunConfig(await writeYaml(text), { cwd: dir, worldSize: 8 });
    const out = deriveRunConfig(cfg, { load_checkpoint: '/abs/transformed/mp2', auto_trans_ckpt: false, only_save_strategy: true });
    const doc = yaml.load(out) as Record<string, unknown>;
    expect(doc).toEqual({ ...cfg.raw, load_checkpoint: '/abs/transformed/mp2', auto_trans_ckpt: false, only_save_strategy: true });
    expect(out).toContain('# my run');
    expect(out).toContain('# keep me');
    expect(out).toContain('auto_trans_ckpt: False');
    expect(out).toMatch(/^# Derived by msckpt from /);
    // the user's file is untouched
    expect(await readFile(cfg.file, 'utf8')).toBe(text);
  });

  it('removes keys, makes base_config absolute, and writes a flow document out whole', async () => {
    const cfg = await loadRunConfig(await writeYaml(GOOD), { cwd: dir, worldSize: 8 });
    const out = deriveRunConfig(cfg, { src_strategy_path_or_dir: undefined, load_checkpoint: 'yes' });
    const doc = yaml.load(out) as Record<string, unknown>;
    expect('src_strategy_path_or_dir' in doc).toBe(false);
    expect(doc['load_checkpoint']).toBe('yes');
    expect(doc['model']).toEqual(cfg.raw['model']);
    expect(() => deriveRunConfig(cfg, { 'parallel.x': 1 })).toThrow(/top-level keys only/);
    const flow = await loadRunConfig(await writeYaml(`{use_parallel: False, seed: 3}\n`), { cwd: dir });
    expect(yaml.load(deriveRunConfig(flow, { only_save_strategy: true }))).toEqual({ use_parallel: false, seed: 3, only_save_strategy: true });
    await writeFile(join(dir, 'base.yaml'), 'seed: 5\nuse_parallel: True\n');
    const withBase = await loadRunConfig(await writeYaml(`base_config: base.yaml\nseed: 1\n`), { cwd: dir });
    expect(withBase.useParallel).toBe(true);
    expect(withBase.effective['seed']).toBe(1);
    expect(yaml.load(deriveRunConfig(withBase, { auto_trans_ckpt: false }))).toMatchObject({ base_config: join(dir, 'base.yaml'), seed: 1 });
  });
});

describe('paths and inspection', () => {
  it('jobPaths lays out mindformers folders', () => {
    const p = jobPaths({ outputDir: './out/', baseDir: '/job' });
    expect(p.outputDir).toBe('/job/out');
    expect(p.transformedRankFile('llama', 3)).toBe('/job/out/transformed_checkpoint/llama/rank_3/checkpoint_3.ckpt');
    expect(p.strategyFile(5)).toBe('/job/out/strategy/ckpt_strategy_rank_5.ckpt');
    expect(p.derivedConfig('train')).toBe('/job/out/msckpt/train.yaml');
  });

  it('inspectCheckpointPath classifies sources', async () => {
    expect((await inspectCheckpointPath(join(dir, 'ck/mp2'))).kind).toBe('rank-dir');
    expect((await inspectCheckpointPath(join(dir, 'ck/full/rank_0/llama.ckpt'))).kind).toBe('file');
    expect((await inspectCheckpointPath(join(dir, 'ck/full/rank_0'))).kind).toBe('complete-dir');
    expect((await inspectCheckpointPath(join(dir, 'nothing'))).kind).toBe('missing');
  });
});

describe('msckpt validate (CLI)', () => {
  it('prints OK and a summary of what launch would do', async () => {
    const p = await writeYaml(`${GOOD}transform_process_num: 2\n`);
    const r = await runCli(['validate', p, '--world-size', '8', '--cwd', dir]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toContain(`OK ${p}`);
    expect(r.stdout).toContain('automatic conversion');
    expect(r.stdout).toContain('rank 0 -> slices 0..3; rank 4 -> slices 4..7');
    expect(r.stdout).toContain('rules:     mindformers version unknown: refusing only what every release from r1.3.0 to r1.8.0 refuses');
    expect(r.stdout).toContain(`derived:   load_checkpoint: "${join(dir, 'output/transformed_checkpoint/mp2')}", auto_trans_ckpt: false`);
  });

  it('lists every problem as file:line:col key.path: message and exits 2 (snake_case flags too)', async () => {
    const p = await writeYaml(`${GOOD}auto_trans_ckp: True\ntransform_process_num: 3\nresume_training: 1\n`);
    const r = await runCli(['validate', p, '--world_size=8', '--cwd', dir, '--mindformers-version', '1.5.0']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain(`warning: ${p}:16:1 auto_trans_ckp: unknown key 'auto_trans_ckp'; did you mean 'auto_trans_ckpt'?`);
    expect(r.stderr).toContain(`${p}:17:1 transform_process_num: 3 does not divide the device count 8`);
    expect(r.stderr).toContain(`${p}:18:1 resume_training: must be True or False or a string, got 1 (mindformers r1.5.0 refuses this at start-up)`);
    expect(r.stderr).toContain('(judged by r1.5.0 rules (mindformers 1.5.0 from --mindformers-version))');
    expect(r.stderr).toContain('2 problems');
    const bad = await runCli(['validate', p, '--mindformers-version', 'latest']);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toContain("--mindformers-version must be a version such as 1.5.0, got 'latest'");
  });

  it('--json prints one object; the world size comes from RANK_SIZE', async () => {
    const p = await writeYaml(GOOD);
    const r = await runCli(['validate', p, '--cwd', dir, '--json'], { env: { RANK_SIZE: '16' } });
    expect(r.exitCode).toBe(2);
    const o = JSON.parse(r.stdout) as { ok: boolean; errors: ConfigProblem[]; summary: unknown };
    expect(o.ok).toBe(false);
    expect(o.summary).toBeNull();
    expect(o.errors).toHaveLength(1);
    expect(o.errors[0]).toMatchObject({ key: 'parallel_config', line: 7, column: 1 });
    expect(o.errors[0]!.message).toContain('must equal the device count 16');
  });
});
