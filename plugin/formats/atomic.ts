/**
 * Outputs appear under their final names only when complete: write to a temporary name in the
 * same directory, fsync, rename. The temporary name is unique per process so that two writers
 * never share one.
 */
import { mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

let counter = 0;

/** A unique temporary name next to `path` (same directory, so rename is atomic). */
export function tempNameFor(path: string): string {
  counter += 1;
  return join(dirname(path), `.${basename(path)}.${process.pid}.${counter}.tmp`);
}

/** A file being written under a temporary name. */
export class AtomicFile {
  readonly path: string;
  readonly tempPath: string;
  private handle: FileHandle | null;
  private position = 0;

  private constructor(path: string, tempPath: string, handle: FileHandle) {
    this.path = path;
    this.tempPath = tempPath;
    this.handle = handle;
  }

  static async create(path: string): Promise<AtomicFile> {
    await mkdir(dirname(path), { recursive: true });
    const tempPath = tempNameFor(path);
    const handle = await open(tempPath, 'wx');
    return new AtomicFile(path, tempPath, handle);
  }

  /** Bytes written so far. */
  get size(): number {
    return this.position;
  }

  /** Append bytes (the whole buffer is written, looping over short writes). */
  async write(data: Uint8Array): Promise<void> {
    const h = this.requireOpen();
    let done = 0;
    while (done < data.byteLength) {
      const { bytesWritten } = await h.write(data, done, data.byteLength - done, this.position + done);
      done += bytesWritten;
    }
    this.position += data.byteLength;
  }

  /** Write at an absolute position (used to patch headers); does not move the append position. */
  async writeAt(data: Uint8Array, position: number): Promise<void> {
    const h = this.requireOpen();
    let done = 0;
    while (done < data.byteLength) {
      const { bytesWritten } = await h.write(data, done, data.byteLength - done, position + done);
      done += bytesWritten;
    }
  }

  /** Flush, close and rename onto the final name. */
  async commit(): Promise<void> {
    const h = this.requireOpen();
    this.handle = null;
    await h.sync();
    await h.close();
    await rename(this.tempPath, this.path);
  }

  /** Close and remove the temporary file. Safe to call after commit (does nothing). */
  async abort(): Promise<void> {
    const h = this.handle;
    if (h === null) return;
    this.handle = null;
    await h.close().catch(() => undefined);
    await rm(this.tempPath, { force: true });
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
