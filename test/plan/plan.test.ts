import { describe, expect, it } from 'vitest';
import { readStrategy } from '../../plugin/formats/strategy/index.js';
import type { ParamLayout, Strategy } from '../../plugin/formats/strategy/model.js';
import { buildPlan, planRank, rankListForTransform, type PlanEntry, type PlanSourceFile } from '../../plugin/plan/index.js';
import { describeFixtures, fixture } from '../helpers/fixtures.js';
import { layout, strategyOf } from '../transform/helpers.js';

/** Source files with slice shapes for `full` under a strategy (uniform layouts only). */
function sourcesFor(s: Strategy, full: (name: string) => number[]): PlanSourceFile[] {
  const stageDev = (s.layouts[0]?.devMatrix ?? [1]).reduce((a, b) => a * b, 1);
  const out: PlanSourceFile[] = [];
  const perStage = new Map<number, PlanEntry[]>();
  for (const st of s.stages) {
    const entries: PlanEntry[] = [{ name: 'global_step', dtype: 'Int32', shape: [1], byteLength: 4 }];
    for (const l of s.layouts.filter((x) => x.stage === st)) {
      const f = full(l.name);
      const shape = f.map((v, d) => {
        const e = l.tensorMap[d];
        const ms = e === undefined ? [] : typeof e === 'number' ? [e] : [...e];
        let cut = 1;
        for (const m of ms) if (m >= 0) cut *= l.devMatrix[l.devMatrix.length - 1 - m] as number;
        return v / cut;
      });
      entries.push({ name: l.name, dtype: 'Float16', shape, byteLength: shape.reduce((a, b) => a * b, 2) });
    }
    perStage.set(st, entries);
  }
  for (let r = 0; r < stageDev * s.stages.length; r++) out.push({ rank: r, path: `rank_${r}.ckpt`, entries: perStage.get(Math.floor(r / stageDev)) as PlanEntry[] });
  return out;
}

describe('plan: hand-checked layouts', () => {
  it('dp2 x mp2 -> mp4: boxes, replicas and bytes', () => {
    const src = strategyOf([layout('w', [2, 2], [0, -1]), layout('b', [2, 2], [-1])]);
    const dst = strategyOf([layout('w', [4], [0, -1]), layout('b', [4], [-1])]);
    const sources = sourcesFor(src, (n) => (n === 'w' ? [8, 4] : [4]));
    const plan = buildPlan({ srcStrategy: src, dstStrategy: dst, sources });
    expect(plan.destination.deviceCount).toBe(4);
    // dst rank 3 holds rows 6..7: in source part 1 (rows 4..7), held by src local 1 and 3; 3 % 4 = 3 preferred
    const r3 = planRank(plan, 3);
    expect(r3.sourceRanks).toEqual([3]);
    const w = r3.tensors.find((t) => t.name === 'w')!;
    expect(w.shape).toEqual([2, 4]);
    expect(w.ops).toEqual([{ srcRank: 3, srcShape: [4, 4], srcBox: { start: [2, 0], shape: [2, 4] }, dstBox: { start: [0, 0], shape: [2, 4] } }]);
    expect(r3.tensors.map((t) => t.name)).toEqual(['global_step', 'w', 'b']);
    expect(r3.bytesWritten).toBe(4 + 16 + 8);
    expect(r3.bytesRead).toBe(4 + 16 + 8);
    // dst rank 0 -> src rank 0 (rows 0..1 of part 0); global_step from 0 % 4
    expect(planRank(plan, 0).sourceRanks).toEqual([0]);
    // rows 4..5 are source part 1 (locals 1 and 3); nearest upward from 2 % 4 is 3
    expect(rankListForTransform(2, src, dst)).toEqual([3]);
  });

  it('merging column splits: one op per source part, unsplit destination', () => {
    const src = strategyOf([layout('w', [4], [-1, 0])]);
    const plan = buildPlan({ srcStrategy: src, dstStrategy: null, sources: sourcesFor(src, () => [3, 8]) });
    const r0 = planRank(plan, 0);
    expect(r0.sourceRanks).toEqual([0, 1, 2, 3]);
    const w = r0.tensors.find((t) => t.name === 'w')!;
    expect(w.ops.map((o) => [o.srcRank, o.dstBox.start, o.dstBox.shape])).toEqual([
      [0, [0, 0], [3, 2]], [1, [0, 2], [3, 2]], [2, [0, 4], [3, 2]], [3, [0, 6], [3, 2]],
    ]);
    expect(r0.peakMemory).toBeGreaterThan(0);
  });

  it('bad inputs are InputErrors', () => {
    const src = strategyOf([layout('w', [2], [0, -1])]);
    const sources = sourcesFor(src, () => [4, 4]);
    // sliced source without strategy
    expect(() => buildPlan({ srcStrategy: null, dstStrategy: null, sources })).toThrow(/no source strategy/);
    // device count disagreeing with files
    expect(() => buildPlan({ srcStrategy: strategyOf([layout('w', [4], [0, -1])]), dstStrategy: null, sources })).toThrow(/4 devices/);
    // a split that does not divide
    expect(() => buildPlan({ srcStrategy: src, dstStrategy: strategyOf([layout('w', [3], [0, -1])]), sources })).toThrow(/cannot be split evenly/);
    // a parameter the destination needs and no source has
    expect(() => buildPlan({ srcStrategy: src, dstStrategy: strategyOf([layout('w', [2], [0, -1]), layout('missing', [2], [-1])]), sources })).toThrow(/no source file holds it/);
    // shapes that disagree between files
    const bad = sources.map((f, i) => (i === 1 ? { ...f, entries: f.entries.map((e) => (e.name === 'w' ? { ...e, shape: [2, 5], byteLength: 20 } : e)) } : f));
    expect(() => buildPlan({ srcStrategy: src, dstStrategy: null, sources: bad })).toThrow(/full shape/);
  });

  it('scales: 4096 destination ranks x 2000 parameters from synthetic strategies', () => {
    const names: string[] = [];
    const srcL: ParamLayout[] = [];
    const dstL: ParamLayout[] = [];
    for (let i = 0; i < 2000; i++) {
      const n = `layers.${Math.floor(i / 8)}.p${i % 8}`;
      names.push(n);
      const kind = i % 4;
      // source: dp2 x mp4 (8 devices); destination: 4 stages x (dp64 x mp16) = 4096 devices
      srcL.push(layout(n, [2, 4], kind === 0 ? [0, -1] : kind === 1 ? [-1, 0] : kind === 2 ? [-1, -1] : [0, -1], kind === 3 ? { optShardSize: -1, optShardStep: 4 } : {}));
      for (let st = 0; st < 4; st++) {
        if (Math.floor((i * 4) / 2000) !== st && i !== 0) continue;
        dstL.push(layout(n, [64, 16], kind === 1 ? [-1, 0] : kind === 2 ? [-1, -1] : [0, -1], { stage: st }));
      }
    }
    const src = strategyOf(srcL);
    const dst = strategyOf(dstL);
    // sourcesFor ignores the opt shard: halve dim 0 for those (one shared entry list)
    const base = sourcesFor(src, () => [256, 128]);
    const fixed = base[0]!.entries.map((e, k) => {
      const l = srcL[k - 1];
      return l !== undefined && l.optShardSize !== 0 ? { ...e, shape: [(e.shape[0] as number) / 2, e.shape[1] as number], byteLength: e.byteLength / 2 } : e;
    });
    const sources: PlanSourceFile[] = base.map((f) => ({ ...f, entries: fixed }));
    const plan = buildPlan({ srcStrategy: src, dstStrategy: dst, sources });
    expect(plan.ranks.length).toBe(4096);
    expect(plan.destination.stages).toBe(4);
    // rank 1024 + 17: stage 1, local 17 -> mp coordinate 1: rows 16..31 of 256
    const r = planRank(plan, 1024 + 17);
    expect(r.stage).toBe(1);
    const p = r.tensors.find((t) => t.name === names[504]); // i=504: kind 0, stage 1
    expect(p?.shape).toEqual([16, 128]);
    expect(p?.ops.length).toBe(1);
    const op = p!.ops[0]!;
    // source rows 0..63 are mp part 0 (src local 0 or 4); 17 % 8 = 1 -> nearest upward is 4
    expect(op.srcBox).toEqual({ start: [16, 0], shape: [16, 128] });
    expect([0, 4]).toContain(op.srcRank);
    // kind 3 (opt shard over dp: src rows split in 4 mp x 2 opt parts of 32 rows)
    const q = r.tensors.find((t) => t.name === names[507])!;
    expect(q.ops.length).toBe(1);
    expect(q.ops[0]!.srcShape).toEqual([32, 128]);
    expect(q.ops[0]!.srcBox.start).toEqual([16, 0]);
    // embedding-like parameter 0 is in every stage
    expect(planRank(plan, 3000).tensors.some((t) => t.name === names[0])).toBe(true);
    expect(r.tensors.length).toBe(plan.ranks[1024 + 17]!.tensorCount);
  });
});

describeFixtures('plan: real merged pipeline strategy (mindformers_pp2)', () => {
  it('plans destinations of 1, 2 and 8 ranks', async () => {
    const s = await readStrategy(fixture('mindformers_pp2/strategy_4_npus.ckpt'));
    expect(s.stages).toEqual([0, 1]);
    const full = (name: string): number[] => {
      const l = s.layouts.find((x) => x.name === name)!;
      return l.tensorMap.map(() => 16);
    };
    const sources = sourcesFor(s, full);
    const names = [...new Set(s.layouts.map((l) => l.name))];
    const emb = 'backbone.embedding.word_embedding.embedding_table';

    // 1 rank: everything, complete
    const p1 = buildPlan({ srcStrategy: s, dstStrategy: null, sources });
    expect(p1.ranks.length).toBe(1);
    const r = planRank(p1, 0);
    expect(r.tensors.length).toBe(names.length + 1);
    expect(r.sourceRanks).toEqual([0, 1, 2, 3]);
    for (const t of r.tensors) if (t.name !== 'global_step') expect(t.shape).toEqual(full(t.name));
    // the shared embedding is read once (from one stage), replicated -> one op
    expect(r.tensors.find((t) => t.name === emb)!.ops.length).toBe(1);

    // 2 ranks: one stage, mp 2 on dim 0 where the source splits anything
    const dst2 = strategyOf(names.map((n) => layout(n, [2], full(n).map((_, d) => (d === 0 ? 0 : -1)))));
    const p2 = buildPlan({ srcStrategy: s, dstStrategy: dst2, sources });
    for (const rank of [0, 1]) {
      const rp = planRank(p2, rank);
      expect(rp.tensors.length).toBe(names.length + 1);
      for (const t of rp.tensors) if (t.name !== 'global_step') expect(t.shape[0]).toBe(8);
    }

    // 8 ranks: 2 stages x (dp2 x mp2) with the fixture's maps
    const dst8 = strategyOf(s.layouts.map((l) => ({ ...l, devMatrix: [2, 2] })));
    const p8 = buildPlan({ srcStrategy: s, dstStrategy: dst8, sources });
    expect(p8.ranks.length).toBe(8);
    const stage1 = new Set(s.layouts.filter((l) => l.stage === 1).map((l) => l.name));
    const r5 = planRank(p8, 5);
    expect(r5.stage).toBe(1);
    expect(new Set(r5.tensors.map((t) => t.name).filter((n) => n !== 'global_step'))).toEqual(stage1);
    expect(r5.sourceRanks).toEqual([3]); // local 1 -> mp part 1 of stage 1 -> source rank 3
    expect(planRank(p8, 2).sourceRanks).toEqual([0]); // stage 0, local 2 -> mp part 0
    expect(planRank(p8, 4).tensors.some((t) => t.name === emb)).toBe(true);
    expect(planRank(p8, 0).tensors.some((t) => t.name === emb)).toBe(true);
    expect(rankListForTransform(5, s, dst8)).toEqual([3]);
    expect(rankListForTransform(0, s, null)).toEqual([0, 1, 2, 3]);
  });
});
