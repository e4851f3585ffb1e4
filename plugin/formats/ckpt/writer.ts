/**
 * Streaming `.ckpt` writer producing MindSpore's exact bytes (spec §1.2-1.3, §1.6): one record
 * per chunk in the order given, unpacked dims, scalars with empty dims (str: [0]), tensors cut
 * every 536,870,912 bytes (or as the `ckpt` hints say), optional CRC trailer. The file is written
 * under a temporary name and renamed on close.
 */
import { resolve } from 'node:path';
import { FailureError, InputError } from '../../errors.js';
import { AtomicFile } from '../atomic.js';
import { copyEntry, COPY_PIECE } from '../copy.js';
import { byteLength as dtypeByteLength, dtypeInfo } from '../dtype.js';
import type { SinkCommit, SinkTensor, TensorSink } from '../types.js';
import { openCheckpoint, type CheckpointSource } from './reader.js';
import {
  MAX_DIMS,
  MAX_TAG_BYTES,
  crc32,
  defaultChunks,
  defaultDims,
  encodeChunkHeader,
  encodeCrcTrailer,
  sameNumbers,
  shapeFromStored,
} from './wire.js';

export interface CheckpointSinkOptions {
  /** Append the `crc_num` trailer (CRC-32 of the body), as `crc_check=True` does. */
  crc?: boolean;
  /** Compute the CRC-32 of the whole file while writing it (reported by `close()`). */
  fileCrc32?: boolean;
}

const STAGING = 1 << 20;
const DIRECT = 64 * 1024;

interface Current {
  tensor: SinkTensor;
  tag: Uint8Array;
  type: Uint8Array;
  dims: readonly number[];
  plan: readonly number[];
  chunk: number;
  left: number;
  written: number;
}

class CkptSink implements TensorSink {
  private crc = 0;
  private readonly staging = Buffer.allocUnsafe(STAGING);
  private staged = 0;
  private current: Current | null = null;
  private readonly names = new Set<string>();
  private state: 'open' | 'closed' | 'aborted' = 'open';

  constructor(
    private readonly file: AtomicFile,
    private readonly withCrc: boolean,
  ) {}

  get path(): string {
    return this.file.path;
  }

  private async emit(data: Uint8Array): Promise<void> {
    if (this.withCrc) this.crc = crc32(data, this.crc);
    if (data.byteLength < DIRECT) {
      if (this.staged + data.byteLength > STAGING) await this.flush();
      this.staging.set(data, this.staged);
      this.staged += data.byteLength;
      return;
    }
    await this.flush();
    await this.file.write(data);
  }

  private async flush(): Promise<void> {
    if (this.staged === 0) return;
    const n = this.staged;
    this.staged = 0;
    await this.file.write(this.staging.subarray(0, n));
  }

  private requireOpen(): void {
    if (this.state !== 'open') throw new FailureError(`checkpoint sink is ${this.state}`, { file: this.path });
  }

  private async header(c: Current): Promise<void> {
    await this.emit(encodeChunkHeader({ tag: c.tag, dims: c.dims, type: c.type, contentLength: c.plan[c.chunk] as number }));
    c.left = c.plan[c.chunk] as number;
  }

  async beginTensor(t: SinkTensor): Promise<void> {
    this.requireOpen();
    if (this.current !== null) throw new FailureError(`beginTensor while '${this.current.tensor.name}' is still open`, { file: this.path, tensor: t.name });
    const where = { file: this.path, tensor: t.name };
    if (t.name.length === 0) throw new InputError('empty tensor name', where);
    if (this.names.has(t.name)) throw new InputError('tensor written twice to one checkpoint', where);
    const info = dtypeInfo(t.dtype);
    if (info === undefined) throw new InputError(`unknown dtype '${String(t.dtype)}'`, where);
    if (!Number.isSafeInteger(t.byteLength) || t.byteLength < 0) throw new InputError(`invalid byteLength ${t.byteLength}`, where);
    for (const d of t.shape) if (!Number.isSafeInteger(d) || d < 0) throw new InputError(`invalid shape [${t.shape.join(',')}]`, where);
    if (t.dtype === 'str') {
      if (t.shape.length !== 0) throw new InputError(`str entries are scalars; got shape [${t.shape.join(',')}]`, where);
      if (t.byteLength % 4 !== 0) throw new InputError(`str entry of ${t.byteLength} bytes is not UTF-32LE (multiple of 4)`, where);
    } else {
      const expected = dtypeByteLength(t.dtype, t.shape);
      if (expected !== t.byteLength) {
        throw new InputError(`shape [${t.shape.join(',')}] of ${t.dtype} needs ${expected ?? 'too many'} bytes, not ${t.byteLength}`, where);
      }
    }
    const tag = Buffer.from(t.name, 'utf8');
    if (tag.byteLength > MAX_TAG_BYTES) throw new InputError(`tensor name is longer than ${MAX_TAG_BYTES} bytes`, where);
    const dims = t.ckpt?.dims ?? defaultDims(t.dtype, t.shape);
    if (dims.length > MAX_DIMS || dims.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      throw new InputError(`invalid dims [${dims.join(',')}]`, where);
    }
    if (t.ckpt?.dims !== undefined) {
      // the hint must read back as the same shape
      let back: number[];
      try {
        back = shapeFromStored(dims, t.dtype, t.byteLength, {});
      } catch (err) {
        throw new InputError(`ckpt dims hint [${dims.join(',')}] does not fit: ${(err as Error).message}`, where);
      }
      if (!sameNumbers(back, t.shape)) {
        throw new InputError(`ckpt dims hint [${dims.join(',')}] does not describe shape [${t.shape.join(',')}]`, where);
      }
    }
    const plan = t.ckpt?.chunks ?? defaultChunks(t.byteLength);
    let sum = 0;
    for (const n of plan) {
      if (!Number.isSafeInteger(n) || n < 0) throw new InputError(`invalid chunk length ${n}`, where);
      sum += n;
    }
    if (plan.length === 0 || sum !== t.byteLength) {
      throw new InputError(`ckpt chunks hint adds up to ${sum} bytes, not ${t.byteLength}`, where);
    }
    this.names.add(t.name);
    const c: Current = { tensor: t, tag, type: Buffer.from(t.dtype, 'utf8'), dims, plan, chunk: 0, left: 0, written: 0 };
    this.current = c;
    await this.header(c);
  }

  async write(piece: Uint8Array): Promise<void> {
    this.requireOpen();
    const c = this.current;
    if (c === null) throw new FailureError('write outside beginTensor/endTensor', { file: this.path });
    let at = 0;
    while (at < piece.byteLength) {
      while (c.left === 0) {
        if (c.chunk + 1 >= c.plan.length) {
          throw new FailureError(`more bytes written than the tensor's ${c.tensor.byteLength}`, { file: this.path, tensor: c.tensor.name });
        }
        c.chunk++;
        await this.header(c);
      }
      const n = Math.min(c.left, piece.byteLength - at);
      await this.emit(at === 0 && n === piece.byteLength ? piece : piece.subarray(at, at + n));
      at += n;
      c.left -= n;
      c.written += n;
    }
  }

  async endTensor(): Promise<void> {
    this.requireOpen();
    const c = this.current;
    if (c === null) throw new FailureError('endTensor without beginTensor', { file: this.path });
    if (c.written !== c.tensor.byteLength) {
      throw new FailureError(`${c.written} bytes written, expected ${c.tensor.byteLength}`, { file: this.path, tensor: c.tensor.name });
    }
    // trailing empty chunks of a hint
    while (c.chunk + 1 < c.plan.length) {
      c.chunk++;
      await this.header(c);
    }
    this.current = null;
  }

  async close(): Promise<SinkCommit> {
    this.requireOpen();
    if (this.current !== null) {
      throw new FailureError(`close while '${this.current.tensor.name}' is still open`, { file: this.path });
    }
    try {
      await this.flush();
      if (this.withCrc) await this.file.write(encodeCrcTrailer(this.crc));
      const c = await this.file.commit();
      this.state = 'closed';
      return { path: this.path, ...c };
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  async abort(): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'aborted';
    this.current = null;
    await this.file.abort();
  }
}

/** A TensorSink writing a MindSpore `.ckpt` at `path` (temporary name until `close()`). */
export async function createCheckpointSink(path: string, opts: CheckpointSinkOptions = {}): Promise<TensorSink> {
  const file = await AtomicFile.create(path, { crc32: opts.fileCrc32 === true });
  return new CkptSink(file, opts.crc === true);
}

export interface RewriteCheckpointOptions {
  /** Write the CRC trailer; default: when the source has one. */
  crc?: boolean;
  /** Called after each tensor with its bytes (for progress). */
  onTensor?: (name: string, bytes: number) => void;
  /** Piece size of the streaming copy (default 64 MiB). */
  pieceSize?: number;
}

export interface RewriteCheckpointResult {
  tensors: number;
  bytes: number;
}

/**
 * Read a checkpoint and write it again tensor by tensor through the streaming writer; with the
 * reader's hints this reproduces a MindSpore file byte for byte.
 */
export async function rewriteCheckpoint(
  src: string | CheckpointSource,
  dst: string,
  opts: RewriteCheckpointOptions = {},
): Promise<RewriteCheckpointResult> {
  const source = typeof src === 'string' ? await openCheckpoint(src) : src;
  try {
    if (resolve(source.path) === resolve(dst)) throw new InputError('destination is the source checkpoint itself', { file: dst });
    const sink = await createCheckpointSink(dst, { crc: opts.crc ?? source.crc !== null });
    let bytes = 0;
    try {
      const piece = opts.pieceSize ?? COPY_PIECE;
      let largest = 1;
      for (const e of source.entries()) largest = Math.max(largest, Math.min(e.byteLength, piece));
      const scratch = new Uint8Array(largest);
      for (const e of source.entries()) {
        await copyEntry(source, sink, e, piece, scratch);
        bytes += e.byteLength;
        opts.onTensor?.(e.name, e.byteLength);
      }
      await sink.close();
    } catch (err) {
      await sink.abort();
      throw err;
    }
    return { tensors: source.entries().length, bytes };
  } finally {
    if (typeof src === 'string') await source.close();
  }
}
