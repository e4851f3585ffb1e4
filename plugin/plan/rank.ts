/**
 * One destination rank of a plan: which source rank serves each copy, what it reads and writes,
 * and (with `planRank`) every tensor with its copy operations. Pure: computed from the plan.
 *
 * Decisions where MindSpore is silent or differs:
 * - Among replicas: a source rank already chosen for this destination rank first, else the one
 *   whose local rank is closest (cyclically, upwards) to `dstLocal % sourceStageDevices`; for a
 *   parameter held by several source stages with the same layout, all their replicas qualify.
 * - Entries no strategy describes (global_step, learning_rate, str entries, ...) are copied
 *   unchanged from source rank `R % sourceDeviceCount` (MindSpore's rule). For a multi-stage
 *   source, where that rank is not otherwise read, a rank already read with the same local rank
 *   `R % sourceStageDevices` (same values in every stage for such entries) is used instead, so no
 *   extra file is opened; failing both, the holder in the lowest stage with that local rank, else
 *   the lowest source rank that has them.
 */
import { InputError } from '../errors.js';
import { classGeom, planContext, type ExtraInfo, type PlanContext } from './context.js';
import type { CopyOp, Plan, PlannedTensor, PlanEntry, RankPlan, RankSummary } from './types.js';

function pickReplica(holders: readonly number[], chosen: Set<number>, preferredLocal: number, preferredStage: number, srcStageDevices: number): number {
  for (const h of holders) if (chosen.has(h)) return h;
  let best = holders[0] as number;
  let bestDist = Infinity;
  for (const h of holders) {
    const local = h % srcStageDevices;
    // distance upwards from the preferred local rank; a holder in the same stage wins ties
    const dist = 2 * ((((local - preferredLocal) % srcStageDevices) + srcStageDevices) % srcStageDevices) + (Math.floor(h / srcStageDevices) === preferredStage ? 0 : 1);
    if (dist < bestDist) {
      bestDist = dist;
      best = h;
    }
  }
  return best;
}

function extraSource(ctx: PlanContext, e: ExtraInfo, rank: number, chosen: Set<number>): number {
  const pref = rank % ctx.srcTotal;
  const local = rank % ctx.srcStageDevices;
  if (chosen.has(pref) && e.entryOf.has(pref)) return pref;
  const chosenSame = e.holders.find((h) => chosen.has(h) && h % ctx.srcStageDevices === local);
  if (chosenSame !== undefined) return chosenSame;
  if (e.entryOf.has(pref)) return pref;
  const same = e.holders.find((h) => h % ctx.srcStageDevices === local);
  return same ?? (e.holders[0] as number);
}

/** Summary (and with `withTensors` every tensor) of destination rank `rank`. */
export function computeRank(ctx: PlanContext, rank: number, withTensors: boolean): { summary: RankSummary; tensors: PlannedTensor[] } {
  const stage = Math.floor(rank / ctx.dstStageDevices);
  const local = rank % ctx.dstStageDevices;
  const chosen = new Set<number>();
  const classRanks = new Map<number, number[]>();
  let bytesRead = 0;
  let bytesWritten = 0;
  let maxTensor = 0;
  let scratch = false;
  let tensorCount = 0;
  const preferred = local % ctx.srcStageDevices;
  for (const slot of ctx.stageClasses.get(stage) ?? []) {
    const g = classGeom(slot.cls, local);
    const ranks = g.ops.map((op) => {
      const holders = slot.cls.src.holders.get(op.srcTuple);
      if (holders === undefined || holders.length === 0) throw new InputError(`no source rank holds slice ${op.srcTuple} of a parameter class`);
      const r = pickReplica(holders, chosen, preferred, stage, ctx.srcStageDevices);
      chosen.add(r);
      return r;
    });
    classRanks.set(slot.cls.id, ranks);
    let read = 0;
    for (const op of g.ops) read += op.bytes;
    bytesRead += read * slot.count;
    bytesWritten += g.bytes * slot.count;
    tensorCount += slot.count;
    maxTensor = Math.max(maxTensor, g.bytes);
    if (g.needsScratch) scratch = true;
  }
  const extraSrc = new Map<string, number>();
  for (const e of ctx.extras.values()) {
    const r = extraSource(ctx, e, rank, chosen);
    extraSrc.set(e.name, r);
    chosen.add(r);
    const entry = e.entryOf.get(r) as PlanEntry;
    bytesRead += entry.byteLength;
    bytesWritten += entry.byteLength;
    maxTensor = Math.max(maxTensor, entry.byteLength);
    tensorCount++;
  }
  const peakMemory = 2 * Math.min(maxTensor, ctx.buffers.band) + (scratch ? Math.min(ctx.buffers.scratch, maxTensor) : 0);
  const summary: RankSummary = {
    rank, stage, sourceRanks: [...chosen].sort((a, b) => a - b), tensorCount, bytesRead, bytesWritten, peakMemory,
  };
  const tensors: PlannedTensor[] = [];
  if (withTensors) {
    for (const name of ctx.order) {
      const p = ctx.params.get(name);
      if (p !== undefined) {
        const cls = p.classByStage.get(stage);
        if (cls === undefined) continue;
        const g = classGeom(cls, local);
        const ranks = classRanks.get(cls.id) as number[];
        const ops: CopyOp[] = g.ops.map((op, i) => ({ srcRank: ranks[i] as number, srcShape: op.srcShape, srcBox: op.srcBox, dstBox: op.dstBox }));
        const srcShape = p.param.srcShape;
        const sameAsSource = g.shape.length === srcShape.length && g.shape.every((v, i) => v === srcShape[i]);
        tensors.push({
          name, dtype: p.param.dtype, shape: g.shape, byteLength: g.bytes, fullShape: p.param.full, start: g.start, verbatim: false, ops,
          ...(sameAsSource && p.ckpt !== undefined ? { ckpt: p.ckpt } : {}),
        });
        continue;
      }
      const r = extraSrc.get(name);
      if (r === undefined) continue;
      const entry = (ctx.extras.get(name) as ExtraInfo).entryOf.get(r) as PlanEntry;
      const box = { start: entry.shape.map(() => 0), shape: [...entry.shape] };
      tensors.push({
        name, dtype: entry.dtype, shape: entry.shape, byteLength: entry.byteLength, fullShape: entry.shape, start: box.start, verbatim: true,
        ops: [{ srcRank: r, srcShape: entry.shape, srcBox: box, dstBox: box }],
        ...(entry.ckpt !== undefined ? { ckpt: entry.ckpt } : {}),
      });
    }
  }
  return { summary, tensors };
}

/** The full plan of one destination rank: every tensor in output order with its copy operations. */
export function planRank(plan: Plan, rank: number): RankPlan {
  const ctx = planContext(plan);
  const world = ctx.dstStageDevices * ctx.dstStages;
  if (!Number.isSafeInteger(rank) || rank < 0 || rank >= world) throw new InputError(`destination rank ${rank} is outside 0..${world - 1}`);
  const { summary, tensors } = computeRank(ctx, rank, true);
  return { ...summary, tensors };
}
