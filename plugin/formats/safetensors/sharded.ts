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
}

class ShardedSink implements ShardedSafetensorsSink {
  private readonly open = new Map<number, TensorSink>();
  private readonly remaining: number[];
  private current: TensorSink | null = null;
  private currentShard = -1;
  private closed = false;

  constructor(
    readonly path: string,
    private readonly dir: string,
    private readonly groups: SinkTensor[][],
    private readonly names: string[],
    private readonly shardOf: Map<string, number>,
    private readonly opts: ShardedSafetensorsOptions,
    readonly result: ShardedSafetensorsResult,
  ) {
    this.remaining = groups.map((g) => g.length);
  }

  private async shardSink(i: number): Promise<TensorSink> {
    let s = this.open.get(i);
    if (s === undefined) {
      const { maxShardSize: _m, indexName: _i, shardName: _s, indexMetadata: _x, ...fileOpts } = this.opts;
      s = await createSafetensorsSink(join(this.dir, this.names[i] as string), this.groups[i] as SinkTensor[], fileOpts);
      this.open.set(i, s);
    }
    return s;
  }

  async beginTensor(tensor: SinkTensor): Promise<void> {
    const i = this.shardOf.get(tensor.name);
    if (i === undefined) throw new FailureError('tensor was not declared when the shards were planned', { file: this.path, tensor: tensor.name });
    this.current = await this.shardSink(i);
    this.currentShard = i;
    await this.current.beginTensor(tensor);
  }

  async write(piece: Uint8Array): Promise<void> {
    if (this.current === null) throw new FailureError('write outside beginTensor/endTensor', { file: this.path });
    await this.current.write(piece);
  }

  async endTensor(): Promise<void> {
    if (this.current === null) throw new FailureError('endTensor without beginTensor', { file: this.path });
    await this.current.endTensor();
    const i = this.currentShard;
    this.remaining[i] = (this.remaining[i] as number) - 1;
    if (this.remaining[i] === 0) {
      await this.current.close();
      this.open.delete(i);
    }
    this.current = null;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      // Shards of only empty-declared groups (e.g. no tensors at all) are created here.
      for (let i = 0; i < this.groups.length; i++) {
        if (this.remaining[i] !== 0) throw new FailureError(`${this.remaining[i]} declared tensors of shard ${this.names[i]} never written`, { file: this.path });
        if ((this.groups[i] as SinkTensor[]).length === 0) await (await this.shardSink(i)).close();
      }
      const index = { metadata: { ...(this.opts.indexMetadata ?? {}), total_size: this.result.totalSize }, weight_map: this.result.weightMap };
      await writeFileAtomic(this.result.index, `${JSON.stringify(index, null, 2)}\n`);
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  async abort(): Promise<void> {
    this.closed = true;
    for (const s of this.open.values()) await s.abort().catch(() => undefined);
    this.open.clear();
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
  const groups = planShards(layout, opts.maxShardSize);
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
  return new ShardedSink(index, dir, groups, names, shardOf, opts, result);
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
