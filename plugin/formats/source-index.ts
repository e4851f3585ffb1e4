/**
 * A source's index: its entries with the byte location of each (the chunks of a `.ckpt` tensor,
 * the data offset of a safetensors tensor, or the bytes of an entry held in a header), and the
 * size and modification time of every file it reads. Plain data (JSON), so a plan can carry it:
 * opening a source from its index reads no header, only a stat of each file to check that it did
 * not change since it was indexed.
 */
import { stat } from 'node:fs/promises';
import { FailureError, InputError } from '../errors.js';
import { openCheckpointIndexed, type CheckpointEntry, type CheckpointSource } from './ckpt/reader.js';
import { CrcCoverage, crcRegionsOf, type ReadObserver, type StoredCrc } from './crc-check.js';
import { openWeights } from './open.js';
import { foundFile, type FoundFile, type WeightsFormat } from './resolve.js';
import { openSafetensorsIndexed, type IndexedSafetensorsEntry, type SafetensorsSource } from './safetensors/reader.js';
import type { TensorEntry, TensorSource } from './types.js';

/** Where an entry's bytes are. */
export type EntryLocation =
  /** `.ckpt`: file offset and length of each chunk's content, in order. */
  | { readonly chunks: ReadonlyArray<readonly [number, number]> }
  /** safetensors: the file (index into `SourceIndex.files`) and the absolute offset of the first byte. */
  | { readonly file: number; readonly offset: number }
  /** Bytes held in the header itself (safetensors `str` entries), base64. */
  | { readonly inline: string };

export interface IndexedEntry extends TensorEntry {
  readonly at: EntryLocation;
}

export interface SourceIndex {
  readonly format: WeightsFormat;
  /** The path opened: a weights file, an index JSON or a unified folder. */
  readonly path: string;
  /** Every file the bytes are in, with size and modification time when indexed. */
  readonly files: readonly FoundFile[];
  readonly entries: readonly IndexedEntry[];
  /** `.ckpt`: bytes of the protobuf body (the file without a CRC trailer). */
  readonly bodyBytes?: number;
  /** The CRC-32 the file stores about itself (a `.ckpt` trailer, a single safetensors file's `crc_num`). */
  readonly storedCrc?: StoredCrc;
}

/** Options of opening a source from its index. */
export interface OpenIndexedOptions {
  /** Told every positioned read of the file (its offset and the bytes delivered): a CRC check. */
  readonly observer?: ReadObserver;
}

/**
 * Read the header(s) of the weights at `path` (a `.ckpt`, a safetensors file or index, a unified
 * folder) and return its index. The files are stat'ed before and after: a file that changes
 * while it is read is a FailureError.
 */
export async function indexWeights(path: string): Promise<SourceIndex> {
  const before = await stat(path);
  const src = await openWeights(path);
  try {
    if ('bodyBytes' in src) {
      const ck = src as CheckpointSource;
      const entries: IndexedEntry[] = ck.entries().map((e) => ({
        ...plainEntry(e),
        at: { chunks: e.chunkList.map((c) => [c.offset, c.length] as const) },
      }));
      const file = await foundFile(path);
      checkUnchanged(path, before, file);
      return {
        format: 'ckpt', path, files: [file], entries, bodyBytes: ck.bodyBytes,
        ...(ck.crc !== null ? { storedCrc: { kind: 'ckpt-trailer', value: ck.crc.stored } } : {}),
      };
    }
    const st = src as SafetensorsSource;
    const fileIndex = new Map(st.files.map((f, i) => [f, i]));
    const entries: IndexedEntry[] = [];
    for (const e of st.entries()) {
      const loc = st.locate(e.name);
      if (loc !== undefined) {
        entries.push({ ...plainEntry(e), at: { file: fileIndex.get(loc.file) as number, offset: loc.offset } });
      } else {
        const bytes = new Uint8Array(e.byteLength);
        await st.readBytes(e.name, 0, e.byteLength, bytes, 0);
        entries.push({ ...plainEntry(e), at: { inline: Buffer.from(bytes).toString('base64') } });
      }
    }
    const files = await Promise.all(st.files.map((f) => foundFile(f)));
    if (!before.isDirectory()) checkUnchanged(path, before, files.find((f) => f.path === path) ?? null);
    // MindSpore's crc_num: a decimal CRC-32 in a single file's metadata
    const crcText = st.layout === 'file' ? st.rawMetadata['crc_num'] : undefined;
    const crcValue = crcText !== undefined && /^\d{1,10}$/.test(crcText) ? Number(crcText) : undefined;
    const storedCrc: StoredCrc | undefined = crcValue !== undefined && crcValue <= 0xffffffff ? { kind: 'safetensors-crc_num', value: crcValue } : undefined;
    return { format: 'safetensors', path, files, entries, ...(storedCrc !== undefined ? { storedCrc } : {}) };
  } finally {
    await src.close();
  }
}

function plainEntry(e: TensorEntry): TensorEntry {
  return e.ckpt !== undefined
    ? { name: e.name, dtype: e.dtype, shape: [...e.shape], byteLength: e.byteLength, ckpt: e.ckpt }
    : { name: e.name, dtype: e.dtype, shape: [...e.shape], byteLength: e.byteLength };
}

function checkUnchanged(path: string, before: Awaited<ReturnType<typeof stat>>, after: FoundFile | null): void {
  if (after === null) return;
  if (Number(before.size) !== after.size || Number(before.mtimeMs) !== after.mtimeMs) {
    throw new FailureError('the file changed while its header was read; try again once nothing writes it', { file: path });
  }
}

/** InputError when a file's size or modification time differs from the index's. */
export async function checkIndexedFiles(index: Pick<SourceIndex, 'files'>): Promise<void> {
  for (const f of index.files) {
    let s;
    try {
      s = await stat(f.path);
    } catch (err) {
      throw new InputError(`cannot be read any more (${(err as NodeJS.ErrnoException).code ?? String(err)}); it changed since it was planned`, { file: f.path });
    }
    if (Number(s.size) !== f.size) throw new InputError(`changed since it was planned (size ${f.size} -> ${s.size})`, { file: f.path });
    if (Number(s.mtimeMs) !== f.mtimeMs) throw new InputError('changed since it was planned (modification time differs)', { file: f.path });
  }
}

/**
 * Open a source from its index: no header is read; every file's size and modification time are
 * checked first (an InputError naming the file when one changed since it was indexed).
 */
export async function openIndexed(index: SourceIndex, opts: OpenIndexedOptions = {}): Promise<TensorSource> {
  await checkIndexedFiles(index);
  if (index.format === 'ckpt') {
    const file = index.files[0];
    if (file === undefined) throw new FailureError('index of a checkpoint lists no file', { file: index.path });
    const entries: CheckpointEntry[] = index.entries.map((e) => {
      if (!('chunks' in e.at)) throw new FailureError('checkpoint index entry has no chunk list', { file: index.path, tensor: e.name });
      return { ...plainEntry(e), chunkList: e.at.chunks.map(([offset, length]) => ({ offset, length })), recordOffset: 0 };
    });
    return openCheckpointIndexed(file.path, entries, index.bodyBytes ?? file.size, opts);
  }
  const entries: IndexedSafetensorsEntry[] = index.entries.map((e) => {
    const at = e.at;
    if ('inline' in at) return { entry: plainEntry(e), bytes: new Uint8Array(Buffer.from(at.inline, 'base64')) };
    if ('file' in at) return { entry: plainEntry(e), file: at.file, offset: at.offset };
    throw new FailureError('safetensors index entry has no offset', { file: index.path, tensor: e.name });
  });
  return openSafetensorsIndexed(index.path, index.files.map((f) => f.path), entries, opts);
}

/**
 * A check of the CRC the source stores about itself, fed by the reads a conversion makes (hand
 * its `observer` to `openIndexed`); null when the source stores none.
 */
export function crcCoverageOf(index: Pick<SourceIndex, 'format' | 'files' | 'entries' | 'bodyBytes' | 'storedCrc'>): CrcCoverage | null {
  const stored = index.storedCrc;
  const file = index.files[0];
  if (stored === undefined || file === undefined) return null;
  if (stored.kind === 'safetensors-crc_num' && index.files.length !== 1) return null;
  const tensors: { name: string; offset: number; byteLength: number }[] = [];
  for (const e of index.entries) if ('file' in e.at && e.at.file === 0) tensors.push({ name: e.name, offset: e.at.offset, byteLength: e.byteLength });
  return new CrcCoverage(file.path, stored, crcRegionsOf(stored, index.bodyBytes ?? file.size, tensors));
}

/**
 * How sources are indexed (header reads) and opened from their index. The default reads real
 * files; a caller may pass its own (e.g. to count header reads).
 */
export interface SourceIO {
  index(path: string): Promise<SourceIndex>;
  open(index: SourceIndex, opts?: OpenIndexedOptions): Promise<TensorSource>;
}

export const defaultSourceIO: SourceIO = { index: indexWeights, open: openIndexed };
