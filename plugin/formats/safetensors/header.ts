/**
 * The safetensors header: an 8-byte little-endian length N, then N bytes of UTF-8 JSON
 * `{"__metadata__":{str:str}, name:{"dtype","shape","data_offsets":[begin,end]}, ...}`, then the
 * data area; offsets are relative to the start of the data area (8 + N).
 *
 * Everything is validated here, before any tensor byte is touched.
 */
import type { FileHandle } from 'node:fs/promises';
import { InputError } from '../../errors.js';
import { dtypeFromSafetensors, elementCount, type DType } from '../dtype.js';

/** Largest header we accept (the HF reference limit). */
export const SAFETENSORS_MAX_HEADER = 100_000_000;

/** One tensor as the header describes it. */
export interface SafetensorsHeaderTensor {
  readonly name: string;
  readonly dtype: DType;
  /** The dtype string of the header (`F16`, `BF16`, ...). */
  readonly stDtype: string;
  readonly shape: readonly number[];
  /** Offsets relative to the data area. */
  readonly begin: number;
  readonly end: number;
}

export interface SafetensorsHeader {
  readonly path: string;
  readonly fileSize: number;
  /** N, the JSON length. */
  readonly headerLength: number;
  /** Absolute file offset of the data area (8 + N). */
  readonly dataStart: number;
  readonly metadata: Record<string, string>;
  /** Tensors in data-offset (file) order. */
  readonly tensors: readonly SafetensorsHeaderTensor[];
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Byte offset in the file of a JSON.parse error position, when the message names one. */
function syntaxOffset(err: unknown): number {
  const m = err instanceof Error ? /position (\d+)/.exec(err.message) : null;
  return m !== null ? 8 + Number(m[1]) : 8;
}

async function readFully(h: FileHandle, buf: Uint8Array, position: number, file: string): Promise<void> {
  let done = 0;
  while (done < buf.byteLength) {
    const { bytesRead } = await h.read(buf, done, buf.byteLength - done, position + done);
    if (bytesRead === 0) throw new InputError(`file ended early (wanted ${buf.byteLength} bytes)`, { file, offset: position + done });
    done += bytesRead;
  }
}

/**
 * Read and validate the header of an open safetensors file. Throws InputError naming the file,
 * the byte offset and the tensor for anything that is not a well-formed safetensors header.
 */
export async function readSafetensorsHeader(handle: FileHandle, file: string): Promise<SafetensorsHeader> {
  const fileSize = (await handle.stat()).size;
  if (fileSize < 8) throw new InputError(`not a safetensors file: ${fileSize} bytes, shorter than the 8-byte header length`, { file, offset: 0 });
  const lenBuf = new Uint8Array(8);
  await readFully(handle, lenBuf, 0, file);
  const n = new DataView(lenBuf.buffer).getBigUint64(0, true);
  if (n > BigInt(SAFETENSORS_MAX_HEADER)) {
    throw new InputError(`safetensors header length ${n} exceeds the limit of ${SAFETENSORS_MAX_HEADER} bytes`, { file, offset: 0 });
  }
  const headerLength = Number(n);
  if (headerLength > fileSize - 8) {
    throw new InputError(`safetensors header length ${headerLength} runs past the end of the file (${fileSize} bytes)`, { file, offset: 0 });
  }
  if (headerLength < 2) throw new InputError(`safetensors header length ${headerLength} is too small for a JSON object`, { file, offset: 0 });
  const raw = new Uint8Array(headerLength);
  await readFully(handle, raw, 8, file);
  return parseSafetensorsHeader(raw, file, fileSize);
}

/** Validate header JSON bytes (without the 8-byte length) for a file of `fileSize` bytes. */
export function parseSafetensorsHeader(raw: Uint8Array, file: string, fileSize: number): SafetensorsHeader {
  const headerLength = raw.byteLength;
  const dataStart = 8 + headerLength;
  const dataSize = fileSize - dataStart;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    throw new InputError('safetensors header is not valid UTF-8', { file, offset: 8 });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new InputError(`safetensors header is not valid JSON (${err instanceof Error ? err.message : String(err)})`, { file, offset: syntaxOffset(err) });
  }
  if (!isRecord(json)) throw new InputError('safetensors header is not a JSON object', { file, offset: 8 });

  const metadata: Record<string, string> = {};
  const tensors: SafetensorsHeaderTensor[] = [];
  for (const [name, value] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (value === null) continue;
      if (!isRecord(value)) throw new InputError('__metadata__ must be an object of strings', { file, offset: 8, key: '__metadata__' });
      for (const [k, v] of Object.entries(value)) {
        if (typeof v !== 'string') throw new InputError(`__metadata__ value must be a string, got ${typeof v}`, { file, offset: 8, key: `__metadata__.${k}` });
        metadata[k] = v;
      }
      continue;
    }
    const where = { file, offset: 8, tensor: name };
    if (!isRecord(value)) throw new InputError('tensor entry must be an object with dtype, shape and data_offsets', where);
    const stDtype = value['dtype'];
    if (typeof stDtype !== 'string') throw new InputError('tensor entry has no dtype string', where);
    const info = dtypeFromSafetensors(stDtype);
    if (info === undefined) throw new InputError(`unknown safetensors dtype '${stDtype}'`, where);
    const shapeV = value['shape'];
    if (!Array.isArray(shapeV) || !shapeV.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0)) {
      throw new InputError('shape must be an array of non-negative integers', where);
    }
    const shape = shapeV as number[];
    const offs = value['data_offsets'];
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0)) {
      throw new InputError('data_offsets must be [begin, end] with non-negative integers', where);
    }
    const [begin, end] = offs as [number, number];
    if (end < begin) throw new InputError(`data_offsets [${begin}, ${end}] end before they begin`, where);
    if (end > dataSize) {
      throw new InputError(`data_offsets [${begin}, ${end}] run past the end of the data area (${dataSize} bytes)`, { file, offset: dataStart + begin, tensor: name });
    }
    const count = elementCount(shape);
    const expect = count === null ? null : count * info.size;
    if (expect === null || !Number.isSafeInteger(expect)) throw new InputError(`shape [${shape}] is too large`, where);
    if (expect !== end - begin) {
      throw new InputError(`shape [${shape}] of ${stDtype} needs ${expect} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`, { file, offset: dataStart + begin, tensor: name });
    }
    tensors.push({ name, dtype: info.name, stDtype, shape, begin, end });
  }
  tensors.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let prevEnd = 0;
  let prevName = '';
  for (const t of tensors) {
    if (t.begin < prevEnd) {
      throw new InputError(`data_offsets [${t.begin}, ${t.end}] overlap those of '${prevName}' (ending at ${prevEnd})`, { file, offset: dataStart + t.begin, tensor: t.name });
    }
    if (t.end > t.begin) {
      prevEnd = t.end;
      prevName = t.name;
    }
  }
  return { path: file, fileSize, headerLength, dataStart, metadata, tensors };
}
