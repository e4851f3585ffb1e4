/**
 * The `inspect` API (`msckpt inspect` renders what these return): what a path holds, through the
 * one resolver (`resolvePath`: weights or a strategy, a file or a folder), and a tensor's values.
 *
 * - a `.ckpt`: its tensors and CRC trailer; a safetensors file, index or unified folder: its
 *   tensors and metadata; a rank_N tree: the file that counts in each rank folder;
 * - a folder of complete weights files: each file's tensors and bytes;
 * - an HF model folder (`config.json` beside safetensors, sharded with an index or not): the model
 *   type, tensors, bytes and shards;
 * - a strategy file, or a folder of per-rank strategy files (mindformers' `output/strategy`,
 *   merged in memory as MindSpore merges them): its layouts and a summary of the job: device
 *   count, stages, dp/mp/pp where the device matrices and tensor maps tell them, parameter count
 *   (`strategy/summary.ts` says how each figure is read).
 */
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { InputError } from '../errors.js';
import { openCheckpoint, type CheckpointSource } from './ckpt/reader.js';
import { decodeToF64, dtypeInfo, type DType } from './dtype.js';
import { openWeights } from './open.js';
import { resolvePath, type FoundFile, type PickRule, type ResolvedStrategy, type ResolvedWeights, type WeightsFormat } from './resolve.js';
import { openSafetensors, openSafetensorsFile, type SafetensorsSource } from './safetensors/index.js';
import { readSmallFile, readStrategy } from './strategy/io.js';
import { mergeStrategiesInMemory } from './strategy/merge.js';
import type { Strategy, TensorMapEntry } from './strategy/model.js';
import { summarizeStrategy, type StrategySummary } from './strategy/summary.js';
import type { TensorSource } from './types.js';

export interface CheckpointInspectReport {
  kind: 'checkpoint';
  path: string;
  crc: null | { present: true; valid: boolean | null };
  tensors: Array<{ name: string; dtype: DType; shape: number[]; chunks: number; bytes: number }>;
}

export interface StrategyInspectReport {
  kind: 'strategy';
  /** The path given. */
  path: string;
  /** One strategy file, or a folder of per-rank files merged in memory. */
  source: 'file' | 'folder';
  /** Layout names carried {stage}- prefixes (always true for a folder: merged in memory). */
  merged: boolean;
  stages: number[];
  /** Device count, stages, dp/mp/pp and parameter count, each with how it was read. */
  summary: StrategySummary;
  /** A folder's files: the stage each holds, and the earlier file it repeats byte for byte. */
  files?: Array<{ path: string; stage: number; sameAs?: string; skippedStage?: boolean }>;
  layouts: Array<{
    name: string;
    stage: number;
    devMatrix: number[];
    tensorMap: TensorMapEntry[];
    optShardStep: number;
    optShardSize: number;
    field: number;
  }>;
}

export interface SafetensorsInspectReport {
  kind: 'safetensors';
  metadata: Record<string, string>;
  tensors: Array<{ name: string; dtype: DType; shape: number[]; bytes: number }>;
}

export interface DistributedInspectReport {
  kind: 'distributed';
  format: WeightsFormat;
  /** The rule that chose each rank's file. */
  rule: PickRule;
  /** Each rank folder: the file that counts and the candidates it was chosen among. */
  ranks: Array<{ rank: number; file: string; candidates: string[] }>;
  notices: string[];
}

/** A folder of complete weights files (each its own source, named by its stem). */
export interface FilesInspectReport {
  kind: 'files';
  path: string;
  format: WeightsFormat;
  tensorCount: number;
  bytes: number;
  sources: Array<{ name: string; file: string; size: number; tensors: number; bytes: number }>;
  notices: string[];
}

/** An HF model folder: config.json beside safetensors weights (one file, shards with an index, or shards). */
export interface HfModelInspectReport {
  kind: 'hf-model';
  path: string;
  config: string;
  /** `model_type` of config.json (null when absent). */
  modelType: string | null;
  architectures: string[];
  /** `torch_dtype` of config.json (null when absent). */
  torchDtype: string | null;
  /** The index naming which shard holds which tensor, if any. */
  index: string | null;
  tensorCount: number;
  /** Bytes of tensor data. */
  bytes: number;
  dtypes: Array<{ dtype: DType; tensors: number; bytes: number }>;
  shards: Array<{ file: string; size: number; tensors: number; bytes: number }>;
  /** Safetensors files of the folder the index does not name (not part of the model). */
  unindexed: string[];
  tensors: Array<{ name: string; dtype: DType; shape: number[]; bytes: number; file: string | null }>;
}

export type InspectReport =
  | CheckpointInspectReport
  | StrategyInspectReport
  | SafetensorsInspectReport
  | DistributedInspectReport
  | FilesInspectReport
  | HfModelInspectReport;

export interface InspectOptions {
  /** Checkpoints: compute and compare the CRC-32 (reads the whole file). */
  verifyCrc?: boolean;
  /** rank_N trees: which file of a folder holding several counts (default newest). */
  pick?: PickRule;
}

/** Describe what `path` holds (see the module comment). */
export async function inspectWeights(path: string, opts: InspectOptions = {}): Promise<InspectReport> {
  const r = await resolvePath(path, opts.pick !== undefined ? { pick: opts.pick } : {});
  if (r.role === 'strategy') return strategyReport(r.strategy);
  if (r.config !== null) return hfModelReport(r.weights, r.config);
  const w = r.weights;
  switch (w.kind) {
    case 'file': {
      if (w.format === 'safetensors') return safetensorsReport(await openSafetensors(w.file.path));
      const src = await openCheckpoint(w.file.path, { verifyCrc: opts.verifyCrc === true });
      try {
        return checkpointReport(src);
      } finally {
        await src.close();
      }
    }
    case 'index':
    case 'unified':
      return safetensorsReport(await openSafetensors(w.index.path));
    case 'ranks':
      return {
        kind: 'distributed', format: w.format, rule: w.rule, notices: [...w.notices],
        ranks: w.ranks.map((x) => ({ rank: x.rank, file: x.file.path, candidates: x.candidates.map((c) => c.path) })),
      };
    case 'files':
      return filesReport(w);
  }
}

function layoutsOf(s: Strategy): StrategyInspectReport['layouts'] {
  return s.layouts.map((l) => ({
    name: l.name,
    stage: l.stage,
    devMatrix: [...l.devMatrix],
    tensorMap: l.tensorMap.map((t) => (typeof t === 'number' ? t : [...t])),
    optShardStep: l.optShardStep,
    optShardSize: l.optShardSize,
    field: l.field,
  }));
}

async function strategyReport(r: ResolvedStrategy): Promise<StrategyInspectReport> {
  if (r.kind === 'strategy') {
    const s = await readStrategy(r.file.path);
    return { kind: 'strategy', path: r.path, source: 'file', merged: s.merged, stages: [...s.stages], summary: summarizeStrategy({ strategy: s }), layouts: layoutsOf(s) };
  }
  const m = await mergeStrategiesInMemory(r.files.map((f) => f.path), { path: r.path });
  return {
    kind: 'strategy', path: r.path, source: 'folder', merged: true, stages: [...m.strategy.stages],
    summary: summarizeStrategy({ strategy: m.strategy, files: m.files }),
    files: m.files.map((f) => ({ path: f.path, stage: f.stage, ...(f.sameAs !== undefined ? { sameAs: f.sameAs } : {}), ...(f.skippedStage === true ? { skippedStage: true } : {}) })),
    layouts: layoutsOf(m.strategy),
  };
}

async function safetensorsReport(src: SafetensorsSource): Promise<SafetensorsInspectReport> {
  try {
    return {
      kind: 'safetensors',
      metadata: { ...src.metadata },
      tensors: src.entries().map((e) => ({ name: e.name, dtype: e.dtype, shape: [...e.shape], bytes: e.byteLength })),
    };
  } finally {
    await src.close();
  }
}

function checkpointReport(src: CheckpointSource): CheckpointInspectReport {
  return {
    kind: 'checkpoint',
    path: src.path,
    crc: src.crc === null ? null : { present: true, valid: src.crc.valid },
    tensors: src.entries().map((e) => ({
      name: e.name,
      dtype: e.dtype,
      shape: [...e.shape],
      chunks: e.chunkList.length,
      bytes: e.byteLength,
    })),
  };
}

async function filesReport(w: Extract<ResolvedWeights, { kind: 'files' }>): Promise<FilesInspectReport> {
  const sources: FilesInspectReport['sources'] = [];
  for (const s of w.sources) {
    const src = await openWeights(s.file.path);
    try {
      const es = src.entries();
      sources.push({ name: s.name, file: s.file.path, size: s.file.size, tensors: es.length, bytes: es.reduce((a, e) => a + e.byteLength, 0) });
    } finally {
      await src.close();
    }
  }
  return {
    kind: 'files', path: w.path, format: w.format, notices: [...w.notices],
    tensorCount: sources.reduce((a, s) => a + s.tensors, 0), bytes: sources.reduce((a, s) => a + s.bytes, 0), sources,
  };
}

/** Largest config.json read. */
const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

async function readConfig(path: string): Promise<Record<string, unknown>> {
  const bytes = await readSmallFile(path, MAX_CONFIG_BYTES);
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8').replace(/^\uFEFF/, ''));
  } catch (err) {
    throw new InputError(`not valid JSON (${err instanceof Error ? err.message : String(err)})`, { file: path });
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new InputError('expected a JSON object', { file: path });
  return doc as Record<string, unknown>;
}

async function hfModelReport(w: ResolvedWeights, config: FoundFile): Promise<HfModelInspectReport> {
  const cfg = await readConfig(config.path);
  const str = (k: string): string | null => (typeof cfg[k] === 'string' ? (cfg[k] as string) : null);
  const arch = Array.isArray(cfg['architectures']) ? (cfg['architectures'] as unknown[]).filter((x): x is string => typeof x === 'string') : [];
  // every safetensors file of the weights, with the source that reads it
  const parts: Array<{ file: FoundFile | null; path: string; src: SafetensorsSource }> = [];
  let index: string | null = null;
  const sizes = new Map<string, FoundFile>();
  try {
    if (w.kind === 'index') {
      index = w.index.path;
      for (const f of w.files) sizes.set(resolve(f.path), f);
      parts.push({ file: null, path: w.index.path, src: await openSafetensors(w.index.path) });
    } else if (w.kind === 'files') {
      for (const s of w.sources) parts.push({ file: s.file, path: s.file.path, src: await openSafetensorsFile(s.file.path) });
    } else {
      throw new InputError('expected safetensors weights beside config.json', { file: w.path });
    }
    const tensors: HfModelInspectReport['tensors'] = [];
    const shardOf = new Map<string, { file: string; size: number; tensors: number; bytes: number }>();
    const shard = async (path: string, known?: FoundFile): Promise<{ file: string; size: number; tensors: number; bytes: number }> => {
      const key = resolve(path);
      let s = shardOf.get(key);
      if (s === undefined) {
        const f = known ?? sizes.get(key);
        shardOf.set(key, (s = { file: f?.path ?? path, size: f?.size ?? Number((await stat(path)).size), tensors: 0, bytes: 0 }));
      }
      return s;
    };
    for (const p of parts) {
      for (const f of p.src.files) await shard(f, p.file ?? undefined);
      for (const e of p.src.entries()) {
        const at = p.src.locate(e.name)?.file ?? null;
        const s = at !== null ? await shard(at) : null;
        if (s !== null) {
          s.tensors++;
          s.bytes += e.byteLength;
        }
        tensors.push({ name: e.name, dtype: e.dtype, shape: [...e.shape], bytes: e.byteLength, file: s?.file ?? null });
      }
    }
    const byDtype = new Map<DType, { dtype: DType; tensors: number; bytes: number }>();
    for (const t of tensors) {
      let d = byDtype.get(t.dtype);
      if (d === undefined) byDtype.set(t.dtype, (d = { dtype: t.dtype, tensors: 0, bytes: 0 }));
      d.tensors++;
      d.bytes += t.bytes;
    }
    const shards = [...shardOf.values()].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
    const unindexed = w.kind === 'index' ? w.files.filter((f) => !shardOf.has(resolve(f.path))).map((f) => f.path) : [];
    return {
      kind: 'hf-model', path: w.path, config: config.path,
      modelType: str('model_type'), architectures: arch, torchDtype: str('torch_dtype') ?? str('dtype'), index,
      tensorCount: tensors.length, bytes: tensors.reduce((a, t) => a + t.bytes, 0),
      dtypes: [...byDtype.values()].sort((a, b) => b.bytes - a.bytes),
      shards, unindexed, tensors,
    };
  } finally {
    for (const p of parts) await p.src.close();
  }
}

export interface TensorStatistics {
  /** Elements seen. */
  count: number;
  /** Over finite values; null when there are none. */
  min: number | null;
  max: number | null;
  mean: number | null;
  nan: number;
  inf: number;
}

export interface TensorPreview {
  name: string;
  dtype: DType;
  shape: number[];
  bytes: number;
  /** First values (C order). */
  head: number[];
  /** Last values, not overlapping `head`. */
  tail: number[];
  stats: TensorStatistics | null;
  /** `str` entries: the decoded text (cut to `maxText` characters). */
  text?: string;
}

export interface PreviewOptions {
  /** Values shown at each end (default 5). */
  edge?: number;
  /** Bytes read per piece while computing statistics (default 4 MiB). */
  pieceBytes?: number;
  /** Longest text shown for `str` entries (default 4096 characters). */
  maxText?: number;
  /** Called with bytes done (progress). */
  onProgress?: (bytes: number) => void;
}

/** A few values at each end of a tensor and statistics over all of it, read in bounded pieces. */
export async function previewTensor(source: TensorSource, name: string, opts: PreviewOptions = {}): Promise<TensorPreview> {
  const e = source.entry(name);
  if (e === undefined) throw new InputError('no such tensor', { file: source.path, tensor: name });
  const base = { name: e.name, dtype: e.dtype, shape: [...e.shape], bytes: e.byteLength };
  if (e.dtype === 'str') {
    const maxText = opts.maxText ?? 4096;
    const n = Math.min(e.byteLength, maxText * 4);
    const buf = new Uint8Array(n);
    await source.readBytes(name, 0, n, buf);
    const dv = new DataView(buf.buffer);
    let text = '';
    for (let i = 0; i + 4 <= n; i += 4) {
      const cp = dv.getUint32(i, true);
      if (cp === 0) break; // numpy pads with NULs
      text += cp <= 0x10ffff && (cp < 0xd800 || cp > 0xdfff) ? String.fromCodePoint(cp) : '\ufffd';
    }
    return { ...base, head: [], tail: [], stats: null, text };
  }
  const size = dtypeInfo(e.dtype)?.size ?? 0;
  if (size === 0) throw new InputError(`values of dtype ${e.dtype} cannot be shown`, { file: source.path, tensor: name });
  const count = Math.floor(e.byteLength / size);
  const edge = Math.max(0, opts.edge ?? 5);
  const piece = Math.max(size, Math.floor((opts.pieceBytes ?? 4 << 20) / size) * size);
  const buf = new Uint8Array(Math.min(piece, Math.max(e.byteLength, size)));
  const stats: TensorStatistics = { count, min: null, max: null, mean: null, nan: 0, inf: 0 };
  let sum = 0;
  let finite = 0;
  let head: number[] = [];
  for (let off = 0; off < e.byteLength; off += piece) {
    const n = Math.min(piece, e.byteLength - off);
    await source.readBytes(name, off, n, buf, 0);
    const values = decodeToF64(buf.subarray(0, n), e.dtype, n / size);
    if (off === 0) head = Array.from(values.subarray(0, Math.min(edge, values.length)));
    for (let i = 0; i < values.length; i++) {
      const v = values[i] as number;
      if (Number.isNaN(v)) stats.nan++;
      else if (!Number.isFinite(v)) stats.inf++;
      else {
        sum += v;
        finite++;
        if (stats.min === null || v < stats.min) stats.min = v;
        if (stats.max === null || v > stats.max) stats.max = v;
      }
    }
    opts.onProgress?.(n);
  }
  if (finite > 0) stats.mean = sum / finite;
  const tailCount = Math.min(edge, Math.max(0, count - head.length));
  let tail: number[] = [];
  if (tailCount > 0) {
    const tb = new Uint8Array(tailCount * size);
    await source.readBytes(name, (count - tailCount) * size, tailCount * size, tb, 0);
    tail = Array.from(decodeToF64(tb, e.dtype, tailCount));
  }
  return { ...base, head, tail, stats };
}
