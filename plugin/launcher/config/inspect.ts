/**
 * What a checkpoint path holds on disk, as the run's rules need it (engine's resolver in
 * formats/ takes this over: which file of each rank folder counts).
 */
import { readdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { CheckpointInfo, LoadCkptFormat } from './types.js';

const CKPT_EXT: Record<LoadCkptFormat, RegExp> = {
  ckpt: /\.ckpt$/,
  safetensors: /\.safetensors$|\.safetensors\.index\.json$/,
};

/** What a checkpoint path holds on disk, for the given format. */
export async function inspectCheckpointPath(path: string, format: LoadCkptFormat = 'ckpt'): Promise<CheckpointInfo> {
  const abs = resolve(path);
  const info: CheckpointInfo = { path: abs, kind: 'missing', ranks: [], missingRank: undefined, files: [] };
  let st;
  try {
    st = await stat(abs);
  } catch {
    return info;
  }
  if (!st.isDirectory()) {
    info.kind = 'file';
    info.files = [abs];
    return info;
  }
  const entries = await readdir(abs, { withFileTypes: true });
  for (const e of entries) {
    const m = /^rank_(\d+)$/.exec(e.name);
    if (m !== null && (e.isDirectory() || e.isSymbolicLink())) info.ranks.push(Number(m[1]));
    else if (CKPT_EXT[format].test(e.name) && !e.isDirectory()) info.files.push(join(abs, e.name));
  }
  info.ranks.sort((a, b) => a - b);
  info.files.sort();
  if (info.ranks.length > 0) {
    info.kind = 'rank-dir';
    for (let i = 0; i < info.ranks.length; i++) {
      if (info.ranks[i] !== i) {
        info.missingRank = i;
        break;
      }
    }
  } else if (info.files.length > 0) info.kind = 'complete-dir';
  else info.kind = 'empty-dir';
  return info;
}

/**
 * The `<name>` folders conversion writes under output_dir/transformed_checkpoint (spec §2.5): the
 * base name of a rank-folder source, else the stem (text before the first '.') of each complete file.
 */
export function transformedNames(source: CheckpointInfo): string[] {
  const stem = (p: string): string => (p.split(/[\\/]/).pop() ?? p).split('.')[0] ?? p;
  switch (source.kind) {
    case 'rank-dir':
      return [source.path.split(/[\\/]/).pop() ?? 'checkpoint'];
    case 'file':
    case 'complete-dir':
      return source.files.map(stem);
    default:
      return [];
  }
}
