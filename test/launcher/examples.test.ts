import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkRunConfig, runConfigSchemaPath, summarizeRunConfig } from '../../plugin/launcher/index.js';
import { repoRoot } from '../helpers/fixtures.js';
import { runCli } from '../helpers/cli.js';

const examplesDir = join(repoRoot, 'examples');

/** Device count of each example's job. */
const WORLD: Record<string, number> = {
  '1-to-many.yaml': 8,
  'many-to-many.yaml': 4,
  'many-to-one.yaml': 1,
  'multi-process.yaml': 8,
  'two-nodes-16-devices.yaml': 16,
  'strategy-only.yaml': 8,
  'safetensors.yaml': 8,
};

let cwd: string;

beforeAll(async () => {
  // the working directory the examples expect: their checkpoints and strategies
  cwd = await mkdtemp(join(tmpdir(), 'msckpt-examples-'));
  const files = [
    'checkpoint/llama2_7b/rank_0/llama2_7b.ckpt',
    'checkpoint/llama2_7b_mp2/rank_0/checkpoint_0.ckpt',
    'checkpoint/llama2_7b_mp2/rank_1/checkpoint_1.ckpt',
    'checkpoint/llama2_7b_mp2_strategy/ckpt_strategy_rank_0.ckpt',
    'checkpoint/llama2_7b_mp2_strategy/ckpt_strategy_rank_1.ckpt',
    'checkpoint/llama2_7b_safetensors/model-00001-of-00002.safetensors',
    'checkpoint/llama2_7b_safetensors/model-00002-of-00002.safetensors',
    'checkpoint/llama2_7b_safetensors/model.safetensors.index.json',
  ];
  for (const f of files) {
    await mkdir(dirname(join(cwd, f)), { recursive: true });
    await writeFile(join(cwd, f), 'x');
  }
});

afterAll(async () => {
  await rm(cwd, { recursive: true, force: true });
});

describe('examples/', () => {
  it('has one YAML per documented scenario, each pointing editors at the schema', async () => {
    const yamls = (await readdir(examplesDir)).filter((f) => f.endsWith('.yaml')).sort();
    expect(yamls).toEqual(Object.keys(WORLD).sort());
    for (const f of yamls) {
      const first = (await readFile(join(examplesDir, f), 'utf8')).split('\n')[0]!;
      expect(first).toBe('# yaml-language-server: $schema=../schemas/run-config.schema.json');
      expect(existsSync(resolve(examplesDir, '../schemas/run-config.schema.json'))).toBe(true);
    }
    expect(existsSync(join(examplesDir, 'README.md'))).toBe(true);
  });

  it('the schema is a clean draft 2020-12 schema with $schema and $id', async () => {
    const schema = JSON.parse(await readFile(runConfigSchemaPath(), 'utf8')) as Record<string, unknown>;
    expect(schema['$schema']).toBe('https://json-schema.org/draft/2020-12/schema');
    expect(typeof schema['$id']).toBe('string');
    const ajv = new Ajv2020({ strict: true, allowUnionTypes: true });
    expect(() => ajv.compile(schema)).not.toThrow();
  });

  for (const [name, ws] of Object.entries(WORLD)) {
    it(`${name} validates for ${ws} device(s)`, async () => {
      const r = await checkRunConfig(join(examplesDir, name), { worldSize: ws, cwd, env: {} });
      expect(r.errors).toEqual([]);
      expect(r.warnings).toEqual([]);
      const s = summarizeRunConfig(r.config!);
      expect(s.deviceCount).toBe(ws);
      if (name === 'strategy-only.yaml') expect(s.mode).toBe('strategy-only');
      else expect(s.mode).toBe('convert');
      if (name === 'multi-process.yaml') expect(s.converters.map((c) => c.rank)).toEqual([0, 4]);
      if (name === 'two-nodes-16-devices.yaml') expect(s.converters.map((c) => c.rank)).toEqual([0, 8]);
      if (name === 'many-to-one.yaml') expect(r.config!.useParallel).toBe(false);
      if (name === 'safetensors.yaml') expect(r.config!.loadCkptFormat).toBe('safetensors');
    });
  }
});

describe('examples/README.md', () => {
  it('its validate commands run as written from the root of a clone', async () => {
    const text = await readFile(join(examplesDir, 'README.md'), 'utf8');
    const commands = text.split('\n').filter((l) => l.startsWith('node bin/msckpt.js validate '));
    expect(commands.length).toBeGreaterThan(0);
    for (const c of commands) {
      const args = c.replace(/^node bin\/msckpt\.js /, '').split(/\s+/);
      for (const a of args) if (a.startsWith('examples/')) expect(existsSync(join(repoRoot, a)), a).toBe(true);
      const r = await runCli(args, { cwd: repoRoot });
      expect(r.exitCode, `${c}\n${r.stderr}`).toBe(0);
      expect(r.stdout).toContain('OK examples/');
    }
    // the launch example names files of this clone
    for (const m of text.matchAll(/\$MSCKPT_HOME\/([\w./-]+)/g)) expect(existsSync(join(repoRoot, m[1]!)), m[1]).toBe(true);
  });
});

/** A broken variant of an example: the expected error's key, where it is, and a bit of its message. */
interface Variant {
  example: string;
  from: string;
  to: string;
  key: string;
  /** The text at the reported line:column. */
  at: string;
  message: string;
  setup?: string;
  /** A warning (the YAML is still accepted) rather than a refusal. */
  warning?: true;
}

const VARIANTS: Variant[] = [
  {
    example: 'multi-process.yaml',
    from: 'auto_trans_ckpt: True',
    to: 'auto_trans_ckp: True',
    key: 'auto_trans_ckp',
    at: 'auto_trans_ckp: True',
    message: "did you mean 'auto_trans_ckpt'?",
    warning: true,
  },
  {
    example: 'multi-process.yaml',
    from: '\ntransform_process_num: 2 ',
    to: '\ntransform_process_num: 3 ',
    key: 'transform_process_num',
    at: 'transform_process_num: 3',
    message: '3 does not divide the device count 8',
  },
  {
    example: 'multi-process.yaml',
    from: '  model_parallel: 2',
    to: '  model_paralel: 2',
    key: 'parallel_config.model_paralel',
    at: 'model_paralel: 2',
    message: "did you mean 'model_parallel'?",
    warning: true,
  },
  {
    example: 'multi-process.yaml',
    from: '  data_parallel: 2',
    to: '  data_parallel: 4',
    key: 'parallel_config',
    at: 'parallel_config:',
    message: '4*2*1*2 = 16 must equal the device count 8',
  },
  {
    example: 'multi-process.yaml',
    from: "src_strategy_path_or_dir: './checkpoint/llama2_7b_mp2_strategy'",
    to: '',
    key: 'load_checkpoint',
    at: "load_checkpoint: './checkpoint/llama2_7b_mp2'",
    message: 'is sliced into 2 rank folders; set src_strategy_path_or_dir',
  },
  {
    example: 'many-to-many.yaml',
    from: "load_checkpoint: './checkpoint/llama2_7b_mp2'",
    to: "load_checkpoint: './output/transformed_checkpoint/llama2_7b_mp2/'",
    key: 'load_checkpoint',
    at: 'load_checkpoint:',
    message: 'lies inside output_dir/transformed_checkpoint',
    setup: 'output/transformed_checkpoint/llama2_7b_mp2/rank_0',
  },
  {
    example: 'two-nodes-16-devices.yaml',
    from: 'npu_num_per_node: 8',
    to: 'npu_num_per_node: 6',
    key: 'npu_num_per_node',
    at: 'npu_num_per_node: 6',
    message: 'not a power of 2',
    warning: true,
  },
  {
    example: '1-to-many.yaml',
    from: 'use_parallel: True',
    to: 'use_parallel: "True"',
    key: 'use_parallel',
    at: 'use_parallel: "True"',
    message: "is the string 'True', not True or False; mindformers tests its truth, so it counts as True",
    warning: true,
  },
  {
    example: '1-to-many.yaml',
    from: 'auto_trans_ckpt: True',
    to: 'auto_trans_ckpt: "True"',
    key: 'auto_trans_ckpt',
    at: 'auto_trans_ckpt: "True"',
    message: 'must be True or False',
  },
  {
    example: 'safetensors.yaml',
    from: "load_ckpt_format: 'safetensors'",
    to: "load_ckpt_format: 'safetensor'",
    key: 'load_ckpt_format',
    at: 'load_ckpt_format:',
    message: "must be 'ckpt' or 'safetensors'",
  },
  {
    example: 'strategy-only.yaml',
    from: '  parallel_mode: 1',
    to: '  parallel_mode: 0',
    key: 'parallel.parallel_mode',
    at: 'parallel_mode: 0',
    message: 'parallel_mode 0 (data_parallel) writes no strategy files',
  },
];

describe('broken variants of the examples', () => {
  for (const v of VARIANTS) {
    it(`${v.example}: ${v.to.trim().split(' #')[0] || `without ${v.from.split(':')[0]}`} -> ${v.key}`, async () => {
      const text = await readFile(join(examplesDir, v.example), 'utf8');
      expect(text).toContain(v.from);
      const broken = text.replace(v.from, v.to);
      if (v.setup !== undefined) await mkdir(join(cwd, v.setup), { recursive: true });
      const file = join(cwd, `broken-${v.example}`);
      await writeFile(file, broken);
      const r = await checkRunConfig(file, { worldSize: WORLD[v.example], cwd, env: {}, mindformersVersion: { version: '1.5.0', from: 'flag' } });
      if (v.warning !== true) expect(r.ok).toBe(false);
      const found = v.warning === true ? r.warnings : r.errors;
      const hit = found.find((e) => e.key === v.key && e.message.includes(v.message));
      expect(hit, JSON.stringify(found)).toBeDefined();
      const line = broken.split('\n')[hit!.line - 1]!;
      expect(line.slice(hit!.column - 1).startsWith(v.at), `line ${hit!.line}:${hit!.column} is '${line}'`).toBe(true);
    });
  }
});
