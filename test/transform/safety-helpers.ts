/**
 * Helpers of the fault tests (issue 11): a small generated model and its layouts, content hashes
 * of whole trees, the real CLI as a child process that can be signalled, and the processes a run
 * started (found by a tag in their environment, which children inherit).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { transformCheckpoints } from '../../plugin/transform/index.js';
import { MSCKPT_BIN } from '../helpers/cli.js';
import { repoRoot } from '../helpers/fixtures.js';
import { layout, saveStrategy, writeCkpt, type GenTensor } from './helpers.js';

export function tensors(seed: number, scale = 1): GenTensor[] {
  const mk = (name: string, shape: number[], dtype: 'BFloat16' | 'Float32'): GenTensor => {
    const es = dtype === 'Float32' ? 4 : 2;
    const data = new Uint8Array(shape.reduce((a, b) => a * b, es));
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + seed * 7 + (i >> 8)) & 255;
    return { name, dtype, shape, data };
  };
  return [
    { name: 'global_step', dtype: 'Int32', shape: [1], data: new Uint8Array([9, 0, 0, 0]) },
    mk('w1', [16 * scale, 8], 'BFloat16'),
    mk('w2', [8, 16 * scale], 'Float32'),
    mk('norm', [8], 'Float32'),
  ];
}

export interface Model {
  /** A complete .ckpt. */
  readonly complete: string;
  /** 4 ranks (2x2). */
  readonly s4: string;
  /** 2 ranks. */
  readonly s2: string;
  /** 8 ranks (4x2). */
  readonly s8: string;
}

export async function makeModel(dir: string, scale = 1): Promise<Model> {
  const complete = join(dir, 'complete.ckpt');
  await writeCkpt(complete, tensors(1, scale));
  const s4 = await saveStrategy(join(dir, 's4.ckpt'), [layout('w1', [2, 2], [0, -1]), layout('w2', [2, 2], [-1, 1]), layout('norm', [2, 2], [-1])]);
  const s2 = await saveStrategy(join(dir, 's2.ckpt'), [layout('w1', [2], [0, -1]), layout('w2', [2], [-1, 0]), layout('norm', [2], [-1])]);
  const s8 = await saveStrategy(join(dir, 's8.ckpt'), [layout('w1', [4, 2], [1, -1]), layout('w2', [4, 2], [-1, 0]), layout('norm', [4, 2], [-1])]);
  return { complete, s4, s2, s8 };
}

/** A sliced source: the complete file cut to `strategy`'s ranks under `dir` (rank_N/ folders). */
export async function sliced(complete: string, strategy: string, dir: string): Promise<string> {
  await transformCheckpoints({ srcCheckpoint: complete, dstStrategy: strategy, dstDir: dir, progress: false });
  return dir;
}

export function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** sha256 of every file under `dir` (relative path -> hash); symlinks are listed, not followed. */
export async function hashTree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isSymbolicLink()) out[relative(dir, p)] = 'symlink';
      else out[relative(dir, p)] = createHash('sha256').update(await readFile(p)).digest('hex');
    }
  };
  await walk(dir);
  return out;
}

/** The rank files of a transform output (relative path -> hash), no manifest or journal. */
export async function rankFiles(dir: string): Promise<Record<string, string>> {
  const all = await hashTree(dir);
  return Object.fromEntries(Object.entries(all).filter(([k]) => /^rank_\d+\/[^/]+\.(ckpt|safetensors)$/.test(k)));
}

/** Temporary files (`.name.pid.n.tmp`) and plan folders anywhere under `dir`. */
export function leftovers(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (/\.tmp$/.test(e.name) || e.name.startsWith('.msckpt-plan-') || e.name === '.msckpt-cluster') out.push(relative(dir, p));
      if (e.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out;
}

/** A running CLI: its process, a tag that its children inherit, its output as it comes. */
export interface Running {
  readonly child: ChildProcess;
  readonly tag: string;
  stdout: string;
  stderr: string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function startCli(args: readonly string[], env: Record<string, string> = {}): Running {
  const tag = randomUUID();
  const child = spawn(process.execPath, [MSCKPT_BIN, ...args], {
    cwd: repoRoot, env: { ...process.env, ...env, MSCKPT_TEST_PROCESS_TAG: tag }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  const r: Running = {
    child, tag, stdout: '', stderr: '',
    exited: new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal }))),
  };
  child.stdout?.on('data', (d: Buffer) => {
    r.stdout += d.toString('utf8');
  });
  child.stderr?.on('data', (d: Buffer) => {
    r.stderr += d.toString('utf8');
  });
  return r;
}

/** Wait until `cond()` holds (checked on every output chunk and every 20 ms), failing after `ms`. */
export async function until(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Pids of live processes whose environment holds `tag` (this machine, /proc). */
export function taggedPids(tag: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const env = readFileSync(`/proc/${name}/environ`, 'latin1');
      if (!env.includes(`MSCKPT_TEST_PROCESS_TAG=${tag}`)) continue;
      const stat = readFileSync(`/proc/${name}/stat`, 'latin1');
      // a zombie (state Z) has exited
      if (/^\d+ \(.*\) Z/.test(stat)) continue;
      out.push(Number(name));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return out;
}
