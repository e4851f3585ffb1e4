/**
 * Streaming copy of whole entries from a source to a sink in bounded pieces.
 */
import type { SinkTensor, TensorEntry, TensorSink, TensorSource } from './types.js';

/** Default piece size for streaming copies: 64 MiB. */
export const COPY_PIECE = 64 * 1024 * 1024;

/** Options of copyEntry beyond the piece size and scratch buffer. */
export interface CopyEntryOptions {
  /** Write the entry under this description (e.g. a new name) instead of the entry itself. */
  readonly as?: SinkTensor;
  /** Called with the byte count of each piece written. */
  readonly onBytes?: (bytes: number) => void;
}

/**
 * Copy one entry's bytes from `source` into `sink` (beginTensor .. endTensor), reading at most
 * `pieceSize` bytes at a time into one reused buffer.
 */
export async function copyEntry(
  source: TensorSource,
  sink: TensorSink,
  entry: TensorEntry,
  pieceSize = COPY_PIECE,
  scratch?: Uint8Array,
  opts: CopyEntryOptions = {},
): Promise<void> {
  await sink.beginTensor(opts.as ?? entry);
  const size = Math.min(pieceSize, Math.max(entry.byteLength, 1));
  const buf = scratch !== undefined && scratch.byteLength >= size ? scratch : new Uint8Array(size);
  for (let off = 0; off < entry.byteLength; off += size) {
    const n = Math.min(size, entry.byteLength - off);
    await source.readBytes(entry.name, off, n, buf, 0);
    await sink.write(buf.subarray(0, n));
    opts.onBytes?.(n);
  }
  await sink.endTensor();
}
