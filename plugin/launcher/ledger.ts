/**
 * The launcher's record of what it wrote under output_dir, so that a later run removes only that.
 *
 * `output_dir/msckpt/ledger/rank_R.jsonl`: one file per rank that writes (no two processes ever
 * append to one file, also across machines on a shared disk), one JSON entry per line, appended.
 * A line torn by a killed writer is ignored. Entries name a path relative to output_dir:
 * - `written`, with the file's size and mtime once it is complete under its final name: the
 *   strategy-only pass's files (recorded by the coordinating rank after the pass), the merged
 *   strategy, every converted rank file (by its converter, as the rank writer commits it), the
 *   derived run YAMLs (by the rank that wrote each);
 * - `planned`, recorded by the coordinating rank before any converter starts: the converted files
 *   the plan will write. A planned file without a `written` entry is one a killed converter
 *   renamed but could not record; a `written` entry whose file's size or mtime differ is a file
 *   the user replaced, no longer ours.
 *
 * Cleaning (before a run writes anything): in output/strategy and output/transformed_checkpoint
 * every file must be ours (recorded and unchanged, a temporary name our writer makes next to a
 * recorded path, or a name mindformers' own strategy pass writes for this job:
 * `<strategy base>_rank_<r>.ckpt` for r below the world size, `merged_ckpt_strategy.ckpt`,
 * `merge_succeed.txt`). Anything else refuses the run (exit 2) with the list and nothing is
 * removed: user files are never deleted, and not moved either (a file moved aside silently
 * changes a path the user relies on, and on a disk per node every node would move its own).
 * In output/msckpt only recorded derived YAMLs and temporary names of derived YAMLs go. Files go
 * first, then the folders they leave empty, then the ledger: a clean killed half-way leaves a
 * ledger that still covers what is left.
 */
import { appendFile, lstat, mkdir, readdir, readFile, rm, rmdir } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';
import { fromSystemError, InputError } from '../errors.js';
import { tempNameTarget } from '../formats/atomic.js';
import type { JobPaths } from './paths.js';

/** Folder of the ledger under output_dir/msckpt. */
export const LEDGER_FOLDER = 'ledger';

/** Names mindformers' merge of pipeline strategies writes in output/strategy. */
const MINDFORMERS_MERGE_NAMES: ReadonlySet<string> = new Set(['merged_ckpt_strategy.ckpt', 'merge_succeed.txt']);

/** A derived run YAML the launcher writes in output/msckpt (`train_rank_3.yaml`). */
const DERIVED_YAML = /^[a-z_]+_rank_(\d+)\.yaml$/;

export interface LedgerEntry {
  /** Relative to output_dir, '/'-separated. */
  readonly path: string;
  readonly state: 'planned' | 'written';
  readonly size?: number;
  readonly mtimeMs?: number;
  readonly crc32?: number;
  /** What wrote it: `strategy-only pass`, `converter rank 4`, ... */
  readonly by: string;
  /** The job id (coordination/job.ts). */
  readonly job: string;
}

export function ledgerDir(paths: JobPaths): string {
  return join(paths.msckptDir, LEDGER_FOLDER);
}

function relPath(paths: JobPaths, abs: string): string {
  return relative(paths.outputDir, abs).split(sep).join('/');
}

/** One rank's part of the ledger (see the module comment). */
export class Ledger {
  readonly file: string;

  constructor(
    readonly paths: JobPaths,
    readonly rank: number,
    readonly job: string,
  ) {
    this.file = join(ledgerDir(paths), `rank_${rank}.jsonl`);
  }

  /** Files about to be written: recorded before any of them appears. */
  async planned(files: readonly string[], by: string): Promise<void> {
    await this.append(files.map((f) => ({ path: relPath(this.paths, f), state: 'planned', by, job: this.job })));
  }

  /** Complete files: their size and mtime as they are now (and their CRC-32 when known). */
  async written(files: ReadonlyArray<string | { readonly path: string; readonly crc32?: number }>, by: string): Promise<void> {
    const entries: LedgerEntry[] = [];
    for (const f of files) {
      const path = typeof f === 'string' ? f : f.path;
      let st;
      try {
        st = await lstat(path);
      } catch (err) {
        throw fromSystemError(err, path, 'looking at a file msckpt wrote');
      }
      const crc = typeof f === 'string' ? undefined : f.crc32;
      entries.push({ path: relPath(this.paths, path), state: 'written', size: st.size, mtimeMs: st.mtimeMs, ...(crc !== undefined ? { crc32: crc } : {}), by, job: this.job });
    }
    await this.append(entries);
  }

  private async append(entries: readonly LedgerEntry[]): Promise<void> {
    if (entries.length === 0) return;
    try {
      await mkdir(dirname(this.file), { recursive: true });
      await appendFile(this.file, entries.map((e) => `${JSON.stringify(e)}\n`).join(''));
    } catch (err) {
      throw fromSystemError(err, this.file, 'recording what msckpt wrote');
    }
  }
}

interface Recorded {
  planned: boolean;
  written: Array<{ size: number; mtimeMs: number }>;
}

/** Every ledger file and what they record, by path relative to output_dir. */
export interface LedgerIndex {
  readonly files: readonly string[];
  readonly entries: ReadonlyMap<string, Recorded>;
}

async function listEntries(dir: string): Promise<import('node:fs').Dirent[]> {
  try {
    return await readdir(dir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw fromSystemError(err, dir, 'listing the folder');
  }
}

/** Read the whole ledger (lines that do not parse, e.g. torn by a kill, are skipped). */
export async function readLedger(paths: JobPaths): Promise<LedgerIndex> {
  const dir = ledgerDir(paths);
  const files: string[] = [];
  const entries = new Map<string, Recorded>();
  for (const d of await listEntries(dir)) {
    if (!d.isFile() || !/^rank_\d+\.jsonl$/.test(d.name)) continue;
    const file = join(dir, d.name);
    files.push(file);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw fromSystemError(err, file, 'reading the record of what msckpt wrote');
    }
    for (const line of text.split('\n')) {
      if (line === '') continue;
      let e: Partial<LedgerEntry>;
      try {
        e = JSON.parse(line) as Partial<LedgerEntry>;
      } catch {
        continue;
      }
      if (typeof e.path !== 'string' || (e.state !== 'planned' && e.state !== 'written')) continue;
      let r = entries.get(e.path);
      if (r === undefined) entries.set(e.path, (r = { planned: false, written: [] }));
      if (e.state === 'planned') r.planned = true;
      else if (typeof e.size === 'number' && typeof e.mtimeMs === 'number') r.written.push({ size: e.size, mtimeMs: e.mtimeMs });
    }
  }
  return { files, entries };
}

export interface CleanOptions {
  readonly paths: JobPaths;
  /** The job's device count: mindformers' strategy files `<base>_rank_<r>.ckpt` for r below it are its. */
  readonly worldSize: number;
  /** Without a shared disk: this node's ranks; files of other ranks are left alone (neither removed nor judged). */
  readonly ranks?: readonly number[] | undefined;
}

export interface CleanPlan {
  /** Files to remove (absolute). */
  readonly remove: readonly string[];
  /** Folders to remove once empty, deepest first. */
  readonly dirs: readonly string[];
  /** What msckpt did not write (absolute; folders end with '/'): the run is refused. */
  readonly unknown: readonly string[];
  /** The ledger files to remove after the files. */
  readonly ledgerFiles: readonly string[];
}

interface Found {
  abs: string;
  rel: string;
  name: string;
  /** An empty folder (not a symlink). */
  emptyDir: boolean;
  size: number;
  mtimeMs: number;
}

/** Files (symlinks as files, never followed) and empty folders under `root`. */
async function walk(paths: JobPaths, root: string): Promise<Found[]> {
  const out: Found[] = [];
  const visit = async (dir: string): Promise<void> => {
    const ents = await listEntries(dir);
    if (ents.length === 0 && dir !== root) {
      out.push({ abs: dir, rel: relPath(paths, dir), name: '', emptyDir: true, size: 0, mtimeMs: 0 });
      return;
    }
    for (const d of ents) {
      const abs = join(dir, d.name);
      if (d.isDirectory()) {
        await visit(abs);
        continue;
      }
      let st;
      try {
        st = await lstat(abs);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw fromSystemError(err, abs, 'looking at the file');
      }
      out.push({ abs, rel: relPath(paths, abs), name: d.name, emptyDir: false, size: st.size, mtimeMs: st.mtimeMs });
    }
  };
  await visit(root);
  return out;
}

/** The rank a path of the job belongs to, when its name tells (`*_rank_3.ckpt`, `<name>/rank_3/...`, `train_rank_3.yaml`). */
function rankOfRel(paths: JobPaths, rel: string): number | undefined {
  const strategy = relPath(paths, paths.strategyDir);
  const transformed = relPath(paths, paths.transformedDir);
  const msckpt = relPath(paths, paths.msckptDir);
  const parts = rel.split('/');
  const last = parts[parts.length - 1] as string;
  const name = tempNameTarget(last)?.name ?? last;
  const parent = parts.slice(0, -1).join('/');
  if (parent === strategy || parent === msckpt) {
    const m = /_rank_(\d+)\.[a-z]+$/.exec(name);
    return m === null ? undefined : Number(m[1]);
  }
  if (rel.startsWith(`${transformed}/`)) {
    const m = /^rank_(\d+)$/.exec(rel.slice(transformed.length + 1).split('/')[1] ?? '');
    return m === null ? undefined : Number(m[1]);
  }
  return undefined;
}

/** What cleaning the job's outputs would remove, and what it finds that msckpt did not write. */
export async function planClean(opts: CleanOptions): Promise<CleanPlan> {
  const { paths, worldSize } = opts;
  const mine = opts.ranks === undefined ? null : new Set(opts.ranks);
  const ledger = await readLedger(paths);
  const strategyRel = relPath(paths, paths.strategyDir);
  const msckptRel = relPath(paths, paths.msckptDir);
  const strategyNames = new Set(Array.from({ length: worldSize }, (_v, r) => `${paths.strategyBase}_rank_${r}.ckpt`));
  for (const n of MINDFORMERS_MERGE_NAMES) strategyNames.add(n);
  const recordedUnchanged = (f: Found): boolean => {
    const r = ledger.entries.get(f.rel);
    if (r === undefined) return false;
    if (r.written.length > 0) return r.written.some((w) => w.size === f.size && w.mtimeMs === f.mtimeMs);
    return r.planned;
  };
  // folders that hold (or would hold) recorded files: removed when left empty
  const recordedDirs = new Set<string>();
  for (const rel of ledger.entries.keys()) {
    for (let d = rel.slice(0, rel.lastIndexOf('/')); d.includes('/'); d = d.slice(0, d.lastIndexOf('/'))) recordedDirs.add(d);
  }
  const others = (rel: string): boolean => {
    if (mine === null) return false;
    const r = rankOfRel(paths, rel);
    return r !== undefined && !mine.has(r);
  };
  const remove: string[] = [];
  const unknown: string[] = [];
  const dirs = new Set<string>();
  const keepDirOf = (abs: string, root: string): void => {
    for (let d = dirname(abs); d.length > root.length && d.startsWith(root); d = dirname(d)) dirs.add(d);
  };
  for (const root of [paths.strategyDir, paths.transformedDir]) {
    for (const f of await walk(paths, root)) {
      if (others(f.rel)) continue;
      if (f.emptyDir) {
        if (recordedDirs.has(f.rel)) dirs.add(f.abs);
        else unknown.push(`${f.abs}/`);
        continue;
      }
      const parent = f.rel.slice(0, f.rel.lastIndexOf('/'));
      const temp = tempNameTarget(f.name);
      const target = temp === undefined ? undefined : `${parent}/${temp.name}`;
      const ours =
        recordedUnchanged(f) ||
        (parent === strategyRel && strategyNames.has(f.name)) ||
        (target !== undefined && (ledger.entries.has(target) || (parent === strategyRel && strategyNames.has(temp!.name))));
      if (ours) {
        remove.push(f.abs);
        keepDirOf(f.abs, root);
      } else {
        unknown.push(f.abs);
      }
    }
  }
  // output/msckpt: recorded derived YAMLs and temporary names of derived YAMLs; nothing else judged
  for (const d of await listEntries(paths.msckptDir)) {
    if (d.isDirectory()) continue;
    const abs = join(paths.msckptDir, d.name);
    const rel = `${msckptRel}/${d.name}`;
    if (others(rel)) continue;
    const temp = tempNameTarget(d.name);
    if (temp !== undefined) {
      if (DERIVED_YAML.test(temp.name)) remove.push(abs);
      continue;
    }
    if (!DERIVED_YAML.test(d.name) || !ledger.entries.has(rel)) continue;
    let st;
    try {
      st = await lstat(abs);
    } catch {
      continue;
    }
    if (recordedUnchanged({ abs, rel, name: d.name, emptyDir: false, size: st.size, mtimeMs: st.mtimeMs })) remove.push(abs);
  }
  const ledgerFiles = ledger.files.filter((f) => {
    if (mine === null) return true;
    const m = /rank_(\d+)\.jsonl$/.exec(f);
    return m !== null && mine.has(Number(m[1]));
  });
  const depth = (p: string): number => p.split(sep).length;
  return { remove, unknown, dirs: [...dirs].sort((a, b) => depth(b) - depth(a) || (a < b ? -1 : 1)), ledgerFiles };
}

export interface CleanReport {
  /** Files removed. */
  readonly removed: number;
}

/** The refusal when the cleaned folders hold what msckpt did not write (exit 2; nothing removed). */
export function unknownFilesError(paths: JobPaths, unknown: readonly string[]): InputError {
  const shown = unknown.slice(0, 8).join(', ');
  return new InputError(
    `${unknown.length} file(s) in ${paths.strategyDir} or ${paths.transformedDir} were not written by msckpt (or were changed since): ` +
      `${shown}${unknown.length > 8 ? `, and ${unknown.length - 8} more` : ''}. Nothing was removed. ` +
      'msckpt empties these folders before converting and removes only what it wrote: move these files elsewhere, or set a different output_dir',
  );
}

/**
 * Empty the job's output/strategy and output/transformed_checkpoint of what msckpt (or the
 * strategy pass it ran, or mindformers' own strategy pass for this job) wrote; refuse with an
 * InputError listing anything else, before removing anything. See the module comment.
 */
export async function cleanJobOutputs(opts: CleanOptions): Promise<CleanReport> {
  const plan = await planClean(opts);
  if (plan.unknown.length > 0) throw unknownFilesError(opts.paths, plan.unknown);
  for (const f of plan.remove) {
    try {
      await rm(f, { force: true });
    } catch (err) {
      throw fromSystemError(err, f, 'removing a file of an earlier run');
    }
  }
  for (const d of plan.dirs) {
    try {
      await rmdir(d);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTEMPTY' && code !== 'EEXIST') throw fromSystemError(err, d, 'removing a folder of an earlier run');
    }
  }
  for (const f of plan.ledgerFiles) {
    try {
      await rm(f, { force: true });
    } catch (err) {
      throw fromSystemError(err, f, 'removing the record of an earlier run');
    }
  }
  return { removed: plan.remove.length };
}

/** Complete files directly in output/strategy after a strategy pass (of `ranks` when given). */
export async function strategyPassFiles(paths: JobPaths, ranks?: readonly number[]): Promise<string[]> {
  const mine = ranks === undefined ? null : new Set(ranks);
  const out: string[] = [];
  for (const d of await listEntries(paths.strategyDir)) {
    if (d.isDirectory() || tempNameTarget(d.name) !== undefined) continue;
    const r = rankOfRel(paths, relPath(paths, join(paths.strategyDir, d.name)));
    if (mine !== null && r !== undefined && !mine.has(r)) continue;
    out.push(join(paths.strategyDir, d.name));
  }
  return out.sort();
}

