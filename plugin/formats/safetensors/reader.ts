/**
 * Safetensors sources: one file, an HF-style sharded `*.safetensors.index.json`, or a unified
 * directory (`part*.safetensors` + `param_name_map.json` [+ `hyper_param.safetensors`]).
 * Headers are validated before any data is read; tensor bytes are read with positioned reads.
 */
import { open, readdir, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { FailureError, InputError } from '../../errors.js';
import { byteLength as dtypeByteLength } from '../dtype.js';
import type { ReadObserver } from '../crc-check.js';
import type { CkptHints, TensorEntry, TensorSource } from '../types.js';
import { readSafetensorsHeader, SAFETENSORS_MAX_HEADER, type SafetensorsHeader } from './header.js';
import { MS_CKPT, MS_ORDER, MS_STR, MS_STR_B64, parseCkptMeta, textToUtf32 } from './meta.js';

/** A safetensors container opened for reading. */
export interface SafetensorsSource extends TensorSource {
  /** User metadata: `__metadata__` without our `ms_*` keys and Int4 markers (index metadata merged in). */
  readonly metadata: Record<string, string>;
  /** `__metadata__` exactly as stored (of the first file, for a multi-file source). */
  readonly rawMetadata: Record<string, string>;
  /** Every safetensors file this source reads. */
  readonly files: readonly string[];
  /** 'file' | 'index' (HF weight_map) | 'unified' (param_name_map.json). */
  readonly layout: 'file' | 'index' | 'unified';
  /** File and absolute byte offset of a stored tensor; undefined for metadata-held entries. */
  locate(name: string): { file: string; offset: number } | undefined;
}

interface Located {
  entry: TensorEntry;
  /** Absolute offset in the file, or -1 for metadata-held bytes. */
  offset: number;
  bytes?: Uint8Array;
}

function isInternalKey(k: string, v: string, tensorNames: Set<string>): boolean {
  return k.startsWith(MS_STR) || k.startsWith(MS_STR_B64) || k.startsWith(MS_CKPT) || k === MS_ORDER || (v === 'Int4' && tensorNames.has(k));
}

async function readInto(h: FileHandle, file: string, dst: Uint8Array, dstOffset: number, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await h.read(dst, dstOffset + done, length - done, position + done);
    if (bytesRead === 0) throw new InputError(`file ended early while reading ${length} bytes`, { file, offset: position + done });
    done += bytesRead;
  }
}

function checkRange(path: string, e: TensorEntry, offset: number, length: number, dst: Uint8Array, dstOffset: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > e.byteLength) {
    throw new FailureError(`read of ${length} bytes at ${offset} is outside the tensor's ${e.byteLength} bytes`, { file: path, tensor: e.name });
  }
  if (dstOffset < 0 || dstOffset + length > dst.byteLength) {
    throw new FailureError(`destination buffer of ${dst.byteLength} bytes cannot take ${length} bytes at ${dstOffset}`, { file: path, tensor: e.name });
  }
}

/** Build the entries of one validated file (tensors in file order, then metadata-held entries). */
export function entriesFromHeader(h: SafetensorsHeader): { entries: Located[]; metadata: Record<string, string> } {
  const file = h.path;
  const md = h.metadata;
  const names = new Set(h.tensors.map((t) => t.name));
  const ckptMeta = new Map<string, { hints?: CkptHints; shape?: number[] }>();
  for (const [k, v] of Object.entries(md)) {
    if (k.startsWith(MS_CKPT)) ckptMeta.set(k.slice(MS_CKPT.length), parseCkptMeta(file, k.slice(MS_CKPT.length), v));
  }
  const out: Located[] = [];
  for (const t of h.tensors) {
    const cm = ckptMeta.get(t.name);
    let dtype = t.dtype;
    let shape = t.shape;
    if (md[t.name] === 'Int4' && cm?.shape !== undefined && (t.dtype === 'Int8' || t.dtype === 'UInt8')) {
      if (dtypeByteLength('Int4', cm.shape) !== t.end - t.begin) {
        throw new InputError(`Int4 shape [${cm.shape}] does not match ${t.end - t.begin} stored bytes`, { file, offset: 8, tensor: t.name });
      }
      dtype = 'Int4';
      shape = cm.shape;
    }
    const entry: TensorEntry = cm?.hints !== undefined
      ? { name: t.name, dtype, shape, byteLength: t.end - t.begin, ckpt: cm.hints }
      : { name: t.name, dtype, shape, byteLength: t.end - t.begin };
    out.push({ entry, offset: h.dataStart + t.begin });
  }
  for (const [k, v] of Object.entries(md)) {
    let name: string;
    let bytes: Uint8Array;
    if (k.startsWith(MS_STR)) {
      name = k.slice(MS_STR.length);
      bytes = textToUtf32(v);
    } else if (k.startsWith(MS_STR_B64)) {
      name = k.slice(MS_STR_B64.length);
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(v) || v.length % 4 !== 0) throw new InputError('str entry is not valid base64', { file, offset: 8, tensor: name, key: `__metadata__.${k}` });
      bytes = new Uint8Array(Buffer.from(v, 'base64'));
    } else continue;
    if (names.has(name)) throw new InputError('str entry has the same name as a tensor', { file, offset: 8, tensor: name });
    names.add(name);
    const cm = ckptMeta.get(name);
    const entry: TensorEntry = cm?.hints !== undefined
      ? { name, dtype: 'str', shape: [], byteLength: bytes.byteLength, ckpt: cm.hints }
      : { name, dtype: 'str', shape: [], byteLength: bytes.byteLength };
    out.push({ entry, offset: -1, bytes });
  }
  for (const l of out) {
    const chunks = l.entry.ckpt?.chunks;
    if (chunks !== undefined && chunks.reduce((a, b) => a + b, 0) !== l.entry.byteLength) {
      throw new InputError(`ckpt chunk lengths [${chunks.join(',')}] do not add up to the ${l.entry.byteLength} bytes of the tensor`, { file, offset: 8, tensor: l.entry.name });
    }
  }
  const order = md[MS_ORDER];
  let ordered = out;
  if (order !== undefined) {
    let list: unknown;
    try {
      list = JSON.parse(order);
    } catch {
      list = null;
    }
    if (!Array.isArray(list) || !list.every((x) => typeof x === 'string')) {
      throw new InputError('entry order must be a JSON array of names', { file, offset: 8, key: `__metadata__.${MS_ORDER}` });
    }
    const byName = new Map(out.map((l) => [l.entry.name, l]));
    ordered = [];
    for (const n of list as string[]) {
      const l = byName.get(n);
      if (l !== undefined) {
        ordered.push(l);
        byName.delete(n);
      }
    }
    for (const l of out) if (byName.has(l.entry.name)) ordered.push(l);
  }
  const metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(md)) if (!isInternalKey(k, v, names)) metadata[k] = v;
  return { entries: ordered, metadata };
}

class FileSource implements SafetensorsSource {
  readonly layout = 'file' as const;
  readonly files: readonly string[];
  private handle: FileHandle | null;
  private readonly list: readonly TensorEntry[];
  private readonly byName: Map<string, Located>;

  constructor(
    readonly path: string,
    handle: FileHandle,
    located: Located[],
    readonly metadata: Record<string, string>,
    readonly rawMetadata: Record<string, string>,
    private readonly observer?: ReadObserver,
  ) {
    this.files = [path];
    this.handle = handle;
    this.list = located.map((l) => l.entry);
    this.byName = new Map(located.map((l) => [l.entry.name, l]));
  }

  entries(): readonly TensorEntry[] {
    return this.list;
  }

  entry(name: string): TensorEntry | undefined {
    return this.byName.get(name)?.entry;
  }

  locate(name: string): { file: string; offset: number } | undefined {
    const l = this.byName.get(name);
    return l === undefined || l.offset < 0 ? undefined : { file: this.path, offset: l.offset };
  }

  async readBytes(name: string, offset: number, length: number, dst: Uint8Array, dstOffset = 0): Promise<void> {
    const l = this.byName.get(name);
    if (l === undefined) throw new FailureError('no such tensor', { file: this.path, tensor: name });
    checkRange(this.path, l.entry, offset, length, dst, dstOffset);
    if (length === 0) return;
    if (l.bytes !== undefined) {
      dst.set(l.bytes.subarray(offset, offset + length), dstOffset);
      return;
    }
    if (this.handle === null) throw new FailureError('source already closed', { file: this.path, tensor: name });
    await readInto(this.handle, this.path, dst, dstOffset, length, l.offset + offset);
    this.observer?.(l.offset + offset, dst.subarray(dstOffset, dstOffset + length), name);
  }

  async close(): Promise<void> {
    const h = this.handle;
    this.handle = null;
    if (h !== null) await h.close();
  }
}

/** Open one `.safetensors` file (header validated before anything else). */
export async function openSafetensorsFile(path: string): Promise<SafetensorsSource> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    throw new InputError(`cannot open: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { file: path });
  }
  try {
    const header = await readSafetensorsHeader(handle, path);
    const { entries, metadata } = entriesFromHeader(header);
    return new FileSource(path, handle, entries, metadata, header.metadata);
  } catch (err) {
    await handle.close().catch(() => undefined);
    throw err;
  }
}

/** An entry of a safetensors source known from an index: its file and absolute offset, or its bytes (metadata-held). */
export type IndexedSafetensorsEntry =
  | { readonly entry: TensorEntry; readonly file: number; readonly offset: number }
  | { readonly entry: TensorEntry; readonly bytes: Uint8Array };

/**
 * Open safetensors weights whose entries and offsets are already known, reading no header: the
 * index of `indexWeights`. `files[i]` holds the entries whose `file` is i. The caller checks that
 * the files are unchanged.
 */
export async function openSafetensorsIndexed(
  path: string,
  files: readonly string[],
  entries: readonly IndexedSafetensorsEntry[],
  opts: { readonly observer?: ReadObserver } = {},
): Promise<SafetensorsSource> {
  const perFile: Located[][] = files.map(() => []);
  const inline: Located[] = [];
  for (const e of entries) {
    if ('bytes' in e) inline.push({ entry: e.entry, offset: -1, bytes: e.bytes });
    else {
      const list = perFile[e.file];
      if (list === undefined) throw new FailureError(`index names file ${e.file} of ${files.length}`, { file: path, tensor: e.entry.name });
      list.push({ entry: e.entry, offset: e.offset });
    }
  }
  // metadata-held entries are served by the first file's source
  (perFile[0] ?? (perFile[0] = [])).push(...inline);
  const opened: SafetensorsSource[] = [];
  try {
    for (let i = 0; i < files.length; i++) {
      const f = files[i] as string;
      let handle: FileHandle;
      try {
        handle = await open(f, 'r');
      } catch (err) {
        throw new InputError(`cannot open: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { file: f });
      }
      // a read observer checks one file's CRC: only a single-file source has one
      opened.push(new FileSource(f, handle, perFile[i] as Located[], {}, {}, files.length === 1 ? opts.observer : undefined));
    }
    if (opened.length === 1) return opened[0] as SafetensorsSource;
    const owner = new Map<string, SafetensorsSource>();
    perFile.forEach((list, i) => {
      for (const l of list) owner.set(l.entry.name, opened[i] as SafetensorsSource);
    });
    const order = entries.map((e): [string, SafetensorsSource] => [e.entry.name, owner.get(e.entry.name) as SafetensorsSource]);
    return new MultiSource(path, 'index', opened, order, {});
  } catch (err) {
    for (const s of opened) await s.close().catch(() => undefined);
    throw err;
  }
}

/** A source over several files, each entry served by the file the map names. */
class MultiSource implements SafetensorsSource {
  private readonly list: readonly TensorEntry[];
  private readonly owner: Map<string, SafetensorsSource>;

  constructor(
    readonly path: string,
    readonly layout: 'index' | 'unified',
    private readonly parts: readonly SafetensorsSource[],
    order: ReadonlyArray<[string, SafetensorsSource]>,
    readonly metadata: Record<string, string>,
  ) {
    this.owner = new Map(order);
    this.list = order.map(([n, s]) => s.entry(n) as TensorEntry);
  }

  get files(): readonly string[] {
    return this.parts.flatMap((p) => p.files);
  }

  get rawMetadata(): Record<string, string> {
    return this.parts[0]?.rawMetadata ?? {};
  }

  entries(): readonly TensorEntry[] {
    return this.list;
  }

  entry(name: string): TensorEntry | undefined {
    return this.owner.get(name)?.entry(name);
  }

  locate(name: string): { file: string; offset: number } | undefined {
    return this.owner.get(name)?.locate(name);
  }

  async readBytes(name: string, offset: number, length: number, dst: Uint8Array, dstOffset = 0): Promise<void> {
    const s = this.owner.get(name);
    if (s === undefined) throw new FailureError('no such tensor', { file: this.path, tensor: name });
    await s.readBytes(name, offset, length, dst, dstOffset);
  }

  async close(): Promise<void> {
    for (const p of this.parts) await p.close();
  }
}

const MAX_INDEX_BYTES = 256 * 1024 * 1024;

async function readJsonFile(path: string): Promise<unknown> {
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (err) {
    throw new InputError(`cannot open: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { file: path });
  }
  if (size > MAX_INDEX_BYTES) throw new InputError(`index file of ${size} bytes exceeds the limit of ${MAX_INDEX_BYTES}`, { file: path, offset: 0 });
  const h = await open(path, 'r');
  try {
    const buf = new Uint8Array(size);
    await readInto(h, path, buf, 0, size, 0);
    try {
      return JSON.parse(new TextDecoder('utf-8').decode(buf));
    } catch (err) {
      const m = err instanceof Error ? /position (\d+)/.exec(err.message) : null;
      throw new InputError(`not valid JSON (${err instanceof Error ? err.message : String(err)})`, { file: path, offset: m !== null ? Number(m[1]) : 0 });
    }
  } finally {
    await h.close();
  }
}

/**
 * Open an HF-style index (`{"metadata":{...},"weight_map":{name:file}}`) or a unified
 * directory's `param_name_map.json` (then `hyper_param.safetensors` beside it is included).
 */
export async function openSafetensorsIndex(indexPath: string): Promise<SafetensorsSource> {
  const json = await readJsonFile(indexPath);
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new InputError('index must be a JSON object', { file: indexPath, offset: 0 });
  const obj = json as Record<string, unknown>;
  const wm = obj['weight_map'];
  if (typeof wm !== 'object' || wm === null || Array.isArray(wm)) throw new InputError('index has no weight_map object', { file: indexPath, offset: 0, key: 'weight_map' });
  const dir = dirname(indexPath);
  const unified = basename(indexPath) === 'param_name_map.json';
  const metadata: Record<string, string> = {};
  const im = obj['metadata'];
  if (typeof im === 'object' && im !== null && !Array.isArray(im)) {
    for (const [k, v] of Object.entries(im as Record<string, unknown>)) metadata[k] = typeof v === 'string' ? v : JSON.stringify(v);
  }
  const parts = new Map<string, SafetensorsSource>();
  const order: Array<[string, SafetensorsSource]> = [];
  const opened: SafetensorsSource[] = [];
  try {
    for (const [name, rel] of Object.entries(wm as Record<string, unknown>)) {
      if (typeof rel !== 'string' || rel === '' || isAbsolute(rel)) {
        throw new InputError('weight_map value must be a relative file name', { file: indexPath, key: `weight_map.${name}` });
      }
      let src = parts.get(rel);
      if (src === undefined) {
        src = await openSafetensorsFile(resolve(dir, rel));
        parts.set(rel, src);
        opened.push(src);
      }
      if (src.entry(name) === undefined) {
        throw new InputError(`weight_map says '${rel}' holds this tensor, but it does not`, { file: indexPath, tensor: name, key: `weight_map.${name}` });
      }
      order.push([name, src]);
    }
    if (unified) {
      const hyper = join(dir, 'hyper_param.safetensors');
      const exists = await stat(hyper).then((s) => s.isFile(), () => false);
      if (exists && !parts.has('hyper_param.safetensors')) {
        const src = await openSafetensorsFile(hyper);
        opened.push(src);
        const seen = new Set(order.map(([n]) => n));
        for (const e of src.entries()) if (!seen.has(e.name)) order.push([e.name, src]);
      }
    }
    const first = opened[0];
    const md = { ...(first?.metadata ?? {}), ...metadata };
    return new MultiSource(indexPath, unified ? 'unified' : 'index', opened, order, md);
  } catch (err) {
    for (const s of opened) await s.close().catch(() => undefined);
    throw err;
  }
}

/** True when the first bytes look like a safetensors file (8-byte LE length then `{`). */
export function looksLikeSafetensors(head: Uint8Array, fileSize: number): boolean {
  if (head.byteLength < 9 || fileSize < 10) return false;
  const n = new DataView(head.buffer, head.byteOffset, head.byteLength).getBigUint64(0, true);
  return n >= 2n && n <= BigInt(Math.min(SAFETENSORS_MAX_HEADER, fileSize - 8)) && head[8] === 0x7b;
}

/**
 * Open safetensors weights: a `.safetensors` file, a `*.json` index (HF weight_map or
 * `param_name_map.json`), or a directory holding `param_name_map.json`, one
 * `*.safetensors.index.json`, or exactly one `.safetensors` file.
 */
export async function openSafetensors(path: string): Promise<SafetensorsSource> {
  let st;
  try {
    st = await stat(path);
  } catch (err) {
    throw new InputError(`cannot open: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { file: path });
  }
  if (st.isDirectory()) {
    const names = (await readdir(path)).sort();
    if (names.includes('param_name_map.json')) return openSafetensorsIndex(join(path, 'param_name_map.json'));
    const idx = names.filter((n) => n.endsWith('.safetensors.index.json'));
    if (idx.length === 1) return openSafetensorsIndex(join(path, idx[0] as string));
    if (idx.length > 1) throw new InputError(`directory holds ${idx.length} safetensors indexes (${idx.join(', ')}); name one`, { file: path });
    const files = names.filter((n) => n.endsWith('.safetensors'));
    if (files.length === 1) return openSafetensorsFile(join(path, files[0] as string));
    throw new InputError(
      files.length === 0
        ? 'directory holds no safetensors file, index or param_name_map.json'
        : `directory holds ${files.length} safetensors files and no index; name one`,
      { file: path },
    );
  }
  if (path.endsWith('.json')) return openSafetensorsIndex(path);
  return openSafetensorsFile(path);
}
