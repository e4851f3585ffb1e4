/**
 * Streaming `.ckpt` reader. The file is indexed with positioned reads of record headers only
 * (tags, varints, lengths); `tensor_content` is skipped without being read. Consecutive chunks of
 * the same tag are joined into one entry whose bytes are read later, on demand, by mapping a byte
 * range of the joined tensor onto the chunks' file offsets.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { FailureError, InputError, type ErrorContext } from '../../errors.js';
import { requireDType, type DType } from '../dtype.js';
import type { ReadObserver } from '../crc-check.js';
import type { CkptHints, TensorEntry, TensorSource } from '../types.js';
import {
  CRC_TRAILER_BYTES,
  ENCRYPTION_MAGICS,
  MAX_DIMS,
  MAX_TAG_BYTES,
  MAX_TYPE_BYTES,
  crc32,
  decodeCrcTrailer,
  defaultChunks,
  defaultDims,
  getVarint,
  sameNumbers,
  shapeFromStored,
} from './wire.js';

/** One stored chunk (`Value`) of an entry: where its content bytes lie in the file. */
export interface CkptChunk {
  /** File offset of the first content byte. */
  readonly offset: number;
  /** Content bytes. */
  readonly length: number;
}

export interface CheckpointEntry extends TensorEntry {
  /** Chunks in order; their contents concatenated are the C-order buffer. */
  readonly chunkList: readonly CkptChunk[];
  /** File offset of the first chunk's record. */
  readonly recordOffset: number;
}

export interface CheckpointCrc {
  readonly present: true;
  /** true/false when verified (`verifyCrc`), null when not checked. */
  readonly valid: boolean | null;
  /** The CRC-32 stored in the trailer. */
  readonly stored: number;
}

export interface CheckpointSource extends TensorSource {
  /** null when the file has no `crc_num` trailer. */
  readonly crc: null | CheckpointCrc;
  /** Bytes of the protobuf body (file size without the trailer). */
  readonly bodyBytes: number;
  entries(): readonly CheckpointEntry[];
  entry(name: string): CheckpointEntry | undefined;
}

export interface OpenCheckpointOptions {
  /** Compute the CRC-32 of the body and compare it with the trailer (reads the whole file). */
  verifyCrc?: boolean;
}

const WINDOW = 64 * 1024;
/** Largest single positioned read (Node refuses reads over 2 GiB). */
const MAX_READ = 1 << 30;

/** Reads of the file through a small window; only metadata passes through it. */
class Window {
  private buf = Buffer.allocUnsafe(WINDOW);
  private start = 0;
  private len = 0;
  constructor(
    private readonly fh: FileHandle,
    private readonly file: string,
    /** End of the readable region (the body); refills never go past it. */
    private readonly end: number,
  ) {}

  /** Make [pos, min(pos + n, limit)) available (n <= WINDOW); returns the buffer and its base. */
  async at(pos: number, n: number, limit: number): Promise<{ buf: Buffer; base: number }> {
    const want = Math.min(n, limit - pos);
    if (pos >= this.start && pos + want <= this.start + this.len) return { buf: this.buf, base: this.start };
    const count = Math.min(WINDOW, this.end - pos);
    await readFully(this.fh, this.buf, 0, count, pos, this.file);
    this.start = pos;
    this.len = count;
    return { buf: this.buf, base: this.start };
  }

  /** Bytes [pos, pos + n) as a fresh array (n bounded by the caller). */
  async bytes(pos: number, n: number, limit: number): Promise<Uint8Array> {
    if (n <= WINDOW) {
      const { buf, base } = await this.at(pos, n, limit);
      return new Uint8Array(buf.subarray(pos - base, pos - base + n));
    }
    const out = new Uint8Array(n);
    await readFully(this.fh, out, 0, n, pos, this.file);
    return out;
  }
}

async function readFully(fh: FileHandle, dst: Uint8Array, dstOffset: number, length: number, position: number, file: string): Promise<void> {
  let done = 0;
  while (done < length) {
    const n = Math.min(length - done, MAX_READ);
    const { bytesRead } = await fh.read(dst, dstOffset + done, n, position + done);
    if (bytesRead === 0) {
      throw new FailureError(`unexpected end of file reading ${length} bytes at byte ${position} (file changed while reading?)`, { file });
    }
    done += bytesRead;
  }
}

interface RawChunk {
  tag: string;
  dims: number[];
  type: string;
  contentOffset: number;
  contentLength: number;
  recordOffset: number;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The wire scanner: one pass over the body, metadata only. */
class Scanner {
  private readonly win: Window;
  constructor(
    fh: FileHandle,
    private readonly file: string,
    end: number,
  ) {
    this.win = new Window(fh, file, end);
  }

  private fail(message: string, offset: number, tensor?: string): never {
    const ctx: ErrorContext = { file: this.file, offset };
    if (tensor !== undefined) ctx.tensor = tensor;
    throw new InputError(message, ctx);
  }

  private async varint(pos: number, limit: number, what: string, tensor?: string): Promise<{ value: number; safe: boolean; next: number }> {
    const { buf, base } = await this.win.at(pos, 10, limit);
    const v = getVarint(buf, pos - base, limit - base, (m) => this.fail(`${what}: ${m}`, pos, tensor));
    if (v === null) this.fail(`${what}: truncated varint (message ends at byte ${limit})`, pos, tensor);
    return { value: v.value, safe: v.safe, next: v.next + base };
  }

  /** Read a field key; returns field number, wire type and next position. */
  private async key(pos: number, limit: number, what: string, tensor?: string): Promise<{ field: number; wire: number; next: number }> {
    const k = await this.varint(pos, limit, `${what} field key`, tensor);
    if (!k.safe || k.value > 0xffffffff) this.fail(`${what}: field key ${k.value} out of range`, pos, tensor);
    const field = Math.floor(k.value / 8);
    const wire = k.value % 8;
    if (field === 0) this.fail(`${what}: field number 0 is invalid`, pos, tensor);
    return { field, wire, next: k.next };
  }

  /** Length of a length-delimited field starting at `pos`; checks it ends inside `limit`. */
  private async length(pos: number, limit: number, what: string, tensor?: string): Promise<{ len: number; next: number }> {
    const l = await this.varint(pos, limit, `${what} length`, tensor);
    if (!l.safe || l.next + l.value > limit) {
      this.fail(`${what}: length ${l.safe ? l.value : '>2^53'} runs past the end of its message (byte ${limit})`, pos, tensor);
    }
    return { len: l.value, next: l.next };
  }

  /** Skip a field of an unknown number; returns the next position. */
  private async skip(wire: number, pos: number, limit: number, what: string, tensor?: string): Promise<number> {
    switch (wire) {
      case 0:
        return (await this.varint(pos, limit, `${what} unknown varint field`, tensor)).next;
      case 1:
        if (pos + 8 > limit) this.fail(`${what}: fixed64 field runs past the end of its message`, pos, tensor);
        return pos + 8;
      case 5:
        if (pos + 4 > limit) this.fail(`${what}: fixed32 field runs past the end of its message`, pos, tensor);
        return pos + 4;
      case 2: {
        const l = await this.length(pos, limit, `${what} unknown field`, tensor);
        return l.next + l.len;
      }
      default:
        return this.fail(`${what}: unsupported wire type ${wire}`, pos, tensor);
    }
  }

  private async string(pos: number, len: number, limit: number, max: number, what: string, tensor?: string): Promise<string> {
    if (len > max) this.fail(`${what} is ${len} bytes long (limit ${max})`, pos, tensor);
    const bytes = await this.win.bytes(pos, len, limit);
    try {
      return utf8.decode(bytes);
    } catch {
      return this.fail(`${what} is not valid UTF-8`, pos, tensor);
    }
  }

  async scan(end: number, onChunk: (c: RawChunk) => void): Promise<void> {
    let pos = 0;
    while (pos < end) {
      const recordOffset = pos;
      const k = await this.key(pos, end, 'Checkpoint');
      if (k.field === 1 && k.wire === 2) {
        const l = await this.length(k.next, end, 'Checkpoint.value');
        onChunk(await this.value(recordOffset, l.next, l.next + l.len));
        pos = l.next + l.len;
      } else {
        if (k.field === 1) this.fail(`Checkpoint.value has wire type ${k.wire}; expected 2 (length-delimited)`, pos);
        pos = await this.skip(k.wire, k.next, end, 'Checkpoint');
      }
    }
  }

  private async value(recordOffset: number, start: number, end: number): Promise<RawChunk> {
    let tag: string | null = null;
    let kind: 'none' | 'tensor' | 'map' = 'none';
    const t: { dims: number[]; type: string | null; contentOffset: number; contentLength: number; seen: boolean } = {
      dims: [],
      type: null,
      contentOffset: -1,
      contentLength: 0,
      seen: false,
    };
    let pos = start;
    while (pos < end) {
      const name = tag ?? undefined;
      const k = await this.key(pos, end, 'Value', name);
      if ((k.field === 1 || k.field === 2 || k.field === 3) && k.wire !== 2) {
        this.fail(`Value field ${k.field} has wire type ${k.wire}; expected 2 (length-delimited)`, pos, name);
      }
      if (k.field === 1) {
        const l = await this.length(k.next, end, 'Value.tag', name);
        tag = await this.string(l.next, l.len, end, MAX_TAG_BYTES, 'tag', name);
        pos = l.next + l.len;
      } else if (k.field === 2) {
        const l = await this.length(k.next, end, 'Value.tensor', name);
        await this.tensor(l.next, l.next + l.len, t, name);
        kind = 'tensor';
        pos = l.next + l.len;
      } else if (k.field === 3) {
        const l = await this.length(k.next, end, 'Value.maptensor', name);
        kind = 'map';
        pos = l.next + l.len;
      } else {
        pos = await this.skip(k.wire, k.next, end, 'Value', name);
      }
    }
    if (tag === null) this.fail('Value has no tag (required field 1 missing)', recordOffset);
    if (kind === 'map') {
      this.fail('MapTensor values (MapParameter) are not supported; save the map parameter as ordinary tensors', recordOffset, tag);
    }
    if (kind === 'none') this.fail('Value has neither tensor nor maptensor', recordOffset, tag);
    if (t.type === null) this.fail('TensorProto has no tensor_type (required field 2 missing)', recordOffset, tag);
    if (t.contentOffset < 0) this.fail('TensorProto has no tensor_content (required field 3 missing)', recordOffset, tag);
    return { tag, dims: t.dims, type: t.type, contentOffset: t.contentOffset, contentLength: t.contentLength, recordOffset };
  }

  private async tensor(
    start: number,
    end: number,
    t: { dims: number[]; type: string | null; contentOffset: number; contentLength: number },
    name: string | undefined,
  ): Promise<void> {
    let pos = start;
    const pushDim = (v: { value: number; safe: boolean }, at: number): void => {
      if (!v.safe) this.fail('dim is negative or larger than 2^53', at, name);
      if (t.dims.length >= MAX_DIMS) this.fail(`more than ${MAX_DIMS} dims`, at, name);
      t.dims.push(v.value);
    };
    while (pos < end) {
      const k = await this.key(pos, end, 'TensorProto', name);
      if (k.field === 1 && k.wire === 0) {
        const v = await this.varint(k.next, end, 'dims', name);
        pushDim(v, k.next);
        pos = v.next;
      } else if (k.field === 1 && k.wire === 2) {
        // packed dims
        const l = await this.length(k.next, end, 'packed dims', name);
        let p = l.next;
        const stop = l.next + l.len;
        while (p < stop) {
          const v = await this.varint(p, stop, 'packed dims', name);
          pushDim(v, p);
          p = v.next;
        }
        pos = stop;
      } else if (k.field === 2 || k.field === 3) {
        if (k.wire !== 2) this.fail(`TensorProto field ${k.field} has wire type ${k.wire}; expected 2`, pos, name);
        const l = await this.length(k.next, end, k.field === 2 ? 'tensor_type' : 'tensor_content', name);
        if (k.field === 2) t.type = await this.string(l.next, l.len, end, MAX_TYPE_BYTES, 'tensor_type', name);
        else {
          t.contentOffset = l.next;
          t.contentLength = l.len;
        }
        pos = l.next + l.len;
      } else {
        if (k.field === 1) this.fail(`dims has wire type ${k.wire}; expected 0 or 2`, pos, name);
        pos = await this.skip(k.wire, k.next, end, 'TensorProto', name);
      }
    }
  }
}

class CkptSource implements CheckpointSource {
  private fh: FileHandle | null;
  private readonly byName: Map<string, CheckpointEntry>;
  /** Start of each chunk inside the joined buffer, per entry. */
  private readonly starts = new Map<string, number[]>();

  constructor(
    readonly path: string,
    fh: FileHandle,
    private readonly list: readonly CheckpointEntry[],
    readonly crc: CheckpointCrc | null,
    readonly bodyBytes: number,
    private readonly observer?: ReadObserver,
  ) {
    this.fh = fh;
    this.byName = new Map(list.map((e) => [e.name, e]));
    for (const e of list) {
      const s: number[] = [];
      let at = 0;
      for (const c of e.chunkList) {
        s.push(at);
        at += c.length;
      }
      this.starts.set(e.name, s);
    }
  }

  entries(): readonly CheckpointEntry[] {
    return this.list;
  }

  entry(name: string): CheckpointEntry | undefined {
    return this.byName.get(name);
  }

  async readBytes(name: string, offset: number, length: number, dst: Uint8Array, dstOffset = 0): Promise<void> {
    const e = this.byName.get(name);
    if (e === undefined) throw new InputError('no such tensor in the checkpoint', { file: this.path, tensor: name });
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > e.byteLength) {
      throw new InputError(`byte range ${offset}+${length} lies outside the tensor's ${e.byteLength} bytes`, { file: this.path, tensor: name });
    }
    if (!Number.isSafeInteger(dstOffset) || dstOffset < 0 || dstOffset + length > dst.byteLength) {
      throw new InputError(`destination buffer of ${dst.byteLength} bytes cannot take ${length} bytes at ${dstOffset}`, { file: this.path, tensor: name });
    }
    const fh = this.fh;
    if (fh === null) throw new FailureError('checkpoint is closed', { file: this.path, tensor: name });
    if (length === 0) return;
    const starts = this.starts.get(name) as number[];
    // last chunk whose start <= offset (skipping empty chunks naturally)
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if ((starts[mid] as number) <= offset) lo = mid;
      else hi = mid - 1;
    }
    let i = lo;
    let done = 0;
    while (done < length) {
      const c = e.chunkList[i] as CkptChunk;
      const inner = offset + done - (starts[i] as number);
      const n = Math.min(length - done, c.length - inner);
      if (n > 0) {
        await readFully(fh, dst, dstOffset + done, n, c.offset + inner, this.path);
        this.observer?.(c.offset + inner, dst.subarray(dstOffset + done, dstOffset + done + n), name);
        done += n;
      }
      i++;
    }
  }

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    if (fh !== null) await fh.close();
  }
}

/** Recognise an encrypted checkpoint by its magic (spec §1.7); returns the mode or null. */
export function encryptionModeOf(head: Uint8Array): string | null {
  if (head.byteLength < 4) return null;
  const magic = new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true);
  return ENCRYPTION_MAGICS.get(magic) ?? null;
}

/**
 * Open a `.ckpt` file and index it (headers only). Throws InputError naming the file, byte offset
 * and tensor for anything malformed, encrypted files included.
 */
export async function openCheckpoint(path: string, opts: OpenCheckpointOptions = {}): Promise<CheckpointSource> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EISDIR' || code === 'EACCES') {
      throw new InputError(code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory, not a checkpoint file' : 'permission denied', { file: path });
    }
    throw err;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new InputError('not a regular file', { file: path });
    const size = st.size;
    const head = new Uint8Array(Math.min(size, 8));
    if (head.byteLength > 0) await readFully(fh, head, 0, head.byteLength, 0, path);
    const mode = encryptionModeOf(head);
    if (mode !== null) {
      throw new InputError(
        `encrypted checkpoint (${mode}); msckpt cannot read encrypted files: load it in MindSpore with dec_key/dec_mode and save it unencrypted`,
        { file: path, offset: 0 },
      );
    }
    let body = size;
    let stored: number | null = null;
    if (size >= CRC_TRAILER_BYTES) {
      const tail = new Uint8Array(CRC_TRAILER_BYTES);
      await readFully(fh, tail, 0, CRC_TRAILER_BYTES, size - CRC_TRAILER_BYTES, path);
      stored = decodeCrcTrailer(tail);
      if (stored !== null) body = size - CRC_TRAILER_BYTES;
    }
    if (body > 0 && head[0] !== 0x0a) {
      const hint = head[0] === 0x08 ? ' (this looks like a parallel strategy file)' : '';
      throw new InputError(`not a MindSpore checkpoint: first byte is 0x${(head[0] as number).toString(16).padStart(2, '0')}, expected 0x0a${hint}`, {
        file: path,
        offset: 0,
      });
    }
    const entries = await indexChunks(fh, path, body);
    let crc: CheckpointCrc | null = null;
    if (stored !== null) {
      const valid = opts.verifyCrc === true ? (await crcOfRange(fh, 0, body, path)) === stored : null;
      crc = { present: true, valid, stored };
    }
    return new CkptSource(path, fh, entries, crc, body);
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw err;
  }
}

/**
 * Open a `.ckpt` whose entries (with their chunks' file offsets) are already known, reading no
 * header: the index of `indexWeights`. The caller checks that the file is unchanged.
 */
export async function openCheckpointIndexed(
  path: string,
  entries: readonly CheckpointEntry[],
  bodyBytes: number,
  opts: { readonly observer?: ReadObserver } = {},
): Promise<CheckpointSource> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new InputError(code === 'ENOENT' ? 'no such file' : `cannot open (${code ?? String(err)})`, { file: path });
  }
  return new CkptSource(path, fh, entries, null, bodyBytes, opts.observer);
}

async function crcOfRange(fh: FileHandle, start: number, end: number, file: string): Promise<number> {
  const buf = Buffer.allocUnsafe(Math.min(8 << 20, Math.max(end - start, 1)));
  let c = 0;
  for (let pos = start; pos < end; ) {
    const n = Math.min(buf.byteLength, end - pos);
    await readFully(fh, buf, 0, n, pos, file);
    c = crc32(buf.subarray(0, n), c);
    pos += n;
  }
  return c;
}

async function indexChunks(fh: FileHandle, file: string, body: number): Promise<CheckpointEntry[]> {
  const entries: CheckpointEntry[] = [];
  const seen = new Set<string>();
  let group: RawChunk[] = [];
  const flush = (): void => {
    if (group.length === 0) return;
    const e = joinGroup(group, file);
    if (seen.has(e.name)) {
      throw new InputError('tag appears again after other tensors (only consecutive chunks of one tag are joined)', {
        file,
        offset: e.recordOffset,
        tensor: e.name,
      });
    }
    seen.add(e.name);
    entries.push(e);
    group = [];
  };
  await new Scanner(fh, file, body).scan(body, (c) => {
    if (group.length > 0 && (group[0] as RawChunk).tag !== c.tag) flush();
    group.push(c);
  });
  flush();
  return entries;
}

function joinGroup(group: readonly RawChunk[], file: string): CheckpointEntry {
  const last = group[group.length - 1] as RawChunk;
  const first = group[0] as RawChunk;
  const where = { file, offset: last.recordOffset, tensor: last.tag };
  const dtype: DType = requireDType(last.type, where).name;
  let total = 0;
  for (const c of group) total += c.contentLength;
  const shape = shapeFromStored(last.dims, dtype, total, where);
  const lengths = group.map((c) => c.contentLength);
  const hints: { dims?: readonly number[]; chunks?: readonly number[] } = {};
  if (!sameNumbers(last.dims, defaultDims(dtype, shape))) hints.dims = last.dims;
  if (!sameNumbers(lengths, defaultChunks(total))) hints.chunks = lengths;
  const entry: CheckpointEntry = {
    name: last.tag,
    dtype,
    shape,
    byteLength: total,
    chunkList: group.map((c) => ({ offset: c.contentOffset, length: c.contentLength })),
    recordOffset: first.recordOffset,
    ...(hints.dims !== undefined || hints.chunks !== undefined ? { ckpt: hints as CkptHints } : {}),
  };
  return entry;
}
