/**
 * The file operations coordination performs, as one small interface: the coordinator touches the
 * disk only through it, so that a bench or a test can put a layer underneath that counts
 * operations, adds the latency of a network file system, or keeps everything in memory.
 *
 * Each method is one operation in that accounting. On NFS, `readFile` is roughly OPEN + READ +
 * CLOSE (two or three RPCs), `writeFile` OPEN/CREATE + WRITE (+ COMMIT with `sync`) + CLOSE,
 * `rename`, `unlink`, `mkdir` and `readdir` one or two RPCs each.
 */
import { mkdir, open, readdir, readFile, rename, rm, unlink } from 'node:fs/promises';
import { tempNameFor, trackTempFile } from '../formats/atomic.js';

export interface WriteOptions {
  /** Fail with EEXIST when the file exists (O_EXCL): the first writer wins. */
  readonly exclusive?: boolean;
  /** fsync before closing. */
  readonly sync?: boolean;
}

export interface CoordinationFs {
  /** The whole file as UTF-8; rejects with code ENOENT when it is absent. */
  readFile(path: string): Promise<string>;
  /** Create or replace (truncate) a file; its folder must exist (ENOENT otherwise). */
  writeFile(path: string, data: string, opts?: WriteOptions): Promise<void>;
  /** Atomic rename of a file or folder, replacing a file at `to`. */
  rename(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
  /** Names in a folder; rejects with code ENOENT when it is absent. */
  readdir(path: string): Promise<string[]>;
  /** Create a folder and its parents (no error when it exists). */
  mkdir(path: string): Promise<void>;
  /** Remove a file or a folder with everything in it (no error when absent). */
  rm(path: string): Promise<void>;
}

/** The real disk (node:fs/promises). */
export const nodeFs: CoordinationFs = {
  readFile: (path) => readFile(path, 'utf8'),
  async writeFile(path, data, opts = {}) {
    const h = await open(path, opts.exclusive === true ? 'wx' : 'w');
    try {
      await h.writeFile(data, 'utf8');
      if (opts.sync === true) await h.sync();
    } finally {
      await h.close();
    }
  },
  rename: (from, to) => rename(from, to),
  unlink: (path) => unlink(path),
  readdir: (path) => readdir(path),
  async mkdir(path) {
    await mkdir(path, { recursive: true });
  },
  rm: (path) => rm(path, { recursive: true, force: true }),
};

/** The errno code of a rejected operation ('ENOENT', 'EEXIST', ...), if any. */
export function errnoOf(err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** The file's text, or undefined when it is absent. */
export async function readText(fs: CoordinationFs, path: string): Promise<string | undefined> {
  try {
    return await fs.readFile(path);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined;
    throw err;
  }
}

/** Parsed JSON, or undefined when absent or not (yet) whole: a writer may be half-way. */
export async function readJson<T>(fs: CoordinationFs, path: string): Promise<T | undefined> {
  let text: string | undefined;
  try {
    text = await fs.readFile(path);
  } catch {
    return undefined;
  }
  return parseJson<T>(text);
}

export function parseJson<T>(text: string | undefined): T | undefined {
  if (text === undefined || text === '') return undefined;
  try {
    return JSON.parse(text) as T;
  } catch {
    return undefined;
  }
}

/** Names in a folder; [] when it is absent. */
export async function listDir(fs: CoordinationFs, path: string): Promise<string[]> {
  try {
    return await fs.readdir(path);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw err;
  }
}

/** Replace `path` atomically: a temporary name in the same folder, then a rename (2 operations). */
export async function writeAtomic(fs: CoordinationFs, path: string, text: string): Promise<void> {
  const tmp = tempNameFor(path);
  const untrack = trackTempFile(tmp);
  try {
    await fs.writeFile(tmp, text);
    await fs.rename(tmp, path);
  } catch (err) {
    await fs.unlink(tmp).catch(() => undefined);
    throw err;
  } finally {
    untrack();
  }
}

/**
 * Create `path` holding `text` unless it exists (one exclusive create). Returns false when it
 * existed. A reader may find it half-written: readers of such files retry what does not parse.
 */
export async function createOnce(fs: CoordinationFs, path: string, text: string): Promise<boolean> {
  try {
    await fs.writeFile(path, text, { exclusive: true });
    return true;
  } catch (err) {
    if (errnoOf(err) === 'EEXIST') return false;
    throw err;
  }
}

/** Run `fn` over `items` with at most `limit` at a time (parallel reads on a slow disk). */
export async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i] as T);
    }
  };
  const n = Math.min(limit, items.length);
  const workers: Array<Promise<void>> = [];
  for (let k = 0; k < n; k++) workers.push(worker());
  await Promise.all(workers);
}
