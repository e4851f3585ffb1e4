/**
 * Sharded safetensors: tensors packed greedily (in the order they are laid out) into files of at
 * most `maxShardSize` bytes (a tensor larger than that gets a file of its own), plus an index
 * `{"metadata":{"total_size":N},"weight_map":{name:file}}`. HF names by default
 * (`model-00001-of-00003.safetensors`, `model.safetensors.index.json`); `unify` uses MindSpore's
 * (`part0.safetensors`, `param_name_map.json`).
 */
import { join } from 'node:path';
import { FailureError, InputError } from '../../errors.js';
import { writeFileAtomic } from '../atomic.js';
import { COPY_PIECE } from '../copy.js';
import type { SinkTensor, TensorSink, TensorSource } from '../types.js';
import { createSafetensorsSink, sortNames, type SafetensorsSinkOptions } from './writer.js';

export interface ShardedSafetensorsOptions extends SafetensorsSinkOptions {
  /** Largest shard in tensor bytes. */
  maxShardSize: number;
  /** Index file name (default `model.safetensors.index.json`). */
  indexName?: string;
  /** Shard file name for 0-based shard `i` of `n` (default HF `model-0000{i+1}-of-0000{n}.safetensors`). */
  shardName?: (i: number, n: number) => string;
  /** Extra index metadata besides `total_size`. */
  indexMetadata?: Record<string, unknown>;
  /** With no tensors at all, write no shard file (only the index); default: one empty shard. */
  noEmptyShard?: boolean;
}

export interface ShardedSafetensorsResult {
  /** Index file path. */
  index: string;
  /** Shard file paths in order. */
  shards: string[];
  /** Sum of tensor bytes. */
  totalSize: number;
  weightMap: Record<string, string>;
}

/** Default HF shard name. */
export function hfShardName(i: number, n: number): string {
  const pad = (x: number): string => String(x).padStart(5, '0');
  return `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
}

/** Plan shards: groups of tensors (in layout order) of at most `maxShardSize` bytes each. */
export function planShards(tensors: readonly SinkTensor[], maxShardSize: number): SinkTensor[][] {
  if (!(maxShardSize > 0)) throw new InputError(`shard size must be positive, got ${maxShardSize}`);
  const groups: SinkTensor[][] = [];
  let cur: SinkTensor[] = [];
  let size = 0;
  for (const t of tensors) {
    const b = t.dtype === 'str' ? 0 : t.byteLength;
    if (cur.length > 0 && size + b > maxShardSize && b > 0) {
      groups.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(t);
    size += b;
  }
  if (cur.length > 0 || groups.length === 0) groups.push(cur);
  return groups;
}

/** A TensorSink over several shard files; the index is written on close, after every shard. */
export interface ShardedSafetensorsSink extends TensorSink {
  readonly result: ShardedSafetensorsResult;
  /** The tensors of each shard, in layout order. */
  readonly shards: readonly (readonly SinkTensor[])[];
  /**
   * A sink for shard `i` alone (its tensors in any order), so that shards can be written
   * concurrently; `close()` of the sharded sink then writes the index.
   */
  shard(i: number): TensorSink;
}

/** One shard file, created on its first tensor and closed after its last. */
class ShardWriter implements TensorSink {
  private sink: TensorSink | null = null;
  private remaining: number;
  private done = false;
  constructor(
    readonly path: string,
    private readonly tensors: readonly SinkTensor[],
    private readonly fileOpts: SafetensorsSinkOptions,
  ) {
    this.remaining = tensors.length;
  }

  private async open(): Promise<TensorSink> {
    if (this.sink === null) this.sink = await createSafetensorsSink(this.path, this.tensors, this.fileOpts);
    return this.sink;
  }

  async beginTensor(tensor: SinkTensor): Promise<void> {
    if (this.done) throw new FailureError('shard already complete', { file: this.path, tensor: tensor.name });
    await (await this.open()).beginTensor(tensor);
  }

  async write(piece: Uint8Array): Promise<void> {
    if (this.sink === null) throw new FailureError('write outside beginTensor/endTensor', { file: this.path });
    await this.sink.write(piece);
  }

  async endTensor(): Promise<void> {
    if (this.sink === null) throw new FailureError('endTensor without beginTensor', { file: this.path });
    await this.sink.endTensor();
    if (--this.remaining === 0) await this.finish();
  }

  /** Close the shard file (a shard declared empty is created here). */
  async finish(): Promise<void> {
    if (this.done) return;
    if (this.remaining !== 0) throw new FailureError(`${this.remaining} declared tensors never written`, { file: this.path });
    await (await this.open()).close();
    this.done = true;
  }

  /** Nothing to do: the shard closes after its last tensor; the sharded sink checks completeness. */
  async close(): Promise<void> {}

  async abort(): Promise<void> {
    this.done = true;
    if (this.sink !== null) await this.sink.abort().catch(() => undefined);
  }
}

class ShardedSink implements ShardedSafetensorsSink {
  private readonly writers: ShardWriter[];
  private current: ShardWriter | null = null;
  private closed = false;

  constructor(
    readonly path: string,
    dir: string,
    readonly shards: SinkTensor[][],
    names: string[],
    private readonly shardOf: Map<string, number>,
    opts: ShardedSafetensorsOptions,
    readonly result: ShardedSafetensorsResult,
    private readonly indexMetadata: Record<string, unknown>,
  ) {
    const { maxShardSize: _m, indexName: _i, shardName: _s, indexMetadata: _x, noEmptyShard: _n, ...fileOpts } = opts;
    this.writers = shards.map((g, i) => new ShardWriter(join(dir, names[i] as string), g, fileOpts));
  }

  shard(i: number): TensorSink {
    const w = this.writers[i];
    if (w === undefined) throw new FailureError(`no shard ${i} (${this.writers.length} shards)`, { file: this.path });
    return w;
  }

  async beginTensor(tensor: SinkTensor): Promise<void> {
    const i = this.shardOf.get(tensor.name);
    if (i === undefined) throw new FailureError('tensor was not declared when the shards were planned', { file: this.path, tensor: tensor.name });
    this.current = this.writers[i] as ShardWriter;
    await this.current.beginTensor(tensor);
  }

  async write(piece: Uint8Array): Promise<void> {
    if (this.current === null) throw new FailureError('write outside beginTensor/endTensor', { file: this.path });
    await this.current.write(piece);
  }

  async endTensor(): Promise<void> {
    if (this.current === null) throw new FailureError('endTensor without beginTensor', { file: this.path });
    await this.current.endTensor();
    this.current = null;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      for (const w of this.writers) await w.finish();
      const index = { metadata: { ...this.indexMetadata, total_size: this.result.totalSize }, weight_map: this.result.weightMap };
      await writeFileAtomic(this.result.index, `${JSON.stringify(index, null, 2)}\n`);
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  async abort(): Promise<void> {
    this.closed = true;
    for (const w of this.writers) await w.abort();
  }
}

/**
 * Create a sharded safetensors set in `dir` for the declared tensors. With `sortKeys` the
 * tensors are laid out (and sharded) in sorted order. Shards appear as they complete; the index
 * last.
 */
export async function createShardedSafetensorsSink(
  dir: string,
  tensors: readonly SinkTensor[],
  opts: ShardedSafetensorsOptions,
): Promise<ShardedSafetensorsSink> {
  const layout = opts.sortKeys === true ? sortNames(tensors.map((t) => t.name)).map((n) => tensors.find((t) => t.name === n) as SinkTensor) : [...tensors];
  const groups = tensors.length === 0 && opts.noEmptyShard === true ? [] : planShards(layout, opts.maxShardSize);
  const nameOf = opts.shardName ?? hfShardName;
  const names = groups.map((_, i) => nameOf(i, groups.length));
  const shardOf = new Map<string, number>();
  const weightMap: Record<string, string> = {};
  let total = 0;
  groups.forEach((g, i) => {
    for (const t of g) {
      if (shardOf.has(t.name)) throw new InputError('tensor name appears twice', { file: dir, tensor: t.name });
      shardOf.set(t.name, i);
      if (t.dtype !== 'str') total += t.byteLength;
    }
  });
  // weight_map lists names in the caller's declared order.
  for (const t of tensors) weightMap[t.name] = names[shardOf.get(t.name) as number] as string;
  const index = join(dir, opts.indexName ?? 'model.safetensors.index.json');
  const result: ShardedSafetensorsResult = { index, shards: names.map((n) => join(dir, n)), totalSize: total, weightMap };
  return new ShardedSink(index, dir, groups, names, shardOf, opts, result, opts.indexMetadata ?? {});
}

/**
 * Write every entry of `source` (or those named in `names`) as sharded safetensors in `dir`,
 * streaming each tensor in bounded pieces.
 */
export async function writeShardedSafetensors(
  source: TensorSource,
  dir: string,
  opts: ShardedSafetensorsOptions & { names?: readonly string[] },
): Promise<ShardedSafetensorsResult> {
  const entries = opts.names === undefined ? [...source.entries()] : opts.names.map((n) => {
    const e = source.entry(n);
    if (e === undefined) throw new InputError('no such tensor in the source', { file: source.path, tensor: n });
    return e;
  });
  const sink = await createShardedSafetensorsSink(dir, entries, opts);
  const buf = new Uint8Array(COPY_PIECE);
  try {
    const order = opts.sortKeys === true ? sortNames(entries.map((e) => e.name)) : entries.map((e) => e.name);
    for (const n of order) {
      const e = source.entry(n);
      if (e === undefined) throw new FailureError('entry vanished', { file: source.path, tensor: n });
      await sink.beginTensor(e);
      for (let off = 0; off < e.byteLength; off += buf.byteLength) {
        const len = Math.min(buf.byteLength, e.byteLength - off);
        await source.readBytes(n, off, len, buf, 0);
        await sink.write(buf.subarray(0, len));
      }
      await sink.endTensor();
    }
    await sink.close();
  } catch (err) {
    await sink.abort();
    throw err;
  }
  return sink.result;
}
