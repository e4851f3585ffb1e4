/**
 * Helpers of the launcher end-to-end tests: a job folder with the stand-in model, a run YAML,
 * and 8 ranks started through the msrun stand-in, each running the real `bin/msckpt.js launch`.
 */
import { watch } from 'chokidar';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { afterEach } from 'vitest';
import { MSCKPT_BIN } from '../helpers/cli.js';
import { repoRoot } from '../helpers/fixtures.js';
import { msrun, type WorkerResult } from '../../examples/stand-ins/msrun.js';
import { writeCompleteModel, writeSlicedModel, writeSlicedSafetensors, writeStrategyForRank, writeUnifiedSafetensors, type StandInParallel } from '../../examples/stand-ins/model.js';

export const TRAIN_SCRIPT = join(repoRoot, 'examples', 'stand-ins', 'train.ts');
export const TSX_LOADER = import.meta.resolve('tsx');
/**
 * The training stand-in: compiled, when `npm test` compiled everything (MSCKPT_DIST; a third of
 * the start-up time of each of the many stand-in processes), else through tsx.
 */
const COMPILED_TRAIN = process.env['MSCKPT_DIST'] !== undefined ? resolve(repoRoot, process.env['MSCKPT_DIST'], 'examples', 'stand-ins', 'train.js') : undefined;
export const TRAIN_COMMAND: readonly string[] =
  COMPILED_TRAIN !== undefined && existsSync(COMPILED_TRAIN) ? [process.execPath, COMPILED_TRAIN] : [process.execPath, '--import', TSX_LOADER, TRAIN_SCRIPT];

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
  /** Words after `{config}` in the training command (the stand-in ignores them; launch reads run_mindformer.py flags). */
  trainArgs?: readonly string[];
  /** Another training command (default: the training stand-in), `{config}` appended. */
  trainCommand?: readonly string[];
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
      '--', ...(opts.trainCommand ?? TRAIN_COMMAND), '{config}', ...(opts.trainArgs ?? []),
    ],
  });
  const logs = await Promise.all(results.map((r) => readFile(r.log, 'utf8')));
  return { results, logs };
}

export async function writeYaml(node: string, text: string): Promise<void> {
  await writeFile(join(node, 'run.yaml'), text);
}

/**
 * A 4-rank job in `dir`: the complete stand-in model, run.yaml for mp4 with two converters
 * (ranks 0 and 2) and the destination strategy at
 * `dst.ckpt` (for `--dst-strategy ./dst.ckpt`).
 */
export async function writeFourRankJob(dir: string): Promise<string> {
  await writeComplete(dir);
  await writeStrategyForRank(join(dir, 'dst.ckpt'), { dp: 1, mp: 4, pp: 1 }, 0);
  await writeYaml(dir, runYaml({ load: './weights/model.ckpt', par: { dp: 1, mp: 4, pp: 1 }, tpn: 2 }));
  return dir;
}

/** Exit code (or the signal that ended it) of every rank, by rank. */
export function exitCodes(r: { results: ReadonlyArray<{ rank: number; exitCode: number | undefined; signal: string | undefined }> }): Array<number | string> {
  return [...r.results].sort((a, b) => a.rank - b.rank).map((x) => x.signal ?? (x.exitCode as number));
}

export interface TrainReport {
  file: string;
  problems: string[];
  autoTrans: unknown;
  format?: string;
  loadTime?: boolean;
}

/** What each rank's training stand-in found (rank -> report). */
export async function trainReports(logDir: string): Promise<Map<number, TrainReport>> {
  const dir = join(logDir, 'reports');
  const out = new Map<number, TrainReport>();
  if (!existsSync(dir)) return out;
  for (const f of await readdir(dir)) {
    const m = /^train_rank_(\d+)\.json$/.exec(f);
    if (m !== null) out.set(Number(m[1]), JSON.parse(await readFile(join(dir, f), 'utf8')) as TrainReport);
  }
  return out;
}

/** sha256 of every file under `dir` (relative path -> hash), except what `skip` names. */
export async function hashTree(dir: string, skip: (rel: string) => boolean = () => false): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const rel = relative(dir, p);
      if (skip(rel)) continue;
      if (e.isDirectory()) await walk(p);
      else out.set(rel, createHash('sha256').update(await readFile(p)).digest('hex'));
    }
  };
  await walk(dir);
  return new Map([...out.entries()].sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** Resolves when `test` holds, checked at every file event under `dir` (no polling); rejects if `stop` settles first. */
export function whenFiles(dir: string, test: () => boolean | Promise<boolean>, stop: Promise<unknown>, what: string): Promise<void> {
  return new Promise<void>((resolveAll, reject) => {
    const w = watch(dir, { ignoreInitial: false, depth: 6, persistent: true });
    let done = false;
    // chokidar drops the change events of a file that follow one within 50 ms, with no trailing
    // event: a file's last write can go unseen (a log whose last line is "holds at ...", written
    // just after another). So each event is followed by one more check once that window is over.
    let trailing: NodeJS.Timeout | undefined;
    const finish = (): void => {
      done = true;
      clearTimeout(trailing);
      void w.close();
    };
    const check = (): void => {
      void Promise.resolve(test()).then((ok) => {
        if (!ok || done) return;
        finish();
        resolveAll();
      });
    };
    const onEvent = (): void => {
      check();
      clearTimeout(trailing);
      trailing = setTimeout(check, 100);
    };
    w.on('all', onEvent).on('ready', check);
    void stop.then(() => {
      if (done) return;
      finish();
      reject(new Error(`the job ended before ${what}`));
    });
  });
}

/** Resolves when every file exists (file events, no polling); rejects if `stop` settles first. */
export function filesAppear(dir: string, names: readonly string[], stop: Promise<unknown>): Promise<void> {
  return whenFiles(dir, () => names.every((n) => existsSync(join(dir, n))), stop, `${names.join(', ')} appeared in ${dir}`);
}

/** Resolves when the log file matches `re` (file events, no polling); rejects if `stop` settles first. */
export function logShows(file: string, re: RegExp, stop: Promise<unknown>): Promise<void> {
  const dir = resolve(file, '..');
  return whenFiles(dir, async () => existsSync(file) && re.test(await readFile(file, 'utf8')), stop, `${file} showed ${re}`);
}

/** Temporary files (our writer's `.<name>.<pid>.<n>.tmp`, or any `*.tmp`, `*.stale`) under `dir`. */
export async function tempFilesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    let ents;
    try {
      ents = await readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of ents) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (/\.(tmp|stale)$/.test(e.name)) out.push(relative(dir, p));
    }
  };
  await walk(dir);
  return out.sort();
}

/**
 * The ledger's consistency with output/, read here independently of the launcher's reader:
 * every file under output/strategy and output/transformed_checkpoint has a `written` entry with
 * its size and mtime, and every `written` entry's file is there unchanged (or, for files no
 * longer there, listed as missing). Returns the problems (empty: consistent).
 */
export async function ledgerProblems(outputDir: string): Promise<string[]> {
  const ledger = join(outputDir, 'msckpt', 'ledger');
  const written = new Map<string, Array<{ size: number; mtimeMs: number }>>();
  for (const f of existsSync(ledger) ? await readdir(ledger) : []) {
    for (const line of (await readFile(join(ledger, f), 'utf8')).split('\n')) {
      if (line === '') continue;
      const e = JSON.parse(line) as { path: string; state: string; size?: number; mtimeMs?: number };
      if (e.state !== 'written') continue;
      written.set(e.path, [...(written.get(e.path) ?? []), { size: e.size as number, mtimeMs: e.mtimeMs as number }]);
    }
  }
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const sub of ['strategy', 'transformed_checkpoint']) {
    const walk = async (d: string): Promise<void> => {
      if (!existsSync(d)) return;
      for (const e of await readdir(d, { withFileTypes: true })) {
        const p = join(d, e.name);
        if (e.isDirectory()) {
          await walk(p);
          continue;
        }
        const rel = relative(outputDir, p).split('\\').join('/');
        seen.add(rel);
        const st = await stat(p);
        const w = written.get(rel);
        if (w === undefined) problems.push(`${rel}: not in the ledger`);
        else if (!w.some((x) => x.size === st.size && x.mtimeMs === st.mtimeMs)) problems.push(`${rel}: changed since it was recorded`);
      }
    };
    await walk(join(outputDir, sub));
  }
  for (const rel of written.keys()) {
    if ((rel.startsWith('strategy/') || rel.startsWith('transformed_checkpoint/')) && !seen.has(rel)) problems.push(`${rel}: recorded but missing`);
  }
  return problems.sort();
}
