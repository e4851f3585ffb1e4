/** Shared helpers of the plan/transform tests: layouts, generated checkpoints, reading back. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCheckpointSink, openCheckpoint } from '../../plugin/formats/ckpt/index.js';
import type { DType } from '../../plugin/formats/dtype.js';
import { makeStrategy, writeStrategy } from '../../plugin/formats/strategy/index.js';
import type { ParamLayout, Strategy, TensorMapEntry } from '../../plugin/formats/strategy/model.js';

export function layout(name: string, devMatrix: number[], tensorMap: TensorMapEntry[], extra: Partial<ParamLayout> = {}): ParamLayout {
  return {
    name, stage: 0, devMatrix, tensorMap, paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0,
    ...extra,
  };
}

export function strategyOf(layouts: ParamLayout[], path?: string): Strategy {
  const stages = new Set(layouts.map((l) => l.stage));
  return makeStrategy({ currentStage: 1, layouts, items: [], merged: stages.size > 1 || [...stages].some((s) => s > 0), ...(path !== undefined ? { path } : {}) });
}

export async function saveStrategy(path: string, layouts: ParamLayout[]): Promise<string> {
  const s = strategyOf(layouts);
  // items carry the stage of each file when merging; give one per stage
  const stages = [...new Set(layouts.map((l) => l.stage))];
  const withItems: Strategy = { ...s, items: stages.map((st) => ({ nodeName: `MatMul_${st}`, stage: st, strategies: [[1]] })) };
  await writeStrategy(path, withItems);
  return path;
}

export interface GenTensor {
  name: string;
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}

export async function writeCkpt(path: string, tensors: readonly GenTensor[]): Promise<void> {
  const sink = await createCheckpointSink(path);
  for (const t of tensors) {
    await sink.beginTensor({ name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.data.byteLength });
    await sink.write(t.data);
    await sink.endTensor();
  }
  await sink.close();
}

export async function readCkpt(path: string): Promise<Map<string, { dtype: DType; shape: number[]; data: Uint8Array }>> {
  const src = await openCheckpoint(path);
  const out = new Map<string, { dtype: DType; shape: number[]; data: Uint8Array }>();
  try {
    for (const e of src.entries()) {
      const data = new Uint8Array(e.byteLength);
      if (e.byteLength > 0) await src.readBytes(e.name, 0, e.byteLength, data, 0);
      out.set(e.name, { dtype: e.dtype, shape: [...e.shape], data });
    }
  } finally {
    await src.close();
  }
  return out;
}

export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'msckpt-transform-test-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The layouts of the real llama2_tiny_tp2 fixture (mp=2; split axes from the fixture README: dim 0 [0,-1], dim 1 [-1,0], the rest replicated). */
export function llamaTp2Layouts(): ParamLayout[] {
  const dev = [2];
  const L = 'model.layers.0.';
  return [
    layout('model.tok_embeddings.embedding_weight', dev, [-1, -1]),
    layout(`${L}ffn_norm.weight`, dev, [-1]),
    layout(`${L}attention_norm.weight`, dev, [-1]),
    layout(`${L}attention.wq.weight`, dev, [0, -1]),
    layout(`${L}attention.wk.weight`, dev, [0, -1]),
    layout(`${L}attention.wv.weight`, dev, [0, -1]),
    layout(`${L}attention.wo.weight`, dev, [-1, 0]),
    layout(`${L}feed_forward.w1.weight`, dev, [0, -1]),
    layout(`${L}feed_forward.w3.weight`, dev, [0, -1]),
    layout(`${L}feed_forward.w2.weight`, dev, [-1, 0]),
    layout('model.norm_out.weight', dev, [-1]),
    layout('lm_head.weight', dev, [0, -1]),
  ];
}
