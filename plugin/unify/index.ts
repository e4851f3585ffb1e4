/** MindSpore safetensors tools: ckpt <-> safetensors conversion and `unify` (unified_safetensors). */
export * from './convert.js';
export { unifySafetensors, UNIFY_DEFAULT_PART_SIZE, UNIFY_DEFAULT_MEMORY } from './unify.js';
export type { UnifyOptions, UnifyReport, UnifyPart } from './unify.js';
