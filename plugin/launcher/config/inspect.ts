/**
 * What a checkpoint path holds on disk, as the run's rules need it (through the resolver in
 * formats/resolve.ts).
 */
import { surveyWeights } from '../../formats/resolve.js';
import type { WeightsFormat } from '../../formats/resolve.js';
import type { CheckpointInfo } from './types.js';

/** What a checkpoint path holds on disk, for the given format (the resolver's survey: one listing, nothing read). */
export async function inspectCheckpointPath(path: string, format: WeightsFormat = 'ckpt'): Promise<CheckpointInfo> {
  const s = await surveyWeights(path, format);
  const kind: CheckpointInfo['kind'] = s.kind !== 'folder' ? s.kind : s.rankFolders.length > 0 ? 'rank-dir' : s.files.length > 0 ? 'complete-dir' : 'empty-dir';
  return { path: s.path, kind, ranks: [...s.rankFolders], missingRank: s.missingRank, files: [...s.files] };
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
