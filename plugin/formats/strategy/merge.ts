/**
 * Merging per-stage strategy files into one pipeline strategy (spec §2.3, MindSpore's
 * `merge_pipeline_strategys`): skip files whose bytes equal one already read, take each file's
 * stage from its first strategy item, skip stages already merged, prefix layout names with
 * `{stage}-`, concatenate, `current_stage=1`. Inputs are never modified or deleted.
 *
 * Scales to thousands of per-rank files: files are read a batch at a time, hashed, and only files
 * with new bytes are parsed (all ranks of one stage write identical bytes).
 */
import { createHash } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { InputError } from '../../errors.js';
import { canonicalPath, refuseOverlaps } from '../../real-paths.js';
import { readSmallFile, detectStrategyFormat, parseStrategyBytes, writeStrategy, type StrategyFormat } from './io.js';
import type { ParamLayout, Strategy, StrategyItem } from './model.js';
import { makeStrategy } from './names.js';

export const DEFAULT_MERGED_STRATEGY_NAME = 'merged_ckpt_strategy.ckpt';

export interface MergeStrategiesOptions {
  /** Output encoding; default: JSON when `outFile` ends in `.json`, protobuf otherwise. */
  format?: StrategyFormat;
  /** Called after each input file (for progress). */
  onFile?: (done: number, total: number) => void;
}

export interface MergeReport {
  /** The merged file written. */
  output: string;
  format: StrategyFormat;
  /** Input files considered. */
  files: number;
  /** Files skipped because their bytes equal an earlier file. */
  duplicates: number;
  /** Files skipped because their stage was already merged from another (different) file. */
  skippedStages: number;
  /** Stages merged, ascending, and the file each came from. */
  stages: number[];
  sources: Array<{ stage: number; file: string }>;
  /** Stages between 0 and the highest one that no input provided (a warning, not an error). */
  missingStages: number[];
  layouts: number;
  items: number;
}

const BATCH = 64;

function byName(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

/** The strategy files named by `inputs`: directories give their `*.ckpt` or `*.json` files. */
export async function listStrategyInputs(inputs: string | readonly string[], exclude?: string): Promise<string[]> {
  const list = typeof inputs === 'string' ? [inputs] : [...inputs];
  if (list.length === 0) throw new InputError('no strategy files or directory given');
  const out: string[] = [];
  // the output of an earlier merge in an input folder is not an input (compared after resolving symlinks)
  const excluded = exclude !== undefined ? await canonicalPath(exclude) : undefined;
  for (const p of list) {
    let st;
    try {
      st = await stat(p);
    } catch {
      throw new InputError('no such file or directory', { file: p });
    }
    if (!st.isDirectory()) {
      out.push(p);
      continue;
    }
    const listed = (await readdir(p, { withFileTypes: true })).filter((d) => d.isFile() && /\.(ckpt|json)$/i.test(d.name)).map((d) => d.name);
    const names: string[] = [];
    for (const n of listed) if (excluded === undefined || (await canonicalPath(join(p, n))) !== excluded) names.push(n);
    names.sort(byName);
    const exts = new Set(names.map((n) => extname(n).toLowerCase()));
    if (exts.size > 1) throw new InputError('holds both *.ckpt and *.json strategy files; merge one kind at a time', { file: p });
    if (names.length === 0) throw new InputError('holds no *.ckpt or *.json strategy files', { file: p });
    for (const n of names) out.push(join(p, n));
  }
  return out;
}

/** One input file of a merge: the stage it holds and whether its bytes repeat an earlier file's. */
export interface MergedInputFile {
  readonly path: string;
  /** The pipeline stage of its first strategy item. */
  readonly stage: number;
  /** The earlier file with identical bytes (all ranks of one stage write the same bytes), if any. */
  readonly sameAs?: string;
  /** True when its stage was merged from another file with different bytes. */
  readonly skippedStage?: boolean;
}

/** A merge done in memory: the merged strategy and what each input contributed. */
export interface InMemoryMerge {
  readonly strategy: Strategy;
  readonly format: StrategyFormat | null;
  readonly files: readonly MergedInputFile[];
  readonly duplicates: number;
  readonly skippedStages: number;
  readonly stages: number[];
  readonly sources: Array<{ stage: number; file: string }>;
  /** Stages between 0 and the highest one that no input provided. */
  readonly missingStages: number[];
}

/**
 * Merge per-stage strategy files in memory (the rule of the module comment), writing nothing:
 * `mergeStrategies` writes the result; `inspect` summarises it.
 */
export async function mergeStrategiesInMemory(
  inputs: string | readonly string[],
  opts: { exclude?: string; onFile?: (done: number, total: number) => void; path?: string } = {},
): Promise<InMemoryMerge> {
  const files = await listStrategyInputs(inputs, opts.exclude);
  const seen = new Map<string, { file: string; stage: number }>();
  const byStage = new Map<number, { file: string; strategy: Strategy }>();
  const perFile: MergedInputFile[] = [];
  let duplicates = 0;
  let skippedStages = 0;
  let inputFormat: StrategyFormat | null = null;
  let firstFile = '';
  for (let b = 0; b < files.length; b += BATCH) {
    const batch = files.slice(b, b + BATCH);
    const contents = await Promise.all(batch.map((f) => readSmallFile(f)));
    for (let i = 0; i < batch.length; i++) {
      const file = batch[i] as string;
      const bytes = contents[i] as Uint8Array;
      const format = bytes.byteLength > 0 ? detectStrategyFormat(bytes) : null;
      if (format !== null) {
        if (inputFormat === null) {
          inputFormat = format;
          firstFile = file;
        } else if (format !== inputFormat) {
          throw new InputError(`is a ${format} strategy but ${firstFile} is ${inputFormat}; mixing the two is not allowed`, { file });
        }
      }
      const hash = createHash('sha256').update(bytes).digest('hex');
      const earlier = seen.get(hash);
      if (earlier !== undefined) {
        duplicates++;
        perFile.push({ path: file, stage: earlier.stage, sameAs: earlier.file });
        opts.onFile?.(b + i + 1, files.length);
        continue;
      }
      const s = parseStrategyBytes(bytes, file);
      if (s.merged) throw new InputError('is already a merged strategy ({stage}- prefixed names); give the per-stage files', { file });
      const first = s.items[0];
      if (first === undefined) {
        throw new InputError('has no parallel_strategy_item, so its pipeline stage is unknown', { file });
      }
      seen.set(hash, { file, stage: first.stage });
      if (byStage.has(first.stage)) {
        skippedStages++;
        perFile.push({ path: file, stage: first.stage, skippedStage: true });
      } else {
        byStage.set(first.stage, { file, strategy: s });
        perFile.push({ path: file, stage: first.stage });
      }
      opts.onFile?.(b + i + 1, files.length);
    }
  }
  const stages = [...byStage.keys()].sort((a, b) => a - b);
  const items: StrategyItem[] = [];
  const layouts: ParamLayout[] = [];
  for (const stage of stages) {
    const { strategy } = byStage.get(stage) as { strategy: Strategy };
    for (const it of strategy.items) items.push(it);
    for (const l of strategy.layouts) layouts.push(l.stage === stage ? l : { ...l, stage });
  }
  const strategy = makeStrategy({ currentStage: 1, layouts, items, merged: true, ...(opts.path !== undefined ? { path: opts.path } : {}) });
  const maxStage = stages.length > 0 ? (stages[stages.length - 1] as number) : -1;
  const missingStages: number[] = [];
  for (let s = 0; s <= maxStage; s++) if (!byStage.has(s)) missingStages.push(s);
  return {
    strategy,
    format: inputFormat,
    files: perFile,
    duplicates,
    skippedStages,
    stages,
    sources: stages.map((stage) => ({ stage, file: (byStage.get(stage) as { file: string }).file })),
    missingStages,
  };
}

/**
 * Merge per-stage strategy files (a directory, or a list of files and directories) into `outFile`.
 */
export async function mergeStrategies(
  inputs: string | readonly string[],
  outFile: string,
  opts: MergeStrategiesOptions = {},
): Promise<MergeReport> {
  const m = await mergeStrategiesInMemory(inputs, { exclude: outFile, path: outFile, ...(opts.onFile !== undefined ? { onFile: opts.onFile } : {}) });
  // the output is none of the files read (`-o a.json` with a.json an input, a symlink to one)
  await refuseOverlaps([{ what: 'output file', path: outFile }], m.files.map((f) => ({ what: 'input', path: f.path })));
  const format = opts.format ?? (/\.json$/i.test(outFile) ? 'json' : 'protobuf');
  await writeStrategy(outFile, m.strategy, { format });
  return {
    output: outFile,
    format,
    files: m.files.length,
    duplicates: m.duplicates,
    skippedStages: m.skippedStages,
    stages: m.stages,
    sources: m.sources,
    missingStages: m.missingStages,
    layouts: m.strategy.layouts.length,
    items: m.strategy.items.length,
  };
}
