/** `verifyTransform(dir)`: re-check every file the transform manifest lists (size and CRC-32). */
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { fileCrc32Of } from './file-crc.js';
import { TRANSFORM_MANIFEST_NAME, readTransformManifest } from './transform.js';

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
}

export async function verifyTransform(dir: string): Promise<VerifyReport> {
  const m = await readTransformManifest(dir);
  if (m === null) throw new InputError(`no readable ${TRANSFORM_MANIFEST_NAME} (not a transform output folder?)`, { file: dir });
  const files: VerifyFileResult[] = [];
  for (const f of m.files) {
    const base = { rank: f.rank, path: f.path, expectedSize: f.size, expectedCrc32: f.crc32 };
    try {
      const { size, crc32 } = await fileCrc32Of(join(dir, f.path));
      const problem = size !== f.size ? `size ${size}, manifest says ${f.size}` : crc32 !== f.crc32 ? `CRC-32 ${crc32.toString(16)}, manifest says ${f.crc32.toString(16)}` : undefined;
      files.push({ ...base, ok: problem === undefined, size, crc32, ...(problem !== undefined ? { problem } : {}) });
    } catch (err) {
      files.push({ ...base, ok: false, size: null, crc32: null, problem: (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : String(err) });
    }
  }
  const listed = new Set(m.files.map((f) => f.rank));
  const missingRanks: number[] = [];
  for (let r = 0; r < m.worldSize; r++) if (!listed.has(r)) missingRanks.push(r);
  return { dir, ok: files.every((f) => f.ok) && missingRanks.length === 0, complete: missingRanks.length === 0, worldSize: m.worldSize, files, missingRanks };
}
