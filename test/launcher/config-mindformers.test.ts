/**
 * Real mindformers configs: every run YAML mindformers ships (r1.3.0 and r1.5.0, through the
 * fixtures helper) is accepted by `validate --no-check-files` except the files mindformers itself
 * refuses at start-up, listed below with the reason; `launch` runs the training command on the
 * user's meaning when there is nothing to do; the STAND_ALONE inference case is handed over at
 * once with 2 of 32 ranks started; and configs of later releases (r1.6.0, r1.7.0, r1.8.0,
 * master), held out as short excerpts written for this test, are judged the same way.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkRunConfig, deriveYamlText, loadPyYaml, type RunConfigReport } from '../../plugin/launcher/config/index.js';
import { launch } from '../../plugin/launcher/launch.js';
import { writeUnifiedSafetensors } from '../../examples/stand-ins/model.js';
import { describeMindformersConfigs, mindformersConfigsDir } from '../helpers/fixtures.js';
import { pythonWithPyYaml } from '../helpers/python.js';

/** Shipped files mindformers itself refuses at start-up (run as shipped: `run_mindformer.py --config FILE`). */
const REFUSED_BY_MINDFORMERS: Record<string, string> = Object.fromEntries(
  [
    'r1.3.0/research/deepseek/finetune_deepseek_33b.yaml',
    'r1.3.0/research/qwen/finetune_qwen_14b_lora.yaml',
    'r1.3.0/research/qwen/finetune_qwen_7b_lora.yaml',
    'r1.3.0/research/qwen1_5/finetune_qwen1_5_05b.yaml',
    'r1.3.0/research/qwen1_5/pretrain_qwen1_5_7b.yaml',
    'r1.3.0/research/yi/finetune_yi_34b.yaml',
    'r1.3.0/research/yi/pretrain_yi_34b.yaml',
    'r1.5.0/research/deepseek/deepseek_33b/finetune_deepseek_33b.yaml',
    'r1.5.0/research/qwen1_5/qwen1_5_0_5b/finetune_qwen1_5_0_5b.yaml',
    'r1.5.0/research/qwen1_5/qwen1_5_7b/pretrain_qwen1_5_7b.yaml',
    'r1.5.0/research/yi/yi_34b/finetune_yi_34b.yaml',
    'r1.5.0/research/yi/yi_34b/pretrain_yi_34b.yaml',
  ].map((f) => [
    f,
    // trainer.py _check_config_rules, every release: train/finetune ignore checkpoint_name_or_path
    'auto_trans_ckpt: True with load_checkpoint empty in a train/finetune run: "the `load_checkpoint` should not be empty string or None"',
  ]),
);

function yamlFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir).sort()) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) out.push(...yamlFiles(p));
    else if (/\.ya?ml$/.test(e)) out.push(p);
  }
  return out;
}


/** PyYAML's verdict: for each pair, does the second file read exactly as the first? */
function sameForPyYaml(py: string, pairs: Array<[string, string]>): Array<[string, string]> {
  const script = [
    'import json, sys, yaml',
    'bad = []',
    'for a, b in json.load(sys.stdin):',
    '    ra = yaml.safe_load(open(a, encoding="utf-8"))',
    '    rb = yaml.safe_load(open(b, encoding="utf-8"))',
    '    if ra != rb: bad.append([a, b])',
    'print(json.dumps(bad))',
  ].join('\n');
  return JSON.parse(execFileSync(py, ['-c', script], { input: JSON.stringify(pairs), encoding: 'utf8', timeout: 120_000, maxBuffer: 1 << 26 })) as Array<[string, string]>;
}

/** A training command that records which YAML it was given (one short `sh` per launch). */
function recorder(list: string): string[] {
  return ['sh', '-c', 'printf "%s\\n" "$1" >> "$2"', 'sh', '{config}', list];
}

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'msckpt-mf-configs-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describeMindformersConfigs('the run YAMLs mindformers ships (r1.3.0, r1.5.0)', () => {
  const root = mindformersConfigsDir() ?? '';
  const files = root === '' ? [] : yamlFiles(root);

  it('validate --no-check-files accepts every one except those mindformers refuses at start-up (unknown release, and each folder with its own release)', async () => {
    expect(files.length).toBeGreaterThan(370);
    for (const own of [false, true]) {
      const refused: Record<string, string> = {};
      for (const f of files) {
        const rel = relative(root, f);
        const version = rel.startsWith('r1.3.0/') ? '1.3.0' : '1.5.0';
        const r: RunConfigReport = await checkRunConfig(f, {
          checkFiles: false, env: {}, ...(own ? { mindformersVersion: { version, from: 'flag' as const } } : {}),
        });
        if (!r.ok) refused[rel] = r.errors.map((e) => `${e.key}: ${e.message}`).join('; ');
      }
      expect(Object.keys(refused).sort(), JSON.stringify(refused, null, 1)).toEqual(Object.keys(REFUSED_BY_MINDFORMERS).sort());
      for (const why of Object.values(refused)) expect(why).toMatch(/^load_checkpoint: must not be empty when auto_trans_ckpt is True/);
    }
  });

  it('launch with auto_trans_ckpt False runs the training command on a YAML PyYAML reads as the user\'s, reading nothing else', async () => {
    const cwd = join(work, 'passthrough');
    await mkdir(cwd, { recursive: true });
    // every file with auto_trans_ckpt / only_save_strategy on (a copy with both off), and every
    // fourth of the others (each launch starts one process)
    const originals: string[] = [];
    for (const [i, f] of files.entries()) {
      const text = await readFile(f, 'utf8');
      let doc: Record<string, unknown>;
      try {
        doc = loadPyYaml(text, f) as Record<string, unknown>;
      } catch {
        continue;
      }
      if (doc['auto_trans_ckpt'] === true || doc['only_save_strategy'] === true) {
        const off = join(work, `off_${i}_${basename(f)}`);
        await writeFile(off, deriveYamlText({ text, file: f }, { auto_trans_ckpt: false, only_save_strategy: false }));
        originals.push(off);
      } else if (i % 4 === 0) originals.push(f);
    }
    // a few launches at a time (each starts one `sh`)
    const lists = originals.map((_f, k) => join(work, 'received', `${k}.txt`));
    await mkdir(join(work, 'received'), { recursive: true });
    let next = 0;
    await Promise.all(Array.from({ length: 4 }, async () => {
      while (next < originals.length) {
        const k = next++;
        const lines: string[] = [];
        const code = await launch({ config: originals[k]!, command: recorder(lists[k]!), cwd, env: { PATH: process.env['PATH'] ?? '' }, log: (l) => lines.push(l) });
        expect(code, `${originals[k]}\n${lines.join('\n')}`).toBe(0);
      }
    }));
    const received = await Promise.all(lists.map(async (l) => (await readFile(l, 'utf8')).trim()));
    expect(received).toHaveLength(originals.length);
    expect(originals.length).toBeGreaterThan(100);
    // the user's file itself is what the command reads
    expect(received).toEqual(originals);
    // nothing was written beside the job: no coordination, no derived YAML
    expect(existsSync(join(cwd, 'output'))).toBe(false);
    const py = pythonWithPyYaml();
    if (py !== null) expect(sameForPyYaml(py, originals.map((o, k) => [o, received[k]!]))).toEqual([]);
    // and msckpt's own reading agrees with itself
    for (let k = 0; k < originals.length; k += 37) {
      expect(loadPyYaml(await readFile(received[k]!, 'utf8'))).toEqual(loadPyYaml(await readFile(originals[k]!, 'utf8')));
    }
  });

  it('STAND_ALONE inference over complete safetensors, 2 of 32 ranks started: both hand over at once, unchanged', async () => {
    const shipped = join(root, 'r1.5.0/research/deepseek3/deepseek3_671b/predict_deepseek3_671b.yaml');
    const job = join(work, 'standalone');
    await mkdir(join(job, 'hf'), { recursive: true });
    await writeUnifiedSafetensors(join(job, 'hf'), { hf: true });
    const text = (await readFile(shipped, 'utf8')).replace('load_checkpoint: "/path/to/deepseekv3/model.safetensors"', `load_checkpoint: "${join(job, 'hf')}"`);
    expect(text).toContain(join(job, 'hf'));
    const yamlPath = join(job, 'predict.yaml');
    await writeFile(yamlPath, text);
    const list = join(job, 'received.txt');
    const logs: string[][] = [[], []];
    const env = (rank: number): NodeJS.ProcessEnv => ({
      PATH: process.env['PATH'] ?? '', RANK_ID: String(rank), RANK_SIZE: '32', MS_WORKER_NUM: '32', DEVICE_ID: String(rank), MS_ROLE: 'MS_WORKER', MS_NODE_RANK: '0',
    });
    // the other 30 ranks never start: any wait for them would hold the test until it times out
    const codes = await Promise.all([0, 1].map((rank) =>
      launch({ config: yamlPath, command: recorder(list), cwd: job, env: env(rank), barrierTimeoutMs: 3_600_000, log: (l) => logs[rank]!.push(l) }),
    ));
    expect(codes).toEqual([0, 0]);
    expect((await readFile(list, 'utf8')).trim().split('\n')).toEqual([yamlPath, yamlPath]);
    expect(await readFile(yamlPath, 'utf8')).toBe(text);
    expect(existsSync(join(job, 'output'))).toBe(false);
    const handed = logs[0]!.filter((l) => l.startsWith('handing over to mindformers'));
    expect(handed).toHaveLength(1);
    expect(handed[0]).toContain('STAND_ALONE inference with use_parallel, auto_trans_ckpt and safetensors');
    expect(logs[1]!.filter((l) => l.startsWith('handing over'))).toEqual([]);
  });
});

/**
 * Later releases, held out: excerpts (the keys that matter, as the files have them) of configs
 * of the mindformers branches named, written for this test.
 */
const HELD_OUT: Array<{ name: string; release: string; yaml: string; worldSize: number; mode: string }> = [
  {
    name: 'r1.6.0 configs/qwen2/predict_qwen2.yaml (mcore, MANUAL_PARALLEL, one device)',
    release: '1.6.0', worldSize: 1, mode: 'passthrough',
    yaml: `seed: 0\noutput_dir: './output'\nload_checkpoint: ''\nuse_parallel: False\nrun_mode: 'predict'\nuse_legacy: False\nload_ckpt_format: 'safetensors'\ntrainer:\n  type: CausalLanguageModelingTrainer\n  model_name: 'qwen2'\nparallel_config:\n  data_parallel: 1\n  model_parallel: 1\npretrained_model_dir: '/path/hf_dir'\nparallel:\n  parallel_mode: "MANUAL_PARALLEL"\n  full_batch: False\n`,
  },
  {
    name: 'master configs/deepseek3/predict_deepseek3_671b.yaml (mcore, MANUAL_PARALLEL, 32 devices)',
    release: '1.8.0', worldSize: 32, mode: 'passthrough',
    yaml: `seed: 0\noutput_dir: './output'\nload_checkpoint: ''\nuse_parallel: True\nrun_mode: 'predict'\nuse_legacy: False\nload_ckpt_format: "safetensors"\nparallel_config:\n  data_parallel: 1\n  model_parallel: 32\npretrained_model_dir: '/path/hf_dir'\ncontext:\n  mode: 0\n  max_device_memory: "59GB"\n  affinity_cpu_list: None\nparallel:\n  parallel_mode: "MANUAL_PARALLEL"\n  full_batch: False\n`,
  },
  {
    name: 'r1.6.0 research/deepseek3/deepseek3_671b/predict_deepseek3_671b.yaml (STAND_ALONE load-time slicing)',
    release: '1.6.0', worldSize: 32, mode: 'handover',
    yaml: `output_dir: './output'\nrun_mode: 'predict'\nuse_parallel: True\nload_checkpoint: "/path/to/deepseekv3/model.safetensors"\nload_ckpt_format: "safetensors"\nauto_trans_ckpt: True\nparallel_config:\n  model_parallel: 32\n  pipeline_stage: 1\n  expert_parallel: 1\n  vocab_emb_dp: False\nparallel:\n  parallel_mode: "STAND_ALONE" # use 'STAND_ALONE' mode for inference with parallelism in frontend\n  full_batch: False\n  strategy_ckpt_save_file: "./ckpt_strategy.ckpt"\n`,
  },
  {
    name: 'r1.7.0 research/deepseek3/deepseek_r1_671b/predict_deepseek_r1_671b_w8a8_ep16.yaml (STAND_ALONE, dp4 mp4 ep16)',
    release: '1.7.0', worldSize: 16, mode: 'handover',
    yaml: `output_dir: './output'\nrun_mode: 'predict'\nuse_parallel: True\nload_checkpoint: "/home/common/dsr1-w8a8"\nload_ckpt_format: "safetensors"\nauto_trans_ckpt: True\nparallel_config:\n  data_parallel: 4\n  model_parallel: 4\n  pipeline_stage: 1\n  expert_parallel: 16\n  vocab_emb_dp: False\nparallel:\n  parallel_mode: "STAND_ALONE"\n  full_batch: False\n`,
  },
  {
    name: 'master configs/qwen3/finetune_qwen3.yaml (auto_trans_ckpt with pretrained_model_dir)',
    release: '1.8.0', worldSize: 16, mode: 'convert',
    yaml: `output_dir: './output'\nload_checkpoint: ''\nload_ckpt_format: 'safetensors'\nsrc_strategy_path_or_dir: ''\nauto_trans_ckpt: True\nonly_save_strategy: False\nresume_training: False\nuse_parallel: True\nrun_mode: 'finetune'\nuse_legacy: False\npretrained_model_dir: "/path/to/Qwen3-32B"\nparallel_config:\n  data_parallel: &dp 1\n  model_parallel: 4\n  pipeline_stage: 4\n  micro_batch_num: &micro_batch_num 16\n  vocab_emb_dp: False\n  use_seq_parallel: True\n  gradient_aggregation_group: 1\nmicro_batch_interleave_num: 1\nparallel:\n  parallel_mode: 1\n  enable_alltoall: True\n  full_batch: True\n  strategy_ckpt_config:\n    save_file: "./ckpt_strategy.ckpt"\n    only_trainable_params: False\n`,
  },
  {
    name: 'r1.6.0 research/llm_boost/predict_llama2_7b_llm_boost.yaml (data parallel)',
    release: '1.6.0', worldSize: 1, mode: 'passthrough',
    yaml: `seed: 0\noutput_dir: './output'\nload_checkpoint: ''\nauto_trans_ckpt: False\nuse_parallel: False\nrun_mode: 'predict'\nparallel:\n  parallel_mode: 0\n  gradients_mean: False\n  enable_alltoall: False\n  full_batch: True\nparallel_config:\n  data_parallel: 1\n  model_parallel: 1\n`,
  },
];

describe('later releases, held out (r1.6.0, r1.7.0, r1.8.0, master)', () => {
  for (const h of HELD_OUT) {
    it(h.name, async () => {
      const dir = join(work, 'held', String(HELD_OUT.indexOf(h)));
      await mkdir(dir, { recursive: true });
      const yamlPath = join(dir, 'run.yaml');
      await writeFile(yamlPath, h.yaml);
      for (const version of [h.release, undefined]) {
        const r = await checkRunConfig(yamlPath, {
          checkFiles: false, env: {}, worldSize: h.worldSize, ...(version !== undefined ? { mindformersVersion: { version, from: 'flag' as const } } : {}),
        });
        expect(r.errors, `${version ?? 'unknown'}: ${JSON.stringify(r.errors)}`).toEqual([]);
        expect(r.config!.mode).toBe(h.mode);
      }
      if (h.mode === 'convert') return; // msckpt converts: that needs the weights (launch tests elsewhere)
      const list = join(dir, 'received.txt');
      const lines: string[] = [];
      const env: NodeJS.ProcessEnv = { PATH: process.env['PATH'] ?? '', RANK_ID: '0', RANK_SIZE: String(h.worldSize), MS_WORKER_NUM: String(h.worldSize) };
      const code = await launch({ config: yamlPath, command: recorder(list), cwd: dir, env, mindformersVersion: h.release, log: (l) => lines.push(l) });
      expect(code, lines.join('\n')).toBe(0);
      expect((await readFile(list, 'utf8')).trim()).toBe(yamlPath);
      expect(existsSync(join(dir, 'output'))).toBe(false);
      expect(lines.some((l) => l.startsWith('handing over'))).toBe(h.mode === 'handover');
    });
  }

  it('from r1.7.0 a STAND_ALONE/MANUAL_PARALLEL layout must fill the devices (cp not counted); r1.6.0 does not check it', async () => {
    const yamlPath = join(work, 'manual16.yaml');
    await writeFile(yamlPath, HELD_OUT[1]!.yaml);
    const at = async (version: string): Promise<RunConfigReport> =>
      checkRunConfig(yamlPath, { checkFiles: false, env: {}, worldSize: 16, mindformersVersion: { version, from: 'flag' } });
    expect((await at('1.6.0')).errors).toEqual([]);
    const r18 = await at('1.8.0');
    expect(r18.errors.map((e) => e.message)).toEqual([
      'data_parallel * model_parallel * pipeline_stage = 1*32*1 = 32 must equal the device count 16 in MANUAL_PARALLEL mode (mindformers r1.8.0 refuses this at start-up)',
    ]);
  });
});
