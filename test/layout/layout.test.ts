import { describe, expect, it } from 'vitest';
import { InputError } from '../../plugin/errors.js';
import type { ParamLayout, TensorMapEntry } from '../../plugin/formats/strategy/model.js';
import { makeStrategy } from '../../plugin/formats/strategy/index.js';
import {
  checkShapes,
  completeLayout,
  deviceCoordinate,
  distinctSlices,
  fullShapeFromSlice,
  layoutForRank,
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
  stagesOfParam,
  tensorStrategy,
  totalDeviceCount,
} from '../../plugin/layout/index.js';

function L(devMatrix: number[], tensorMap: TensorMapEntry[], over: Partial<ParamLayout> = {}): ParamLayout {
  return { name: 'p', stage: 0, devMatrix, tensorMap, paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0, ...over };
}

const rows = (layout: ParamLayout, full: number[], r: number): [number, number] => {
  const b = sliceBox(layout, full, r);
  return [b.start[0] as number, (b.start[0] as number) + (b.shape[0] as number)];
};
const cols = (layout: ParamLayout, full: number[], r: number): [number, number] => {
  const b = sliceBox(layout, full, r);
  return [b.start[1] as number, (b.start[1] as number) + (b.shape[1] as number)];
};

describe('worked examples (spec §3.2)', () => {
  it('1. llama2 tp2: wq rows, wo columns, norms replicated', () => {
    const wq = L([2], [0, -1]);
    const wo = L([2], [-1, 0]);
    const norm = L([2], [-1]);
    for (const r of [0, 1]) {
      expect(sliceBox(wq, [40, 40], r)).toEqual({ start: [20 * r, 0], shape: [20, 40] });
      expect(sliceBox(wo, [40, 40], r)).toEqual({ start: [0, 20 * r], shape: [40, 20] });
      expect(sliceBox(norm, [40], r)).toEqual({ start: [0], shape: [40] });
    }
    expect(replicaKey(norm, 0)).toBe(replicaKey(norm, 1));
    expect(replicaKey(wq, 0)).not.toBe(replicaKey(wq, 1));
    expect(fullShapeFromSlice(wq, [20, 40])).toEqual([40, 40]);
    expect(fullShapeFromSlice(wo, [40, 20])).toEqual([40, 40]);
  });

  it('2. dp2 x mp2 with 2 stages: {0,2} top half, {1,3} bottom half; stage 1 = ranks 4..7', () => {
    const l = L([2, 2], [0, -1]);
    const full = [8, 6];
    for (const g of [0, 1, 2, 3, 4, 5, 6, 7]) {
      const local = localRankOf(g, 4);
      expect(stageOf(g, 4)).toBe(g < 4 ? 0 : 1);
      expect(deviceCoordinate([2, 2], local)).toEqual([Math.floor(local / 2), local % 2]);
      expect(rows(l, full, local)).toEqual(local % 2 === 0 ? [0, 4] : [4, 8]);
    }
    expect(distinctSlices(l, full).map((s) => s.ranks)).toEqual([[0, 2], [1, 3]]);
  });

  it('3. classic dev [2,4], map [1,-1] on [32,32]: ranks 0-3 rows 0-15, 4-7 rows 16-31', () => {
    const l = L([2, 4], [1, -1]);
    for (let r = 0; r < 8; r++) expect(sliceBox(l, [32, 32], r)).toEqual({ start: [r < 4 ? 0 : 16, 0], shape: [16, 32] });
    expect(tensorStrategy(l)).toEqual([2, 1]);
  });

  it('4. nested dev [4,2,2], map [[2,1],0] on [8,8]: dim 0 part c0*2+c1, dim 1 part c2', () => {
    const l = L([4, 2, 2], [[2, 1], 0]);
    expect(splitCounts(l)).toEqual([8, 2]);
    for (let r = 0; r < 16; r++) {
      const [c0, c1, c2] = deviceCoordinate([4, 2, 2], r) as [number, number, number];
      expect(sliceIndex(l, r)).toEqual([c0 * 2 + c1, c2]);
      expect(sliceBox(l, [8, 8], r)).toEqual({ start: [c0 * 2 + c1, 4 * c2], shape: [1, 4] });
    }
  });
});

describe('optimizer sharding (spec §3.3)', () => {
  it('dev [4,2], map [-1,0], [8,16], size 4: columns 8*(r%2), rows 2*(r//2)', () => {
    for (const size of [4, -1]) {
      const l = L([4, 2], [-1, 0], { optShardStep: 2, optShardSize: size });
      expect(resolvedOptShardSize(l)).toBe(4);
      expect(splitCounts(l)).toEqual([4, 2]);
      for (let r = 0; r < 8; r++) {
        expect(sliceBox(l, [8, 16], r)).toEqual({ start: [2 * Math.floor(r / 2), 8 * (r % 2)], shape: [2, 8] });
      }
      expect(fullShapeFromSlice(l, [2, 8])).toEqual([8, 16]);
      expect(distinctSlices(l, [8, 16])).toHaveLength(8);
    }
  });

  it('size 2 < |G| = 4: G = {0,2,4,6} cut into [0,2],[4,6]; a rank holds part pos mod 2', () => {
    const l = L([4, 2], [-1, 0], { optShardStep: 2, optShardSize: 2 });
    expect(splitCounts(l)).toEqual([2, 2]);
    for (let r = 0; r < 8; r++) {
      const pos = Math.floor(r / 2);
      expect(rows(l, [8, 16], r)).toEqual(pos % 2 === 0 ? [0, 4] : [4, 8]);
      expect(cols(l, [8, 16], r)).toEqual(r % 2 === 0 ? [0, 8] : [8, 16]);
    }
    // ranks 0 and 4 (positions 0 and 2 of G) hold the same piece
    expect(replicaKey(l, 0)).toBe(replicaKey(l, 4));
    expect(distinctSlices(l, [8, 16]).map((s) => s.ranks)).toEqual([[0, 4], [1, 5], [2, 6], [3, 7]]);
  });

  it('model-parallel index is outer, optimizer index inner on dim 0', () => {
    // dev [2,2]: axis 1 (map 0) splits dim 0 in 2; axis 0 is the repeated group, size 2
    const l = L([2, 2], [0, -1], { optShardStep: 2, optShardSize: 2 });
    // rank r: mp part = r%2, opt part = r//2 -> dim-0 index = (r%2)*2 + r//2
    expect([0, 1, 2, 3].map((r) => sliceIndex(l, r)[0])).toEqual([0, 2, 1, 3]);
    expect(rows(l, [8, 4], 1)).toEqual([4, 6]);
  });

  it('step 0 or size 0/1 means no optimizer split; sizes that do not fit are refused', () => {
    expect(resolvedOptShardSize(L([4, 2], [-1, 0], { optShardStep: 0, optShardSize: 4 }))).toBe(1);
    expect(resolvedOptShardSize(L([4, 2], [-1, 0], { optShardStep: 2, optShardSize: 0 }))).toBe(1);
    expect(resolvedOptShardSize(L([4, 2], [-1, 0], { optShardStep: 2, optShardSize: 1 }))).toBe(1);
    expect(() => splitCounts(L([4, 2], [-1, 0], { name: 'w', optShardStep: 2, optShardSize: 8 }))).toThrow(/tensor 'w': opt_weight_shard_size 8 exceeds the repeated group of 4/);
    expect(() => splitCounts(L([6, 2], [-1, 0], { optShardStep: 2, optShardSize: 4 }))).toThrow(/does not divide the repeated group of 6/);
  });
});

describe('manual split (param_split_shape)', () => {
  const l = L([4], [0, -1], { paramSplitShape: [3, 5, 2, 6], indicesOffset: [0, 3, 8, 10] });
  it('uneven dim-0 parts from param_split_shape and indices_offset', () => {
    expect(fullShapeFromSlice(l, [5, 7])).toEqual([16, 7]);
    expect(fullShapeFromSlice(l, [5, 7], 1)).toEqual([16, 7]);
    expect(() => fullShapeFromSlice(l, [5, 7], 0)).toThrow(/slice dim 0 is 5, expected 3/);
    expect(() => fullShapeFromSlice(l, [4, 7])).toThrow(/expected one of 3,5,2,6/);
    expect([0, 1, 2, 3].map((r) => rows(l, [16, 7], r))).toEqual([[0, 3], [3, 8], [8, 10], [10, 16]]);
    expect(() => sliceBox(l, [17, 7], 0)).toThrow(/adds up to 16, but dim 0 is 17/);
  });
  it('with an optimizer split inside each part', () => {
    const o = L([2, 2], [0, -1], { paramSplitShape: [2, 6], optShardStep: 2, optShardSize: 2 });
    expect([0, 1, 2, 3].map((r) => rows(o, [8, 3], r))).toEqual([[0, 1], [2, 5], [1, 2], [5, 8]]);
  });
  it('refuses offsets and counts that do not match', () => {
    expect(() => splitCounts(L([4], [0], { paramSplitShape: [3, 5] }))).toThrow(/has 2 entries but dim 0 is split into 4 parts/);
    expect(() => splitCounts(L([2], [0], { paramSplitShape: [3, 5], indicesOffset: [0, 4] }))).toThrow(/indices_offset \[0,4\] does not match/);
  });
});

describe('bad layouts and shapes', () => {
  const cases: Array<[string, () => unknown, RegExp]> = [
    ['field-sliced', () => sliceBox(L([2], [0], { name: 'emb', field: 4 }), [8], 0), /tensor 'emb': field-sliced embeddings are not supported/],
    ['axis out of range', () => splitCounts(L([2], [1, -1])), /refers to device axis 1, but dev_matrix \[2\] has 1 axes/],
    ['axis used twice', () => splitCounts(L([2, 2], [0, [1, 0]])), /uses device axis 0 twice/],
    ['zero device axis', () => splitCounts(L([2, 0], [0])), /has an entry 0 below 1/],
    ['huge device matrix', () => splitCounts(L([65536, 65536, 65536], [0])), /describes more than/],
    ['rank outside the stage', () => sliceIndex(L([2], [0]), 2), /local rank 2 is outside the stage's 2 devices/],
    ['uneven split', () => sliceBox(L([4], [0, -1], { name: 'w' }), [10, 3], 0), /tensor 'w': dim 0 of shape \[10,3\] does not divide into 4 parts/],
    ['rank mismatch', () => fullShapeFromSlice(L([2], [0, -1]), [4]), /slice shape \[4\] has 1 dims but tensor_map \[0,-1\] has 2/],
  ];
  for (const [what, fn, msg] of cases) {
    it(what, () => {
      expect(fn).toThrow(InputError);
      expect(fn).toThrow(msg);
    });
  }

  it('checkShapes: agreeing sources give the full shape; disagreeing ones name parameter, files and shapes', () => {
    const wq = L([2], [0, -1]);
    expect(checkShapes('wq', [
      { file: 'rank_0/a.ckpt', layout: wq, sliceShape: [20, 40], localRank: 0 },
      { file: 'rank_1/b.ckpt', layout: wq, sliceShape: [20, 40], localRank: 1 },
      { file: 'full.ckpt', layout: completeLayout(2), sliceShape: [40, 40] },
    ])).toEqual([40, 40]);
    expect(() => checkShapes('wq', [
      { file: 'rank_0/a.ckpt', layout: wq, sliceShape: [20, 40] },
      { file: 'rank_1/b.ckpt', layout: wq, sliceShape: [21, 40] },
    ])).toThrow(/tensor 'wq': full shapes disagree: rank_0\/a\.ckpt has slice \[20,40\] -> \[40,40\], rank_1\/b\.ckpt has slice \[21,40\] -> \[42,40\]/);
    const m = L([4], [0], { paramSplitShape: [3, 5, 2, 6] });
    expect(() => checkShapes('emb', [{ file: 'rank_2/x.ckpt', layout: m, sliceShape: [3], localRank: 2 }])).toThrow(/rank_2\/x\.ckpt, tensor 'emb': slice dim 0 is 3, expected 2/);
  });
});

describe('no strategy and stages', () => {
  it('completeLayout: one device holds the whole tensor', () => {
    const l = completeLayout(3);
    expect(l).toEqual(completeLayout(3));
    expect(splitCounts(l)).toEqual([1, 1, 1]);
    expect(sliceBox(l, [2, 3, 4], 0)).toEqual({ start: [0, 0, 0], shape: [2, 3, 4] });
    expect(sliceBox(completeLayout(0), [], 0)).toEqual({ start: [], shape: [] });
  });

  it('stage functions', () => {
    const base = { paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0 };
    const s = makeStrategy({
      currentStage: 1,
      merged: true,
      path: 'm.ckpt',
      items: [],
      layouts: [
        { ...base, name: 'emb', stage: 0, devMatrix: [2, 2], tensorMap: [0, -1] },
        { ...base, name: 'a', stage: 0, devMatrix: [4], tensorMap: [-1] },
        { ...base, name: 'emb', stage: 1, devMatrix: [2, 2], tensorMap: [-1, 0] },
        { ...base, name: 'b', stage: 1, devMatrix: [1, 4], tensorMap: [0] },
      ],
    });
    expect(stageDeviceCount(s)).toBe(4);
    expect(stageCount(s)).toBe(2);
    expect(totalDeviceCount(s)).toBe(8);
    expect([...layoutsOfStage(s, 1).keys()]).toEqual(['emb', 'b']);
    expect(stagesOfParam(s, 'emb')).toEqual([0, 1]);
    expect(stagesOfParam(s, 'b')).toEqual([1]);
    expect(layoutForRank(s, 'emb', 5)?.tensorMap).toEqual([-1, 0]);
    expect(layoutForRank(s, 'a', 5)).toBeUndefined();

    const gap = makeStrategy({ ...s, layouts: s.layouts.map((l) => ({ ...l, stage: l.stage * 2 })) });
    expect(() => stageCount(gap)).toThrow(/m\.ckpt: pipeline stages \[0,2\] are not exactly 0\.\.1/);
    const uneven = makeStrategy({ ...s, layouts: [...s.layouts, { ...base, name: 'c', stage: 1, devMatrix: [2], tensorMap: [0] }] });
    expect(() => stageDeviceCount(uneven)).toThrow(/m\.ckpt, tensor 'c': dev_matrix \[2\] \(stage 1\) describes 2 devices/);
    expect(() => stageDeviceCount(makeStrategy({ currentStage: 1, items: [], layouts: [] }))).toThrow(/no parameter layouts/);
  });
});
