/** Executing re-sharding plans: transform, manifest, resume, verify. */
export {
  transformCheckpoints, parseRankRanges, formatRankRanges, transformProcessBlocks, transformOutputPath, fileCrc32Of, readTransformManifest,
  TRANSFORM_MANIFEST_NAME,
  type TransformOptions, type TransformReport, type ManifestFile, type TransformManifest, type TransformFingerprint,
} from './transform.js';
export { verifyTransform, type VerifyReport, type VerifyFileResult } from './verify.js';
export { executeRankPlan, rankPlanInWriteOrder, createTransformSourcePool, TransformBuffers, sinkTensorOf, type TransformSourcePool, type Band, type BandHook, type ExecuteOptions } from './execute.js';
export { executeRankPlanGroup, rankPlanGroups, rankPlansShareTensors, transformGroupSize, transformGroupBufferSizes, TRANSFORM_MAX_GROUP } from './execute.js';
export { writeRanks, type WriteRanksOptions, type WriteRanksResult, type CommittedRankFile, type RankWriterFaults } from './rank-writer.js';
