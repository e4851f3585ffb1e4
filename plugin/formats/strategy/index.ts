/**
 * Parallel strategy files: protobuf and JSON, per-rank and merged (the model is in model.ts).
 */
export { splitStageName, stagedName, makeStrategy } from './names.js';
export {
  type StrategyFormat,
  type StrategyJson,
  type StrategyLayoutJson,
  MAX_STRATEGY_BYTES,
  detectStrategyFormat,
  parseStrategyBytes,
  readStrategy,
  encodeStrategy,
  writeStrategy,
  strategyToJson,
} from './io.js';
export { decodeStrategyProtobuf, encodeStrategyProtobuf, loadStrategySchema, strategySchemaPath } from './protobuf.js';
export { decodeStrategyJson, encodeStrategyJson, strategyJsonDocument } from './json.js';
export {
  type MergeReport,
  type MergeStrategiesOptions,
  DEFAULT_MERGED_STRATEGY_NAME,
  type InMemoryMerge,
  type MergedInputFile,
  listStrategyInputs,
  mergeStrategies,
  mergeStrategiesInMemory,
} from './merge.js';
export { summarizeStrategy, type ParallelDegree, type StrategySummary, type StrategySummaryInput } from './summary.js';
export { loadStrategy, type LoadedStrategy } from './load.js';
