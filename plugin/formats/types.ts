/**
 * The two small interfaces every file kind hides behind. Nothing above `formats/` knows about
 * protobuf or JSON headers.
 *
 * Shapes and offsets are plain numbers: JavaScript numbers are exact to 2^53, far above any file
 * or tensor (files and tensors over 4 GiB are supported everywhere).
 */
import type { DType } from './dtype.js';

/** A hyper-rectangle of a tensor, in elements, per dimension. */
export interface Box {
  readonly start: readonly number[];
  readonly shape: readonly number[];
}

/** One entry of a weight file, as listed by a source. */
export interface TensorEntry {
  readonly name: string;
  readonly dtype: DType;
  /** Logical shape ([] for a scalar). For `str` entries: [] and byteLength = 4 x characters. */
  readonly shape: readonly number[];
  /** Total bytes of the C-order buffer. */
  readonly byteLength: number;
  /** How a `.ckpt` stored it, so a rewrite reproduces the file byte for byte. */
  readonly ckpt?: CkptHints;
}

/** `.ckpt` encoding details of an entry (absent = MindSpore's current defaults). */
export interface CkptHints {
  /** `dims` as written (e.g. [0] for a legacy scalar). */
  readonly dims?: readonly number[];
  /** Byte length of each chunk (`Value`) in order, when not the default 512 MiB cutting. */
  readonly chunks?: readonly number[];
}

/** A readable weight container (one file, an index of shards, ...). */
export interface TensorSource {
  /** Path the source was opened from (for messages). */
  readonly path: string;
  /** Entries in file order. */
  entries(): readonly TensorEntry[];
  /** Entry by name, or undefined. */
  entry(name: string): TensorEntry | undefined;
  /**
   * Read `length` bytes starting at byte `offset` of the tensor's C-order buffer into
   * `dst[dstOffset ...]`, with positioned reads (never the whole file).
   */
  readBytes(name: string, offset: number, length: number, dst: Uint8Array, dstOffset?: number): Promise<void>;
  /** Release file handles. Safe to call twice. */
  close(): Promise<void>;
}

/** Description of a tensor about to be written. */
export interface SinkTensor {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly byteLength: number;
  /** `.ckpt` encoding hints; other sinks ignore them. */
  readonly ckpt?: CkptHints;
}

/** What a file sink wrote, reported by `close()`. */
export interface SinkCommit {
  readonly path: string;
  readonly size: number;
  /** CRC-32 of the whole file (asked for at creation), or null when the writes could not tell. */
  readonly crc32: number | null;
}

/**
 * A writable weight file. Tensors are written one after another: `beginTensor`, then `write`
 * pieces whose lengths add up to `byteLength` (in C order), then `endTensor`. The file appears
 * under its final name only after `close()`, which reports its size and CRC-32 (file sinks);
 * `abort()` removes what was written.
 */
export interface TensorSink {
  readonly path: string;
  beginTensor(tensor: SinkTensor): Promise<void>;
  write(piece: Uint8Array): Promise<void>;
  endTensor(): Promise<void>;
  close(): Promise<SinkCommit | void>;
  abort(): Promise<void>;
}
