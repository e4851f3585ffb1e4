/**
 * `.ckpt` <-> safetensors conversion of one file or a whole tree (`rank_N/` folders), names
 * kept with the extension swapped (MindSpore's ckpt_to_safetensors / safetensors_to_ckpt).
 *
 * Exact round trip: a `.ckpt` entry's encoding hints (legacy scalar dims [0], non-default
 * chunking) travel as `ms_ckpt:<name>` metadata, `str` entries as `ms_str:<name>`, the record
 * order as `ms_order` when needed, and a CRC trailer as metadata `ms_ckpt_crc: "true"`; the safetensors
 * file keeps the checkpoint's record order (keys are not sorted), so safetensors -> ckpt gives the
 * original file back byte for byte.
 */
import { readFile, stat } from 'node:fs/promises';
import { basename, extname, join, relative, resolve } from 'node:path';
import { InputError } from '../errors.js';
import { refuseOverlaps } from '../real-paths.js';
import { runPool } from './pool.js';
import { listWeightFiles, type WeightsFormat } from '../formats/resolve.js';
import { createCheckpointSink, openCheckpoint } from '../formats/ckpt/index.js';
import { COPY_PIECE, copyEntry } from '../formats/copy.js';
import { createSafetensorsSink, openSafetensorsFile } from '../formats/safetensors/index.js';
import type { SinkTensor, TensorEntry, TensorSink, TensorSource } from '../formats/types.js';

/** Metadata key recording that the source checkpoint had a `crc_num` trailer. */
export const MS_CKPT_CRC_KEY = 'ms_ckpt_crc';

export interface WeightsConvertOptions {
  /** Rename tensors: `{old: new}` (names not listed are kept). */
  nameMap?: Readonly<Record<string, string>>;
  /** Files converted at once (default 1). */
  processes?: number;
  /** Safetensors output: store `crc_num`; ckpt output: append the CRC trailer (default: as the source says). */
  crc?: boolean;
  /** Only convert files whose base name matches (MindSpore's file_name_regex). */
  fileNameRegex?: string;
  /** Called when a file is done. */
  onFile?: (done: WeightsConvertedFile) => void;
  /** Called with bytes copied (progress). */
  onBytes?: (bytes: number) => void;
}

export interface WeightsConvertedFile {
  source: string;
  output: string;
  tensors: number;
  bytes: number;
}

export interface WeightsConvertResult {
  files: WeightsConvertedFile[];
  tensors: number;
  bytes: number;
}

type Direction = 'ckpt-to-safetensors' | 'safetensors-to-ckpt';

/** Read a name map from a JSON object string or a JSON file path. */
export async function loadNameMap(spec: string): Promise<Record<string, string>> {
  let text = spec.trim();
  let file: string | undefined;
  if (!text.startsWith('{')) {
    file = spec;
    try {
      const st = await stat(spec);
      if (st.size > 64 * 1024 * 1024) throw new InputError(`name map of ${st.size} bytes is too large`, { file });
      text = await readFile(spec, 'utf8');
    } catch (err) {
      if (err instanceof InputError) throw err;
      throw new InputError(`cannot read name map (${(err as NodeJS.ErrnoException).code ?? String(err)})`, { file });
    }
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new InputError(`name map is not valid JSON (${err instanceof Error ? err.message : String(err)})`, file !== undefined ? { file } : {});
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InputError('name map must be a JSON object {"old": "new"}', file !== undefined ? { file } : {});
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    if (typeof x !== 'string' || x === '') throw new InputError('name map values must be non-empty strings', { ...(file !== undefined ? { file } : {}), key: k });
    out[k] = x;
  }
  return out;
}

function renamed(e: TensorEntry, map: Readonly<Record<string, string>> | undefined): SinkTensor {
  const name = map !== undefined && Object.prototype.hasOwnProperty.call(map, e.name) ? (map[e.name] as string) : e.name;
  return e.ckpt !== undefined
    ? { name, dtype: e.dtype, shape: e.shape, byteLength: e.byteLength, ckpt: e.ckpt }
    : { name, dtype: e.dtype, shape: e.shape, byteLength: e.byteLength };
}

/**
 * Copy every entry of `source` into `sink` in order (renamed), streaming in bounded pieces, then
 * close the sink (or abort it on failure). Returns the tensor bytes copied.
 */
async function pump(source: TensorSource, sink: TensorSink, out: readonly SinkTensor[], onBytes?: (n: number) => void): Promise<number> {
  try {
    const entries = source.entries();
    let largest = 1;
    for (const e of entries) largest = Math.max(largest, Math.min(e.byteLength, COPY_PIECE));
    const buf = new Uint8Array(largest);
    let bytes = 0;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i] as TensorEntry;
      await copyEntry(source, sink, e, buf.byteLength, buf, { as: out[i] as SinkTensor, ...(onBytes !== undefined ? { onBytes } : {}) });
      bytes += e.byteLength;
    }
    await sink.close();
    return bytes;
  } catch (err) {
    await sink.abort();
    throw err;
  }
}

/** Convert one `.ckpt` file to one `.safetensors` file. */
export async function ckptFileToSafetensors(src: string, dst: string, opts: WeightsConvertOptions = {}): Promise<WeightsConvertedFile> {
  if (resolve(src) === resolve(dst)) throw new InputError('output is the input file itself', { file: dst });
  const source = await openCheckpoint(src);
  try {
    const out = source.entries().map((e) => renamed(e, opts.nameMap));
    const metadata: Record<string, string> = { format: 'ms' };
    if (source.crc !== null) metadata[MS_CKPT_CRC_KEY] = 'true';
    const sink = await createSafetensorsSink(dst, out, { metadata, crc: opts.crc === true, sortKeys: false, recordOrder: out.some((t) => t.dtype === 'str') });
    const bytes = await pump(source, sink, out, opts.onBytes);
    return { source: src, output: dst, tensors: out.length, bytes };
  } finally {
    await source.close();
  }
}

/** Convert one `.safetensors` file to one `.ckpt` file (entries in the recorded order). */
export async function safetensorsFileToCkpt(src: string, dst: string, opts: WeightsConvertOptions = {}): Promise<WeightsConvertedFile> {
  if (resolve(src) === resolve(dst)) throw new InputError('output is the input file itself', { file: dst });
  const source = await openSafetensorsFile(src);
  try {
    const out = source.entries().map((e) => renamed(e, opts.nameMap));
    const seen = new Set<string>();
    for (const t of out) {
      if (seen.has(t.name)) throw new InputError('two tensors map to the same name', { file: src, tensor: t.name });
      seen.add(t.name);
    }
    const sink = await createCheckpointSink(dst, { crc: opts.crc ?? source.metadata[MS_CKPT_CRC_KEY] === 'true' });
    const bytes = await pump(source, sink, out, opts.onBytes);
    return { source: src, output: dst, tensors: out.length, bytes };
  } finally {
    await source.close();
  }
}

function swapExt(name: string, to: string): string {
  const ext = extname(name);
  return (ext === '' ? name : name.slice(0, -ext.length)) + to;
}

/** The files a conversion reads: the file itself, or every file of the format in `dir` and its rank_N folders. */
async function collect(src: string, format: WeightsFormat, regex: RegExp | undefined): Promise<string[]> {
  const all = await listWeightFiles(src, format);
  if (all.length === 1 && all[0]?.path === src) return [src];
  const out = all.map((f) => f.path).filter((p) => regex === undefined || regex.test(basename(p)));
  if (out.length === 0) throw new InputError(`no .${format} files here or in rank_N/ folders`, { file: src });
  return out;
}

async function convertTree(direction: Direction, src: string, dst: string, opts: WeightsConvertOptions): Promise<WeightsConvertResult> {
  const [fromExt, toExt] = direction === 'ckpt-to-safetensors' ? ['.ckpt', '.safetensors'] : ['.safetensors', '.ckpt'];
  let regex: RegExp | undefined;
  if (opts.fileNameRegex !== undefined) {
    try {
      regex = new RegExp(opts.fileNameRegex);
    } catch {
      throw new InputError(`file name regex '${opts.fileNameRegex}' is not valid`);
    }
  }
  const st = await stat(src).catch(() => null);
  if (st === null) throw new InputError('no such file or directory', { file: src });
  const files = await collect(src, fromExt === '.ckpt' ? 'ckpt' : 'safetensors', regex);
  const single = st.isFile();
  const target = (f: string): string => {
    if (single) return dst.endsWith(toExt) ? dst : join(dst, swapExt(basename(f), toExt));
    return join(dst, swapExt(relative(src, f), toExt));
  };
  // one file: its output is not the input (a symlink to it included); a tree: the output folder is
  // apart from the input folder
  if (single) await refuseOverlaps([{ what: 'output file', path: target(src) }], [{ what: 'the input', path: src }]);
  else await refuseOverlaps([{ what: 'output folder', path: dst }], [{ what: 'the input folder', path: src }]);
  const one = direction === 'ckpt-to-safetensors' ? ckptFileToSafetensors : safetensorsFileToCkpt;
  const jobs = files.map((f) => async () => {
    const r = await one(f, target(f), opts);
    opts.onFile?.(r);
    return r;
  });
  const processes = opts.processes ?? 1;
  if (!Number.isSafeInteger(processes) || processes < 1) throw new InputError(`processes must be a positive integer, got ${processes}`);
  const done = await runPool(jobs, processes);
  return { files: done, tensors: done.reduce((a, f) => a + f.tensors, 0), bytes: done.reduce((a, f) => a + f.bytes, 0) };
}

/**
 * `.ckpt` -> safetensors: `src` is a file (then `dst` is the output file, or a folder for it) or
 * a folder whose .ckpt files (top level and in rank* folders) are converted into the same tree under `dst`.
 */
export async function ckptToSafetensors(src: string, dst: string, opts: WeightsConvertOptions = {}): Promise<WeightsConvertResult> {
  return convertTree('ckpt-to-safetensors', src, dst, opts);
}

/** safetensors -> `.ckpt`, the mirror of {@link ckptToSafetensors}. */
export async function safetensorsToCkpt(src: string, dst: string, opts: WeightsConvertOptions = {}): Promise<WeightsConvertResult> {
  return convertTree('safetensors-to-ckpt', src, dst, opts);
}

