/**
 * Helpers of the launcher end-to-end tests: a job folder with the stand-in model, a run YAML,
 * and 8 ranks started through the msrun stand-in, each running the real `bin/msckpt.js launch`.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { afterEach } from 'vitest';
import { join } from 'node:path';
import { MSCKPT_BIN } from '../helpers/cli.js';
import { repoRoot } from '../helpers/fixtures.js';
import { msrun, type WorkerResult } from '../../examples/stand-ins/msrun.js';
import { writeCompleteModel, writeSlicedModel, writeSlicedSafetensors, writeUnifiedSafetensors, type StandInParallel } from '../../examples/stand-ins/model.js';

export const TRAIN_SCRIPT = join(repoRoot, 'examples', 'stand-ins', 'train.ts');
export const TSX_LOADER = import.meta.resolve('tsx');

/**
 * Call once at the top of a test file: returns a maker of fresh job folders, every one of which
 * is removed after the test that made it.
 */
export function useJobDirs(): () => Promise<string> {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
  });
  return async () => {
    const d = await mkdtemp(join(tmpdir(), 'msckpt-launch-'));
    dirs.push(d);
    return d;
  };
}

export interface YamlOptions {
  load: string;
  par: StandInParallel;
  tpn?: number;
  srcStrategy?: string;
  onlySaveStrategy?: boolean;
  autoTrans?: boolean;
  useParallel?: boolean;
  msckpt?: Record<string, unknown>;
  extra?: string;
  /** load_ckpt_format (default: not written, i.e. ckpt). */
  format?: 'ckpt' | 'safetensors';
}

export function runYaml(o: YamlOptions): string {
  const lines = [
    '# a mindformers-like run config for the stand-in model',
    'seed: 0',
    'run_mode: train',
    'output_dir: ./output',
    `load_checkpoint: ${o.load}`,
    `auto_trans_ckpt: ${o.autoTrans === false ? 'False' : 'True'}`,
    `only_save_strategy: ${o.onlySaveStrategy === true ? 'True' : 'False'}`,
    `transform_process_num: ${o.tpn ?? 1}`,
    `use_parallel: ${o.useParallel === false ? 'False' : 'True'}`,
    'npu_num_per_node: 4',
  ];
  if (o.format !== undefined) lines.push(`load_ckpt_format: ${o.format}`);
  if (o.srcStrategy !== undefined) lines.push(`src_strategy_path_or_dir: ${o.srcStrategy}`);
  lines.push(
    'parallel:',
    '  parallel_mode: 1',
    'parallel_config:',
    `  data_parallel: ${o.par.dp}`,
    `  model_parallel: ${o.par.mp}`,
    `  pipeline_stage: ${o.par.pp}`,
    `  micro_batch_num: ${Math.max(1, o.par.pp)}`,
  );
  if (o.msckpt !== undefined) {
    lines.push('msckpt:');
    for (const [k, v] of Object.entries(o.msckpt)) lines.push(`  ${k}: ${typeof v === 'boolean' ? (v ? 'True' : 'False') : String(v)}`);
  }
  if (o.extra !== undefined) lines.push(o.extra);
  return `${lines.join('\n')}\n`;
}

/** Write the complete stand-in model at `<node>/weights/model.ckpt`. */
export async function writeComplete(node: string): Promise<void> {
  await mkdir(join(node, 'weights'), { recursive: true });
  await writeCompleteModel(join(node, 'weights', 'model.ckpt'));
}

/** Write the stand-in model sliced for `par` at `<node>/sliced/rank_R` with strategies in `<node>/src_strategy`. */
export async function writeSliced(node: string, par: StandInParallel): Promise<void> {
  const complete = join(node, 'complete.ckpt');
  await writeCompleteModel(complete);
  await writeSlicedModel(complete, join(node, 'sliced'), join(node, 'src_strategy'), par);
}

/** The complete stand-in model as a unified safetensors folder `<node>/weights/<name>` (several parts), or HF shards + index. */
export async function writeUnified(node: string, name = 'llama_unified', hf = false): Promise<string> {
  const dir = join(node, 'weights', name);
  await writeUnifiedSafetensors(dir, { partSize: 4096, hf });
  return dir;
}

/**
 * The stand-in model sliced for `par` as distributed safetensors at `<node>/sliced/rank_R/` (one
 * file per (epoch, step) of `saves`; only the largest holds the right bytes) with the strategies
 * in `<node>/strategy` (where mindformers looks when src_strategy_path_or_dir is unset).
 */
export async function writeSlicedST(node: string, par: StandInParallel, saves?: ReadonlyArray<readonly [number, number]>): Promise<void> {
  await writeSlicedSafetensors(join(node, 'sliced'), join(node, 'strategy'), par, saves);
}

export interface JobRun {
  results: WorkerResult[];
  logs: string[];
}

export async function runJob(opts: {
  nodeDirs: string[];
  logDir: string;
  launchArgs?: string[];
  env?: Record<string, string>;
  workerNum?: number;
  machinePerNode?: boolean;
  /** The run YAML in each node folder (default run.yaml). */
  config?: string;
  /** msrun --master_port (default 8118). */
  masterPort?: number;
  /** Each worker in its own process group, reported here (to SIGKILL a job). */
  onSpawn?: (rank: number, pid: number) => void;
  /** Start only these nodes. */
  onlyNodes?: readonly number[];
}): Promise<JobRun> {
  const workerNum = opts.workerNum ?? 8;
  const results = await msrun({
    workerNum,
    localWorkerNum: workerNum / opts.nodeDirs.length,
    nodeDirs: opts.nodeDirs,
    logDir: opts.logDir,
    env: { STANDIN_REPORT_DIR: join(opts.logDir, 'reports'), ...opts.env },
    machinePerNode: opts.machinePerNode ?? false,
    ...(opts.masterPort !== undefined ? { masterPort: opts.masterPort } : {}),
    ...(opts.onSpawn !== undefined ? { onSpawn: opts.onSpawn } : {}),
    ...(opts.onlyNodes !== undefined ? { onlyNodes: opts.onlyNodes } : {}),
    command: [
      process.execPath, MSCKPT_BIN, 'launch', '--config', opts.config ?? 'run.yaml', ...(opts.launchArgs ?? []),
      '--', process.execPath, '--import', TSX_LOADER, TRAIN_SCRIPT, '{config}',
    ],
  });
  const logs = await Promise.all(results.map((r) => readFile(r.log, 'utf8')));
  return { results, logs };
}

export async function writeYaml(node: string, text: string): Promise<void> {
  await writeFile(join(node, 'run.yaml'), text);
}
