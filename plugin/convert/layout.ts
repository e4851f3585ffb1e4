/**
 * Builders for declarative links (see types.ts `Link`) and config.json readers shared by the
 * model modules. Pure functions, no I/O.
 */
import { InputError } from '../errors.js';
import type { ConvertOptions, HfConfig, LayoutContext, Link, RowSegment, TensorSpec } from './types.js';

function product(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Elements per row of a tensor: its last dimension (1 for vectors' elements and scalars). */
function lastDim(shape: readonly number[]): number {
  return shape.length >= 2 ? (shape[shape.length - 1] as number) : 1;
}

function rowsOf(spec: TensorSpec, rowElements: number): number {
  return product(spec.shape) / rowElements;
}

/** HF tensor -> MS tensor of the same shape, bytes unchanged. */
export function rename(hf: string, ms: string, shape: readonly number[], optional = false): Link {
  const row = lastDim(shape);
  const rows = product(shape) / row;
  return {
    hf: [{ name: hf, shape }],
    ms: [{ name: ms, shape }],
    rowElements: row,
    segments: [[{ from: 0, row: 0, rows }]],
    optional,
  };
}

/** Several HF tensors concatenated on dim 0 into one MS tensor (and split back). */
export function concatRows(hf: readonly TensorSpec[], ms: string, optional = false): Link {
  const first = hf[0];
  if (first === undefined) throw new Error('concatRows needs at least one tensor');
  const row = lastDim(first.shape);
  const rest = first.shape.slice(1);
  let total = 0;
  const segs: RowSegment[] = hf.map((h, i) => {
    const rows = rowsOf(h, row);
    total += h.shape[0] as number;
    return { from: i, row: 0, rows };
  });
  return { hf, ms: [{ name: ms, shape: [total, ...rest] }], rowElements: row, segments: [segs], optional };
}

/** One HF tensor split on dim 0 into several MS tensors of the given first dims. */
export function splitRows(hf: TensorSpec, ms: ReadonlyArray<{ name: string; rows: number }>, optional = false): Link {
  const row = lastDim(hf.shape);
  const rest = hf.shape.slice(1);
  const perRow = product(rest) / row; // rows of `row` elements per dim-0 index
  let at = 0;
  const segments: RowSegment[][] = [];
  const specs: TensorSpec[] = [];
  for (const m of ms) {
    segments.push([{ from: 0, row: at * perRow, rows: m.rows * perRow }]);
    specs.push({ name: m.name, shape: [m.rows, ...rest] });
    at += m.rows;
  }
  return { hf: [hf], ms: specs, rowElements: row, segments, optional };
}

/** Experts [out, in] each -> one MS tensor [E, out, in] (stacking on a new dim 0). */
export function stackExperts(hf: readonly TensorSpec[], ms: string): Link {
  const first = hf[0];
  if (first === undefined) throw new Error('stackExperts needs at least one expert');
  const row = lastDim(first.shape);
  const segs = hf.map((h, i) => ({ from: i, row: 0, rows: rowsOf(h, row) }));
  return { hf, ms: [{ name: ms, shape: [hf.length, ...first.shape] }], rowElements: row, segments: [segs] };
}

/**
 * Megatron q/k/v layout (mindformers `qkv_concat_hf2mg`): per kv group g, the q rows of heads
 * g*rep .. (g+1)*rep-1, then k_g, then v_g. Works for weights (rows of `hidden`) and biases.
 */
export function megatronQkv(
  q: TensorSpec, k: TensorSpec, v: TensorSpec, ms: string,
  heads: number, kvHeads: number, headDim: number, optional = false,
): Link {
  const row = lastDim(q.shape);
  const perDim0 = product(q.shape.slice(1)) / row; // 1 for both weight and bias
  const rep = heads / kvHeads;
  const segs: RowSegment[] = [];
  for (let g = 0; g < kvHeads; g++) {
    segs.push({ from: 0, row: g * rep * headDim * perDim0, rows: rep * headDim * perDim0 });
    segs.push({ from: 1, row: g * headDim * perDim0, rows: headDim * perDim0 });
    segs.push({ from: 2, row: g * headDim * perDim0, rows: headDim * perDim0 });
  }
  const total = (q.shape[0] as number) + (k.shape[0] as number) + (v.shape[0] as number);
  return { hf: [q, k, v], ms: [{ name: ms, shape: [total, ...q.shape.slice(1)] }], rowElements: row, segments: [segs], optional };
}

/** Gate/up rows interleaved one by one, [g0, u0, g1, u1, ...] (mindformers `ffn_concat_hf2mg`). */
export function interleaveRows(gate: TensorSpec, up: TensorSpec, ms: string): Link {
  const row = lastDim(gate.shape);
  const n = gate.shape[0] as number;
  const segs: RowSegment[] = [];
  for (let i = 0; i < n; i++) {
    segs.push({ from: 0, row: i, rows: 1 });
    segs.push({ from: 1, row: i, rows: 1 });
  }
  return { hf: [gate, up], ms: [{ name: ms, shape: [2 * n, ...gate.shape.slice(1)] }], rowElements: row, segments: [segs] };
}

/**
 * Segments taking `count` rows of HF tensor `from` starting at `base`, with the rotary rows
 * de-interleaved: even rows first, then odd rows (DeepSeek `reshape(rope/2, 2).swap`).
 */
export function deinterleavedRows(from: number, base: number, count: number): RowSegment[] {
  const out: RowSegment[] = [];
  for (let j = 0; j < count; j += 2) out.push({ from, row: base + j, rows: 1 });
  for (let j = 1; j < count; j += 2) out.push({ from, row: base + j, rows: 1 });
  return out;
}

// ---------------------------------------------------------------------------------------------
// config.json readers

/** A config reader that names config.json and the key in every error. */
export class ConfigReader {
  constructor(readonly config: HfConfig, readonly ctx: LayoutContext) {}

  has(key: string): boolean {
    const v = this.config[key];
    return v !== undefined && v !== null;
  }

  /** A positive integer; `fallback` when absent (undefined fallback = required). */
  int(key: string, fallback?: number): number {
    const v = this.config[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      if (this.ctx.discover !== undefined) {
        this.ctx.discover.add(key);
        return 1;
      }
      throw new InputError('missing integer (needed to know tensor shapes)', { file: this.ctx.configPath, key });
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0 || v > 2 ** 40) {
      throw new InputError(`expected a positive integer, found ${JSON.stringify(v)}`, { file: this.ctx.configPath, key });
    }
    return v;
  }

  /** A non-negative integer. */
  count(key: string, fallback?: number): number {
    const v = this.config[key];
    if ((v === undefined || v === null) && fallback !== undefined) return fallback;
    if (v === 0) return 0;
    return this.int(key, fallback);
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.config[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') throw new InputError(`expected true or false, found ${JSON.stringify(v)}`, { file: this.ctx.configPath, key });
    return v;
  }

  /** Fail unless `a` divides `b`. */
  divides(a: number, b: number, what: string): void {
    if (a === 0 || b % a !== 0) throw new InputError(`${what}: ${b} is not a multiple of ${a}`, { file: this.ctx.configPath });
  }
}

/** Number of experts: config.json key, `--num-experts`, and both must agree. */
export function expertCount(cfg: ConfigReader, key: string, options: ConvertOptions): number {
  const fromCfg = cfg.has(key) ? cfg.int(key) : undefined;
  const fromOpt = options.numExperts;
  if (fromCfg !== undefined && fromOpt !== undefined && fromCfg !== fromOpt) {
    throw new InputError(`--num-experts ${fromOpt} disagrees with config.json (${fromCfg})`, { file: cfg.ctx.configPath, key });
  }
  const n = fromCfg ?? fromOpt;
  if (n === undefined && cfg.ctx.discover !== undefined) {
    cfg.ctx.discover.add(key);
    return 1;
  }
  if (n === undefined) {
    throw new InputError('number of experts unknown: give it in config.json or with --num-experts', { file: cfg.ctx.configPath, key });
  }
  if (!Number.isSafeInteger(n) || n <= 0 || n > 1 << 16) throw new InputError(`bad number of experts ${n}`, { key });
  return n;
}

/** A boolean model option from `options` (qkvConcat) or `options.extra` (`--key value`). */
export function optionBool(options: ConvertOptions, key: string, fallback: boolean): boolean {
  if (key === 'qkv_concat' && options.qkvConcat !== undefined) return options.qkvConcat;
  const v = options.extra?.[key] ?? options.extra?.[key.replace(/_/g, '-')];
  if (v === undefined) return fallback;
  if (typeof v === 'boolean') return v;
  const s = String(v).toLowerCase();
  if (s === 'true' || s === '1' || s === 'yes') return true;
  if (s === 'false' || s === '0' || s === 'no') return false;
  throw new InputError(`option --${key} expects true or false, got '${String(v)}'`);
}
