/**
 * `unify` (MindSpore's unified_safetensors): distributed slices (`rank_N/*.safetensors` or `.ckpt`)
 * + their strategy -> complete weights in `part{i}.safetensors` files of at most `partSize`
 * bytes (a larger tensor gets a part of its own), `param_name_map.json`
 * (`{"metadata":{"total_size":N},"weight_map":{name:"part{i}.safetensors"}}`), and the entries no
 * strategy describes (global_step, ...) in `hyper_param.safetensors`.
 *
 * Memory is bounded: each full tensor is assembled in dim-0 bands of at most `memory` bytes, each
 * band filled from the distinct slices that overlap it with box reads, then streamed to its part.
 */
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { FailureError, InputError } from '../errors.js';
import { writeFileAtomic } from '../formats/atomic.js';
import { copyBox, fullBox, readBox, volume } from '../formats/box.js';
import { dtypeInfo } from '../formats/dtype.js';
import { openWeights } from '../formats/open.js';
import { createSafetensorsSink, planSafetensorsShards, sortSafetensorsNames } from '../formats/safetensors/index.js';
import type { ParamLayout, Strategy } from '../formats/strategy/model.js';
import type { Box, SinkTensor, TensorEntry, TensorSink, TensorSource } from '../formats/types.js';
import { checkShapes, distinctSlices, layoutsOfStage, stageCount, stageDeviceCount } from '../layout/index.js';
import { resolveWeights, type PickRule } from '../formats/resolve.js';
import { loadStrategy } from '../formats/strategy/load.js';
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
  /** Assembly buffer budget per process in bytes (default 256 MiB). */
  readonly memory?: number;
  /** Keep only tensors whose source name passes (MindSpore's choice_func filter). */
  readonly filter?: (name: string) => boolean;
  /** Rename tensors `{source: output}` (choice_func returning a str). */
  readonly nameMap?: Readonly<Record<string, string>>;
  /** Store crc_num in each file's metadata. */
  readonly crc?: boolean;
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

/**
 * The weight file of each `rank_N/` folder (rank_0..rank_{N-1}, no gaps), by the resolver's one
 * rule; a choice among several is announced.
 */
export async function pickRankWeightFiles(srcDir: string, pick?: PickRule): Promise<{ files: string[]; notices: string[] }> {
  const st = await stat(srcDir).catch(() => null);
  if (st === null) throw new InputError('no such file or directory', { file: srcDir });
  if (!st.isDirectory()) throw new InputError('expected a folder of rank_N/ folders', { file: srcDir });
  const r = await resolveWeights(srcDir, pick !== undefined ? { pick } : {});
  if (r.kind !== 'ranks') throw new InputError('holds no rank_N folders', { file: srcDir });
  return { files: r.ranks.map((x) => x.file.path), notices: [...r.notices] };
}

/** A small pool of open sources (opened on demand, least recently used closed first). */
class Sources {
  private readonly open = new Map<number, TensorSource>();
  constructor(private readonly files: readonly string[], private readonly limit: number) {}
  async get(rank: number): Promise<TensorSource> {
    const hit = this.open.get(rank);
    if (hit !== undefined) {
      this.open.delete(rank);
      this.open.set(rank, hit);
      return hit;
    }
    while (this.open.size >= this.limit) {
      const [oldest, src] = this.open.entries().next().value as [number, TensorSource];
      this.open.delete(oldest);
      await src.close();
    }
    const src = await openWeights(this.files[rank] as string);
    this.open.set(rank, src);
    return src;
  }
  async closeAll(): Promise<void> {
    for (const s of this.open.values()) await s.close().catch(() => undefined);
    this.open.clear();
  }
}

/** What to assemble for one output tensor. */
interface Job {
  readonly source: string;
  readonly out: SinkTensor;
  /** Distinct slices: full-tensor box and the global rank whose file provides it. */
  readonly slices: ReadonlyArray<{ box: Box; rank: number }>;
  readonly elementSize: number;
}

/** Two reused buffers (fresh pages are costly to fault in; reuse keeps assembly at memcpy speed). */
class Scratch {
  band = new Uint8Array(0);
  tmp = new Uint8Array(0);
  ensure(n: number): void {
    if (this.band.byteLength < n) {
      this.band = new Uint8Array(n);
      this.tmp = new Uint8Array(n);
    }
  }
}

/** Assemble `job` into `sink` in dim-0 bands of at most `memory` bytes. */
async function assemble(job: Job, sink: TensorSink, sources: Sources, memory: number, scratch: Scratch, onBytes?: (n: number) => void): Promise<void> {
  const full = job.out.shape;
  const es = job.elementSize;
  await sink.beginTensor(job.out);
  if (job.out.byteLength > 0) {
    const rows = full.length === 0 ? 1 : (full[0] as number);
    const rowBytes = full.length === 0 ? es : volume(full.slice(1)) * es;
    const bandRows = Math.max(1, Math.min(rows, Math.floor(memory / 2 / Math.max(rowBytes, 1))));
    scratch.ensure(bandRows * rowBytes);
    const band = scratch.band;
    const tmp = scratch.tmp;
    for (let r0 = 0; r0 < rows; r0 += bandRows) {
      const r1 = Math.min(rows, r0 + bandRows);
      const bandShape = full.length === 0 ? [] : [r1 - r0, ...full.slice(1)];
      const bandBytes = full.length === 0 ? es : (r1 - r0) * rowBytes;
      for (const s of job.slices) {
        let inter: Box;
        let local: Box;
        let dstBox: Box;
        if (full.length === 0) {
          inter = s.box;
          local = s.box;
          dstBox = s.box;
        } else {
          const a = Math.max(r0, s.box.start[0] as number);
          const b = Math.min(r1, (s.box.start[0] as number) + (s.box.shape[0] as number));
          if (a >= b) continue;
          const shape = [b - a, ...s.box.shape.slice(1)];
          inter = { start: [a, ...s.box.start.slice(1)], shape };
          local = { start: [a - (s.box.start[0] as number), ...s.box.shape.slice(1).map(() => 0)], shape };
          dstBox = { start: [a - r0, ...s.box.start.slice(1)], shape };
        }
        if (volume(inter.shape) === 0) continue;
        const src = await sources.get(s.rank);
        await readBox(src, job.source, s.box.shape, es, local, tmp, 0);
        copyBox(tmp, inter.shape, fullBox(inter.shape), band, bandShape, dstBox, es);
      }
      await sink.write(band.subarray(0, bandBytes));
      onBytes?.(bandBytes);
    }
  }
  await sink.endTensor();
}


function positiveInt(v: number, what: string): number {
  if (!Number.isSafeInteger(v) || v < 1) throw new InputError(`${what} must be a positive integer, got ${v}`);
  return v;
}

/** Plan which slices make each full tensor (no tensor bytes are read). */
function planJobs(
  strategy: Strategy,
  files: readonly string[],
  entries: ReadonlyArray<readonly TensorEntry[]>,
  opts: UnifyOptions,
): { jobs: Job[]; hyper: Array<{ rank: number; entry: TensorEntry; out: SinkTensor }> } {
  const stageDevices = stageDeviceCount(strategy);
  const stages = stageCount(strategy);
  if (files.length !== stageDevices * stages) {
    throw new InputError(
      `the strategy describes ${stages} stage(s) x ${stageDevices} devices = ${stageDevices * stages} ranks, but there are ${files.length} rank folders`,
      { file: opts.srcDir },
    );
  }
  const stageLayouts = Array.from({ length: stages }, (_, s) => layoutsOfStage(strategy, s));
  const byRank = entries.map((list) => new Map(list.map((e) => [e.name, e])));
  // Names in first-seen order over ranks.
  const names: string[] = [];
  const seen = new Set<string>();
  for (const list of entries) for (const e of list) if (!seen.has(e.name)) { seen.add(e.name); names.push(e.name); }
  const rename = (n: string): string => (opts.nameMap !== undefined && Object.prototype.hasOwnProperty.call(opts.nameMap, n) ? (opts.nameMap[n] as string) : n);
  const jobs: Job[] = [];
  const hyper: Array<{ rank: number; entry: TensorEntry; out: SinkTensor }> = [];
  for (const name of names) {
    if (opts.filter !== undefined && !opts.filter(name)) continue;
    const stage = stageLayouts.findIndex((m) => m.has(name));
    if (stage < 0) {
      const rank = byRank.findIndex((m) => m.has(name));
      const entry = byRank[rank]?.get(name) as TensorEntry;
      const out: SinkTensor = { name: rename(name), dtype: entry.dtype, shape: entry.shape, byteLength: entry.byteLength };
      hyper.push({ rank, entry, out });
      continue;
    }
    const layout = stageLayouts[stage]?.get(name) as ParamLayout;
    const holders: Array<{ rank: number; entry: TensorEntry }> = [];
    for (let l = 0; l < stageDevices; l++) {
      const rank = stage * stageDevices + l;
      const e = byRank[rank]?.get(name);
      if (e !== undefined) holders.push({ rank, entry: e });
    }
    if (holders.length === 0) continue; // described by a stage whose files do not hold it (held elsewhere only)
    const first = holders[0] as { rank: number; entry: TensorEntry };
    const info = dtypeInfo(first.entry.dtype);
    if (info === undefined || info.size === 0) throw new InputError(`a sliced parameter of dtype ${first.entry.dtype} cannot be assembled`, { file: files[first.rank] as string, tensor: name });
    for (const h of holders) {
      if (h.entry.dtype !== first.entry.dtype) {
        throw new InputError(`dtype ${h.entry.dtype} differs from ${first.entry.dtype} in ${files[first.rank]}`, { file: files[h.rank] as string, tensor: name });
      }
    }
    const fullShape = checkShapes(name, holders.map((h) => ({ file: files[h.rank] as string, layout, sliceShape: h.entry.shape, localRank: h.rank - stage * stageDevices })));
    const slices: Array<{ box: Box; rank: number }> = [];
    for (const d of distinctSlices(layout, fullShape)) {
      const holder = d.ranks.map((l) => stage * stageDevices + l).find((r) => byRank[r]?.has(name) === true);
      if (holder === undefined) {
        throw new InputError(`no rank file holds the slice of local ranks [${d.ranks.join(',')}] (stage ${stage})`, { file: opts.srcDir, tensor: name });
      }
      slices.push({ box: d.box, rank: holder });
    }
    const byteLength = volume(fullShape) * info.size;
    jobs.push({ source: name, out: { name: rename(name), dtype: first.entry.dtype, shape: fullShape, byteLength }, slices, elementSize: info.size });
  }
  const outNames = new Set<string>();
  for (const n of [...jobs.map((j) => j.out.name), ...hyper.map((h) => h.out.name)]) {
    if (outNames.has(n)) throw new InputError('two tensors would be written under this name (check the name map)', { tensor: n });
    outNames.add(n);
  }
  return { jobs, hyper };
}

/** Merge distributed slices into complete weights (see the file comment). */
export async function unifySafetensors(opts: UnifyOptions): Promise<UnifyReport> {
  const partSize = positiveInt(opts.partSize ?? UNIFY_DEFAULT_PART_SIZE, 'part size');
  const processes = positiveInt(opts.processes ?? 1, 'processes');
  const memory = positiveInt(opts.memory ?? UNIFY_DEFAULT_MEMORY, 'memory');
  const dstDir = resolve(opts.dstDir);
  const srcDir = resolve(opts.srcDir);
  if (dstDir === srcDir) throw new InputError('output folder is the source folder', { file: dstDir });
  const { strategy } = await loadStrategy(opts.srcStrategy);
  const { files, notices } = await pickRankWeightFiles(srcDir);
  for (const n of notices) opts.onNotice?.(n);

  // Index every rank's file (headers only).
  const entries: TensorEntry[][] = [];
  for (const f of files) {
    const s = await openWeights(f);
    try {
      entries.push([...s.entries()]);
    } finally {
      await s.close();
    }
  }
  const { jobs, hyper } = planJobs(strategy, files, entries, opts);

  const sorted = sortSafetensorsNames(jobs.map((j) => j.out.name));
  const byOut = new Map(jobs.map((j) => [j.out.name, j]));
  const groups = jobs.length === 0 ? [] : planSafetensorsShards(sorted.map((n) => (byOut.get(n) as Job).out), partSize);
  const metadata: Record<string, string> = { format: 'ms' };
  const perProcess = Math.max(1, Math.floor(memory / processes));
  const parts = await runPool(
    groups.map((g, i) => async (): Promise<UnifyPart> => {
      const file = join(dstDir, `part${i}.safetensors`);
      const sink = await createSafetensorsSink(file, g, { metadata, sortKeys: true, crc: opts.crc === true });
      const sources = new Sources(files, 16);
      const scratch = new Scratch();
      try {
        for (const t of g) await assemble(byOut.get(t.name) as Job, sink, sources, perProcess, scratch, opts.onBytes);
        await sink.close();
      } catch (err) {
        await sink.abort();
        throw err;
      } finally {
        await sources.closeAll();
      }
      return { file, tensors: g.length, bytes: g.reduce((a, t) => a + t.byteLength, 0) };
    }),
    processes,
  );

  let hyperPart: UnifyPart | null = null;
  if (hyper.length > 0) {
    const file = join(dstDir, 'hyper_param.safetensors');
    const outs = hyper.map((h) => h.out);
    const sink = await createSafetensorsSink(file, outs, { metadata, sortKeys: true, crc: opts.crc === true });
    const sources = new Sources(files, 4);
    try {
      for (const h of hyper) {
        const src = await sources.get(h.rank);
        await sink.beginTensor(h.out);
        const buf = new Uint8Array(Math.min(Math.max(h.entry.byteLength, 1), 64 * 1024 * 1024));
        for (let off = 0; off < h.entry.byteLength; off += buf.byteLength) {
          const n = Math.min(buf.byteLength, h.entry.byteLength - off);
          await src.readBytes(h.entry.name, off, n, buf, 0);
          await sink.write(buf.subarray(0, n));
        }
        await sink.endTensor();
      }
      await sink.close();
    } catch (err) {
      await sink.abort();
      throw err;
    } finally {
      await sources.closeAll();
    }
    hyperPart = { file, tensors: hyper.length, bytes: hyper.reduce((a, h) => a + h.out.byteLength, 0) };
  }

  const weightMap: Record<string, string> = {};
  groups.forEach((g, i) => {
    for (const t of g) weightMap[t.name] = `part${i}.safetensors`;
  });
  const totalSize = jobs.reduce((a, j) => a + j.out.byteLength, 0);
  const nameMapPath = join(dstDir, 'param_name_map.json');
  await writeFileAtomic(nameMapPath, `${JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2)}\n`);
  if (parts.length !== groups.length) throw new FailureError('a part was not written', { file: dstDir });
  return {
    dstDir,
    ranks: files.length,
    rankFiles: files,
    parts,
    nameMap: nameMapPath,
    hyperParam: hyperPart,
    totalSize,
    tensors: jobs.length + hyper.length,
    notices,
  };
}
