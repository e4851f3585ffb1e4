/** Re-sharding plans: pure planning from layouts and entries, plus a loader from paths. */
export {
  buildPlan, planRank, bufferSizes, DEFAULT_MEMORY,
  type Plan, type PlanInput, type PlanEntry, type PlanSourceFile, type PlanSide, type CopyOp,
  type PlannedTensor, type RankSummary, type RankPlan, type BufferSizes,
} from './build.js';
export { rankListForTransform } from './ranklist.js';
export {
  planFromPaths, loadPlan, findSourceFiles,
  type PlanFromPathsOptions, type LoadedPlan, type SourceFiles, type SourceFileInfo,
} from './load.js';
export type { OutputFormat } from './io.js';
