/**
 * `rank_list_for_transform`: the source global ranks one destination rank needs, from the two
 * strategies alone (spec §4). Shapes are not known here, so each parameter gets a stand-in full
 * shape that both layouts can cut (per dim the least common multiple of the two part counts, or
 * the manual split's total), exactly as MindSpore builds a fake shape.
 */
import type { ParamLayout, Strategy } from '../formats/strategy/model.js';
import { buildPlan } from './build.js';
import type { PlanEntry, PlanSourceFile } from './types.js';
import { geomOfLayout, partCount, partsOf, type LayoutGeom } from './geometry.js';

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

function stageDevicesOf(s: Strategy): number {
  return (s.layouts[0]?.devMatrix ?? [1]).reduce((a, b) => a * b, 1);
}

/** Source global ranks (ascending) that destination rank `rank` reads. */
export function rankListForTransform(rank: number, srcStrategy: Strategy | null, dstStrategy: Strategy | null): number[] {
  if (srcStrategy === null) return [0];
  const srcNames = new Set(srcStrategy.layouts.map((l) => l.name));
  const dst = dstStrategy === null ? null : { ...dstStrategy, layouts: dstStrategy.layouts.filter((l) => srcNames.has(l.name)) };
  // stand-in full shapes
  const tensorRank = (l: ParamLayout): number => {
    let n = l.tensorMap.length;
    if (n > 1 && Array.isArray(l.tensorMap[n - 1]) && (l.tensorMap[n - 1] as readonly number[]).length === 0) n--;
    return n;
  };
  const full = new Map<string, number[]>();
  const geoms = (ls: readonly ParamLayout[]): Map<string, LayoutGeom[]> => {
    const m = new Map<string, LayoutGeom[]>();
    for (const l of ls) {
      const g = geomOfLayout(l, tensorRank(l), { file: srcStrategy.path });
      const arr = m.get(l.name) ?? [];
      arr.push(g);
      m.set(l.name, arr);
    }
    return m;
  };
  const sg = geoms(srcStrategy.layouts);
  const dg = dst === null ? new Map<string, LayoutGeom[]>() : geoms(dst.layouts);
  for (const [name, gs] of sg) {
    const all = [...gs, ...(dg.get(name) ?? [])];
    const n = gs[0]?.dims.length ?? 0;
    const shape: number[] = [];
    for (let d = 0; d < n; d++) {
      const uneven = all.find((g) => g.dims[d]?.uneven !== null && g.dims[d]?.uneven !== undefined)?.dims[d]?.uneven;
      if (uneven) {
        shape.push(uneven.reduce((a, b) => a + b, 0));
        continue;
      }
      let l = 1;
      for (const g of all) {
        const c = g.dims[d] === undefined ? 1 : partCount(g.dims[d]!);
        l = (l / gcd(l, c)) * c;
      }
      shape.push(l);
    }
    full.set(name, shape);
  }
  const stageDev = stageDevicesOf(srcStrategy);
  const stages = Math.max(1, srcStrategy.stages.length);
  const byStage = new Map<number, ParamLayout[]>();
  for (const l of srcStrategy.layouts) {
    const arr = byStage.get(l.stage) ?? [];
    arr.push(l);
    byStage.set(l.stage, arr);
  }
  const sources: PlanSourceFile[] = [];
  const uniformCache = new Map<number, PlanEntry[]>();
  for (let r = 0; r < stageDev * stages; r++) {
    const stage = Math.floor(r / stageDev);
    const local = r % stageDev;
    const layouts = byStage.get(stage) ?? [];
    const uneven = layouts.some((l) => l.paramSplitShape.length > 0);
    if (!uneven && uniformCache.has(stage)) {
      sources.push({ rank: r, path: `rank_${r}`, entries: uniformCache.get(stage) as PlanEntry[] });
      continue;
    }
    const entries: PlanEntry[] = [];
    for (const l of layouts) {
      const f = full.get(l.name) as number[];
      const g = geomOfLayout(l, f.length, { file: srcStrategy.path });
      const parts = partsOf(g, local);
      const shape = f.map((v, d) => {
        const cut = g.dims[d]!;
        if (cut.uneven === null) return v / partCount(cut);
        return (cut.uneven[Math.floor((parts[d] as number) / cut.optParts)] as number) / cut.optParts;
      });
      entries.push({ name: l.name, dtype: 'Float16', shape, byteLength: shape.reduce((a, b) => a * b, 2) });
    }
    if (!uneven) uniformCache.set(stage, entries);
    sources.push({ rank: r, path: `rank_${r}`, entries });
  }
  const plan = buildPlan({ srcStrategy, dstStrategy: dst, sources, ranks: [rank] });
  return [...(plan.ranks[0]?.sourceRanks ?? [])];
}
