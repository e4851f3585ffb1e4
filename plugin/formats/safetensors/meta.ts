/**
 * How values that safetensors cannot hold travel in `__metadata__` (our convention, read back by
 * our reader so that `.ckpt` -> safetensors -> `.ckpt` is exact):
 *
 * - `ms_str:<name>`    a `str` entry (MindSpore's UTF-32LE string), as the decoded text;
 * - `ms_strb64:<name>` a `str` entry whose bytes are not valid UTF-32 text, base64 of the bytes;
 * - `ms_ckpt:<name>`   JSON of the entry's `.ckpt` encoding hints (`dims`, e.g. [0] for a legacy
 *                      scalar; `chunks`, non-default chunk byte lengths) and for Int4 its `shape`;
 * - `<name>: "Int4"`   MindSpore's own marker for qint4x2 parameters (stored as I8 bytes);
 * - `ms_order`         JSON array of every entry name in the original order, written when the
 *                      file holds metadata entries or was asked to keep the order.
 */
import { InputError } from '../../errors.js';
import type { CkptHints } from '../types.js';

export const MS_STR = 'ms_str:';
export const MS_STR_B64 = 'ms_strb64:';
export const MS_CKPT = 'ms_ckpt:';
export const MS_ORDER = 'ms_order';

/** Decode UTF-32LE bytes to text; null when any code unit is not a valid Unicode scalar. */
export function utf32ToText(bytes: Uint8Array): string | null {
  if (bytes.byteLength % 4 !== 0) return null;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const parts: string[] = [];
  let chunk: number[] = [];
  for (let i = 0; i < bytes.byteLength; i += 4) {
    const cp = dv.getUint32(i, true);
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return null;
    // numpy 'U' strings drop trailing NULs on load; keep them anyway: they are valid scalars.
    chunk.push(cp);
    if (chunk.length === 4096) {
      parts.push(String.fromCodePoint(...chunk));
      chunk = [];
    }
  }
  parts.push(String.fromCodePoint(...chunk));
  return parts.join('');
}

/** Encode text as UTF-32LE bytes. */
export function textToUtf32(text: string): Uint8Array {
  const cps: number[] = [];
  for (const ch of text) cps.push(ch.codePointAt(0) as number);
  const out = new Uint8Array(cps.length * 4);
  const dv = new DataView(out.buffer);
  cps.forEach((cp, i) => dv.setUint32(i * 4, cp, true));
  return out;
}

/** Metadata key/value for a str entry's bytes. */
export function encodeStrEntry(name: string, bytes: Uint8Array): [string, string] {
  const text = utf32ToText(bytes);
  if (text !== null) return [MS_STR + name, text];
  return [MS_STR_B64 + name, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64')];
}

/** Most bytes the JSON of a str entry's metadata can take (key and value, quoted and escaped). */
export function strEntryReserve(name: string, byteLength: number): number {
  const key = Buffer.byteLength(JSON.stringify(MS_STR_B64 + name), 'utf8');
  // text: at most 6 JSON bytes per 4-byte character (\u00XX); base64: 4 per 3 bytes
  const value = Math.max(Math.ceil((byteLength / 4) * 6), Math.ceil(byteLength / 3) * 4) + 2;
  return key + value + 2; // ':' and ','
}

/** Parse `ms_ckpt:<name>` JSON. */
export function parseCkptMeta(file: string, name: string, value: string): { hints?: CkptHints; shape?: number[] } {
  const where = { file, offset: 8, tensor: name, key: `__metadata__.${MS_CKPT}${name}` };
  let v: unknown;
  try {
    v = JSON.parse(value);
  } catch {
    throw new InputError('ckpt hints are not valid JSON', where);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InputError('ckpt hints must be a JSON object', where);
  const o = v as Record<string, unknown>;
  const ints = (x: unknown): x is number[] => Array.isArray(x) && x.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0);
  const hints: { dims?: number[]; chunks?: number[] } = {};
  if (o['dims'] !== undefined) {
    if (!ints(o['dims']) || o['dims'].length > 64) throw new InputError('ckpt hint dims must be an array of non-negative integers', where);
    hints.dims = o['dims'];
  }
  if (o['chunks'] !== undefined) {
    if (!ints(o['chunks'])) throw new InputError('ckpt hint chunks must be an array of non-negative integers', where);
    hints.chunks = o['chunks'];
  }
  const out: { hints?: CkptHints; shape?: number[] } = {};
  if (hints.dims !== undefined || hints.chunks !== undefined) out.hints = hints;
  if (o['shape'] !== undefined) {
    if (!ints(o['shape']) || o['shape'].length > 64) throw new InputError('shape must be an array of non-negative integers', where);
    out.shape = o['shape'];
  }
  return out;
}

/** JSON for `ms_ckpt:<name>`, or undefined when there is nothing to say. */
export function ckptMetaValue(hints: CkptHints | undefined, shape?: readonly number[]): string | undefined {
  const o: Record<string, unknown> = {};
  if (hints?.dims !== undefined) o['dims'] = hints.dims;
  if (hints?.chunks !== undefined) o['chunks'] = hints.chunks;
  if (shape !== undefined) o['shape'] = shape;
  return Object.keys(o).length > 0 ? JSON.stringify(o) : undefined;
}
