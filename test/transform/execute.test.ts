import { expect, it } from 'vitest';
import type { SinkTensor, TensorEntry, TensorSink, TensorSource } from '../../plugin/formats/types.js';
import { buildPlan, planRank, type PlanSourceFile } from '../../plugin/plan/index.js';
import { createTransformSourcePool, executeRankPlan, TransformBuffers } from '../../plugin/transform/index.js';
import { layout, strategyOf } from './helpers.js';

function memSource(path: string, tensors: Map<string, { entry: TensorEntry; data: Uint8Array }>): TensorSource {
  return {
    path,
    entries: () => [...tensors.values()].map((t) => t.entry),
    entry: (n) => tensors.get(n)?.entry,
    async readBytes(name, offset, length, dst, dstOffset = 0) {
      dst.set(tensors.get(name)!.data.subarray(offset, offset + length), dstOffset);
    },
    async close() {},
  };
}

function memSink(): TensorSink & { out: Map<string, Uint8Array>; writes: number } {
  const out = new Map<string, Uint8Array>();
  let cur: SinkTensor | null = null;
  let parts: Uint8Array[] = [];
  const s = {
    path: 'mem', out, writes: 0,
    async beginTensor(t: SinkTensor) { cur = t; parts = []; },
    async write(p: Uint8Array) { parts.push(p.slice()); s.writes++; },
    async endTensor() { out.set(cur!.name, Buffer.concat(parts)); },
    async close() {}, async abort() {},
  };
  return s;
}

it('assembles in bands with tiny buffers (direct and scratch paths) exactly', async () => {
  // full [12, 12] Float32; source dev [2,3]: columns split in 3, rows opt-sharded over the 2 replicas
  const srcS = strategyOf([layout('w', [2, 3], [-1, 0], { optShardSize: -1, optShardStep: 3 })]);
  const files: PlanSourceFile[] = [];
  const mems: TensorSource[] = [];
  const F = [12, 12];
  const data = new Uint8Array(F[0]! * F[1]! * 4);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 255;
  for (let r = 0; r < 6; r++) {
    const col = r % 3;
    const opt = Math.floor(r / 3); // replica position -> rows half
    const slice = new Uint8Array(6 * 4 * 4);
    for (let i = 0; i < 6; i++) for (let j = 0; j < 4; j++) {
      slice.set(data.subarray(((opt * 6 + i) * 12 + col * 4 + j) * 4, ((opt * 6 + i) * 12 + col * 4 + j) * 4 + 4), (i * 4 + j) * 4);
    }
    const entry: TensorEntry = { name: 'w', dtype: 'Float32', shape: [6, 4], byteLength: slice.byteLength };
    files.push({ rank: r, path: `r${r}`, entries: [entry] });
    mems.push(memSource(`r${r}`, new Map([['w', { entry, data: slice }]])));
  }
  const plan = buildPlan({ srcStrategy: srcS, dstStrategy: null, sources: files });
  const rp = planRank(plan, 0);
  expect(rp.tensors[0]!.shape).toEqual([12, 12]);
  for (const sizes of [{ band: 48 * 3, scratch: 64 }, { band: 1 << 20, scratch: 1 << 16 }]) {
    const sink = memSink();
    const pool = createTransformSourcePool(async (r) => mems[r]!);
    await executeRankPlan(rp, pool, sink, new TransformBuffers(sizes));
    expect(Buffer.from(sink.out.get('w')!).equals(Buffer.from(data))).toBe(true);
    if (sizes.band < 1000) expect(sink.writes).toBe(4); // 3 rows per band
  }
});
