/**
 * The plan as data. A `Plan` is plain and JSON-serialisable: the two layouts, what the sources
 * hold (the model), every source's index (entries with their byte locations, each file's size
 * and modification time) and a summary per destination rank. Per-rank copy operations are not
 * stored: `planRank(plan, r)` computes them on demand, purely from the plan.
 */
import type { DType } from '../formats/dtype.js';
import type { StoredCrc } from '../formats/crc-check.js';
import type { FoundFile, WeightsFormat } from '../formats/resolve.js';
import type { EntryLocation } from '../formats/source-index.js';
import type { ParamLayout } from '../formats/strategy/model.js';
import type { Box, CkptHints } from '../formats/types.js';

/** One entry of a source file, as the planner needs it (`at`: where its bytes are, when read from disk). */
export interface PlanEntry {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly byteLength: number;
  readonly ckpt?: CkptHints;
  readonly at?: EntryLocation;
}

/** A source file given to the planner; `rank` is the global source rank (0 for a complete file). */
export interface PlanSourceFile {
  readonly rank: number;
  readonly path: string;
  readonly entries: readonly PlanEntry[];
  /** Format and files (real path, size, mtime) when the entries were indexed from disk. */
  readonly format?: WeightsFormat;
  readonly files?: readonly FoundFile[];
  /** `.ckpt`: bytes of the protobuf body. */
  readonly bodyBytes?: number;
  /** The CRC-32 the file stores about itself (checked while it is read). */
  readonly storedCrc?: StoredCrc;
}

/** A source of a plan: everything needed to open it without reading its header. */
export interface PlanSource {
  readonly rank: number;
  readonly path: string;
  /** null: entries given in memory (no files to open). */
  readonly format: WeightsFormat | null;
  readonly files: readonly FoundFile[];
  readonly bodyBytes?: number;
  /** The CRC-32 the file stores about itself (checked while it is read). */
  readonly storedCrc?: StoredCrc;
  /** sha256 of the canonical JSON of the entries (the index). */
  readonly indexSha256: string;
  /** The index. Absent in a plan read from a plan file, which reads it on demand from `indexRef`. */
  readonly entries?: readonly PlanEntry[];
  readonly indexRef?: { readonly file: string; readonly offset: number; readonly length: number };
}

export interface PlanSide {
  /** Strategy path; null = one complete file. */
  readonly strategy: string | null;
  readonly deviceCount: number;
  readonly stageDevices: number;
  readonly stages: number;
  /** The layouts of the parameters the plan moves (null: complete). */
  readonly layouts: readonly ParamLayout[] | null;
}

/** A parameter laid out by a strategy: re-sharded. */
export interface ModelParam {
  readonly name: string;
  readonly dtype: DType;
  readonly full: readonly number[];
  /** Source stages whose layout cuts it, ascending; empty when the source strategy does not describe it. */
  readonly srcStages: readonly number[];
  /** Source ranks holding it complete (when the source strategy does not describe it). */
  readonly holders?: readonly number[];
  /** Slice shape in the first source file holding it, and that file's `.ckpt` hints. */
  readonly srcShape: readonly number[];
  readonly ckpt?: CkptHints;
}

/** An entry no strategy lays out (global_step, str entries, ...): copied whole from one holder. */
export interface ModelExtra {
  readonly name: string;
  /** The entry as each group of source ranks holds it (usually one group). */
  readonly variants: ReadonlyArray<{ readonly entry: PlanEntry; readonly holders: readonly number[] }>;
}

/** What the sources hold, as far as planning needs it. */
export interface PlanModel {
  /** Output order of the tensors (each destination rank writes those it holds, in this order). */
  readonly order: readonly string[];
  readonly params: readonly ModelParam[];
  readonly extras: readonly ModelExtra[];
}

/** One copy: the box `srcBox` of source rank `srcRank`'s slice (of shape `srcShape`) goes to `dstBox` of the destination slice. */
export interface CopyOp {
  readonly srcRank: number;
  readonly srcShape: readonly number[];
  readonly srcBox: Box;
  readonly dstBox: Box;
}

/** A tensor of a destination file. */
export interface PlannedTensor {
  readonly name: string;
  readonly dtype: DType;
  /** Destination slice shape. */
  readonly shape: readonly number[];
  readonly byteLength: number;
  /** Full (unsliced) shape. */
  readonly fullShape: readonly number[];
  /** Where the destination slice starts in the full tensor. */
  readonly start: readonly number[];
  /** Copied verbatim (whole entry bytes) from `ops[0].srcRank`; the boxes are then the whole tensor. */
  readonly verbatim: boolean;
  readonly ops: readonly CopyOp[];
  readonly ckpt?: CkptHints;
  /** Written under this name instead of `name` (set by callers that rename, e.g. unify). */
  readonly outputName?: string;
}

export interface RankSummary {
  readonly rank: number;
  readonly stage: number;
  /** Source global ranks read, ascending. */
  readonly sourceRanks: readonly number[];
  readonly tensorCount: number;
  readonly bytesRead: number;
  readonly bytesWritten: number;
  /** Buffer bytes the execution of this rank needs (destination buffer + scratch). */
  readonly peakMemory: number;
}

export interface RankPlan extends RankSummary {
  readonly tensors: readonly PlannedTensor[];
}

export interface Plan {
  readonly version: 2;
  readonly source: PlanSide & { readonly files: readonly PlanSource[] };
  readonly destination: PlanSide;
  /** Buffer budget of an executor, bytes. */
  readonly memory: number;
  readonly model: PlanModel;
  /** Parameters re-sharded (described by a strategy). */
  readonly parameters: number;
  /** Entries copied verbatim (described by no strategy). */
  readonly verbatim: readonly string[];
  /** Parameters in the source strategy that no destination stage holds. */
  readonly dropped: readonly string[];
  /** Entries left out on request (e.g. LoRA tensors, a unify filter). */
  readonly excluded: readonly string[];
  readonly ranks: readonly RankSummary[];
  readonly bytesRead: number;
  readonly bytesWritten: number;
  readonly peakMemory: number;
  /** sha256 of the plan's canonical form (see fingerprint.ts). */
  readonly fingerprint: string;
}

/** How the executor splits the budget: a destination band buffer and a scratch buffer. */
export interface BufferSizes {
  readonly band: number;
  readonly scratch: number;
}
