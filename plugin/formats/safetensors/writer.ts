/**
 * The safetensors sink. The header is laid out up front from the declared tensors, so tensor
 * bytes stream straight to their final offsets (positioned writes: tensors may arrive in any
 * order). Room is reserved in the header for what is known only at the end (the CRC, `str`
 * entries that travel in metadata); the final JSON is written at close and padded with spaces,
 * as the HF writer pads to 8-byte alignment.
 */
import { open } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { FailureError, InputError } from '../../errors.js';
import { AtomicFile } from '../atomic.js';
import { byteLength as dtypeByteLength, safetensorsName } from '../dtype.js';
import type { SinkCommit, SinkTensor, TensorSink } from '../types.js';
import { SAFETENSORS_MAX_HEADER } from './header.js';
import { ckptMetaValue, encodeStrEntry, MS_CKPT, MS_ORDER, strEntryReserve } from './meta.js';

export interface SafetensorsSinkOptions {
  /** User metadata (`__metadata__`), e.g. `{ format: 'ms' }`. */
  metadata?: Record<string, string>;
  /** Store MindSpore's `crc_num` (CRC-32 over name then bytes of every key in sorted order). */
  crc?: boolean;
  /** Lay tensors out (and list them) sorted by name, as MindSpore and HF do. Default false. */
  sortKeys?: boolean;
  /**
   * Record the declared order in metadata `ms_order` so a reader lists entries in it. Default:
   * only when the file holds entries that live in metadata (`str`).
   */
  recordOrder?: boolean;
  /** Store `.ckpt` hints of entries as `ms_ckpt:<name>` metadata (default true). */
  keepCkptHints?: boolean;
  /** Compute the CRC-32 of the whole file while writing it (reported by `close()`). */
  fileCrc32?: boolean;
}

/** Most bytes of `str` entries a file may carry in its metadata. */
export const MAX_STR_METADATA = 16 * 1024 * 1024;

interface Slot {
  readonly t: SinkTensor;
  /** Offset in the data area; -1 for metadata-held entries. */
  readonly begin: number;
  written: number;
  started: boolean;
  done: boolean;
  strBytes?: Uint8Array;
}

function codeUnitCompare(a: string, b: string): number {
  // Python sorts str by code point; compare UTF-8 bytes, which orders the same way.
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** Sorted order of names as MindSpore/Python sorts them (by code point). */
export function sortNames(names: readonly string[]): string[] {
  return [...names].sort(codeUnitCompare);
}

class SafetensorsSink implements TensorSink {
  private current: Slot | null = null;
  private closed = false;
  private crcValue = 0;
  private crcNext = 0;
  private crcStreaming: boolean;

  constructor(
    readonly path: string,
    private readonly file: AtomicFile,
    private readonly slots: Map<string, Slot>,
    private readonly crcOrder: readonly Slot[],
    private readonly dataStart: number,
    private readonly headerRoom: number,
    private readonly buildHeader: (crc: number | undefined) => string,
    private readonly wantCrc: boolean,
  ) {
    this.crcStreaming = wantCrc;
  }

  async beginTensor(tensor: SinkTensor): Promise<void> {
    if (this.closed) throw new FailureError('sink already closed', { file: this.path, tensor: tensor.name });
    if (this.current !== null) throw new FailureError(`beginTensor before endTensor of '${this.current.t.name}'`, { file: this.path, tensor: tensor.name });
    const s = this.slots.get(tensor.name);
    if (s === undefined) throw new FailureError('tensor was not declared when the file was created', { file: this.path, tensor: tensor.name });
    if (s.started) throw new FailureError('tensor written twice', { file: this.path, tensor: tensor.name });
    if (s.t.dtype !== tensor.dtype || s.t.byteLength !== tensor.byteLength || s.t.shape.join(',') !== tensor.shape.join(',')) {
      throw new FailureError(
        `tensor ${tensor.dtype}[${tensor.shape}] (${tensor.byteLength} bytes) differs from the declared ${s.t.dtype}[${s.t.shape}] (${s.t.byteLength} bytes)`,
        { file: this.path, tensor: tensor.name },
      );
    }
    s.started = true;
    this.current = s;
    if (s.begin < 0) s.strBytes = new Uint8Array(s.t.byteLength);
    else if (this.crcStreaming) {
      if (this.crcOrder[this.crcNext] === s) this.crcValue = crc32(Buffer.from(s.t.name, 'utf8'), this.crcValue);
      else this.crcStreaming = false;
    }
  }

  async write(piece: Uint8Array): Promise<void> {
    const s = this.current;
    if (s === null) throw new FailureError('write outside beginTensor/endTensor', { file: this.path });
    if (s.written + piece.byteLength > s.t.byteLength) {
      throw new FailureError(`more than the declared ${s.t.byteLength} bytes written`, { file: this.path, tensor: s.t.name });
    }
    if (s.strBytes !== undefined) s.strBytes.set(piece, s.written);
    else {
      await this.file.writeAt(piece, this.dataStart + s.begin + s.written);
      if (this.crcStreaming) this.crcValue = crc32(piece, this.crcValue);
    }
    s.written += piece.byteLength;
  }

  async endTensor(): Promise<void> {
    const s = this.current;
    if (s === null) throw new FailureError('endTensor without beginTensor', { file: this.path });
    if (s.written !== s.t.byteLength) {
      throw new FailureError(`${s.written} bytes written, ${s.t.byteLength} declared`, { file: this.path, tensor: s.t.name });
    }
    s.done = true;
    this.current = null;
    if (s.begin >= 0 && this.crcStreaming) this.crcNext++;
  }

  async close(): Promise<SinkCommit | void> {
    if (this.closed) return;
    try {
      if (this.current !== null) throw new FailureError('close during a tensor', { file: this.path, tensor: this.current.t.name });
      for (const s of this.slots.values()) {
        if (!s.done) throw new FailureError('tensor declared but never written', { file: this.path, tensor: s.t.name });
      }
      let crc: number | undefined;
      if (this.wantCrc) crc = this.crcStreaming && this.crcNext === this.crcOrder.length ? this.crcValue : await this.recomputeCrc();
      const json = Buffer.from(this.buildHeader(crc), 'utf8');
      if (json.byteLength > this.headerRoom) throw new FailureError(`header of ${json.byteLength} bytes outgrew its reserved ${this.headerRoom}`, { file: this.path });
      const header = Buffer.alloc(8 + this.headerRoom, 0x20);
      header.writeBigUInt64LE(BigInt(this.headerRoom), 0);
      json.copy(header, 8);
      await this.file.writeAt(header, 0);
      // A file whose last tensors are empty still ends at the data area's end: nothing to pad.
      this.closed = true;
      const c = await this.file.commit();
      return { path: this.path, ...c };
    } catch (err) {
      this.closed = true;
      await this.file.abort();
      throw err;
    }
  }

  async abort(): Promise<void> {
    this.closed = true;
    await this.file.abort();
  }

  /** CRC over the temp file in sorted-key order (when tensors did not arrive in that order). */
  private async recomputeCrc(): Promise<number> {
    const h = await open(this.file.tempPath, 'r');
    try {
      const buf = new Uint8Array(16 * 1024 * 1024);
      let crc = 0;
      for (const s of this.crcOrder) {
        crc = crc32(Buffer.from(s.t.name, 'utf8'), crc);
        for (let off = 0; off < s.t.byteLength; off += buf.byteLength) {
          const n = Math.min(buf.byteLength, s.t.byteLength - off);
          let done = 0;
          while (done < n) {
            const { bytesRead } = await h.read(buf, done, n - done, this.dataStart + s.begin + off + done);
            if (bytesRead === 0) throw new FailureError('temporary file ended early', { file: this.file.tempPath });
            done += bytesRead;
          }
          crc = crc32(buf.subarray(0, n), crc);
        }
      }
      return crc;
    } finally {
      await h.close();
    }
  }
}

/**
 * Create a safetensors file at `path` for exactly the declared `tensors`. Tensors may then be
 * written in any order (declared order streams sequentially); the file appears under `path`
 * only on `close()`.
 */
export async function createSafetensorsSink(
  path: string,
  tensors: readonly SinkTensor[],
  opts: SafetensorsSinkOptions = {},
): Promise<TensorSink> {
  const seen = new Set<string>();
  const stored: SinkTensor[] = [];
  const inMeta: SinkTensor[] = [];
  let strBytes = 0;
  for (const t of tensors) {
    if (seen.has(t.name)) throw new InputError('tensor name appears twice', { file: path, tensor: t.name });
    seen.add(t.name);
    if (t.name === '__metadata__') throw new InputError("'__metadata__' cannot be a tensor name in safetensors", { file: path, tensor: t.name });
    if (t.dtype === 'str') {
      strBytes += t.byteLength;
      inMeta.push(t);
      continue;
    }
    const expect = dtypeByteLength(t.dtype, t.shape);
    if (expect !== t.byteLength) throw new InputError(`shape [${t.shape}] of ${t.dtype} needs ${expect} bytes, declared ${t.byteLength}`, { file: path, tensor: t.name });
    if (t.dtype !== 'Int4' && safetensorsName(t.dtype) === undefined) throw new InputError(`dtype ${t.dtype} cannot be stored in safetensors`, { file: path, tensor: t.name });
    stored.push(t);
  }
  if (strBytes > MAX_STR_METADATA) throw new InputError(`str entries of ${strBytes} bytes exceed the ${MAX_STR_METADATA}-byte metadata budget`, { file: path });
  const userMeta = opts.metadata ?? {};
  for (const [k, v] of Object.entries(userMeta)) {
    if (typeof v !== 'string') throw new InputError('metadata values must be strings', { file: path, key: k });
  }
  const dataOrder = opts.sortKeys === true ? [...stored].sort((a, b) => codeUnitCompare(a.name, b.name)) : stored;
  const slots = new Map<string, Slot>();
  const slotList: Slot[] = [];
  let at = 0;
  for (const t of dataOrder) {
    const s: Slot = { t, begin: at, written: 0, started: false, done: false };
    at += t.byteLength;
    slots.set(t.name, s);
    slotList.push(s);
  }
  for (const t of inMeta) slots.set(t.name, { t, begin: -1, written: 0, started: false, done: false });
  const crcOrder = [...slotList].sort((a, b) => codeUnitCompare(a.t.name, b.t.name));

  // Fixed metadata (known now).
  const fixed: Record<string, string> = { ...userMeta };
  const keepHints = opts.keepCkptHints !== false;
  for (const t of tensors) {
    const v = ckptMetaValue(keepHints ? t.ckpt : undefined, t.dtype === 'Int4' ? t.shape : undefined);
    if (v !== undefined) fixed[MS_CKPT + t.name] = v;
    if (t.dtype === 'Int4') fixed[t.name] = 'Int4';
  }
  const recordOrder = opts.recordOrder ?? inMeta.length > 0;
  if (recordOrder) fixed[MS_ORDER] = JSON.stringify(tensors.map((t) => t.name));

  const tensorJson: Record<string, unknown> = {};
  for (const s of slotList) {
    const t = s.t;
    const st = t.dtype === 'Int4' ? 'I8' : (safetensorsName(t.dtype) as string);
    const shape = t.dtype === 'Int4' ? [t.byteLength] : t.shape;
    tensorJson[t.name] = { dtype: st, shape, data_offsets: [s.begin, s.begin + t.byteLength] };
  }
  const buildHeader = (crc: number | undefined): string => {
    const md: Record<string, string> = { ...fixed };
    for (const t of inMeta) {
      const bytes = slots.get(t.name)?.strBytes ?? new Uint8Array(0);
      const [k, v] = encodeStrEntry(t.name, bytes);
      md[k] = v;
    }
    if (crc !== undefined) md['crc_num'] = String(crc);
    const obj: Record<string, unknown> = Object.keys(md).length > 0 ? { __metadata__: md } : {};
    return JSON.stringify({ ...obj, ...tensorJson });
  };
  // Room: the header with every late value empty, plus the most those values can take.
  let room = Buffer.byteLength(JSON.stringify({ __metadata__: fixed, ...tensorJson }), 'utf8') + 2;
  if (opts.crc === true) room += Buffer.byteLength(',"crc_num":"4294967295"', 'utf8');
  for (const t of inMeta) room += strEntryReserve(t.name, t.byteLength);
  room += (8 - ((8 + room) % 8)) % 8;
  if (room > SAFETENSORS_MAX_HEADER) throw new InputError(`safetensors header would take ${room} bytes, over the ${SAFETENSORS_MAX_HEADER}-byte limit`, { file: path });
  if (opts.crc !== true && inMeta.length === 0) {
    // Everything is known: make the header exactly the HF size (JSON padded to 8-byte alignment).
    const exact = Buffer.byteLength(buildHeader(undefined), 'utf8');
    room = exact + ((8 - ((8 + exact) % 8)) % 8);
  }
  const file = await AtomicFile.create(path, { crc32: opts.fileCrc32 === true });
  return new SafetensorsSink(path, file, slots, crcOrder, 8 + room, room, buildHeader, opts.crc === true);
}
