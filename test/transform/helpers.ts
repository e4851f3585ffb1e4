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
