/**
 * What a path is, by content rather than by name (spec §1.2, §1.8, §2.4, §5): the first bytes of
 * a file, the keys of a JSON document, the layout of a directory.
 */
import { open, readdir, stat } from 'node:fs/promises';
import { InputError } from '../errors.js';
import { encryptionModeOf } from './ckpt/reader.js';
import { looksLikeSafetensors } from './safetensors/index.js';

export type WeightsKind =
  | 'checkpoint'
  | 'strategy'
  | 'strategy-json'
  | 'safetensors'
  | 'safetensors-index'
  | 'distributed'
  | 'unified'
  | 'encrypted'
  | 'unknown';

/** JSON documents up to this size are parsed to classify them; larger ones are key-scanned. */
const JSON_PARSE_LIMIT = 16 << 20;
const JSON_SCAN_BYTES = 1 << 20;
const RANK_DIR = /^rank_(\d+)$/;

/** The rank of a `rank_N` folder name, else null (the one reading of that name). */
export function rankOfFolderName(name: string): number | null {
  const m = RANK_DIR.exec(name);
  return m === null ? null : Number(m[1]);
}

async function statOrThrow(path: string): Promise<Awaited<ReturnType<typeof stat>>> {
  try {
    return await stat(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new InputError(code === 'ENOENT' ? 'no such file or directory' : `cannot open (${code ?? String(err)})`, { file: path });
  }
}

async function readHead(path: string, length: number, position = 0): Promise<Uint8Array> {
  const fh = await open(path, 'r');
  try {
    const buf = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await fh.read(buf, done, length - done, position + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return buf.subarray(0, done);
  } finally {
    await fh.close();
  }
}

function classifyJson(doc: unknown): WeightsKind {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) return 'unknown';
  const o = doc as Record<string, unknown>;
  if (typeof o['weight_map'] === 'object' && o['weight_map'] !== null) return 'safetensors-index';
  if ('parallel_layout_item' in o || 'parallel_strategy_item' in o) return 'strategy-json';
  return 'unknown';
}

/** Detect what `path` holds. Throws InputError only when the path cannot be opened. */
export async function detectKind(path: string): Promise<WeightsKind> {
  const st = await statOrThrow(path);
  if (st.isDirectory()) {
    const names = await readdir(path, { withFileTypes: true });
    if (names.some((d) => d.name === 'param_name_map.json' && d.isFile())) return 'unified';
    if (names.some((d) => rankOfFolderName(d.name) !== null && d.isDirectory())) return 'distributed';
    return 'unknown';
  }
  if (!st.isFile() || st.size === 0) return 'unknown';
  const size = Number(st.size);
  const head = await readHead(path, Math.min(size, 64));
  if (encryptionModeOf(head) !== null) return 'encrypted';
  if (looksLikeSafetensors(head, size)) return 'safetensors';
  let i = 0;
  if (head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf) i = 3;
  while (i < head.length && (head[i] === 0x20 || head[i] === 0x0a || head[i] === 0x0d || head[i] === 0x09)) i++;
  // a checkpoint starts 0x0a (a newline) and its first record may be 123 bytes long ('{'): only
  // a document that is JSON (or, when large, names the keys) counts as JSON
  if (head[i] === 0x7b) {
    if (size <= JSON_PARSE_LIMIT) {
      const text = Buffer.from(await readHead(path, size)).toString('utf8').replace(/^\uFEFF/, '');
      let doc: unknown;
      try {
        doc = JSON.parse(text);
      } catch {
        doc = undefined;
      }
      if (doc !== undefined) return classifyJson(doc);
    } else {
      const text = Buffer.from(await readHead(path, JSON_SCAN_BYTES)).toString('utf8');
      if (text.includes('"weight_map"')) return 'safetensors-index';
      if (text.includes('"parallel_layout_item"') || text.includes('"parallel_strategy_item"')) return 'strategy-json';
    }
  }
  if (head[0] === 0x0a) return 'checkpoint';
  if (head[0] === 0x08) return 'strategy';
  return 'unknown';
}
