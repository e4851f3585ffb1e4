/**
 * HuggingFace <-> MindSpore weight conversion (`msckpt convert`). See MODELS.md for the tables.
 * Names are distinct from other concerns' (plugin/index.ts re-exports everything with `export *`).
 */
import './models/index.js';

export type {
  ConfigFromWeights, ConvertDTypeName, ConvertDirection, ConvertFunction, ConvertOptions, ConvertResult, DuplicateSpec, HfConfig, LayoutContext, Link,
  ModelConverter, ModelDefinition, ModelLayout, RowSegment, TensorSpec,
} from './types.js';
export {
  defineModel as defineConvertModel, getModel as getConvertModel, listModels as listConvertModels,
  loadConverterModule, registerModel as registerConvertModel,
} from './registry.js';
export { convertWeights, type ConvertWeightsRequest } from './convert.js';
export {
  CONVERT_DTYPES, DEFAULT_MAX_SHARD_SIZE as CONVERT_DEFAULT_MAX_SHARD_SIZE, checkLink as checkConvertLink,
  executePlan as executeConvertPlan, openHfInput, openMsInput, parseConvertDType, planConversion, readHfConfig, runConversion,
  type ConvertWriter, type ExecutePlanOptions as ConvertExecuteOptions, type ConvertPlannedPart, type ConvertPlannedTensor,
} from './engine.js';
export {
  ConfigReader as HfConfigReader, concatRows as linkConcatRows, deinterleavedRows as linkDeinterleavedRows,
  expertCount as hfExpertCount, interleaveRows as linkInterleaveRows, megatronQkv as linkMegatronQkv,
  optionBool as convertOptionBool, rename as linkRename, splitRows as linkSplitRows, stackExperts as linkStackExperts,
} from './layout.js';
export { FP8_E4M3_TABLE, decodeFp8E4M3, dequantizingSource } from './fp8.js';
