/** Building LoRA checkpoints and reference results for the LoRA tests. */
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { copyBox, fullBox, volume } from '../../plugin/formats/box.js';
import { createCheckpointSink, openCheckpoint } from '../../plugin/formats/ckpt/index.js';
import {
  decodeToF64,
  elementSize,
  f64ToBf16Bits,
  f64ToF16Bits,
  fromFloat32,
  type DType,
  type FloatDType,
} from '../../plugin/formats/dtype.js';
import type { ParamLayout, Strategy } from '../../plugin/formats/strategy/model.js';
import { makeStrategy, writeStrategy } from '../../plugin/formats/strategy/index.js';
import type { Box } from '../../plugin/formats/types.js';
import { sliceBox } from '../../plugin/layout/index.js';

export interface T {
  name: string;
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}

/** Deterministic pseudo-random generator (xorshift32). */
export { xorshift32 as rng } from '../helpers/prng.js';

/** Random values of a floating dtype, roughly uniform in [-amp, amp]. */
export function randomTensor(name: string, dtype: FloatDType, shape: number[], rand: () => number, amp = 1): T {
  const n = volume(shape);
  const f = new Float32Array(n);
  for (let i = 0; i < n; i++) f[i] = (rand() * 2 - 1) * amp;
  return { name, dtype, shape, data: fromFloat32(f, dtype) };
}

export function int32Tensor(name: string, shape: number[], values: number[]): T {
  const data = new Uint8Array(volume(shape) * 4);
  const dv = new DataView(data.buffer);
  values.forEach((v, i) => dv.setInt32(i * 4, v, true));
  return { name, dtype: 'Int32', shape, data };
}

export async function writeCkpt(path: string, tensors: readonly T[]): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const sink = await createCheckpointSink(path);
  for (const t of tensors) {
    await sink.beginTensor({ name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.data.byteLength });
    await sink.write(t.data);
    await sink.endTensor();
  }
  await sink.close();
}

export async function readCkpt(path: string): Promise<T[]> {
  const src = await openCheckpoint(path);
  try {
    const out: T[] = [];
    for (const e of src.entries()) {
      const data = new Uint8Array(e.byteLength);
      await src.readBytes(e.name, 0, e.byteLength, data, 0);
      out.push({ name: e.name, dtype: e.dtype, shape: [...e.shape], data });
    }
    return out;
  } finally {
    await src.close();
  }
}

/** Extract `box` of a full C-order tensor. */
export function sliceOf(t: T, box: Box): T {
  const es = elementSize(t.dtype);
  const data = new Uint8Array(volume(box.shape) * es);
  copyBox(t.data, t.shape, box, data, box.shape, fullBox(box.shape), es);
  return { name: t.name, dtype: t.dtype, shape: [...box.shape], data };
}

export function layout(name: string, devMatrix: number[], tensorMap: number[], stage = 0): ParamLayout {
  return { name, stage, devMatrix, tensorMap, paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0 };
}

export function strategyOf(layouts: ParamLayout[]): Strategy {
  return makeStrategy({ currentStage: 0, layouts, items: [{ nodeName: 'Default/MatMul-op0', stage: 0, strategies: [[1, 1]] }] });
}

export async function writeStrategyFile(path: string, layouts: ParamLayout[]): Promise<Strategy> {
  const s = strategyOf(layouts);
  await mkdir(dirname(path), { recursive: true });
  await writeStrategy(path, s);
  return s;
}

/**
 * Write `tensors` sliced per rank of `strategy` (devices = prod(devMatrix), one stage) as
 * `dir/rank_R/checkpoint_R.ckpt`. Tensors without a layout are written whole on every rank.
 */
export async function writeSliced(dir: string, tensors: readonly T[], layouts: readonly ParamLayout[], devices: number): Promise<void> {
  const byName = new Map(layouts.map((l) => [l.name, l]));
  for (let r = 0; r < devices; r++) {
    const parts = tensors.map((t) => {
      const l = byName.get(t.name);
      return l === undefined ? t : sliceOf(t, sliceBox(l, t.shape, r));
    });
    await writeCkpt(`${dir}/rank_${r}/checkpoint_${r}.ckpt`, parts);
  }
}

/** Reference: W + s * (B @ A) with float64 accumulation, one RNE rounding to W's dtype. */
export function referenceMerge(w: T, a: T, b: T, scale: number): T {
  const [out, inn] = w.shape as [number, number];
  const r = a.shape[0] as number;
  const W = decodeToF64(w.data, w.dtype, out * inn);
  const A = decodeToF64(a.data, a.dtype, r * inn);
  const B = decodeToF64(b.data, b.dtype, out * r);
  const data = new Uint8Array(w.data.byteLength);
  const dv = new DataView(data.buffer);
  for (let i = 0; i < out; i++) {
    for (let j = 0; j < inn; j++) {
      let s = 0;
      for (let k = 0; k < r; k++) s += (B[i * r + k] as number) * (A[k * inn + j] as number);
      const v = (W[i * inn + j] as number) + scale * s;
      const at = i * inn + j;
      switch (w.dtype) {
        case 'Float32': dv.setFloat32(at * 4, v, true); break;
        case 'Float64': dv.setFloat64(at * 8, v, true); break;
        case 'Float16': dv.setUint16(at * 2, f64ToF16Bits(v), true); break;
        case 'BFloat16': dv.setUint16(at * 2, f64ToBf16Bits(v), true); break;
        default: throw new Error(`reference: dtype ${w.dtype}`);
      }
    }
  }
  return { ...w, data };
}

/** Largest distance in units in the last place between two buffers of a floating dtype. */
export function maxUlp(x: Uint8Array, y: Uint8Array, dtype: DType): number {
  if (x.byteLength !== y.byteLength) return Infinity;
  const es = elementSize(dtype);
  const n = x.byteLength / es;
  const dx = new DataView(x.buffer, x.byteOffset, x.byteLength);
  const dy = new DataView(y.buffer, y.byteOffset, y.byteLength);
  const ord = (v: number, bits: number): number => {
    const signBit = 2 ** (bits - 1);
    return v >= signBit ? -(v - signBit) : v;
  };
  let worst = 0;
  for (let i = 0; i < n; i++) {
    let a: number;
    let b: number;
    if (es === 2) {
      a = ord(dx.getUint16(i * 2, true), 16);
      b = ord(dy.getUint16(i * 2, true), 16);
    } else if (es === 4) {
      a = ord(dx.getUint32(i * 4, true), 32);
      b = ord(dy.getUint32(i * 4, true), 32);
    } else {
      a = Number(dx.getBigInt64(i * 8, true));
      b = Number(dy.getBigInt64(i * 8, true));
    }
    worst = Math.max(worst, Math.abs(a - b));
  }
  return worst;
}
