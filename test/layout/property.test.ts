/**
 * Property tests over random layouts: the boxes of a stage's ranks tile the full tensor exactly,
 * replicas hold identical boxes, the optimizer split follows the repeated-group rule computed by
 * brute force, and slicing then reassembling a random tensor gives it back bit for bit.
 */
import { describe, expect, it } from 'vitest';
import type { Box } from '../../plugin/formats/types.js';
import type { ParamLayout, Strategy, TensorMapEntry } from '../../plugin/formats/strategy/model.js';
import { copyBox, fullBox, volume } from '../../plugin/formats/box.js';
import { encodeStrategy, makeStrategy, parseStrategyBytes } from '../../plugin/formats/strategy/index.js';
import {
  checkShapes,
  deviceCoordinate,
  fullShapeFromSlice,
  layoutsOfStage,
  localRankOf,
  replicaKey,
  resolvedOptShardSize,
  sliceBox,
  sliceIndex,
  splitCounts,
  stageCount,
  stageDeviceCount,
  stageOf,
  tensorStrategy,
} from '../../plugin/layout/index.js';
import { mulberry32 as prng } from '../helpers/prng.js';


interface Gen {
  rnd: () => number;
  int(lo: number, hi: number): number;
  pick<T>(xs: readonly T[]): T;
}
function gen(seed: number): Gen {
  const rnd = prng(seed);
  return {
    rnd,
    int: (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1)),
    pick: (xs) => xs[Math.floor(rnd() * xs.length)] as (typeof xs)[number],
  };
}

function divisors(n: number): number[] {
  const out: number[] = [];
  for (let d = 1; d <= n; d++) if (n % d === 0) out.push(d);
  return out;
}

/** A random layout of a tensor on `devMatrix`, and a full shape it divides. */
function randomLayout(g: Gen, name: string, stage: number, devMatrix: number[]): { layout: ParamLayout; full: number[] } {
  const n = devMatrix.length;
  const ndim = g.int(1, 3);
  const nested = g.rnd() < 0.35;
  // assign each device axis (as a map value m = n-1-axis) to a dim, or leave it unused (replica axis)
  const perDim: number[][] = Array.from({ length: ndim }, () => []);
  const ms = Array.from({ length: n }, (_, i) => i).sort(() => g.rnd() - 0.5);
  for (const m of ms) {
    if (g.rnd() < 0.45) continue;
    const d = g.int(0, ndim - 1);
    if (!nested && (perDim[d] as number[]).length > 0) continue;
    (perDim[d] as number[]).push(m);
  }
  const tensorMap: TensorMapEntry[] = perDim.map((axes) => (nested ? (axes.length > 0 ? axes : [-1]) : (axes[0] ?? -1)));
  const base: ParamLayout = {
    name,
    stage,
    devMatrix,
    tensorMap,
    paramSplitShape: [],
    indicesOffset: [],
    field: 0,
    optShardStep: 0,
    optShardSize: 0,
  };
  const mp = tensorStrategy(base);
  const devices = devMatrix.reduce((a, b) => a * b, 1);
  const group = devices / mp.reduce((a, b) => a * b, 1);
  let optShardSize = 0;
  let optShardStep = 0;
  if (group > 1 && g.rnd() < 0.5) {
    optShardSize = g.rnd() < 0.4 ? -1 : g.pick(divisors(group).filter((d) => d > 1));
    optShardStep = 1; // informational; any non-zero value enables the split
  }
  const opt = optShardSize === -1 ? group : Math.max(optShardSize, 1);
  let paramSplitShape: number[] = [];
  let indicesOffset: number[] = [];
  const full = mp.map((k, i) => k * (i === 0 ? opt : 1) * g.int(1, 3));
  if (g.rnd() < 0.25) {
    paramSplitShape = Array.from({ length: mp[0] as number }, () => opt * g.int(1, 3));
    let at = 0;
    indicesOffset = paramSplitShape.map((s) => {
      const o = at;
      at += s;
      return o;
    });
    full[0] = at;
  }
  return { layout: { ...base, optShardSize, optShardStep, paramSplitShape, indicesOffset }, full };
}

function randomDevMatrix(g: Gen): number[] {
  const axes = g.int(1, 4);
  let devMatrix: number[];
  do devMatrix = Array.from({ length: axes }, () => g.pick([1, 2, 2, 3, 4]));
  while (devMatrix.reduce((a, b) => a * b, 1) > 64);
  return devMatrix;
}

function overlaps(a: Box, b: Box): boolean {
  for (let i = 0; i < a.start.length; i++) {
    const a0 = a.start[i] as number;
    const b0 = b.start[i] as number;
    if (a0 + (a.shape[i] as number) <= b0 || b0 + (b.shape[i] as number) <= a0) return false;
  }
  return true;
}

function checkTiling(layout: ParamLayout, full: number[], devices: number): void {
  const byKey = new Map<string, { box: Box; ranks: number[] }>();
  for (let r = 0; r < devices; r++) {
    const box = sliceBox(layout, full, r);
    const key = replicaKey(layout, r);
    const hit = byKey.get(key);
    if (hit !== undefined) {
      expect(box, `replicas of ${key} hold identical boxes`).toEqual(hit.box);
      hit.ranks.push(r);
    } else {
      byKey.set(key, { box, ranks: [r] });
    }
    // the full shape rebuilt from this rank's slice is the full shape
    expect(fullShapeFromSlice(layout, box.shape, r)).toEqual(full);
  }
  const distinct = [...byKey.values()];
  // every distinct piece has the same number of holders
  for (const d of distinct) expect(d.ranks.length).toBe(devices / distinct.length);
  // no partial overlaps, and volumes add up: an exact tiling
  for (let i = 0; i < distinct.length; i++) {
    for (let j = i + 1; j < distinct.length; j++) {
      const a = (distinct[i] as { box: Box }).box;
      const b = (distinct[j] as { box: Box }).box;
      if (volume(a.shape) > 0 && volume(b.shape) > 0) expect(overlaps(a, b), `${JSON.stringify(a)} vs ${JSON.stringify(b)}`).toBe(false);
    }
  }
  expect(distinct.reduce((s, d) => s + volume(d.box.shape), 0)).toBe(volume(full));
  expect(distinct.length).toBe(splitCounts(layout).reduce((a, b) => a * b, 1));
}

/** The optimizer rule by brute force: G = ranks with the same model-parallel part, sorted; part = pos mod size. */
function checkOptRule(layout: ParamLayout, devices: number): void {
  const size = resolvedOptShardSize(layout);
  if (size === 1) return;
  const noOpt = { ...layout, optShardStep: 0, optShardSize: 0 };
  const mpKey = (r: number): string => sliceIndex(noOpt, r).join(',');
  for (let r = 0; r < devices; r++) {
    const group: number[] = [];
    for (let q = 0; q < devices; q++) if (mpKey(q) === mpKey(r)) group.push(q);
    const pos = group.indexOf(r);
    const idx = sliceIndex(layout, r);
    const mp = sliceIndex(noOpt, r);
    expect(idx[0]).toBe((mp[0] as number) * size + (pos % size));
    expect(idx.slice(1)).toEqual(mp.slice(1));
  }
}

/** Slice a random Float32 tensor for every rank and put it back together. */
function checkReassembly(g: Gen, layout: ParamLayout, full: number[], devices: number): void {
  const n = volume(full);
  const src = new Float32Array(n);
  for (let i = 0; i < n; i++) src[i] = g.rnd() * 2 - 1;
  const srcBytes = new Uint8Array(src.buffer);
  const out = new Uint8Array(n * 4).fill(0xff);
  for (let r = 0; r < devices; r++) {
    const box = sliceBox(layout, full, r);
    const slice = new Uint8Array(volume(box.shape) * 4);
    copyBox(srcBytes, full, box, slice, box.shape, fullBox(box.shape), 4);
    // every element of the slice equals the same element of the full tensor
    const sv = new Float32Array(slice.buffer);
    const strides = full.map((_, i) => full.slice(i + 1).reduce((a, b) => a * b, 1));
    const bstr = box.shape.map((_, i) => box.shape.slice(i + 1).reduce((a, b) => a * b, 1));
    for (let e = 0; e < sv.length; e += Math.max(1, Math.floor(sv.length / 7))) {
      let off = 0;
      for (let d = 0; d < full.length; d++) off += ((box.start[d] as number) + (Math.floor(e / (bstr[d] as number)) % (box.shape[d] as number))) * (strides[d] as number);
      expect(sv[e]).toBe(src[off]);
    }
    copyBox(slice, box.shape, fullBox(box.shape), out, full, box, 4);
  }
  expect(Buffer.compare(Buffer.from(out), Buffer.from(srcBytes))).toBe(0);
}

describe('random layouts (seeded)', () => {
  it('single-stage layouts: exact tiling, replicas, optimizer rule, reassembly', () => {
    const g = gen(20240601);
    const seen = { nested: 0, optWhole: 0, optPart: 0, manual: 0, replicas: 0, axes: new Set<number>() };
    for (let t = 0; t < 400; t++) {
      const devMatrix = randomDevMatrix(g);
      const devices = devMatrix.reduce((a, b) => a * b, 1);
      const { layout, full } = randomLayout(g, `p${t}`, 0, devMatrix);
      seen.axes.add(devMatrix.length);
      if (layout.tensorMap.some((e) => Array.isArray(e) && e.length > 1)) seen.nested++;
      if (layout.optShardSize === -1 && resolvedOptShardSize(layout) > 1) seen.optWhole++;
      const group = devices / tensorStrategy(layout).reduce((a, b) => a * b, 1);
      if (layout.optShardSize > 1 && layout.optShardSize < group) seen.optPart++;
      if (layout.paramSplitShape.length > 1) seen.manual++;
      if (splitCounts(layout).reduce((a, b) => a * b, 1) < devices) seen.replicas++;
      try {
        checkTiling(layout, full, devices);
        checkOptRule(layout, devices);
        checkReassembly(g, layout, full, devices);
      } catch (err) {
        throw new Error(`case ${t}: ${JSON.stringify({ layout, full })}: ${(err as Error).message}`);
      }
    }
    // the generator really covers the interesting kinds
    expect([...seen.axes].sort()).toEqual([1, 2, 3, 4]);
    for (const k of ['nested', 'optWhole', 'optPart', 'manual', 'replicas'] as const) expect(seen[k], k).toBeGreaterThan(10);
  });

  it('1 to 4 stages: global ranks map to stages, each stage tiles its parameters, strategies survive protobuf', () => {
    const g = gen(77);
    for (let t = 0; t < 40; t++) {
      const stages = g.int(1, 4);
      const devMatrix = randomDevMatrix(g);
      const devices = devMatrix.reduce((a, b) => a * b, 1);
      const layouts: ParamLayout[] = [];
      const fulls = new Map<string, number[]>();
      for (let s = 0; s < stages; s++) {
        // a shared parameter in every stage (with its own layout per stage), plus stage-local ones
        const names = ['shared.emb', ...Array.from({ length: g.int(1, 3) }, (_, i) => `layers.${s}.w${i}`)];
        for (const name of names) {
          const { layout, full } = randomLayout(g, name, s, devMatrix);
          const key = `${s}/${name}`;
          fulls.set(key, full);
          layouts.push(layout);
        }
      }
      const strategy: Strategy = makeStrategy({ currentStage: 1, merged: true, items: [], layouts });
      // the protobuf encoding keeps everything the layout math uses
      const back = parseStrategyBytes(encodeStrategy(strategy), 'random.ckpt');
      expect(stageCount(back)).toBe(stages);
      expect(stageDeviceCount(back)).toBe(devices);
      for (let rank = 0; rank < stages * devices; rank++) {
        const stage = stageOf(rank, devices);
        const local = localRankOf(rank, devices);
        expect(stage * devices + local).toBe(rank);
        expect(deviceCoordinate(devMatrix, local).reduce((acc, c, i) => acc * (devMatrix[i] as number) + c, 0)).toBe(local);
      }
      for (let s = 0; s < stages; s++) {
        for (const [name, layout] of layoutsOfStage(back, s)) {
          const full = fulls.get(`${s}/${name}`) as number[];
          checkTiling(layout, full, devices);
          const sources = Array.from({ length: devices }, (_, r) => ({ file: `rank_${s * devices + r}`, layout, sliceShape: sliceBox(layout, full, r).shape, localRank: r }));
          expect(checkShapes(name, sources)).toEqual(full);
        }
      }
    }
  });
});
