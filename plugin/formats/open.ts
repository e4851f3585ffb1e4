/**
 * Opening any weights path by content, creating a sink by format, and the `inspect` API (the CLI's
 * `msckpt inspect` renders what these return).
 */
import { InputError } from '../errors.js';
import { openCheckpoint, type CheckpointSource } from './ckpt/reader.js';
import { createCheckpointSink } from './ckpt/writer.js';
import { detectKind, type WeightsKind } from './detect.js';
import { decodeToF64, dtypeInfo, type DType } from './dtype.js';
import { createSafetensorsSink, openSafetensors, type SafetensorsSource } from './safetensors/index.js';
import { resolveWeights, type PickRule, type WeightsFormat } from './resolve.js';
import { readStrategy } from './strategy/index.js';
import type { TensorMapEntry } from './strategy/model.js';
import type { SinkTensor, TensorSink, TensorSource } from './types.js';

function notWeights(kind: WeightsKind, path: string): InputError {
  switch (kind) {
    case 'strategy':
    case 'strategy-json':
      return new InputError('this is a parallel strategy file, not a weights file', { file: path });
    case 'distributed':
      return new InputError('this is a directory of rank_N/ slices; name one rank\'s file', { file: path });
    default:
      return new InputError(
        'not a recognised weights file (expected a MindSpore .ckpt, a safetensors file or index, or a unified safetensors directory)',
        { file: path },
      );
  }
}

export interface OpenWeightsOptions {
  /** For checkpoints: verify the CRC trailer. */
  verifyCrc?: boolean;
}

/** Open a `.ckpt`, safetensors file, safetensors index or unified directory, detected by content. */
export async function openWeights(path: string, opts: OpenWeightsOptions = {}): Promise<TensorSource> {
  const kind = await detectKind(path);
  switch (kind) {
    case 'checkpoint':
    case 'encrypted': // openCheckpoint refuses it with a clear message
      return openCheckpoint(path, opts);
    case 'safetensors':
    case 'safetensors-index':
    case 'unified':
      return openSafetensors(path);
    default:
      throw notWeights(kind, path);
  }
}

export interface WeightsSinkOptions {
  /** `.ckpt`: append the CRC trailer; safetensors: `crc_num` in the metadata. */
  crc?: boolean;
  /** Compute the CRC-32 of the whole file while writing it (reported by `close()`). */
  fileCrc32?: boolean;
  /** safetensors: `__metadata__`. */
  metadata?: Record<string, string>;
}

/**
 * A sink for `format`. `tensors` declares everything that will be written (safetensors needs the
 * header up front; the checkpoint writer ignores it).
 */
export async function createWeightsSink(
  path: string,
  format: WeightsFormat,
  tensors: readonly SinkTensor[],
  opts: WeightsSinkOptions = {},
): Promise<TensorSink> {
  const fileCrc32 = opts.fileCrc32 === true;
  if (format === 'ckpt') return createCheckpointSink(path, { crc: opts.crc === true, fileCrc32 });
  return createSafetensorsSink(path, tensors, { metadata: opts.metadata ?? { format: 'ms' }, sortKeys: true, crc: opts.crc === true, fileCrc32 });
}

// ---------------------------------------------------------------------------------------------
// inspect

export interface CheckpointInspectReport {
  kind: 'checkpoint';
  path: string;
  crc: null | { present: true; valid: boolean | null };
  tensors: Array<{ name: string; dtype: DType; shape: number[]; chunks: number; bytes: number }>;
}

export interface StrategyInspectReport {
  kind: 'strategy';
  merged: boolean;
  stages: number[];
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

export type InspectReport = CheckpointInspectReport | StrategyInspectReport | SafetensorsInspectReport | DistributedInspectReport;

export interface InspectOptions {
  /** Checkpoints: compute and compare the CRC-32 (reads the whole file). */
  verifyCrc?: boolean;
  /** rank_N trees: which file of a folder holding several counts (default newest). */
  pick?: PickRule;
}

/** Describe what `path` holds (detected by content). */
export async function inspectWeights(path: string, opts: InspectOptions = {}): Promise<InspectReport> {
  const kind = await detectKind(path);
  switch (kind) {
    case 'checkpoint':
    case 'encrypted': {
      const src = await openCheckpoint(path, { verifyCrc: opts.verifyCrc === true });
      try {
        return checkpointReport(src);
      } finally {
        await src.close();
      }
    }
    case 'strategy':
    case 'strategy-json': {
      const s = await readStrategy(path);
      return {
        kind: 'strategy',
        merged: s.merged,
        stages: [...s.stages],
        layouts: s.layouts.map((l) => ({
          name: l.name,
          stage: l.stage,
          devMatrix: [...l.devMatrix],
          tensorMap: l.tensorMap.map((t) => (typeof t === 'number' ? t : [...t])),
          optShardStep: l.optShardStep,
          optShardSize: l.optShardSize,
          field: l.field,
        })),
      };
    }
    case 'safetensors':
    case 'safetensors-index':
    case 'unified': {
      const src: SafetensorsSource = await openSafetensors(path);
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
    case 'distributed': {
      const r = await resolveWeights(path, opts.pick !== undefined ? { pick: opts.pick } : {});
      if (r.kind !== 'ranks') throw notWeights(kind, path);
      return {
        kind: 'distributed', format: r.format, rule: r.rule, notices: [...r.notices],
        ranks: r.ranks.map((x) => ({ rank: x.rank, file: x.file.path, candidates: x.candidates.map((c) => c.path) })),
      };
    }
    default:
      throw notWeights(kind, path);
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
