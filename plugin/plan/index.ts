/** Re-sharding plans: plain data built from layouts and source indexes, per-rank operations on demand, plan files. */
export type {
  Plan, PlanEntry, PlanSourceFile, PlanSource, PlanSide, PlanModel, ModelParam, ModelExtra, CopyOp, PlannedTensor,
  RankSummary, RankPlan, BufferSizes,
} from './types.js';
export { buildPlan, planSourceFiles, type PlanInput } from './build.js';
export { bufferSizes, DEFAULT_MEMORY } from './buffers.js';
export { planRank } from './rank.js';
export { canonicalJson, planCore, planFingerprint } from './fingerprint.js';
export { writePlanFile, readPlanFile, sourceEntries, sourceIndexOf, openPlanSource, PLAN_INDEX_SUFFIX } from './file.js';
export { rankListForTransform } from './ranklist.js';
export { loadPlan, findSourceFiles, type LoadPlanOptions, type LoadedPlan, type SourceFiles, type SourceFileInfo } from './load.js';
