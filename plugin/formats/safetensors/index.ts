/** Safetensors: streaming reader (file, HF index, unified dir) and writers (file, sharded). */
export { SAFETENSORS_MAX_HEADER, readSafetensorsHeader, parseSafetensorsHeader } from './header.js';
export type { SafetensorsHeader, SafetensorsHeaderTensor } from './header.js';
export { openSafetensors, openSafetensorsFile, openSafetensorsIndex, openSafetensorsIndexed, looksLikeSafetensors } from './reader.js';
export type { SafetensorsSource, IndexedSafetensorsEntry } from './reader.js';
export { createSafetensorsSink, sortNames as sortSafetensorsNames, MAX_STR_METADATA } from './writer.js';
export type { SafetensorsSinkOptions } from './writer.js';
export { createShardedSafetensorsSink, writeShardedSafetensors, planShards as planSafetensorsShards, hfShardName } from './sharded.js';
export type { ShardedSafetensorsOptions, ShardedSafetensorsResult, ShardedSafetensorsSink } from './sharded.js';
export { MS_STR as SAFETENSORS_MS_STR, MS_STR_B64 as SAFETENSORS_MS_STR_B64, MS_CKPT as SAFETENSORS_MS_CKPT, MS_ORDER as SAFETENSORS_MS_ORDER } from './meta.js';
