/**
 * `verifyTransform(dir)`: re-check a transform output folder: every file the manifest lists (size
 * and CRC-32), and everything else the folder holds: leftovers of interrupted runs (temporary
 * files, plan folders, journals of a run that did not finish, the cluster folder), files and
 * `rank_N` folders the manifest does not list. `ok` only when all is right.
 */
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { fileCrc32Of } from './file-crc.js';
import { rankOfFolderName } from '../formats/detect.js';
import { CLUSTER_DIR_NAME, journalFiles, readDestination, TRANSFORM_MANIFEST_NAME } from './records.js';

export interface VerifyFileResult {
  readonly rank: number;
  readonly path: string;
  readonly ok: boolean;
  readonly expectedSize: number;
  readonly size: number | null;
  readonly expectedCrc32: number;
  readonly crc32: number | null;
  readonly problem?: string;
}

export interface VerifyReport {
  readonly dir: string;
  readonly ok: boolean;
  /** Every destination rank is listed in the manifest. */
  readonly complete: boolean;
  readonly worldSize: number;
  readonly files: readonly VerifyFileResult[];
  readonly missingRanks: readonly number[];
  /** Leftovers of interrupted runs (relative paths; folders end in `/`). */
  readonly leftovers: readonly string[];
  /** Files the manifest does not list (relative paths). */
  readonly unlisted: readonly string[];
  /** rank_N folders of ranks the manifest does not list, and other folders. */
  readonly unlistedFolders: readonly string[];
}

export async function verifyTransform(dir: string): Promise<VerifyReport> {
  const state = await readDestination(dir);
  const m = state.manifest;
  if (!state.scan.exists) throw new InputError('no such folder', { file: dir });
  const journals = await journalFiles(dir);
  if (m === null && journals.length === 0) throw new InputError(`no readable ${TRANSFORM_MANIFEST_NAME} (not a transform output folder?)`, { file: dir });
  const files: VerifyFileResult[] = [];
  for (const f of m?.files ?? []) {
    const base = { rank: f.rank, path: f.path, expectedSize: f.size, expectedCrc32: f.crc32 };
    try {
      const { size, crc32 } = await fileCrc32Of(join(dir, f.path));
      const problem = size !== f.size ? `size ${size}, manifest says ${f.size}` : crc32 !== f.crc32 ? `CRC-32 ${crc32.toString(16)}, manifest says ${f.crc32.toString(16)}` : undefined;
      files.push({ ...base, ok: problem === undefined, size, crc32, ...(problem !== undefined ? { problem } : {}) });
    } catch (err) {
      files.push({ ...base, ok: false, size: null, crc32: null, problem: (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : String(err) });
    }
  }
  const world = m?.worldSize ?? state.records.find((r) => r.worldSize !== undefined)?.worldSize ?? 0;
  const listed = new Set((m?.files ?? []).map((f) => f.rank));
  const missingRanks: number[] = [];
  for (let r = 0; r < world; r++) if (!listed.has(r)) missingRanks.push(r);
  const leftovers = [
    ...state.scan.temps,
    ...state.scan.planDirs.map((d) => `${d}/`),
    ...(state.scan.clusterDir ? [`${CLUSTER_DIR_NAME}/`] : []),
    ...journals.map((j) => `${j} (a run that did not finish)`),
  ];
  const listedPaths = new Set((m?.files ?? []).map((f) => f.path));
  const unlisted = state.scan.files.filter((f) => !listedPaths.has(f));
  const listedDirs = new Set((m?.files ?? []).map((f) => f.path.split('/')[0] as string));
  const unlistedFolders = [
    ...state.scan.rankDirs.filter((d) => !listedDirs.has(d) && rankOfFolderName(d) !== null).map((d) => `${d}/`),
    ...state.scan.otherDirs.map((d) => `${d}/`),
  ];
  const ok = m !== null && files.every((f) => f.ok) && missingRanks.length === 0 && leftovers.length === 0 && unlisted.length === 0 && unlistedFolders.length === 0;
  return { dir, ok, complete: missingRanks.length === 0 && m !== null, worldSize: world, files, missingRanks, leftovers, unlisted, unlistedFolders };
}
