/** LoRA weight merging (issue 6): names, scaling, the product kernel and `mergeLora`. */
export {
  type LoraScheme,
  type LoraPair,
  type LoraNamePlan,
  PEFT_PREFIX,
  LORA_OPTIMIZER_PREFIXES,
  isLoraLikeName,
  baseCandidates as loraBaseCandidates,
  planLoraNames,
} from './names.js';
export {
  type LoraScaling,
  type ScalingOptions as LoraScalingOptions,
  parseLoraScaling,
  scalingFromAdapterConfig,
  resolveLoraScaling,
} from './scaling.js';
export { type KernelJob as LoraKernelJob, KernelPool as LoraKernelPool, runKernel as runLoraKernel } from './kernel.js';
export {
  type LoraMergeOptions,
  type LoraMergeResult,
  type LoraMergedWeight,
  mergeLora,
  validateLoraModel,
} from './merge.js';
