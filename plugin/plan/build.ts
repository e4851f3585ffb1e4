/**
 * Building a re-sharding plan (pure, no I/O): source layout + destination layout + the source
 * files' entries -> a `Plan` (plain data): the model of what the sources hold, every source's
 * index, the layouts, and per destination rank the source ranks it reads, the bytes it reads
 * and writes and the buffer memory execution needs. The copy operations of one rank come from
 * `planRank(plan, r)` (plan/rank.ts).
 *
 * The steps: the two sides' layouts (model.ts `sideOf`), the source files checked against the
 * source side, one scan of every file into the model (`scanModel`), the geometry derived from
 * the plan data (context.ts), the per-rank summaries (rank.ts), the fingerprint.
 */
import { FailureError, InputError } from '../errors.js';
import type { ParamLayout, Strategy } from '../formats/strategy/model.js';
import { DEFAULT_MEMORY } from './buffers.js';
import { planContext, shareContext } from './context.js';
import { indexSha256, planFingerprint } from './fingerprint.js';
import { checkSourceFiles, scanModel, sideOf, type SideLayouts } from './model.js';
import { computeRank } from './rank.js';
import type { Plan, PlanModel, PlanSide, PlanSource, PlanSourceFile, RankSummary } from './types.js';

export interface PlanInput {
  /** Source strategy; null = the source is one complete file. */
  readonly srcStrategy: Strategy | null;
  /** Destination strategy; null = one complete file. */
  readonly dstStrategy: Strategy | null;
  /** Every source file, one per global source rank 0..N-1. */
  readonly sources: readonly PlanSourceFile[];
  /** Destination ranks to plan (default: all). */
  readonly ranks?: readonly number[];
  /** Buffer budget in bytes for execution (default 512 MiB). */
  readonly memory?: number;
  /** Expected destination world size; an InputError when the destination strategy disagrees. */
  readonly worldSize?: number;
  /** Entries to leave out entirely (e.g. LoRA tensors, a unify filter); recorded in `plan.excluded`. */
  readonly exclude?: (name: string) => boolean;
}

/** The stored layouts of one side: those of the parameters the plan moves. */
function sideData(side: SideLayouts | null, model: PlanModel): PlanSide {
  if (side === null) return { strategy: null, deviceCount: 1, stageDevices: 1, stages: 1, layouts: null };
  const names = new Set(model.params.map((p) => p.name));
  const layouts: ParamLayout[] = [];
  for (const [name, m] of side.byName) {
    if (!names.has(name)) continue;
    for (const l of [...m.values()].sort((a, b) => a.stage - b.stage)) layouts.push(l);
  }
  return { strategy: side.path, deviceCount: side.stageDevices * side.stages, stageDevices: side.stageDevices, stages: side.stages, layouts };
}

function planSource(f: PlanSourceFile): PlanSource {
  return {
    rank: f.rank, path: f.path, format: f.format ?? null, files: f.files ?? [],
    ...(f.bodyBytes !== undefined ? { bodyBytes: f.bodyBytes } : {}),
    ...(f.storedCrc !== undefined ? { storedCrc: f.storedCrc } : {}),
    indexSha256: indexSha256(f.entries), entries: f.entries,
  };
}

/** A plan's sources as planner input, to build another plan from the same indexes (no header read). */
export function planSourceFiles(plan: Plan): PlanSourceFile[] {
  return plan.source.files.map((s) => {
    if (s.entries === undefined) throw new FailureError('this plan was read from a file; its sources\' indexes are not in memory', { file: s.path });
    return {
      rank: s.rank, path: s.path, entries: s.entries, files: s.files,
      ...(s.format !== null ? { format: s.format } : {}),
      ...(s.bodyBytes !== undefined ? { bodyBytes: s.bodyBytes } : {}),
      ...(s.storedCrc !== undefined ? { storedCrc: s.storedCrc } : {}),
    };
  });
}

/** Build the plan. Throws InputError for inconsistent inputs. */
export function buildPlan(input: PlanInput): Plan {
  const memory = input.memory ?? DEFAULT_MEMORY;
  const src = input.srcStrategy === null ? null : sideOf(input.srcStrategy, 'source');
  const dst = input.dstStrategy === null ? null : sideOf(input.dstStrategy, 'destination');
  const files = checkSourceFiles(input.sources, src);
  const dstWorld = (dst?.stageDevices ?? 1) * (dst?.stages ?? 1);
  if (input.worldSize !== undefined && input.worldSize !== dstWorld) {
    throw new InputError(`world size ${input.worldSize} does not match the destination layout's ${dstWorld} devices`, { file: dst?.path ?? undefined });
  }
  const { model, dropped, excluded } = scanModel(files, src, dst, input.exclude);
  const draft: Plan = {
    version: 2,
    source: { ...sideData(src, model), files: files.map(planSource) },
    destination: sideData(dst, model),
    memory,
    model,
    parameters: model.params.length,
    verbatim: model.extras.map((e) => e.name),
    dropped,
    excluded,
    ranks: [],
    bytesRead: 0,
    bytesWritten: 0,
    peakMemory: 0,
    fingerprint: '',
  };
  const ctx = planContext(draft);
  const wanted = input.ranks ?? Array.from({ length: dstWorld }, (_, i) => i);
  const ranks: RankSummary[] = [];
  let bytesRead = 0;
  let bytesWritten = 0;
  let peakMemory = 0;
  for (const r of wanted) {
    if (!Number.isSafeInteger(r) || r < 0 || r >= dstWorld) throw new InputError(`destination rank ${r} is outside 0..${dstWorld - 1}`);
    const s = computeRank(ctx, r, false).summary;
    ranks.push(s);
    bytesRead += s.bytesRead;
    bytesWritten += s.bytesWritten;
    peakMemory = Math.max(peakMemory, s.peakMemory);
  }
  const withRanks = { ...draft, ranks, bytesRead, bytesWritten, peakMemory };
  const plan: Plan = { ...withRanks, fingerprint: planFingerprint(withRanks) };
  shareContext(draft, plan);
  return plan;
}
