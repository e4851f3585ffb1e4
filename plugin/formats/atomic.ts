/**
 * Outputs appear under their final names only when complete: write to a temporary name in the
 * same directory, fsync, rename. The temporary name is unique per process so that two writers
 * never share one. Asked at creation, a file computes its own CRC-32 from the bytes as they are
 * written and reports it (with its size) when committed.
 *
 * Every writer of msckpt goes through here, so this is also where:
 * - system errors become one plain line naming the file and what to do (`fromSystemError`), and a
 *   folder that cannot be created is reported for what it is (a read-only parent is EROFS or
 *   EACCES, not the ENOENT Node's recursive mkdir says);
 * - the temporary files of this process are known, so that an interrupted command removes them
 *   (`removeLiveTempFiles`, on the way out after a signal or a dead parent);
 * - a process may forbid commits (`setCommitGuard`: a worker whose parent died commits nothing).
 */
import { rmSync } from 'node:fs';
import { mkdir, open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import { FailureError, fromSystemError, systemErrorCode } from '../errors.js';

let counter = 0;

/** The temporary files this process has open (created, neither committed nor aborted). */
const liveTemps = new Set<string>();

/**
 * Remove every temporary file this process is writing (synchronously: for signal handlers and
 * exit paths). Returns how many were removed.
 */
export function removeLiveTempFilesSync(): number {
  let n = 0;
  for (const p of liveTemps) {
    try {
      rmSync(p);
      n++;
    } catch {
      // not created yet, or nothing more can be done on the way out
    }
  }
  liveTemps.clear();
  return n;
}

/**
 * Count a temporary file written outside `AtomicFile` (the coordination layer's small files) among
 * this process's temporary files until the returned function is called (after its rename or
 * removal), so that the way out removes it too.
 */
export function trackTempFile(path: string): () => void {
  liveTemps.add(path);
  return () => {
    liveTemps.delete(path);
  };
}

/** Opens of temporary files under way (their file may appear after a synchronous removal). */
const opening = new Set<Promise<unknown>>();
let closing = false;

/**
 * For the way out: refuse new temporary files, let the opens under way finish (at most `ms`),
 * then remove every temporary file of this process. Returns how many were removed.
 */
export async function removeLiveTempFiles(ms = 2000): Promise<number> {
  closing = true;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.allSettled([...opening]),
    new Promise((r) => {
      timer = setTimeout(r, ms);
    }),
  ]);
  clearTimeout(timer);
  return removeLiveTempFilesSync();
}

/** Temporary files this process is writing now (for tests and reports). */
export function liveTempFiles(): string[] {
  return [...liveTemps];
}

let commitGuard: ((path: string) => void) | null = null;

/**
 * A check run right before every commit's rename: it throws to forbid the commit (the temporary
 * file is then removed). One per process; null removes it.
 */
export function setCommitGuard(guard: ((path: string) => void) | null): void {
  commitGuard = guard;
}

/** Test-only: make every write fail with this system error code (e.g. ENOSPC); null = off. */
let injectedWriteError: string | null = null;
export function injectWriteErrorForTests(code: string | null): void {
  injectedWriteError = code;
}

function systemError(code: string, syscall: string, path: string): NodeJS.ErrnoException {
  const e = new Error(`${code}: ${syscall} '${path}'`) as NodeJS.ErrnoException;
  e.code = code;
  e.syscall = syscall;
  e.path = path;
  return e;
}

/**
 * `mkdir -p` that reports the real reason a folder cannot be made: Node's recursive mkdir says
 * ENOENT when a parent is read-only or not writable; then the first missing component is made
 * alone to get EROFS/EACCES. Errors are ours (`fromSystemError`).
 */
export async function makeDirs(path: string, action?: string): Promise<void> {
  try {
    await mkdir(path, { recursive: true });
    return;
  } catch (err) {
    const code = systemErrorCode(err);
    // a file where a folder is wanted: mkdir -p says EEXIST
    if (code === 'EEXIST') throw fromSystemError(systemError('ENOTDIR', 'mkdir', path), path, action);
    if (code !== 'ENOENT') throw fromSystemError(err, path, action);
  }
  // the nearest existing ancestor, then the first missing component made alone
  let p = path;
  for (;;) {
    const parent = dirname(p);
    if (parent === p) break;
    const st = await stat(parent).catch(() => null);
    if (st !== null) {
      if (!st.isDirectory()) throw fromSystemError(systemError('ENOTDIR', 'mkdir', parent), parent, action);
      try {
        await mkdir(p);
      } catch (err) {
        if (systemErrorCode(err) !== 'EEXIST') throw fromSystemError(err, p, action);
      }
      break;
    }
    p = parent;
  }
  try {
    await mkdir(path, { recursive: true });
  } catch (err) {
    throw fromSystemError(err, path, action);
  }
}

/**
 * Written bytes after which a file is flushed to disk in the background (fdatasync, one at a time,
 * while writing goes on), so that the fsync before the rename finds little left to write.
 */
export const BACKGROUND_SYNC_BYTES = 256 * 1024 * 1024;

// ---- optional CRC-32 of a file computed while it is written (no read-back) ----------------------

const MAX_CRC_SEGMENTS = 65536;

function gf2Times(mat: Uint32Array, vec: number): number {
  let sum = 0;
  let i = 0;
  let v = vec >>> 0;
  while (v !== 0) {
    if ((v & 1) !== 0) sum ^= mat[i] as number;
    v >>>= 1;
    i++;
  }
  return sum >>> 0;
}

function gf2Square(square: Uint32Array, mat: Uint32Array): void {
  for (let n = 0; n < 32; n++) square[n] = gf2Times(mat, mat[n] as number);
}

/** CRC-32 of A‖B from crc(A), crc(B) and B's length (zlib's crc32_combine; lengths over 4 GiB fine). */
export function crc32Combine(crcA: number, crcB: number, lengthB: number): number {
  if (lengthB <= 0) return crcA >>> 0;
  const even = new Uint32Array(32);
  const odd = new Uint32Array(32);
  odd[0] = 0xedb88320;
  let row = 1;
  for (let n = 1; n < 32; n++) {
    odd[n] = row;
    row = (row << 1) >>> 0;
  }
  gf2Square(even, odd);
  gf2Square(odd, even);
  let len = lengthB;
  let c = crcA >>> 0;
  for (;;) {
    gf2Square(even, odd);
    if (len % 2 === 1) c = gf2Times(even, c);
    len = Math.floor(len / 2);
    if (len === 0) break;
    gf2Square(odd, even);
    if (len % 2 === 1) c = gf2Times(odd, c);
    len = Math.floor(len / 2);
    if (len === 0) break;
  }
  return (c ^ crcB) >>> 0;
}

/** What a committed file holds: its size, and its CRC-32 when it was tracked and the writes tell it. */
export interface FileCommit {
  readonly size: number;
  /** null when not asked for, or when the writes cannot tell (e.g. bytes overwritten): then read the file. */
  readonly crc32: number | null;
}

export interface AtomicFileOptions {
  /** Compute the file's CRC-32 from the bytes as they are written. */
  readonly crc32?: boolean;
}

interface CrcSegment {
  start: number;
  len: number;
  crc: number;
}

/** A unique temporary name next to `path` (same directory, so rename is atomic). */
export function tempNameFor(path: string): string {
  counter += 1;
  return join(dirname(path), `.${basename(path)}.${process.pid}.${counter}.tmp`);
}

const TEMP_NAME = /^\.(.+)\.(\d+)\.(\d+)\.tmp$/;

/**
 * The final name and writing process of a temporary name `tempNameFor` makes (a file name, not
 * a path), or undefined when `name` is not one: what a clean-up may recognise as ours.
 */
export function tempNameTarget(name: string): { name: string; pid: number } | undefined {
  const m = TEMP_NAME.exec(name);
  return m === null ? undefined : { name: m[1] as string, pid: Number(m[2]) };
}

/** A file being written under a temporary name. */
export class AtomicFile {
  readonly path: string;
  readonly tempPath: string;
  private handle: FileHandle | null;
  private position = 0;
  /** End of the furthest byte written. */
  private extent = 0;
  /** Runs of written bytes with their CRC-32 when a CRC was asked for; null = not tracked. */
  private segments: CrcSegment[] | null = null;
  /** Bytes appended since the last background flush started; the flush in flight; its error. */
  private unsynced = 0;
  private syncing: Promise<void> | null = null;
  private syncError: unknown = undefined;

  private constructor(path: string, tempPath: string, handle: FileHandle, trackCrc: boolean) {
    this.path = path;
    this.tempPath = tempPath;
    this.handle = handle;
    if (trackCrc) this.segments = [];
  }

  private track(data: Uint8Array, position: number): void {
    const segs = this.segments;
    if (segs === null || data.byteLength === 0) return;
    const last = segs[segs.length - 1];
    if (last !== undefined && last.start + last.len === position) {
      last.crc = crc32(data, last.crc);
      last.len += data.byteLength;
      return;
    }
    if (segs.length >= MAX_CRC_SEGMENTS) {
      this.segments = null;
      return;
    }
    segs.push({ start: position, len: data.byteLength, crc: crc32(data, 0) });
  }

  /** Whole-file CRC from the tracked runs when they tile [0, end) exactly. */
  private trackedCrc(): { size: number; crc32: number } | undefined {
    const segs = this.segments;
    if (segs === null) return undefined;
    const sorted = [...segs].sort((a, b) => a.start - b.start);
    let at = 0;
    let crc = 0;
    for (const s of sorted) {
      if (s.start !== at) return undefined; // a gap or an overwrite
      crc = crc32Combine(crc, s.crc, s.len);
      at += s.len;
    }
    if (at < this.extent) return undefined;
    return { size: at, crc32: crc >>> 0 };
  }

  static async create(path: string, opts: AtomicFileOptions = {}): Promise<AtomicFile> {
    await makeDirs(dirname(path));
    const tempPath = tempNameFor(path);
    let handle: FileHandle;
    // known before it exists: an exit while the open is under way still removes it
    liveTemps.add(tempPath);
    try {
      if (injectedWriteError !== null) throw systemError(injectedWriteError, 'open', tempPath);
      if (closing) throw new FailureError('stopping: no new file is started');
      const opened = open(tempPath, 'wx');
      opening.add(opened);
      try {
        handle = await opened;
      } finally {
        opening.delete(opened);
      }
    } catch (err) {
      liveTemps.delete(tempPath);
      throw fromSystemError(err, path);
    }
    return new AtomicFile(path, tempPath, handle, opts.crc32 === true);
  }

  /** Bytes written so far. */
  get size(): number {
    return this.position;
  }

  /** Append bytes (the whole buffer is written, looping over short writes). */
  async write(data: Uint8Array): Promise<void> {
    const h = this.requireOpen();
    let done = 0;
    try {
      while (done < data.byteLength) {
        if (injectedWriteError !== null) throw systemError(injectedWriteError, 'write', this.tempPath);
        const { bytesWritten } = await h.write(data, done, data.byteLength - done, this.position + done);
        done += bytesWritten;
      }
    } catch (err) {
      throw fromSystemError(err, this.path, 'cannot write');
    }
    this.track(data, this.position);
    this.position += data.byteLength;
    this.extent = Math.max(this.extent, this.position);
    this.unsynced += data.byteLength;
    if (this.unsynced >= BACKGROUND_SYNC_BYTES && this.syncing === null) {
      this.unsynced = 0;
      this.syncing = h.datasync().then(
        () => undefined,
        (err: unknown) => {
          this.syncError ??= err;
        },
      ).finally(() => {
        this.syncing = null;
      });
    }
  }

  /** Write at an absolute position (used to patch headers); does not move the append position. */
  async writeAt(data: Uint8Array, position: number): Promise<void> {
    const h = this.requireOpen();
    let done = 0;
    try {
      while (done < data.byteLength) {
        const { bytesWritten } = await h.write(data, done, data.byteLength - done, position + done);
        done += bytesWritten;
      }
    } catch (err) {
      throw fromSystemError(err, this.path, 'cannot write');
    }
    this.track(data, position);
    this.extent = Math.max(this.extent, position + data.byteLength);
  }

  /** Flush, close and rename onto the final name; returns the size and (when tracked) the CRC-32. */
  async commit(): Promise<FileCommit> {
    const h = this.requireOpen();
    this.handle = null;
    if (this.syncing !== null) await this.syncing;
    if (this.syncError !== undefined) {
      await h.close().catch(() => undefined);
      await this.dropTemp();
      throw this.syncError;
    }
    try {
      await h.sync();
      await h.close();
    } catch (err) {
      await h.close().catch(() => undefined);
      await this.dropTemp();
      throw fromSystemError(err, this.path, 'cannot write');
    }
    try {
      commitGuard?.(this.path);
      await rename(this.tempPath, this.path);
    } catch (err) {
      await this.dropTemp();
      throw fromSystemError(err, this.path, 'cannot move the finished file into place');
    }
    liveTemps.delete(this.tempPath);
    const c = this.trackedCrc();
    this.segments = null;
    return { size: c?.size ?? this.extent, crc32: c?.crc32 ?? null };
  }

  /** Close and remove the temporary file. Safe to call after commit (does nothing). */
  async abort(): Promise<void> {
    const h = this.handle;
    if (h === null) return;
    this.handle = null;
    if (this.syncing !== null) await this.syncing;
    await h.close().catch(() => undefined);
    await this.dropTemp();
  }

  private async dropTemp(): Promise<void> {
    await rm(this.tempPath, { force: true }).catch(() => undefined);
    liveTemps.delete(this.tempPath);
  }

  private requireOpen(): FileHandle {
    if (this.handle === null) throw new Error(`${this.path}: file already closed`);
    return this.handle;
  }
}

/** Write a small file (JSON, YAML, a marker) atomically. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const f = await AtomicFile.create(path);
  try {
    await f.write(typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
    await f.commit();
  } catch (err) {
    await f.abort();
    throw err;
  }
}
