/**
 * Reading and writing strategy files, whichever encoding: protobuf or JSON is told by content
 * (protobuf starts with a field tag such as 0x08, JSON with '{'), never by the file name.
 */
import { open } from 'node:fs/promises';
import { InputError } from '../../errors.js';
import { writeFileAtomic } from '../atomic.js';
import { decodeStrategyJson, encodeStrategyJson } from './json.js';
import type { ParamLayout, Strategy, TensorMapEntry } from './model.js';
import { decodeStrategyProtobuf, encodeStrategyProtobuf } from './protobuf.js';

export type StrategyFormat = 'protobuf' | 'json';

/** Largest strategy file we read (they are KiB to a few MiB in practice). */
export const MAX_STRATEGY_BYTES = 256 * 1024 * 1024;

/** Which encoding the bytes are in, or null when they are neither. */
export function detectStrategyFormat(bytes: Uint8Array): StrategyFormat | null {
  let i = 0;
  if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) i = 3; // UTF-8 BOM
  while (i < bytes.length && (bytes[i] === 0x20 || bytes[i] === 0x0a || bytes[i] === 0x0d || bytes[i] === 0x09)) i++;
  if (bytes[i] === 0x7b) return 'json';
  // ParallelStrategyMap fields 1 (varint), 2 and 3 (length-delimited): tags 0x08, 0x12, 0x1a.
  const first = bytes[0];
  if (first === 0x08 || first === 0x12 || first === 0x1a) return 'protobuf';
  return null;
}

/** Parse a strategy held in memory; `path` names it in errors. */
export function parseStrategyBytes(bytes: Uint8Array, path: string): Strategy {
  if (bytes.byteLength === 0) throw new InputError('empty strategy file', { file: path });
  const format = detectStrategyFormat(bytes);
  if (format === 'json') {
    const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8').replace(/^\uFEFF/, '');
    return decodeStrategyJson(text, path);
  }
  if (format === 'protobuf') return decodeStrategyProtobuf(bytes, path);
  throw new InputError(
    `not a strategy file: first byte 0x${(bytes[0] as number).toString(16).padStart(2, '0')} is neither a ParallelStrategyMap field tag (0x08/0x12/0x1a) nor '{'`,
    { file: path, offset: 0 },
  );
}

/** Read a whole (small, bounded) file. */
export async function readSmallFile(path: string, limit = MAX_STRATEGY_BYTES): Promise<Uint8Array> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new InputError(code === 'ENOENT' ? 'no such file' : `cannot open (${code ?? String(err)})`, { file: path });
  }
  try {
    const st = await fh.stat();
    if (st.isDirectory()) throw new InputError('is a directory, expected a strategy file', { file: path });
    if (st.size > limit) throw new InputError(`${st.size} bytes is larger than the ${limit}-byte limit for a strategy file`, { file: path });
    const buf = new Uint8Array(st.size);
    let done = 0;
    while (done < st.size) {
      const { bytesRead } = await fh.read(buf, done, st.size - done, done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done === st.size ? buf : buf.subarray(0, done);
  } finally {
    await fh.close();
  }
}

/** Read a protobuf or JSON strategy file (per-rank or merged). */
export async function readStrategy(path: string): Promise<Strategy> {
  return parseStrategyBytes(await readSmallFile(path), path);
}

/** Encode a strategy as bytes. */
export function encodeStrategy(strategy: Strategy, format: StrategyFormat = 'protobuf'): Uint8Array {
  return format === 'json' ? encodeStrategyJson(strategy) : encodeStrategyProtobuf(strategy);
}

/**
 * Write a strategy atomically. Protobuf by default; layouts of stage > 0 (or a merged strategy)
 * get `{stage}-` prefixes.
 */
export async function writeStrategy(path: string, strategy: Strategy, opts: { format?: StrategyFormat } = {}): Promise<void> {
  await writeFileAtomic(path, encodeStrategy(strategy, opts.format ?? 'protobuf'));
}

/** One layout as plain JSON (the `inspect --json` shape). */
export interface StrategyLayoutJson {
  name: string;
  stage: number;
  devMatrix: number[];
  tensorMap: Array<number | number[]>;
  optShardStep: number;
  optShardSize: number;
  field: number;
  paramSplitShape?: number[];
  indicesOffset?: number[];
  tensorShape?: number[];
}

/** A strategy as plain JSON (the `inspect --json` shape). */
export interface StrategyJson {
  kind: 'strategy';
  path?: string;
  merged: boolean;
  currentStage: number;
  stages: number[];
  layouts: StrategyLayoutJson[];
  items: Array<{ nodeName: string; stage: number; strategies: number[][] }>;
}

function mapJson(m: readonly TensorMapEntry[]): Array<number | number[]> {
  return m.map((e) => (typeof e === 'number' ? e : [...e]));
}

function layoutJson(l: ParamLayout): StrategyLayoutJson {
  const out: StrategyLayoutJson = {
    name: l.name,
    stage: l.stage,
    devMatrix: [...l.devMatrix],
    tensorMap: mapJson(l.tensorMap),
    optShardStep: l.optShardStep,
    optShardSize: l.optShardSize,
    field: l.field,
  };
  if (l.paramSplitShape.length > 0) out.paramSplitShape = [...l.paramSplitShape];
  if (l.indicesOffset.length > 0) out.indicesOffset = [...l.indicesOffset];
  if (l.tensorShape !== undefined) out.tensorShape = [...l.tensorShape];
  return out;
}

/**
 * The model as one plain JSON object for `msckpt inspect --json`:
 * `{"kind":"strategy","merged","stages","layouts":[{"name","stage","devMatrix","tensorMap",
 * "optShardStep","optShardSize","field"}], ...}`. (For MindSpore's own JSON encoding use
 * `writeStrategy(path, s, {format: 'json'})` or `strategyJsonDocument`.)
 */
export function strategyToJson(strategy: Strategy): StrategyJson {
  return {
    kind: 'strategy',
    ...(strategy.path !== undefined ? { path: strategy.path } : {}),
    merged: strategy.merged,
    currentStage: strategy.currentStage,
    stages: [...strategy.stages],
    layouts: strategy.layouts.map(layoutJson),
    items: strategy.items.map((it) => ({ nodeName: it.nodeName, stage: it.stage, strategies: it.strategies.map((d) => [...d]) })),
  };
}
