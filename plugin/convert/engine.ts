/**
 * The one streaming engine behind every model: open the input (HF folder / safetensors / index,
 * or a MindSpore .ckpt / safetensors), check its tensors against the model's layout (every
 * problem listed at once), plan each output tensor as an ordered list of byte ranges of input
 * tensors, then stream them one tensor at a time into the output (one .ckpt or safetensors file,
 * or HF shards with an index). Memory: one staging buffer plus small read windows; no tensor is
 * held whole (FP8 dequantisation works in bands of rows).
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, rmdir, stat } from 'node:fs/promises';
import { dirname, extname, join, resolve } from 'node:path';
import { FailureError, InputError } from '../errors.js';
import { writeFileAtomic } from '../formats/atomic.js';
import { createCheckpointSink, openCheckpoint } from '../formats/ckpt/index.js';
import { castBuffer, elementSize, isCastable, type DType, type FloatDType } from '../formats/dtype.js';
import { createSafetensorsSink, openSafetensors } from '../formats/safetensors/index.js';
import type { SinkTensor, TensorSink, TensorSource } from '../formats/types.js';
import { dequantizingSource } from './fp8.js';
import type {
  ConvertDirection, ConvertDTypeName, ConvertOptions, ConvertResult, HfConfig, Link, ModelDefinition, ModelLayout, TensorSpec,
} from './types.js';

/** Default `--max-shard-size`: 5 GB, as HF's `save_pretrained` (decimal units). */
export const DEFAULT_MAX_SHARD_SIZE = 5_000_000_000;
const STAGING_BYTES = 32 * 1024 * 1024;
/** Staging buffers in flight: one being filled while the other is written. */
const STAGING_BUFFERS = 2;
const WINDOW_BYTES = 8 * 1024 * 1024;
const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

export const CONVERT_DTYPES: Readonly<Record<ConvertDTypeName, FloatDType>> = {
  fp32: 'Float32',
  fp16: 'Float16',
  bf16: 'BFloat16',
};

/** `fp32|fp16|bf16` (also float32/float16/bfloat16) -> MindSpore dtype; InputError otherwise. */
export function parseConvertDType(name: string | undefined): FloatDType | null {
  if (name === undefined || name === '') return null;
  const k = name.toLowerCase();
  const alias: Record<string, ConvertDTypeName> = { fp32: 'fp32', float32: 'fp32', fp16: 'fp16', float16: 'fp16', bf16: 'bf16', bfloat16: 'bf16' };
  const n = alias[k];
  if (n === undefined) throw new InputError(`Dtype '${name}' is not supported (expected fp32, fp16 or bf16)`, { key: 'dtype' });
  return CONVERT_DTYPES[n];
}

// ---------------------------------------------------------------------------------------------
// Plans

/** A byte range of one input tensor. */
export interface ConvertPlannedPart {
  readonly input: string;
  readonly offset: number;
  readonly length: number;
}

/** One output tensor: its description and the input byte ranges it is made of, in order. */
export interface ConvertPlannedTensor {
  readonly name: string;
  readonly shape: readonly number[];
  /** dtype of the input bytes */
  readonly from: DType;
  /** dtype written */
  readonly dtype: DType;
  readonly byteLength: number;
  readonly parts: readonly ConvertPlannedPart[];
}

function volume(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Check a link is a bijection of rows (catches mistakes in model modules, ours or users'). */
export function checkLink(link: Link, model: string): void {
  const where = `model '${model}', link ${link.ms.map((m) => m.name).join('+')}`;
  const bad = (msg: string): never => {
    throw new FailureError(`${where}: ${msg}`);
  };
  if (link.segments.length !== link.ms.length) bad('one segment list per MindSpore tensor is needed');
  if (!Number.isSafeInteger(link.rowElements) || link.rowElements <= 0) bad('rowElements must be a positive integer');
  const rowsOf = (t: TensorSpec): number => {
    const v = volume(t.shape);
    if (v % link.rowElements !== 0) bad(`${t.name} [${t.shape}] is not a whole number of ${link.rowElements}-element rows`);
    return v / link.rowElements;
  };
  const covered = link.hf.map(() => [] as Array<[number, number]>);
  link.ms.forEach((m, i) => {
    let sum = 0;
    for (const s of link.segments[i] ?? []) {
      const list = covered[s.from];
      if (list === undefined) bad(`segment refers to HF tensor #${s.from}`);
      list?.push([s.row, s.rows]);
      sum += s.rows;
    }
    if (sum !== rowsOf(m)) bad(`${m.name} gets ${sum} rows, its shape [${m.shape}] holds ${rowsOf(m)}`);
  });
  link.hf.forEach((h, i) => {
    const list = (covered[i] ?? []).sort((a, b) => a[0] - b[0]);
    let at = 0;
    for (const [r, n] of list) {
      if (r !== at) bad(`${h.name}: rows ${at}.. are ${r < at ? 'used twice' : 'not used'}`);
      at = r + n;
    }
    if (at !== rowsOf(h)) bad(`${h.name}: ${at} of ${rowsOf(h)} rows used`);
  });
}

interface Problems {
  missing: string[];
  unexpected: string[];
  shapes: string[];
  dtypes: string[];
}

function reportProblems(p: Problems, file: string, model: string, side: string): void {
  const n = p.missing.length + p.unexpected.length + p.shapes.length + p.dtypes.length;
  if (n === 0) return;
  const parts: string[] = [];
  if (p.missing.length > 0) parts.push(`missing ${p.missing.length}: ${p.missing.join(', ')}`);
  if (p.unexpected.length > 0) parts.push(`unexpected ${p.unexpected.length}: ${p.unexpected.join(', ')}`);
  if (p.shapes.length > 0) parts.push(`shapes disagreeing with config.json ${p.shapes.length}: ${p.shapes.join('; ')}`);
  if (p.dtypes.length > 0) parts.push(`dtypes ${p.dtypes.length}: ${p.dtypes.join('; ')}`);
  throw new InputError(`${n} problem(s) with the ${side} tensors for model '${model}': ${parts.join(' | ')}`, { file });
}

/**
 * Plan the outputs of `layout` from `source` in `direction`. Every missing, unexpected or
 * mis-shaped tensor is reported in one InputError.
 */
export function planConversion(
  layout: ModelLayout,
  source: TensorSource,
  direction: ConvertDirection,
  target: FloatDType | null,
  model: string,
): ConvertPlannedTensor[] {
  const forward = direction === 'hf-to-ms';
  const problems: Problems = { missing: [], unexpected: [], shapes: [], dtypes: [] };
  const claimed = new Set<string>();
  const present: Link[] = [];
  for (const link of layout.links) {
    checkLink(link, model);
    const inputs = forward ? link.hf : link.ms;
    const found = inputs.filter((t) => source.entry(t.name) !== undefined);
    if (found.length === 0 && link.optional === true) continue;
    let ok = true;
    for (const t of inputs) {
      claimed.add(t.name);
      const e = source.entry(t.name);
      if (e === undefined) {
        problems.missing.push(t.name);
        ok = false;
      } else if (!sameShape(e.shape, t.shape)) {
        problems.shapes.push(`${t.name} is [${e.shape}], expected [${t.shape}]`);
        ok = false;
      }
    }
    if (ok) present.push(link);
  }
  const dups = layout.duplicates ?? [];
  if (forward) {
    for (const d of dups) {
      claimed.add(d.hf.name);
      const e = source.entry(d.hf.name);
      if (e !== undefined && !sameShape(e.shape, d.hf.shape)) problems.shapes.push(`${d.hf.name} is [${e.shape}], expected [${d.hf.shape}]`);
    }
  }
  for (const e of source.entries()) if (!claimed.has(e.name)) problems.unexpected.push(e.name);
  for (const link of present) {
    for (const t of forward ? link.hf : link.ms) {
      const e = source.entry(t.name);
      if (e !== undefined && (e.dtype === 'str' || e.dtype === 'Int4')) problems.dtypes.push(`${t.name} has dtype ${e.dtype}`);
    }
  }
  reportProblems(problems, source.path, model, forward ? 'HuggingFace' : 'MindSpore');

  const out: ConvertPlannedTensor[] = [];
  const byHf = new Map<string, ConvertPlannedTensor>();
  for (const link of present) {
    const inputs = forward ? link.hf : link.ms;
    const outputs = forward ? link.ms : link.hf;
    // segments per output, in input-index terms
    const segs: Array<Array<{ from: number; row: number; rows: number }>> = forward
      ? link.segments.map((s) => [...s])
      : invert(link);
    outputs.forEach((o, oi) => {
      const list = segs[oi] ?? [];
      let from: DType | null = null;
      const parts: ConvertPlannedPart[] = [];
      for (const s of list) {
        const inName = (inputs[s.from] as TensorSpec).name;
        const e = source.entry(inName);
        if (e === undefined) throw new FailureError(`internal: ${inName} vanished`);
        if (from === null) from = e.dtype;
        else if (from !== e.dtype) {
          problems.dtypes.push(`${o.name} would join ${from} and ${e.dtype} tensors (${inName})`);
        }
        const es = elementSize(e.dtype);
        const rowBytes = link.rowElements * es;
        const offset = s.row * rowBytes;
        const length = s.rows * rowBytes;
        const last = parts[parts.length - 1];
        if (last !== undefined && last.input === inName && last.offset + last.length === offset) {
          parts[parts.length - 1] = { input: inName, offset: last.offset, length: last.length + length };
        } else parts.push({ input: inName, offset, length });
      }
      const src = from ?? 'Float32';
      const dtype = target !== null && isCastable(src) ? target : src;
      const planned: ConvertPlannedTensor = { name: o.name, shape: o.shape, from: src, dtype, byteLength: volume(o.shape) * elementSize(dtype), parts };
      out.push(planned);
      byHf.set(o.name, planned);
    });
  }
  reportProblems(problems, source.path, model, forward ? 'HuggingFace' : 'MindSpore');
  if (!forward) {
    for (const d of dups) {
      const of = byHf.get(d.copyOf);
      if (of === undefined) continue;
      if (!sameShape(of.shape, d.hf.shape)) throw new FailureError(`model '${model}': duplicate ${d.hf.name} has another shape than ${d.copyOf}`);
      out.push({ ...of, name: d.hf.name });
    }
  }
  return out;
}

/** Reverse segments: for each HF tensor of the link, the MS row ranges it is made of. */
function invert(link: Link): Array<Array<{ from: number; row: number; rows: number }>> {
  const perHf = link.hf.map(() => [] as Array<{ hfRow: number; from: number; row: number; rows: number }>);
  link.ms.forEach((_m, mi) => {
    let at = 0;
    for (const s of link.segments[mi] ?? []) {
      perHf[s.from]?.push({ hfRow: s.row, from: mi, row: at, rows: s.rows });
      at += s.rows;
    }
  });
  return perHf.map((l) => l.sort((a, b) => a.hfRow - b.hfRow).map(({ from, row, rows }) => ({ from, row, rows })));
}

// ---------------------------------------------------------------------------------------------
// Execution

/** Where planned tensors go: a single file or a set of shards. */
export interface ConvertWriter {
  begin(t: SinkTensor): Promise<void>;
  write(piece: Uint8Array): Promise<void>;
  end(): Promise<void>;
  /** Finish; returns the files written. */
  commit(): Promise<string[]>;
  /** Remove everything this writer created. */
  abort(): Promise<void>;
}

export interface ExecutePlanOptions {
  /** Bytes per staging buffer (a multiple of 8; default and maximum 32 MiB); smaller only to exercise the pipeline. */
  readonly stagingBytes?: number;
}

/**
 * Stream planned tensors from `source` into `writer`, one at a time. Returns bytes written.
 *
 * Reads and writes overlap: pieces are gathered into one of STAGING_BUFFERS staging buffers while
 * the writer works on the previous ones. Writer calls stay strictly in order (one queue); a buffer
 * is refilled only once the write that used it has finished. Memory: STAGING_BUFFERS x
 * STAGING_BYTES plus one read window per input tensor of the current output tensor.
 */
export async function executePlan(
  source: TensorSource,
  plan: readonly ConvertPlannedTensor[],
  writer: ConvertWriter,
  onBytes: (n: number) => void = () => undefined,
  opts: ExecutePlanOptions = {},
): Promise<number> {
  const size = opts.stagingBytes ?? STAGING_BYTES;
  if (!Number.isSafeInteger(size) || size <= 0 || size % 8 !== 0 || size > STAGING_BYTES) throw new FailureError(`internal: staging size ${size}`);
  const staging = Array.from({ length: STAGING_BUFFERS }, () => new Uint8Array(size));
  const direct = Math.min(WINDOW_BYTES / 2, size / 2);
  /** When each staging buffer is free again (its queued write has finished). */
  const free: Array<Promise<void>> = staging.map(() => Promise.resolve());
  let tail: Promise<void> = Promise.resolve();
  const enqueue = (op: () => Promise<void>): Promise<void> => {
    tail = tail.then(op);
    tail.catch(() => undefined); // surfaced where awaited (buffer reuse or the end)
    return tail;
  };
  let cur = 0;
  let written = 0;
  try {
    for (const t of plan) {
      enqueue(() => writer.begin({ name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.byteLength }));
      const windows = new Map<string, { start: number; end: number; buf: Uint8Array }>();
      let buf = staging[cur] as Uint8Array;
      await free[cur];
      let fill = 0;
      let tensorBytes = 0;
      const flush = async (): Promise<void> => {
        if (fill === 0) return;
        const raw = buf.subarray(0, fill);
        const bytes = t.from === t.dtype ? raw : castBuffer(raw, t.from as FloatDType, t.dtype as FloatDType);
        tensorBytes += bytes.byteLength;
        free[cur] = enqueue(async () => {
          await writer.write(bytes);
          onBytes(bytes.byteLength);
        });
        fill = 0;
        cur = (cur + 1) % staging.length;
        buf = staging[cur] as Uint8Array;
        await free[cur];
      };
      for (const p of t.parts) {
        let off = p.offset;
        let left = p.length;
        const inSize = source.entry(p.input)?.byteLength ?? 0;
        while (left > 0) {
          if (fill === buf.byteLength) await flush();
          const n = Math.min(left, buf.byteLength - fill);
          if (n >= direct) {
            await source.readBytes(p.input, off, n, buf, fill);
          } else {
            let w = windows.get(p.input);
            if (w === undefined || off < w.start || off + n > w.end) {
              const len = Math.min(WINDOW_BYTES, inSize - off);
              const wbuf = w !== undefined && w.buf.byteLength >= len ? w.buf : new Uint8Array(Math.max(len, n));
              await source.readBytes(p.input, off, len, wbuf, 0);
              w = { start: off, end: off + len, buf: wbuf };
              windows.set(p.input, w);
            }
            buf.set(w.buf.subarray(off - w.start, off - w.start + n), fill);
          }
          fill += n;
          off += n;
          left -= n;
        }
      }
      await flush();
      if (tensorBytes !== t.byteLength) throw new FailureError(`internal: wrote ${tensorBytes} of ${t.byteLength} bytes`, { tensor: t.name });
      enqueue(() => writer.end());
      written += tensorBytes;
    }
  } finally {
    // never leave writes running behind the caller's back (abort/commit follow)
    await tail.catch(() => undefined);
  }
  await tail;
  return written;
}

class SinkWriter implements ConvertWriter {
  private sink: TensorSink | null = null;
  constructor(private readonly open: () => Promise<TensorSink>) {}
  async begin(t: SinkTensor): Promise<void> {
    if (this.sink === null) this.sink = await this.open();
    await this.sink.beginTensor(t);
  }
  async write(piece: Uint8Array): Promise<void> {
    await (this.sink as TensorSink).write(piece);
  }
  async end(): Promise<void> {
    await (this.sink as TensorSink).endTensor();
  }
  async commit(): Promise<string[]> {
    if (this.sink === null) this.sink = await this.open();
    await this.sink.close();
    return [this.sink.path];
  }
  async abort(): Promise<void> {
    await this.sink?.abort().catch(() => undefined);
  }
}

/** One output file: `.safetensors` when the name says so, `.ckpt` otherwise. */
export function singleFileWriter(path: string, plan: readonly ConvertPlannedTensor[], metadata: Record<string, string> = {}): ConvertWriter {
  if (path.toLowerCase().endsWith('.safetensors')) {
    const tensors: SinkTensor[] = plan.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.byteLength }));
    return new SinkWriter(() => createSafetensorsSink(path, tensors, { metadata }));
  }
  return new SinkWriter(() => createCheckpointSink(path));
}

/** Assign tensors (in order) to shards of at most `maxShardSize` bytes (a bigger tensor alone). */
export function assignShards(plan: readonly ConvertPlannedTensor[], maxShardSize: number): ConvertPlannedTensor[][] {
  const shards: ConvertPlannedTensor[][] = [];
  let cur: ConvertPlannedTensor[] = [];
  let size = 0;
  for (const t of plan) {
    if (cur.length > 0 && size + t.byteLength > maxShardSize) {
      shards.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(t);
    size += t.byteLength;
  }
  if (cur.length > 0 || shards.length === 0) shards.push(cur);
  return shards;
}

export const HF_INDEX = 'model.safetensors.index.json';

export function shardName(i: number, n: number): string {
  return `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
}

/** HF sharded safetensors + `model.safetensors.index.json` in `dir`, shards written in order. */
export class ShardedWriter implements ConvertWriter {
  private readonly shards: ConvertPlannedTensor[][];
  private readonly files: string[] = [];
  private readonly done: string[] = [];
  private sink: TensorSink | null = null;
  private shard = -1;
  private inShard = 0;
  private readonly weightMap: Record<string, string> = {};
  private total = 0;

  constructor(
    private readonly dir: string,
    plan: readonly ConvertPlannedTensor[],
    maxShardSize: number,
    private readonly extraFiles: ReadonlyArray<{ name: string; data: string | Uint8Array }> = [],
  ) {
    this.shards = assignShards(plan, maxShardSize);
    this.files = this.shards.map((_s, i) => shardName(i, this.shards.length));
    this.shards.forEach((s, i) => {
      for (const t of s) {
        this.weightMap[t.name] = this.files[i] as string;
        this.total += t.byteLength;
      }
    });
  }

  private async next(): Promise<void> {
    if (this.sink !== null) {
      await this.sink.close();
      this.done.push(this.sink.path);
      this.sink = null;
    }
    this.shard += 1;
    this.inShard = 0;
    const tensors = (this.shards[this.shard] ?? []).map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.byteLength }));
    this.sink = await createSafetensorsSink(join(this.dir, this.files[this.shard] as string), tensors, { metadata: { format: 'pt' } });
  }

  async begin(t: SinkTensor): Promise<void> {
    while (this.sink === null || this.inShard >= (this.shards[this.shard]?.length ?? 0)) await this.next();
    this.inShard += 1;
    await this.sink.beginTensor(t);
  }
  async write(piece: Uint8Array): Promise<void> {
    await (this.sink as TensorSink).write(piece);
  }
  async end(): Promise<void> {
    await (this.sink as TensorSink).endTensor();
  }
  async commit(): Promise<string[]> {
    while (this.shard < this.shards.length - 1) await this.next();
    if (this.sink !== null) {
      await this.sink.close();
      this.done.push(this.sink.path);
      this.sink = null;
    }
    const sorted: Record<string, string> = {};
    for (const k of Object.keys(this.weightMap).sort()) sorted[k] = this.weightMap[k] as string;
    const index = join(this.dir, HF_INDEX);
    await writeFileAtomic(index, `${JSON.stringify({ metadata: { total_size: this.total }, weight_map: sorted }, null, 2)}\n`);
    this.done.push(index);
    for (const f of this.extraFiles) {
      const p = join(this.dir, f.name);
      if (existsSync(p)) continue; // never replace a file we did not write (e.g. the user's own config.json)
      await writeFileAtomic(p, f.data);
      this.done.push(p);
    }
    return [...this.done];
  }
  async abort(): Promise<void> {
    await this.sink?.abort().catch(() => undefined);
    this.sink = null;
    for (const f of this.done) await rm(f, { force: true }).catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// Inputs

const PICKLE_EXT = ['.bin', '.pt', '.pth', '.pkl', '.pickle'];

function pickleError(path: string): InputError {
  return new InputError(
    'PyTorch pickle weights are never read (loading them can execute code); save the model as safetensors ' +
      "(transformers: model.save_pretrained(dir, safe_serialization=True)) and convert that folder",
    { file: path },
  );
}

async function statOrNull(path: string): Promise<Awaited<ReturnType<typeof stat>> | null> {
  try {
    return await stat(path);
  } catch {
    return null;
  }
}

/** Read and parse config.json (bounded size, must be a JSON object). */
export async function readHfConfig(path: string): Promise<HfConfig> {
  const st = await statOrNull(path);
  if (st === null || !st.isFile()) throw new InputError('config.json not found (give the model folder, or --config PATH)', { file: path });
  if (st.size > MAX_CONFIG_BYTES) throw new InputError(`config file of ${st.size} bytes is too large`, { file: path });
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new InputError(`not valid JSON: ${err instanceof Error ? err.message : String(err)}`, { file: path });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new InputError('expected a JSON object', { file: path });
  return parsed as HfConfig;
}

/** Check every shard an index names exists (listing all missing ones). */
async function checkIndexShards(indexPath: string): Promise<void> {
  const st = await statOrNull(indexPath);
  if (st === null) throw new InputError('index file not found', { file: indexPath });
  if (st.size > MAX_CONFIG_BYTES * 8) throw new InputError(`index of ${st.size} bytes is too large`, { file: indexPath });
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(indexPath, 'utf8'));
  } catch (err) {
    throw new InputError(`not valid JSON: ${err instanceof Error ? err.message : String(err)}`, { file: indexPath });
  }
  const map = (parsed as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null) throw new InputError('index has no weight_map object', { file: indexPath, key: 'weight_map' });
  const files = new Set<string>();
  for (const [name, f] of Object.entries(map as Record<string, unknown>)) {
    if (typeof f !== 'string') throw new InputError('weight_map value is not a file name', { file: indexPath, tensor: name });
    files.add(f);
  }
  const missing: string[] = [];
  for (const f of files) {
    if (PICKLE_EXT.includes(extname(f).toLowerCase())) throw pickleError(indexPath);
    if (!existsSync(join(dirname(indexPath), f))) missing.push(f);
  }
  if (missing.length > 0) throw new InputError(`index names ${missing.length} missing shard(s): ${missing.join(', ')}`, { file: indexPath });
}

async function openSafetensorsChecked(path: string): Promise<TensorSource> {
  if (path.toLowerCase().endsWith('.json')) await checkIndexShards(path);
  return openSafetensors(path);
}

/** An HF input: a model folder, a safetensors file or an index. */
export async function openHfInput(inputPath: string, configPath?: string): Promise<{ source: TensorSource; configPath: string }> {
  const st = await statOrNull(inputPath);
  if (st === null) throw new InputError('no such file or folder', { file: inputPath });
  if (st.isDirectory()) {
    const cfg = configPath ?? join(inputPath, 'config.json');
    const names = await readdir(inputPath);
    if (configPath === undefined && !names.includes('config.json')) {
      throw new InputError('folder has no config.json (a HuggingFace model folder holds config.json and model*.safetensors)', { file: inputPath });
    }
    if (names.includes(HF_INDEX)) return { source: await openSafetensorsChecked(join(inputPath, HF_INDEX)), configPath: cfg };
    if (names.includes('model.safetensors')) return { source: await openSafetensorsChecked(join(inputPath, 'model.safetensors')), configPath: cfg };
    const indexes = names.filter((n) => n.endsWith('.safetensors.index.json'));
    if (indexes.length === 1) return { source: await openSafetensorsChecked(join(inputPath, indexes[0] as string)), configPath: cfg };
    const st2 = names.filter((n) => n.endsWith('.safetensors'));
    if (st2.length === 1) return { source: await openSafetensorsChecked(join(inputPath, st2[0] as string)), configPath: cfg };
    if (st2.length > 1) throw new InputError(`folder has ${st2.length} safetensors files but no ${HF_INDEX} saying which tensor is where`, { file: inputPath });
    if (names.some((n) => PICKLE_EXT.includes(extname(n).toLowerCase()))) throw pickleError(inputPath);
    throw new InputError(`folder has no weights (model.safetensors, or model-0000x-of-0000y.safetensors with ${HF_INDEX})`, { file: inputPath });
  }
  const ext = extname(inputPath).toLowerCase();
  if (PICKLE_EXT.includes(ext) || inputPath.endsWith('.bin.index.json')) throw pickleError(inputPath);
  if (ext !== '.safetensors' && ext !== '.json') throw new InputError('expected a HuggingFace model folder, a .safetensors file or a .safetensors.index.json', { file: inputPath });
  return { source: await openSafetensorsChecked(inputPath), configPath: configPath ?? join(dirname(inputPath), 'config.json') };
}

/**
 * A MindSpore input: a .ckpt, or MindSpore safetensors (file or index). `configPath` is the
 * config.json to use (given, or beside the input); a given one must exist, one beside the input
 * may be absent (models whose tensors tell their config convert without it).
 */
export async function openMsInput(inputPath: string, configPath?: string): Promise<{ source: TensorSource; configPath: string }> {
  const st = await statOrNull(inputPath);
  if (st === null) throw new InputError('no such file', { file: inputPath });
  const cfg = configPath ?? join(st.isDirectory() ? inputPath : dirname(inputPath), 'config.json');
  if (configPath !== undefined && !existsSync(cfg)) throw new InputError('config.json not found', { file: cfg });
  if (st.isDirectory()) {
    const names = await readdir(inputPath);
    const ckpts = names.filter((n) => n.endsWith('.ckpt'));
    if (ckpts.length === 1) return { source: await openCheckpoint(join(inputPath, ckpts[0] as string)), configPath: cfg };
    for (const idx of ['param_name_map.json', HF_INDEX]) if (names.includes(idx)) return { source: await openSafetensorsChecked(join(inputPath, idx)), configPath: cfg };
    throw new InputError('expected a .ckpt file (or one .ckpt / param_name_map.json in this folder)', { file: inputPath });
  }
  const ext = extname(inputPath).toLowerCase();
  if (PICKLE_EXT.includes(ext)) throw pickleError(inputPath);
  if (ext === '.safetensors' || ext === '.json') return { source: await openSafetensorsChecked(inputPath), configPath: cfg };
  return { source: await openCheckpoint(inputPath), configPath: cfg };
}

// ---------------------------------------------------------------------------------------------
// Reverse conversions without config.json

/**
 * The config a reverse conversion uses when there is no config.json: what the model reads from
 * the MindSpore tensors, plus numeric `--extra key=value` options for what they cannot tell.
 * When values are still missing, an InputError names every one of them.
 */
export function configFromWeights(def: ModelDefinition, source: TensorSource, options: ConvertOptions, configPath: string): HfConfig {
  let derived: { config: Record<string, unknown>; cannot: string[] };
  if (def.configFromWeights !== undefined) {
    const r = def.configFromWeights(source.entries().map((e) => ({ name: e.name, shape: e.shape })), options);
    derived = { config: { ...r.config }, cannot: [...r.cannot] };
  } else {
    const wanted = new Set<string>();
    try {
      def.layout({}, options, { configPath, direction: 'ms-to-hf', discover: wanted });
    } catch {
      // a layout that cannot run on stand-ins: the keys found so far are named
    }
    derived = { config: {}, cannot: [...wanted] };
  }
  const missing: string[] = [];
  for (const key of derived.cannot) {
    const v = options.extra?.[key];
    const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d+$/.test(v.trim()) ? Number(v) : undefined;
    if (n !== undefined) derived.config[key] = n;
    else missing.push(key);
  }
  if (missing.length > 0) {
    throw new InputError(
      `the reverse conversion of ${def.name} needs ${missing.join(', ')} from the model's HuggingFace config.json (the weights do not tell them); ` +
        `pass --config PATH, put config.json beside the input, or give them as ${missing.map((k) => `--extra ${k}=N`).join(' ')}`,
      { file: configPath },
    );
  }
  return derived.config;
}

// ---------------------------------------------------------------------------------------------
// The whole run

/** Run one model's conversion in one direction. */
export async function runConversion(
  def: ModelDefinition,
  direction: ConvertDirection,
  inputPath: string,
  outputPath: string,
  dtypeName: ConvertDTypeName | undefined,
  options: ConvertOptions = {},
): Promise<ConvertResult> {
  const target = parseConvertDType(dtypeName);
  const inAbs = resolve(inputPath);
  const outAbs = resolve(outputPath);
  if (inAbs === outAbs) throw new InputError('output path is the input path', { file: outputPath });
  const forward = direction === 'hf-to-ms';
  const maxShard = options.maxShardSize ?? DEFAULT_MAX_SHARD_SIZE;
  if (!Number.isSafeInteger(maxShard) || maxShard <= 0) throw new InputError(`bad --max-shard-size ${maxShard}`, { key: 'max_shard_size' });

  // output checks before reading anything big
  const outSt = await statOrNull(outAbs);
  if (forward) {
    if (outSt?.isDirectory() === true) throw new InputError('output must be a .ckpt or .safetensors file, not a folder', { file: outputPath });
  } else {
    if (outSt !== null && !outSt.isDirectory()) throw new InputError('reverse output must be a folder (HF shards and index go there)', { file: outputPath });
    if (outSt !== null) {
      const clash = (await readdir(outAbs)).filter((n) => n === HF_INDEX || /^model.*\.safetensors$/.test(n));
      if (clash.length > 0) throw new InputError(`folder already holds ${clash.join(', ')}; choose an empty or new folder`, { file: outputPath });
    }
  }

  const opened = forward ? await openHfInput(inAbs, options.configPath) : await openMsInput(inAbs, options.configPath);
  let source = opened.source;
  let createdDir = false;
  let writer: ConvertWriter | null = null;
  try {
    const withoutConfig = !forward && !existsSync(opened.configPath);
    const config = !withoutConfig
      ? await readHfConfig(opened.configPath)
      : options.config !== undefined
        ? options.config
        : configFromWeights(def, source, options, opened.configPath);
    const layout = def.layout(config, options, { configPath: opened.configPath, direction });
    if (forward) source = dequantizingSource(source, target ?? 'BFloat16');
    const plan = planConversion(layout, source, direction, target, def.name);
    const total = plan.reduce((s, t) => s + t.byteLength, 0);
    if (forward) {
      writer = singleFileWriter(outAbs, plan);
    } else {
      if (outSt === null) {
        await mkdir(outAbs, { recursive: true });
        createdDir = true;
      }
      const extras = withoutConfig ? [] : [{ name: 'config.json', data: await readFile(opened.configPath) }];
      writer = new ShardedWriter(outAbs, plan, maxShard, extras);
    }
    const progress = options.progress?.(total);
    const bytes = await executePlan(source, plan, writer, (n) => progress?.advance(n));
    const files = await writer.commit();
    progress?.done();
    return {
      model: def.name,
      direction,
      input: inAbs,
      output: outAbs,
      files,
      tensorsIn: source.entries().length,
      tensorsOut: plan.length,
      bytesOut: bytes,
      dtype: target,
    };
  } catch (err) {
    await writer?.abort();
    if (createdDir) await rmdir(outAbs).catch(() => undefined);
    throw err;
  } finally {
    await source.close().catch(() => undefined);
  }
}

