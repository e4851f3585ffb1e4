/**
 * The planner's per-dimension view (plugin/plan/geometry.ts) agrees with plugin/layout's boxes
 * for random layouts: part indices and part boundaries rebuild sliceBox for every local rank.
 */
import { expect, it } from 'vitest';
import type { ParamLayout, TensorMapEntry } from '../../plugin/formats/strategy/model.js';
import { sliceBox } from '../../plugin/layout/index.js';
import { boundsOf, geomOfLayout, partCount, partsOf } from '../../plugin/plan/geometry.js';
import { xorshift32 as rng } from '../helpers/prng.js';


it('partsOf + boundsOf == sliceBox over 300 random layouts (nested maps, optimizer shards, uneven dim 0)', () => {
  const rand = rng(20261127);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
  for (let c = 0; c < 300; c++) {
    const dev = Array.from({ length: 1 + Math.floor(rand() * 4) }, () => pick([1, 2, 3, 4]));
    const rank = 1 + Math.floor(rand() * 3);
    const axes = dev.map((_, i) => i).sort(() => rand() - 0.5);
    const map: TensorMapEntry[] = [];
    for (let d = 0; d < rank; d++) {
      const take = Math.floor(rand() * 3);
      const ms = axes.splice(0, take).map((a) => dev.length - 1 - a);
      map.push(ms.length === 0 ? -1 : ms.length === 1 ? (ms[0] as number) : ms);
    }
    const used = new Set(map.flatMap((e) => (typeof e === 'number' ? [e] : [...e])).filter((m) => m >= 0).map((m) => dev.length - 1 - m));
    const group = dev.filter((_, i) => !used.has(i)).reduce((a, b) => a * b, 1);
    const counts = map.map((e) => (typeof e === 'number' ? [e] : [...e]).filter((m) => m >= 0).reduce((a, m) => a * (dev[dev.length - 1 - m] as number), 1));
    let opt = 1;
    const l: ParamLayout = { name: `p${c}`, stage: 0, devMatrix: dev, tensorMap: map, paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0 };
    if (group > 1 && rand() < 0.5) {
      const size = rand() < 0.5 ? -1 : pick([...Array(group).keys()].map((i) => i + 1).filter((s) => group % s === 0));
      opt = size === -1 ? group : size;
      Object.assign(l, { optShardSize: size, optShardStep: 1 });
    }
    const full = counts.map((k, d) => k * (d === 0 ? opt : 1) * (1 + Math.floor(rand() * 3)));
    if ((counts[0] as number) > 1 && rand() < 0.3) {
      const pss = Array.from({ length: counts[0] as number }, () => opt * (1 + Math.floor(rand() * 3)));
      Object.assign(l, { paramSplitShape: pss });
      full[0] = pss.reduce((a, b) => a + b, 0);
    }
    const g = geomOfLayout(l, rank);
    const devices = dev.reduce((a, b) => a * b, 1);
    for (let r = 0; r < devices; r++) {
      const box = sliceBox(l, full, r);
      const parts = partsOf(g, r);
      for (let d = 0; d < rank; d++) {
        const cut = g.dims[d]!;
        const b = boundsOf(cut, full[d] as number);
        expect(b.length).toBe(partCount(cut) + 1);
        const p = parts[d] as number;
        expect([b[p], (b[p + 1] as number) - (b[p] as number)], `case ${c} rank ${r} dim ${d}`).toEqual([box.start[d], box.shape[d]]);
      }
    }
  }
});
