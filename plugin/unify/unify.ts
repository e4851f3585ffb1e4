/**
 * `unify` (MindSpore's unified_safetensors): distributed slices (`rank_N/*.safetensors` or `.ckpt`)
 * + their strategy -> complete weights in `part{i}.safetensors` files of at most `partSize`
 * bytes (a larger tensor gets a part of its own), `param_name_map.json`
 * (`{"metadata":{"total_size":N},"weight_map":{name:"part{i}.safetensors"}}`), and the entries no
 * strategy describes (global_step, ...) in `hyper_param.safetensors`.
 *
 * On the engine: a plan to one complete destination (the filter as excluded entries, the name map
 * as output names), executed by the one executor into a sharded safetensors sink (the parts, with
 * param_name_map.json as its index) and a safetensors sink for the verbatim entries. Memory is the
 * executor's bounded budget.
 */
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { refuseOverlaps } from '../real-paths.js';
import { InputError } from '../errors.js';
import { resolveWeights, type PickRule } from '../formats/resolve.js';
import { createSafetensorsSink, createShardedSafetensorsSink } from '../formats/safetensors/index.js';
import type { TensorSink } from '../formats/types.js';
import { bufferSizes, loadPlan, openPlanSource, planRank, type Plan, type PlannedTensor, type RankPlan } from '../plan/index.js';
import { createTransformSourcePool, executeRankPlan, rankPlanInWriteOrder, sinkTensorOf, TransformBuffers } from '../transform/execute.js';
import { runPool } from './pool.js';

export const UNIFY_DEFAULT_PART_SIZE = 3 * 1024 ** 3;
export const UNIFY_DEFAULT_MEMORY = 256 * 1024 * 1024;

export interface UnifyOptions {
  /** Folder of `rank_N/` folders. */
  readonly srcDir: string;
  /** Source strategy: a (merged) strategy file, or a folder of per-stage files. */
  readonly srcStrategy: string;
  /** Output folder. */
  readonly dstDir: string;
  /** Largest part in bytes (default 3 GiB). */
  readonly partSize?: number;
  /** Parts written at once (default 1). */
  readonly processes?: number;
  /** Buffer budget in bytes, shared by the parts written at once (default 256 MiB). */
  readonly memory?: number;
  /** Keep only tensors whose source name passes (MindSpore's choice_func filter). */
  readonly filter?: (name: string) => boolean;
  /** Rename tensors `{source: output}` (choice_func returning a str). */
  readonly nameMap?: Readonly<Record<string, string>>;
  /** Store crc_num in each file's metadata. */
  readonly crc?: boolean;
  /** Which file of a rank folder holding several counts (default newest; see formats/resolve.ts). */
  readonly pick?: PickRule;
  readonly onNotice?: (message: string) => void;
  readonly onBytes?: (bytes: number) => void;
}

export interface UnifyPart {
  readonly file: string;
  readonly tensors: number;
  readonly bytes: number;
}

export interface UnifyReport {
  readonly dstDir: string;
  readonly ranks: number;
  readonly rankFiles: readonly string[];
  readonly parts: readonly UnifyPart[];
  /** `param_name_map.json` path. */
  readonly nameMap: string;
  readonly hyperParam: UnifyPart | null;
  readonly totalSize: number;
  readonly tensors: number;
  readonly notices: readonly string[];
}

function positiveInt(v: number, what: string): number {
  if (!Number.isSafeInteger(v) || v < 1) throw new InputError(`${what} must be a positive integer, got ${v}`);
  return v;
}

/** Execute `tensors` of a complete-destination plan into `sink` (closed, or aborted on failure). */
async function writeTensors(plan: Plan, rp: RankPlan, tensors: readonly PlannedTensor[], sink: TensorSink, memory: number, onBytes?: (n: number) => void): Promise<void> {
  const pool = createTransformSourcePool((rank) => openPlanSource(plan.source.files[rank] as Plan['source']['files'][number]), 16);
  try {
    await executeRankPlan({ ...rp, tensors }, pool, sink, new TransformBuffers(bufferSizes(memory)), onBytes !== undefined ? { onBytes } : {});
    await sink.close();
  } catch (err) {
    await sink.abort();
    throw err;
  } finally {
    await pool.close();
  }
}

/** Merge distributed slices into complete weights (see the file comment). */
export async function unifySafetensors(opts: UnifyOptions): Promise<UnifyReport> {
  const partSize = positiveInt(opts.partSize ?? UNIFY_DEFAULT_PART_SIZE, 'part size');
  const processes = positiveInt(opts.processes ?? 1, 'processes');
  const memory = positiveInt(opts.memory ?? UNIFY_DEFAULT_MEMORY, 'memory');
  const dstDir = resolve(opts.dstDir);
  const srcDir = resolve(opts.srcDir);
  const st = await stat(srcDir).catch(() => null);
  if (st === null) throw new InputError('no such file or directory', { file: srcDir });
  if (!st.isDirectory()) throw new InputError('expected a folder of rank_N/ folders', { file: srcDir });
  const resolved = await resolveWeights(srcDir, opts.pick !== undefined ? { pick: opts.pick } : {});
  if (resolved.kind !== 'ranks') throw new InputError('holds no rank_N folders', { file: srcDir });
  for (const n of resolved.notices) opts.onNotice?.(n);
  await refuseOverlaps(
    [{ what: 'output folder', path: opts.dstDir }],
    [...resolved.ranks.map((r) => ({ what: 'source file', path: r.file.path })), { what: 'the source strategy', path: opts.srcStrategy }, { what: 'the source folder', path: srcDir }],
  );
  const filter = opts.filter;
  const { plan } = await loadPlan({
    srcCheckpoint: resolved, srcStrategy: opts.srcStrategy, dstStrategy: null, memory,
    ...(filter !== undefined ? { exclude: (n: string) => !filter(n) } : {}),
  });
  const nameMap = opts.nameMap;
  const rename = (n: string): string => (nameMap !== undefined && Object.prototype.hasOwnProperty.call(nameMap, n) ? (nameMap[n] as string) : n);
  const rp = planRank(plan, 0);
  const named = rp.tensors.map((t) => (rename(t.name) === t.name ? t : { ...t, outputName: rename(t.name) }));
  const outNames = new Set<string>();
  for (const t of named) {
    const n = t.outputName ?? t.name;
    if (outNames.has(n)) throw new InputError('two tensors would be written under this name (check the name map)', { tensor: n });
    outNames.add(n);
  }
  const ordered = rankPlanInWriteOrder({ ...rp, tensors: named }, 'safetensors').tensors;
  const complete = ordered.filter((t) => !t.verbatim);
  const hyper = ordered.filter((t) => t.verbatim);
  const metadata: Record<string, string> = { format: 'ms' };
  const fileOpts = { metadata, sortKeys: true, crc: opts.crc === true, keepCkptHints: false };

  // the parts: a sharded sink whose shards are written `processes` at a time
  const sharded = await createShardedSafetensorsSink(dstDir, complete.map(sinkTensorOf), {
    ...fileOpts, maxShardSize: partSize, indexName: 'param_name_map.json', shardName: (i) => `part${i}.safetensors`, noEmptyShard: true,
  });
  const byName = new Map(complete.map((t) => [t.outputName ?? t.name, t]));
  const perProcess = Math.max(1, Math.floor(memory / Math.min(processes, Math.max(1, sharded.shards.length))));
  try {
    await runPool(
      sharded.shards.map((g, i) => async () => writeTensors(plan, rp, g.map((t) => byName.get(t.name) as PlannedTensor), sharded.shard(i), perProcess, opts.onBytes)),
      processes,
    );
  } catch (err) {
    await sharded.abort();
    throw err;
  }
  const parts: UnifyPart[] = sharded.shards.map((g, i) => ({
    file: sharded.result.shards[i] as string, tensors: g.length, bytes: g.reduce((a, t) => a + t.byteLength, 0),
  }));

  let hyperPart: UnifyPart | null = null;
  if (hyper.length > 0) {
    const file = join(dstDir, 'hyper_param.safetensors');
    await writeTensors(plan, rp, hyper, await createSafetensorsSink(file, hyper.map(sinkTensorOf), fileOpts), memory);
    hyperPart = { file, tensors: hyper.length, bytes: hyper.reduce((a, t) => a + t.byteLength, 0) };
  }
  // param_name_map.json last
  await sharded.close();
  return {
    dstDir,
    ranks: plan.source.files.length,
    rankFiles: resolved.ranks.map((x) => x.file.path),
    parts,
    nameMap: sharded.result.index,
    hyperParam: hyperPart,
    totalSize: sharded.result.totalSize,
    tensors: complete.length + hyper.length,
    notices: [...resolved.notices],
  };
}
