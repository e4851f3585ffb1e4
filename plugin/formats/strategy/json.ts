/**
 * JSON encoding of a parallel strategy (spec §2.4): `{"current_stage", "parallel_strategy_item":
 * {node: {stage, parallel_strategy}}, "parallel_layout_item": {name: {dev_matrix, tensor_map,
 * tensor_shape, field, opt_weight_shard_step, opt_weight_shard_size, [param_split_shape,
 * indices_offset]}}}`. Other top-level keys (the *_layout_value_item maps of the
 * sharding-propagation file) are ignored on read.
 */
import { InputError } from '../../errors.js';
import type { ParamLayout, Strategy, StrategyItem, TensorMapEntry } from './model.js';
import { makeStrategy, splitStageName, stagedName } from './names.js';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

function isObject(v: unknown): v is { [k: string]: Json } {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function int(v: Json | undefined, file: string, key: string, dflt: number): number {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new InputError(`expected an integer, got ${JSON.stringify(v)}`, { file, key });
  return v;
}

function intList(v: Json | undefined, file: string, key: string): number[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new InputError(`expected a list of integers, got ${JSON.stringify(v).slice(0, 80)}`, { file, key });
  return v.map((x, i) => int(x, file, `${key}[${i}]`, 0));
}

function tensorMapOf(v: Json | undefined, file: string, key: string): TensorMapEntry[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new InputError('expected a list', { file, key });
  return v.map((e, i) => (Array.isArray(e) ? intList(e, file, `${key}[${i}]`) : int(e, file, `${key}[${i}]`, 0)));
}

/** Parse JSON strategy text into the model. */
export function decodeStrategyJson(text: string, file: string): Strategy {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new InputError(`not valid JSON (${err instanceof Error ? err.message : String(err)})`, { file });
  }
  if (!isObject(doc)) throw new InputError('a JSON strategy must be an object', { file });
  const currentStage = int(doc['current_stage'], file, 'current_stage', 0);
  const items: StrategyItem[] = [];
  const rawItems = doc['parallel_strategy_item'];
  if (rawItems !== undefined && rawItems !== null) {
    if (!isObject(rawItems)) throw new InputError('expected an object {node_name: {...}}', { file, key: 'parallel_strategy_item' });
    for (const [nodeName, it] of Object.entries(rawItems)) {
      const key = `parallel_strategy_item.${nodeName}`;
      if (!isObject(it)) throw new InputError('expected an object {stage, parallel_strategy}', { file, key });
      const ps = it['parallel_strategy'];
      if (ps !== undefined && ps !== null && !Array.isArray(ps)) throw new InputError('expected a list of lists', { file, key: `${key}.parallel_strategy` });
      items.push({
        nodeName,
        stage: int(it['stage'], file, `${key}.stage`, 0),
        strategies: (ps ?? []).map((d, i) => intList(d, file, `${key}.parallel_strategy[${i}]`)),
      });
    }
  }
  const rawLayouts = doc['parallel_layout_item'];
  const layouts: ParamLayout[] = [];
  let merged = false;
  if (rawLayouts !== undefined && rawLayouts !== null) {
    if (!isObject(rawLayouts)) throw new InputError('expected an object {param_name: {...}}', { file, key: 'parallel_layout_item' });
    for (const [full, l] of Object.entries(rawLayouts)) {
      const key = `parallel_layout_item.${full}`;
      if (!isObject(l)) throw new InputError('expected an object {dev_matrix, tensor_map, ...}', { file, key });
      const { stage, name, prefixed } = splitStageName(full);
      if (prefixed) merged = true;
      const layout: ParamLayout = {
        name,
        stage,
        devMatrix: intList(l['dev_matrix'], file, `${key}.dev_matrix`),
        tensorMap: tensorMapOf(l['tensor_map'], file, `${key}.tensor_map`),
        paramSplitShape: intList(l['param_split_shape'], file, `${key}.param_split_shape`),
        indicesOffset: intList(l['indices_offset'], file, `${key}.indices_offset`),
        field: int(l['field'], file, `${key}.field`, 0),
        optShardStep: int(l['opt_weight_shard_step'], file, `${key}.opt_weight_shard_step`, 0),
        optShardSize: int(l['opt_weight_shard_size'], file, `${key}.opt_weight_shard_size`, 0),
        ...(l['tensor_shape'] !== undefined && l['tensor_shape'] !== null
          ? { tensorShape: intList(l['tensor_shape'], file, `${key}.tensor_shape`) }
          : {}),
      };
      layouts.push(layout);
    }
  }
  return makeStrategy({ currentStage, layouts, items, path: file, merged });
}

/** The MindSpore JSON document of a strategy (what `writeStrategy(..., {format: 'json'})` writes). */
export function strategyJsonDocument(strategy: Strategy): Record<string, unknown> {
  const prefix = strategy.merged || strategy.layouts.some((l) => l.stage !== 0);
  const items: Record<string, unknown> = {};
  for (const it of strategy.items) {
    // A JSON object holds each node once; keep the first (merged files repeat op names per stage).
    if (Object.prototype.hasOwnProperty.call(items, it.nodeName)) continue;
    items[it.nodeName] = { stage: it.stage, parallel_strategy: it.strategies.map((d) => [...d]) };
  }
  const layouts: Record<string, unknown> = {};
  for (const l of strategy.layouts) {
    const entry: Record<string, unknown> = {
      dev_matrix: [...l.devMatrix],
      tensor_map: l.tensorMap.map((e) => (typeof e === 'number' ? e : [...e])),
    };
    if (l.tensorShape !== undefined) entry['tensor_shape'] = [...l.tensorShape];
    entry['field'] = l.field;
    entry['opt_weight_shard_step'] = l.optShardStep;
    entry['opt_weight_shard_size'] = l.optShardSize;
    if (l.paramSplitShape.length > 0 || l.indicesOffset.length > 0) {
      entry['param_split_shape'] = [...l.paramSplitShape];
      entry['indices_offset'] = [...l.indicesOffset];
    }
    layouts[prefix ? stagedName(l.stage, l.name) : l.name] = entry;
  }
  return { current_stage: strategy.currentStage, parallel_strategy_item: items, parallel_layout_item: layouts };
}

/** Encode as MindSpore JSON text. */
export function encodeStrategyJson(strategy: Strategy): Uint8Array {
  return Buffer.from(JSON.stringify(strategyJsonDocument(strategy), null, 4) + '\n', 'utf8');
}
