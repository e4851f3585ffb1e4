/**
 * A plan on disk, for processes that execute a plan they did not build (transform workers, the
 * launcher's converter ranks): `<name>` holds the plan without the sources' indexes (small: read
 * whole), `<name>.index` holds every source's index one after another; each source in the plan
 * names its byte range and sha256, so a process reads and parses only the indexes of the sources
 * it opens. Both files are written under temporary names and renamed.
 */
import { open } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { FailureError, InputError } from '../errors.js';
import { AtomicFile, writeFileAtomic } from '../formats/atomic.js';
import { defaultSourceIO, type IndexedEntry, type OpenIndexedOptions, type SourceIndex, type SourceIO } from '../formats/source-index.js';
import type { TensorSource } from '../formats/types.js';
import { canonicalJson, planCore, planFingerprint, sha256 } from './fingerprint.js';
import type { Plan, PlanEntry, PlanSource } from './types.js';

export const PLAN_INDEX_SUFFIX = '.index';

/**
 * Write `plan` to `path` and its sources' indexes to `path + '.index'`. Returns the plan's
 * fingerprint (the same as `plan.fingerprint`).
 */
export async function writePlanFile(plan: Plan, path: string): Promise<string> {
  const indexPath = `${path}${PLAN_INDEX_SUFFIX}`;
  const index = await AtomicFile.create(indexPath);
  const files: PlanSource[] = [];
  try {
    let at = 0;
    for (const s of plan.source.files) {
      const bytes = Buffer.from(canonicalJson(await sourceEntries(s)), 'utf8');
      await index.write(bytes);
      const { entries: _e, indexRef: _r, ...head } = s;
      files.push({ ...head, indexRef: { file: basename(indexPath), offset: at, length: bytes.byteLength } });
      at += bytes.byteLength;
    }
    await index.commit();
  } catch (err) {
    await index.abort();
    throw err;
  }
  const core = { ...planCore(plan), source: { ...plan.source, files }, fingerprint: plan.fingerprint };
  await writeFileAtomic(path, `${JSON.stringify(core)}\n`);
  return plan.fingerprint;
}

/**
 * Read a plan file. With `fingerprint`, an InputError when the file holds another plan. The
 * sources carry `indexRef` (absolute path of the index file) instead of their entries.
 */
export async function readPlanFile(path: string, fingerprint?: string): Promise<Plan> {
  let text: string;
  try {
    const fh = await open(path, 'r');
    try {
      text = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw new InputError(`cannot read the plan file (${(err as NodeJS.ErrnoException).code ?? String(err)})`, { file: path });
  }
  let plan: Plan;
  try {
    plan = JSON.parse(text) as Plan;
  } catch {
    throw new InputError('the plan file is not valid JSON', { file: path });
  }
  if (plan.version !== 2 || typeof plan.fingerprint !== 'string') throw new InputError('not a plan file of this msckpt version', { file: path });
  const actual = planFingerprint(plan);
  if (actual !== plan.fingerprint) throw new InputError('the plan file is damaged (its content does not match its fingerprint)', { file: path });
  if (fingerprint !== undefined && fingerprint !== plan.fingerprint) {
    throw new InputError(`holds plan ${plan.fingerprint.slice(0, 12)}, expected ${fingerprint.slice(0, 12)}`, { file: path });
  }
  const dir = dirname(path);
  const files = plan.source.files.map((s) => (s.indexRef === undefined ? s : { ...s, indexRef: { ...s.indexRef, file: join(dir, basename(s.indexRef.file)) } }));
  return { ...plan, source: { ...plan.source, files } };
}

/** A source's entries: held in the plan, or read from the plan file's index (sha256 checked). */
export async function sourceEntries(s: PlanSource): Promise<readonly PlanEntry[]> {
  if (s.entries !== undefined) return s.entries;
  const ref = s.indexRef;
  if (ref === undefined) throw new FailureError(`the plan holds no index of source rank ${s.rank}`, { file: s.path });
  const buf = Buffer.alloc(ref.length);
  const fh = await open(ref.file, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new InputError(`cannot read the plan's source index (${err.code ?? String(err)})`, { file: ref.file });
  });
  try {
    let done = 0;
    while (done < ref.length) {
      const { bytesRead } = await fh.read(buf, done, ref.length - done, ref.offset + done);
      if (bytesRead === 0) throw new InputError('the plan\'s source index is shorter than the plan says', { file: ref.file });
      done += bytesRead;
    }
  } finally {
    await fh.close();
  }
  if (sha256(buf) !== s.indexSha256) throw new InputError(`the index of source rank ${s.rank} is damaged (sha256 differs)`, { file: ref.file });
  return JSON.parse(buf.toString('utf8')) as PlanEntry[];
}

/** The index of a plan source, as `openIndexed` takes it. */
export async function sourceIndexOf(s: PlanSource): Promise<SourceIndex> {
  if (s.format === null) throw new FailureError(`source rank ${s.rank} was planned from entries in memory and has no files to open`, { file: s.path });
  const entries = await sourceEntries(s);
  for (const e of entries) if (e.at === undefined) throw new FailureError('the plan\'s index has no byte location for an entry', { file: s.path, tensor: e.name });
  return {
    format: s.format, path: s.path, files: s.files, entries: entries as readonly IndexedEntry[],
    ...(s.bodyBytes !== undefined ? { bodyBytes: s.bodyBytes } : {}),
    ...(s.storedCrc !== undefined ? { storedCrc: s.storedCrc } : {}),
  };
}

/** Open a plan source from its index (no header read; files checked unchanged). */
export async function openPlanSource(s: PlanSource, io: SourceIO = defaultSourceIO, opts: OpenIndexedOptions = {}): Promise<TensorSource> {
  return io.open(await sourceIndexOf(s), opts);
}
