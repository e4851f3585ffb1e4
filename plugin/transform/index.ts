/** Executing re-sharding plans: transform, manifest, resume, verify. */
export {
  transformCheckpoints, transformProcessBlocks, transformProcessBlock, transformOutputPath, fileCrc32Of,
  readTransformManifest, checkTransformPaths, TRANSFORM_MANIFEST_NAME,
  type TransformOptions, type TransformReport, type ManifestFile, type TransformManifest, type TransformFingerprint, type TransformInputs,
  type TransformFaults, type TransformCluster, type SharedTransformPlan, type ClusterReport, type SourceCheckReport,
} from './transform.js';
export { CLUSTER_DIR_NAME, PLAN_DIR_PREFIX, TRANSFORM_JOURNAL_NAME } from './records.js';
export { verifyTransform, type VerifyReport, type VerifyFileResult } from './verify.js';
export { executeRankPlan, rankPlanInWriteOrder, createTransformSourcePool, TransformBuffers, sinkTensorOf, type TransformSourcePool, type Band, type BandHook, type ExecuteOptions } from './execute.js';
export { executeRankPlanGroup, rankPlanGroups, rankPlansShareTensors, transformGroupSize, transformGroupBufferSizes, TRANSFORM_MAX_GROUP } from './execute.js';
export { writeRanks, type WriteRanksOptions, type WriteRanksResult, type CommittedRankFile, type RankWriterFaults, type WriterFault, type MidGroupFault, type FaultAction, type SourceCrcChecked } from './rank-writer.js';
