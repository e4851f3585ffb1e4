/**
 * What a transform output folder holds and who wrote it: the manifest
 * (`transform_manifest.json`, written last), the journals of runs not finished
 * (`transform_manifest.journal`, one line per committed file, appended and fsync'ed as each file
 * is committed; cluster processes other than the first keep `transform_manifest.journal.<k>`),
 * and a scan of the folder that sorts every entry into: listed by a record (of this plan or
 * another), leftovers of msckpt (temporary files `.<name>.<pid>.<n>.tmp`, plan folders
 * `.msckpt-plan-*`, the cluster coordination folder) and anything else (someone else's files).
 *
 * A journal starts with a header naming the plan (fingerprint, inputs) and the files it claims
 * (every output of the run, before any is written), so a file a killed run renamed into place
 * but had no time to record is still known as ours. Lines are JSON; a last line cut short by a
 * kill is ignored.
 */
import { hostname } from 'node:os';
import { open, readdir, readFile, rm, rmdir, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { fromSystemError } from '../errors.js';
import { rankOfFolderName } from '../formats/detect.js';
import { selfIdentity, type ProcessIdentity } from '../processes.js';
import { AtomicFile, tempNameTarget } from '../formats/atomic.js';
import type { WeightsFormat } from '../formats/resolve.js';

export const TRANSFORM_MANIFEST_NAME = 'transform_manifest.json';
export const TRANSFORM_JOURNAL_NAME = 'transform_manifest.journal';
const JOURNAL_RE = /^transform_manifest\.journal(?:\.(\d+))?$/;
/** Plan files of worker runs (`mkdtemp` under the destination folder). */
export const PLAN_DIR_PREFIX = '.msckpt-plan-';
/** The coordination folder of a transform spread over a cluster. */
export const CLUSTER_DIR_NAME = '.msckpt-cluster';

export interface ManifestFile {
  readonly rank: number;
  /** Path relative to the destination folder. */
  readonly path: string;
  readonly size: number;
  readonly crc32: number;
}

export interface TransformFingerprint {
  readonly sources: readonly { readonly path: string; readonly size: number; readonly mtimeMs: number }[];
  readonly srcStrategy: string | null;
  readonly dstStrategy: string | null;
  readonly prefix: string;
  readonly format: WeightsFormat;
  readonly worldSize: number;
  readonly crc?: boolean;
}

/** The inputs of a plan as the user named them (for messages about another plan's outputs). */
export interface TransformInputs {
  readonly source: string;
  readonly srcStrategy: string | null;
  readonly dstStrategy: string | null;
}

export interface TransformManifest {
  readonly tool: 'msckpt';
  readonly kind: 'transform_manifest';
  /** 1: before inputs and source checks were recorded. */
  readonly version: 1 | 2;
  readonly fingerprint: TransformFingerprint;
  readonly fingerprintHash: string;
  readonly inputs?: TransformInputs;
  readonly worldSize: number;
  /** True when every destination rank's file is listed. */
  readonly complete: boolean;
  readonly files: readonly ManifestFile[];
  /** Source ranks whose stored CRC was checked and found right. */
  readonly checkedSources?: readonly number[];
}

export interface JournalHeader {
  readonly kind: 'transform_journal';
  readonly version: 1;
  readonly fingerprintHash: string;
  readonly fingerprint?: TransformFingerprint;
  readonly inputs?: TransformInputs;
  readonly worldSize?: number;
  /** Files (relative paths) this run may write. */
  readonly claims: readonly string[];
  readonly host: string;
  readonly pid: number;
  /** The writing process (machine, pid, start time): alive is told apart from a reused pid. */
  readonly owner?: ProcessIdentity;
  readonly started: number;
  /** Cluster process index (absent: a single-host run). */
  readonly process?: number;
}

export type JournalLine =
  | { readonly commit: ManifestFile }
  | { readonly removed: string }
  | { readonly checked: number };

/** What one record (the manifest or a journal) says. */
export interface PlanRecord {
  readonly name: string;
  readonly kind: 'manifest' | 'journal';
  readonly fingerprintHash: string;
  readonly inputs?: TransformInputs;
  readonly worldSize?: number;
  /** Committed files by relative path (later lines win; removed ones dropped). */
  readonly files: ReadonlyMap<string, ManifestFile>;
  /** Paths claimed before writing (journals). */
  readonly claims: ReadonlySet<string>;
  /** Paths whose file was removed after its last commit line (journals). */
  readonly removed: ReadonlySet<string>;
  readonly checkedSources: ReadonlySet<number>;
  readonly header?: JournalHeader;
  readonly complete?: boolean;
}

/** An entry of the destination folder, by relative path. */
export interface FolderScan {
  readonly exists: boolean;
  /** Files at the top and in rank_N folders (relative paths), records and leftovers excluded. */
  readonly files: readonly string[];
  /** Leftovers of msckpt: temporary files, plan folders, the cluster folder (relative paths). */
  readonly temps: readonly string[];
  readonly planDirs: readonly string[];
  readonly clusterDir: boolean;
  /** rank_N folders (names). */
  readonly rankDirs: readonly string[];
  /** Folders other than rank_N and ours, and anything deeper than rank_N/ (relative paths). */
  readonly otherDirs: readonly string[];
}

export interface DestinationState {
  readonly dir: string;
  readonly manifest: TransformManifest | null;
  readonly records: readonly PlanRecord[];
  readonly scan: FolderScan;
}

export async function readTransformManifest(dstDir: string): Promise<TransformManifest | null> {
  let text: string;
  try {
    text = await readFile(join(dstDir, TRANSFORM_MANIFEST_NAME), 'utf8');
  } catch {
    return null;
  }
  try {
    const m = JSON.parse(text) as TransformManifest;
    if (m.tool !== 'msckpt' || m.kind !== 'transform_manifest' || !Array.isArray(m.files)) return null;
    return m;
  } catch {
    return null;
  }
}

function manifestRecord(m: TransformManifest): PlanRecord {
  return {
    name: TRANSFORM_MANIFEST_NAME, kind: 'manifest', fingerprintHash: m.fingerprintHash, worldSize: m.worldSize, complete: m.complete,
    ...(m.inputs !== undefined ? { inputs: m.inputs } : {}),
    files: new Map(m.files.map((f) => [f.path, f])), claims: new Set(), removed: new Set(), checkedSources: new Set(m.checkedSources ?? []),
  };
}

/** Read a journal; null when its header is unreadable. */
export async function readJournal(path: string, name: string): Promise<PlanRecord | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return null;
  }
  const lines = text.split('\n');
  let header: JournalHeader | undefined;
  const files = new Map<string, ManifestFile>();
  const removed = new Set<string>();
  const checked = new Set<number>();
  for (const line of lines) {
    if (line.trim() === '') continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      continue; // a line cut short by a kill
    }
    if (header === undefined) {
      const h = v as JournalHeader;
      if (h?.kind !== 'transform_journal' || typeof h.fingerprintHash !== 'string' || !Array.isArray(h.claims)) return null;
      header = h;
      continue;
    }
    const l = v as Partial<{ commit: ManifestFile; removed: string; checked: number }>;
    if (l.commit !== undefined && typeof l.commit.path === 'string') {
      files.set(l.commit.path, l.commit);
      removed.delete(l.commit.path);
    } else if (typeof l.removed === 'string') {
      files.delete(l.removed);
      removed.add(l.removed);
    }
    else if (typeof l.checked === 'number') checked.add(l.checked);
  }
  if (header === undefined) return null;
  return {
    name, kind: 'journal', fingerprintHash: header.fingerprintHash, header, files, removed, claims: new Set(header.claims), checkedSources: checked,
    ...(header.inputs !== undefined ? { inputs: header.inputs } : {}),
    ...(header.worldSize !== undefined ? { worldSize: header.worldSize } : {}),
  };
}

/** Sort every entry of the destination folder (see the module comment). */
export async function scanDestination(dir: string): Promise<FolderScan> {
  const empty: FolderScan = { exists: false, files: [], temps: [], planDirs: [], clusterDir: false, rankDirs: [], otherDirs: [] };
  let top;
  try {
    top = await readdir(dir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return empty;
    throw fromSystemError(err, dir, 'cannot list the destination folder');
  }
  const files: string[] = [];
  const temps: string[] = [];
  const planDirs: string[] = [];
  const rankDirs: string[] = [];
  const otherDirs: string[] = [];
  let clusterDir = false;
  for (const d of top) {
    const name = d.name;
    if (d.isDirectory()) {
      if (name.startsWith(PLAN_DIR_PREFIX)) planDirs.push(name);
      else if (name === CLUSTER_DIR_NAME) clusterDir = true;
      else if (rankOfFolderName(name) !== null) {
        rankDirs.push(name);
        for (const e of await readdir(join(dir, name), { withFileTypes: true })) {
          const rel = `${name}/${e.name}`;
          if (e.isDirectory()) otherDirs.push(rel);
          else if (tempNameTarget(e.name) !== undefined) temps.push(rel);
          else files.push(rel);
        }
      } else otherDirs.push(name);
      continue;
    }
    if (name === TRANSFORM_MANIFEST_NAME || JOURNAL_RE.test(name)) continue;
    if (tempNameTarget(name) !== undefined) temps.push(name);
    else files.push(name);
  }
  const byName = (a: string, b: string): number => a.localeCompare(b, 'en', { numeric: true });
  return {
    exists: true, files: files.sort(byName), temps: temps.sort(byName), planDirs: planDirs.sort(), clusterDir,
    rankDirs: rankDirs.sort(byName), otherDirs: otherDirs.sort(byName),
  };
}

/** The manifest, every journal and the scan of `dir`. */
export async function readDestination(dir: string): Promise<DestinationState> {
  const scan = await scanDestination(dir);
  const manifest = scan.exists ? await readTransformManifest(dir) : null;
  const records: PlanRecord[] = manifest !== null ? [manifestRecord(manifest)] : [];
  if (scan.exists) {
    const names = (await readdir(dir)).filter((n) => JOURNAL_RE.test(n)).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
    for (const n of names) {
      const j = await readJournal(join(dir, n), n);
      if (j !== null) records.push(j);
    }
  }
  return { dir, manifest, records, scan };
}

/** Journal file of cluster process `k` (the first process and single-host runs: the plain name). */
export function journalName(k?: number): string {
  return k === undefined || k === 0 ? TRANSFORM_JOURNAL_NAME : `${TRANSFORM_JOURNAL_NAME}.${k}`;
}

/** Every journal file in `dir` (names). */
export async function journalFiles(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).filter((n) => JOURNAL_RE.test(n));
}

/** A journal open for appending: one JSON line per event, fsync'ed before the call returns. */
export class Journal {
  private chain: Promise<void> = Promise.resolve();
  private constructor(
    readonly path: string,
    private fh: FileHandle | null,
  ) {}

  /** Start a journal (replacing any file of that name) with its header. */
  static async start(path: string, header: Omit<JournalHeader, 'kind' | 'version' | 'host' | 'pid' | 'owner' | 'started'>): Promise<Journal> {
    const full: JournalHeader = { kind: 'transform_journal', version: 1, ...header, host: hostname(), pid: process.pid, owner: selfIdentity(), started: Date.now() };
    // the header appears whole or not at all: written under a temporary name first
    const f = await AtomicFile.create(path);
    try {
      await f.write(Buffer.from(`${JSON.stringify(full)}\n`, 'utf8'));
      await f.commit();
    } catch (err) {
      await f.abort();
      throw err;
    }
    let fh: FileHandle;
    try {
      fh = await open(path, 'a');
    } catch (err) {
      throw fromSystemError(err, path, 'cannot open the journal');
    }
    return new Journal(path, fh);
  }

  /** Append one line (in call order) and flush it to the disk. */
  append(line: JournalLine): Promise<void> {
    const text = Buffer.from(`${JSON.stringify(line)}\n`, 'utf8');
    const p = this.chain.then(async () => {
      const fh = this.fh;
      if (fh === null) return;
      try {
        await fh.write(text);
        await fh.datasync();
      } catch (err) {
        throw fromSystemError(err, this.path, 'cannot write the journal');
      }
    });
    this.chain = p.catch(() => undefined);
    return p;
  }

  async close(): Promise<void> {
    await this.chain;
    const fh = this.fh;
    this.fh = null;
    await fh?.close().catch(() => undefined);
  }
}

/** Write the manifest atomically. `beforeRename` runs with the temporary file complete (fault injection). */
export async function writeManifestFile(dir: string, manifest: TransformManifest, beforeRename?: () => void): Promise<string> {
  const path = join(dir, TRANSFORM_MANIFEST_NAME);
  const f = await AtomicFile.create(path);
  try {
    await f.write(Buffer.from(`${JSON.stringify(manifest, null, 1)}\n`, 'utf8'));
    beforeRename?.();
    await f.commit();
  } catch (err) {
    await f.abort();
    throw err;
  }
  return path;
}

/** Remove files (relative paths in `dir`) and the rank_N folders they leave empty. */
export async function removeOutputs(dir: string, rels: Iterable<string>): Promise<number> {
  let n = 0;
  const parents = new Set<string>();
  for (const rel of rels) {
    const abs = join(dir, rel);
    const st = await stat(abs).catch(() => null);
    if (st === null || !st.isFile()) continue;
    try {
      await rm(abs);
    } catch (err) {
      throw fromSystemError(err, abs, 'cannot remove an output of this plan');
    }
    n++;
    const slash = rel.indexOf('/');
    if (slash > 0) parents.add(rel.slice(0, slash));
  }
  for (const p of parents) if (rankOfFolderName(p) !== null) await rmdir(join(dir, p)).catch(() => undefined);
  return n;
}

/** The files and checked sources the records of one plan list, applied in order (manifest, then journals). */
export function foldRecords(records: readonly PlanRecord[], fingerprintHash: string): { files: Map<string, ManifestFile>; checked: Set<number> } {
  const files = new Map<string, ManifestFile>();
  const checked = new Set<number>();
  for (const r of records) {
    if (r.fingerprintHash !== fingerprintHash) continue;
    for (const p of r.removed) files.delete(p);
    for (const [p, f] of r.files) files.set(p, f);
    for (const c of r.checkedSources) checked.add(c);
  }
  return { files, checked };
}
