/**
 * What a path holds, and which file of each rank folder counts: the one resolver that every
 * command and the launcher call (inspect, plan, rank-list, transform, unify, lora-merge, the
 * ckpt <-> safetensors conversions, the launcher's check and source listing).
 *
 * A weights path is one of:
 * - `file`: one complete weights file, `.ckpt` or `.safetensors` (told by content);
 * - `index`: an HF `*.index.json` (given, or the only one in the folder given);
 * - `unified`: a folder holding `param_name_map.json` (MindSpore's unified safetensors);
 * - `files`: a folder of complete weights files, each its own source named by its stem (text
 *   before the first '.'), as mindformers' launcher treats them;
 * - `ranks`: a folder of `rank_0 .. rank_{N-1}` folders (contiguous from 0, else an InputError
 *   naming the missing one), each holding one or more weights files of which one counts.
 * A strategy path (`resolveStrategy`) is a strategy file or a folder of per-rank/per-stage files.
 *
 * The file that counts in a rank folder, one rule (mindformers' `get_last_checkpoint`): the
 * newest by modification time; ties broken by the (epoch, step) integers at the end of the name,
 * then by name. With `pick: 'name'`: the largest (epoch, step), then the name (MindSpore's
 * `transform_checkpoints`). Every choice among several is reported as a notice.
 *
 * Every file is reported with the path as given and its symlink-resolved real path.
 */
import { readdir, realpath, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { InputError } from '../errors.js';
import { detectKind, rankOfFolderName } from './detect.js';
import { listStrategyInputs } from './strategy/merge.js';

/** The one weights-format type: MindSpore checkpoints or safetensors. */
export type WeightsFormat = 'ckpt' | 'safetensors';

/** Which file of a rank folder holding several counts (see the module comment). */
export type PickRule = 'newest' | 'name';

export const DEFAULT_PICK: PickRule = 'newest';

/** A file found on disk. */
export interface FoundFile {
  /** The path as given (joined from the argument). */
  readonly path: string;
  /** The same file with symlinks resolved. */
  readonly realPath: string;
  readonly size: number;
  readonly mtimeMs: number;
}

export interface RankFolder {
  readonly rank: number;
  readonly dir: string;
  /** The file that counts. */
  readonly file: FoundFile;
  /** The folder's files of the format, in pick order: the one that counts is last. */
  readonly candidates: readonly FoundFile[];
}

interface ResolvedBase {
  /** The path as given. */
  readonly path: string;
  /** Messages for the user (which file of a folder counts, which format was taken). */
  readonly notices: readonly string[];
}

export type ResolvedWeights =
  | (ResolvedBase & { readonly kind: 'file'; readonly format: WeightsFormat; readonly file: FoundFile })
  | (ResolvedBase & { readonly kind: 'index' | 'unified'; readonly format: 'safetensors'; readonly index: FoundFile; readonly files: readonly FoundFile[] })
  | (ResolvedBase & { readonly kind: 'files'; readonly format: WeightsFormat; readonly sources: ReadonlyArray<{ readonly name: string; readonly file: FoundFile }> })
  | (ResolvedBase & {
      readonly kind: 'ranks';
      readonly format: WeightsFormat;
      readonly rule: PickRule;
      readonly ranks: readonly RankFolder[];
      /** Weights files of the format lying beside the rank folders (not used as sources). */
      readonly loose: readonly FoundFile[];
    });

export type ResolvedStrategy =
  | { readonly kind: 'strategy'; readonly path: string; readonly file: FoundFile }
  | { readonly kind: 'strategy-folder'; readonly path: string; readonly files: readonly FoundFile[] };

export interface ResolveOptions {
  /** Only files of this format count in folders (default: the one present; both: safetensors, announced). */
  readonly format?: WeightsFormat;
  /** Which file of a rank folder counts (default `newest`). */
  readonly pick?: PickRule;
}

const EXT: Record<WeightsFormat, RegExp> = { ckpt: /\.ckpt$/i, safetensors: /\.safetensors$/i };

function formatOfName(name: string): WeightsFormat | null {
  if (EXT.safetensors.test(name)) return 'safetensors';
  if (EXT.ckpt.test(name)) return 'ckpt';
  return null;
}

/** The last two integers of a file name without its extension: MindSpore's (epoch, step); -1 when absent. */
export function epochStepOf(name: string): [number, number] {
  const ints = (name.replace(/\.(ckpt|safetensors)$/i, '').match(/\d+/g) ?? []).map(Number);
  return [ints[ints.length - 2] ?? -1, ints[ints.length - 1] ?? -1];
}

function nameCompare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** Orders candidates so that the one that counts under `rule` comes last. */
export function pickCompare(rule: PickRule): (a: { path: string; mtimeMs: number }, b: { path: string; mtimeMs: number }) => number {
  return (a, b) => {
    const na = basename(a.path);
    const nb = basename(b.path);
    const [a1, a2] = epochStepOf(na);
    const [b1, b2] = epochStepOf(nb);
    const byName = a1 - b1 || a2 - b2 || nameCompare(na, nb);
    return rule === 'newest' ? a.mtimeMs - b.mtimeMs || byName : byName;
  };
}

/** The candidate that counts under `rule` (undefined for none). */
export function pickWeightFile<T extends { path: string; mtimeMs: number }>(candidates: readonly T[], rule: PickRule = DEFAULT_PICK): T | undefined {
  return [...candidates].sort(pickCompare(rule))[candidates.length - 1];
}

export function pickRuleText(rule: PickRule): string {
  return rule === 'newest'
    ? 'newest by modification time, as mindformers loads'
    : 'largest epoch/step in its name, as MindSpore transform_checkpoints picks';
}

async function statOrNull(path: string): Promise<Awaited<ReturnType<typeof stat>> | null> {
  try {
    return await stat(path);
  } catch {
    return null;
  }
}

/** A file as the resolver reports it: the path as given, its real path, size and modification time. */
export async function foundFile(path: string, st?: Awaited<ReturnType<typeof stat>>): Promise<FoundFile> {
  const s = st ?? (await stat(path));
  let real = path;
  try {
    real = await realpath(path);
  } catch {
    real = resolve(path);
  }
  return { path, realPath: real, size: Number(s.size), mtimeMs: Number(s.mtimeMs) };
}

interface Listing {
  /** rank -> folder name */
  readonly ranks: Map<number, string>;
  /** Regular files (symlinks followed), not hidden, by name order. */
  readonly files: Array<{ name: string; st: Awaited<ReturnType<typeof stat>> }>;
}

/** One folder: its rank_N folders and its files (symlinks followed; hidden names skipped). */
async function listFolder(dir: string, withFiles: boolean): Promise<Listing> {
  const ranks = new Map<number, string>();
  const files: Listing['files'] = [];
  for (const d of await readdir(dir, { withFileTypes: true })) {
    if (d.name.startsWith('.')) continue;
    const r = rankOfFolderName(d.name);
    if (r !== null) {
      const isDir = d.isDirectory() || (d.isSymbolicLink() && (await statOrNull(join(dir, d.name)))?.isDirectory() === true);
      if (!isDir) continue;
      if (ranks.has(r)) throw new InputError(`two folders name rank ${r} (${ranks.get(r)} and ${d.name})`, { file: join(dir, d.name) });
      ranks.set(r, d.name);
      continue;
    }
    if (!withFiles || !(d.isFile() || d.isSymbolicLink())) continue;
    const st = await statOrNull(join(dir, d.name));
    if (st !== null && st.isFile()) files.push({ name: d.name, st });
  }
  files.sort((a, b) => nameCompare(a.name, b.name));
  return { ranks, files };
}

/** The first rank absent from 0..max, or undefined when the ranks are contiguous from 0. */
function firstGap(ranks: Iterable<number>): number | undefined {
  const sorted = [...ranks].sort((a, b) => a - b);
  for (let i = 0; i < sorted.length; i++) if (sorted[i] !== i) return i;
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// survey: a cheap look (one readdir, no contents), never an error for what it finds

export interface WeightsSurvey {
  /** Absolute path (not symlink-resolved). */
  readonly path: string;
  readonly kind: 'missing' | 'file' | 'folder';
  /** rank_N folder numbers found, ascending. */
  readonly rankFolders: readonly number[];
  /** First rank absent from 0..max (a gap), else undefined. */
  readonly missingRank: number | undefined;
  /** Files directly inside a folder whose names are of `format` (ckpt: `*.ckpt`; safetensors: `*.safetensors`, `*.safetensors.index.json`), sorted. */
  readonly files: readonly string[];
}

const SURVEY_EXT: Record<WeightsFormat, RegExp> = { ckpt: /\.ckpt$/, safetensors: /\.safetensors$|\.safetensors\.index\.json$/ };

/**
 * What a checkpoint path holds at a glance (one directory listing, nothing read), for checks
 * that report every problem rather than stop at the first (the run-YAML rules).
 */
export async function surveyWeights(path: string, format: WeightsFormat = 'ckpt'): Promise<WeightsSurvey> {
  const abs = resolve(path);
  const st = await statOrNull(abs);
  if (st === null) return { path: abs, kind: 'missing', rankFolders: [], missingRank: undefined, files: [] };
  if (!st.isDirectory()) return { path: abs, kind: 'file', rankFolders: [], missingRank: undefined, files: [abs] };
  const listing = await listFolder(abs, true);
  const rankFolders = [...listing.ranks.keys()].sort((a, b) => a - b);
  const files = listing.files.filter((f) => SURVEY_EXT[format].test(f.name)).map((f) => join(abs, f.name)).sort();
  return { path: abs, kind: 'folder', rankFolders, missingRank: firstGap(rankFolders), files };
}

// ---------------------------------------------------------------------------------------------
// resolve: what is there, checked, with the file of each rank folder

/** Text before the first '.' of a file's base name: the name mindformers gives a complete file's source. */
export function sourceStem(path: string): string {
  return basename(path).split('.')[0] || 'checkpoint';
}

async function resolveRanks(dir: string, listing: Listing, opts: ResolveOptions): Promise<ResolvedWeights> {
  const count = listing.ranks.size;
  const gap = firstGap(listing.ranks.keys());
  if (gap !== undefined) {
    throw new InputError(`rank folders must be rank_0..rank_${count - 1} without gaps; rank_${gap} is missing`, { file: dir });
  }
  const rule = opts.pick ?? DEFAULT_PICK;
  const perRank: Array<{ rank: number; dir: string; files: Array<{ name: string; st: Awaited<ReturnType<typeof stat>> }> }> = [];
  const seen = new Set<WeightsFormat>();
  for (let r = 0; r < count; r++) {
    const rd = join(dir, listing.ranks.get(r) as string);
    const files = (await listFolder(rd, true)).files.filter((f) => formatOfName(f.name) !== null);
    for (const f of files) seen.add(formatOfName(f.name) as WeightsFormat);
    perRank.push({ rank: r, dir: rd, files });
  }
  const notices: string[] = [];
  let format: WeightsFormat;
  if (opts.format !== undefined) format = opts.format;
  else if (seen.size > 1) {
    format = 'safetensors';
    notices.push('rank folders hold both .ckpt and .safetensors files; using the .safetensors files (give the source format to choose .ckpt)');
  } else format = seen.has('safetensors') ? 'safetensors' : 'ckpt';
  const ranks: RankFolder[] = [];
  const cmp = pickCompare(rule);
  for (const p of perRank) {
    const mine = p.files.filter((f) => formatOfName(f.name) === format);
    if (mine.length === 0) throw new InputError(`holds no .${format} file`, { file: p.dir });
    const candidates = (await Promise.all(mine.map((f) => foundFile(join(p.dir, f.name), f.st)))).sort(cmp);
    const file = candidates[candidates.length - 1] as FoundFile;
    if (candidates.length > 1) notices.push(`rank_${p.rank}: ${candidates.length} .${format} files, using ${basename(file.path)} (${pickRuleText(rule)})`);
    ranks.push({ rank: p.rank, dir: p.dir, file, candidates });
  }
  const loose = await Promise.all(listing.files.filter((f) => formatOfName(f.name) === format).map((f) => foundFile(join(dir, f.name), f.st)));
  return { kind: 'ranks', path: dir, format, rule, ranks, loose, notices };
}

async function safetensorsFilesIn(dir: string, listing: Listing): Promise<FoundFile[]> {
  return Promise.all(listing.files.filter((f) => formatOfName(f.name) === 'safetensors').map((f) => foundFile(join(dir, f.name), f.st)));
}

/**
 * What the weights path `path` holds (see the module comment). InputError for a path that does
 * not exist, a strategy file, a rank tree with a gap or an empty rank folder, a folder holding
 * nothing usable, or several HF indexes.
 */
export async function resolveWeights(path: string, opts: ResolveOptions = {}): Promise<ResolvedWeights> {
  const st = await statOrNull(path);
  if (st === null) throw new InputError('no such file or directory', { file: path });
  if (!st.isDirectory()) {
    const kind = await detectKind(path);
    switch (kind) {
      case 'checkpoint':
      case 'encrypted': // opening it refuses it with a clear message
        return { kind: 'file', path, format: 'ckpt', file: await foundFile(path, st), notices: [] };
      case 'safetensors':
        return { kind: 'file', path, format: 'safetensors', file: await foundFile(path, st), notices: [] };
      case 'safetensors-index': {
        const dir = dirname(path);
        return { kind: 'index', path, format: 'safetensors', index: await foundFile(path, st), files: await safetensorsFilesIn(dir, await listFolder(dir, true)), notices: [] };
      }
      case 'strategy':
      case 'strategy-json':
        throw new InputError('this is a parallel strategy file, not a weights file', { file: path });
      default:
        throw new InputError(
          'not a recognised weights file (expected a MindSpore .ckpt, a safetensors file or index, a unified safetensors folder or a folder of rank_N folders)',
          { file: path },
        );
    }
  }
  const listing = await listFolder(path, true);
  if (listing.ranks.size > 0) return resolveRanks(path, listing, opts);
  if (opts.format !== 'ckpt') {
    const names = listing.files.map((f) => f.name);
    if (names.includes('param_name_map.json')) {
      const index = await foundFile(join(path, 'param_name_map.json'));
      return { kind: 'unified', path, format: 'safetensors', index, files: await safetensorsFilesIn(path, listing), notices: [] };
    }
    const idx = names.filter((n) => n.endsWith('.index.json'));
    if (idx.length > 1) throw new InputError(`holds ${idx.length} index files (${idx.join(', ')}); name the one to use`, { file: path });
    if (idx.length === 1) {
      const index = await foundFile(join(path, idx[0] as string));
      return { kind: 'index', path, format: 'safetensors', index, files: await safetensorsFilesIn(path, listing), notices: [] };
    }
  }
  const byFormat = (f: WeightsFormat): Listing['files'] => listing.files.filter((x) => formatOfName(x.name) === f);
  const notices: string[] = [];
  let format: WeightsFormat | undefined = opts.format;
  if (format === undefined) {
    const st = byFormat('safetensors').length;
    const ck = byFormat('ckpt').length;
    if (st > 0 && ck > 0) notices.push('the folder holds both .ckpt and .safetensors files; using the .safetensors files (give the source format to choose .ckpt)');
    format = st > 0 ? 'safetensors' : ck > 0 ? 'ckpt' : undefined;
  }
  const mine = format === undefined ? [] : byFormat(format);
  if (format === undefined || mine.length === 0) {
    throw new InputError(
      `holds no rank_N folders, param_name_map.json or *.index.json${format === undefined ? ' and no weights files' : ` and no .${format} files`} (expected a checkpoint file, a folder of rank_0, rank_1, ..., a unified safetensors folder or an index)`,
      { file: path },
    );
  }
  const sources = await Promise.all(mine.map(async (f) => ({ name: sourceStem(f.name), file: await foundFile(join(path, f.name), f.st) })));
  return { kind: 'files', path, format, sources, notices };
}

/** A strategy path: one file, or a folder of per-rank / per-stage files (merged before use). */
export async function resolveStrategy(path: string): Promise<ResolvedStrategy> {
  const st = await statOrNull(path);
  if (st === null) throw new InputError('no such file or directory', { file: path });
  if (!st.isDirectory()) return { kind: 'strategy', path, file: await foundFile(path, st) };
  const files = await Promise.all((await listStrategyInputs(path)).map((f) => foundFile(f)));
  return { kind: 'strategy-folder', path, files };
}

/** What a path holds: weights (with the HF `config.json` of a model folder) or a strategy. */
export type ResolvedPath =
  | { readonly role: 'weights'; readonly weights: ResolvedWeights; readonly config: FoundFile | null }
  | { readonly role: 'strategy'; readonly strategy: ResolvedStrategy };

/**
 * Whether `path` holds weights or a strategy, for commands that take either (`inspect`), through
 * `resolveWeights` and `resolveStrategy`. A file is told by content. A folder is a strategy
 * folder when it holds no rank_N folders, no safetensors, index or param_name_map.json, and its
 * first `*.ckpt` (else `*.json`) file is a strategy by content (mindformers' `output/strategy`);
 * otherwise weights, with `config` set when the folder holds an HF `config.json` beside
 * safetensors weights (an HF model folder).
 */
export async function resolvePath(path: string, opts: ResolveOptions = {}): Promise<ResolvedPath> {
  const st = await statOrNull(path);
  if (st === null) throw new InputError('no such file or directory', { file: path });
  if (!st.isDirectory()) {
    const kind = await detectKind(path);
    if (kind === 'strategy' || kind === 'strategy-json') return { role: 'strategy', strategy: await resolveStrategy(path) };
    return { role: 'weights', weights: await resolveWeights(path, opts), config: null };
  }
  const listing = await listFolder(path, true);
  const names = listing.files.map((f) => f.name);
  if (listing.ranks.size === 0 && !names.some((n) => formatOfName(n) === 'safetensors' || n === 'param_name_map.json' || n.endsWith('.index.json'))) {
    const first = names.find((n) => EXT.ckpt.test(n)) ?? names.find((n) => /\.json$/i.test(n) && n !== 'config.json');
    if (first !== undefined) {
      const kind = await detectKind(join(path, first));
      if (kind === 'strategy' || kind === 'strategy-json') return { role: 'strategy', strategy: await resolveStrategy(path) };
    }
  }
  const weights = await resolveWeights(path, opts);
  const cfg = listing.files.find((f) => f.name === 'config.json');
  const hf = cfg !== undefined && weights.format === 'safetensors' && (weights.kind === 'index' || weights.kind === 'files');
  return { role: 'weights', weights, config: hf ? await foundFile(join(path, 'config.json'), cfg.st) : null };
}

/**
 * Every weights file of `format` at `path`: the file itself, or a folder's own files and every
 * file of each rank_N folder (all candidates, not only the one that counts), in name order, for
 * conversions that treat every file (ckpt <-> safetensors of a whole tree).
 */
export async function listWeightFiles(path: string, format: WeightsFormat): Promise<FoundFile[]> {
  const st = await statOrNull(path);
  if (st === null) throw new InputError('no such file or directory', { file: path });
  if (!st.isDirectory()) return [await foundFile(path, st)];
  const listing = await listFolder(path, true);
  const items: Array<{ key: string; files: () => Promise<FoundFile[]> }> = [];
  for (const f of listing.files) {
    if (formatOfName(f.name) === format) items.push({ key: f.name, files: async () => [await foundFile(join(path, f.name), f.st)] });
  }
  for (const name of listing.ranks.values()) {
    const rd = join(path, name);
    items.push({
      key: name,
      files: async () => Promise.all((await listFolder(rd, true)).files.filter((f) => formatOfName(f.name) === format).map((f) => foundFile(join(rd, f.name), f.st))),
    });
  }
  items.sort((a, b) => nameCompare(a.key, b.key));
  const out: FoundFile[] = [];
  for (const it of items) out.push(...(await it.files()));
  return out;
}
