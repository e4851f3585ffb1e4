/**
 * Converting several destination ranks together (executeRankPlanGroup): byte-identical to the
 * per-rank executor for column, row, replicated, scalar and verbatim tensors at several buffer
 * sizes; each source span read once per group (no read amplification for column splits), row
 * splits read straight into place; transformCheckpoints writes the same files and CRCs whether
 * ranks are grouped or not.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { SinkTensor, TensorEntry, TensorSink, TensorSource } from '../../plugin/formats/types.js';
import { buildPlan, planRank, type PlanSourceFile, type RankPlan } from '../../plugin/plan/index.js';
import {
  createTransformSourcePool, executeRankPlan, executeRankPlanGroup, fileCrc32Of, rankPlansShareTensors, transformCheckpoints,
  TransformBuffers, transformGroupBufferSizes, transformGroupSize,
} from '../../plugin/transform/index.js';
import { layout, saveStrategy, strategyOf, withTempDir, writeCkpt, type GenTensor } from './helpers.js';

interface Counted { source: TensorSource; reads: Map<string, number>; calls: Map<string, number[]> }

function memSource(tensors: Map<string, { entry: TensorEntry; data: Uint8Array }>): Counted {
  const reads = new Map<string, number>();
  const calls = new Map<string, number[]>();
  const source: TensorSource = {
    path: 'mem',
    entries: () => [...tensors.values()].map((t) => t.entry),
    entry: (n) => tensors.get(n)?.entry,
    async readBytes(name, offset, length, dst, dstOffset = 0) {
      const t = tensors.get(name)!;
      if (offset < 0 || offset + length > t.data.byteLength) throw new Error(`read outside ${name}`);
      reads.set(name, (reads.get(name) ?? 0) + length);
      calls.set(name, [...(calls.get(name) ?? []), length]);
      dst.set(t.data.subarray(offset, offset + length), dstOffset);
    },
    async close() {},
  };
  return { source, reads, calls };
}

function memSink(): TensorSink & { out: Map<string, Uint8Array>; order: string[] } {
  const out = new Map<string, Uint8Array>();
  const order: string[] = [];
  let cur: SinkTensor | null = null;
  let parts: Uint8Array[] = [];
  return {
    path: 'mem', out, order,
    async beginTensor(t: SinkTensor) { cur = t; parts = []; order.push(t.name); },
    async write(p: Uint8Array) { parts.push(p.slice()); },
    async endTensor() { out.set(cur!.name, Buffer.concat(parts)); },
    async close() {}, async abort() {},
  };
}

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + seed * 17 + (i >> 7)) & 255;
  return b;
}

// full shapes (Float32): col [16, 64] split on columns, row [32, 16] split on rows, rep [8, 8]
// replicated, big [8, 65536] column-split with 64 KiB rows, s scalar not in the strategy (verbatim)
const FULL: Record<string, number[]> = { col: [16, 64], row: [32, 16], rep: [8, 8], big: [8, 65536] };

function setup(): { plan: ReturnType<typeof buildPlan>; data: Map<string, Uint8Array>; counted: Counted } {
  const data = new Map<string, Uint8Array>();
  const tensors = new Map<string, { entry: TensorEntry; data: Uint8Array }>();
  let seed = 1;
  for (const [name, shape] of Object.entries(FULL)) {
    const d = bytes(shape[0]! * shape[1]! * 4, seed++);
    data.set(name, d);
    tensors.set(name, { entry: { name, dtype: 'Float32', shape, byteLength: d.byteLength }, data: d });
  }
  const s = bytes(4, 9);
  tensors.set('s', { entry: { name: 's', dtype: 'Int32', shape: [], byteLength: 4 }, data: s });
  const counted = memSource(tensors);
  const dst = strategyOf([
    layout('col', [4], [-1, 0]), layout('row', [4], [0, -1]), layout('rep', [4], [-1, -1]), layout('big', [4], [-1, 0]),
  ]);
  const files: PlanSourceFile[] = [{ rank: 0, path: 'r0', entries: counted.source.entries() }];
  return { plan: buildPlan({ srcStrategy: null, dstStrategy: dst, sources: files }), data, counted };
}

async function runPerRank(rps: RankPlan[], counted: Counted, sizes: { band: number; scratch: number }): Promise<Map<string, Uint8Array>[]> {
  const outs: Map<string, Uint8Array>[] = [];
  const pool = createTransformSourcePool(async () => counted.source);
  for (const rp of rps) {
    const sink = memSink();
    await executeRankPlan(rp, pool, sink, new TransformBuffers(sizes));
    outs.push(sink.out);
  }
  return outs;
}

describe('executeRankPlanGroup', () => {
  it('writes the same bytes as the per-rank executor at several buffer sizes', async () => {
    const sizesList = [
      { band: 256, scratch: 64 * 1024 }, // many bands, scratch spans
      { band: 512, scratch: 300 }, // scratch smaller than the group's span: read in several spans
      { band: 1 << 20, scratch: 1 << 20 },
    ];
    for (const sizes of sizesList) {
      const ref = setup();
      const rps = [0, 1, 2, 3].map((r) => planRank(ref.plan, r));
      const expected = await runPerRank(rps, ref.counted, sizes);
      const grp = setup();
      const sinks = rps.map(() => memSink());
      const pool = createTransformSourcePool(async () => grp.counted.source);
      const seen: number[] = [];
      const read = await executeRankPlanGroup(rps, pool, sinks, new TransformBuffers(sizes), (n) => seen.push(n));
      const written = seen.reduce((a, b) => a + b, 0);
      expect(written).toBe(rps.reduce((a, rp) => a + rp.bytesWritten, 0));
      expect(read).toBe(rps.reduce((a, rp) => a + rp.tensors.reduce((x, t) => x + t.byteLength, 0), 0));
      for (let k = 0; k < 4; k++) {
        expect(sinks[k]!.order).toEqual(rps[k]!.tensors.map((t) => t.name));
        for (const [name, buf] of expected[k]!) expect(Buffer.from(sinks[k]!.out.get(name)!).equals(Buffer.from(buf)), `${name} rank ${k} ${JSON.stringify(sizes)}`).toBe(true);
      }
      // independent check of the column split against the full tensor
      const col = ref.data.get('col')!;
      for (let k = 0; k < 4; k++) {
        const got = sinks[k]!.out.get('col')!;
        for (let i = 0; i < 16; i++) {
          expect(Buffer.from(got.subarray(i * 64, i * 64 + 64)).equals(Buffer.from(col.subarray((i * 64 + k * 16) * 4, (i * 64 + k * 16 + 16) * 4)))).toBe(true);
        }
      }
    }
  });

  it('reads each source span once for the group (no read amplification of column splits)', async () => {
    const sizes = { band: 1 << 20, scratch: 4 << 20 };
    const per = setup();
    const rps = [0, 1, 2, 3].map((r) => planRank(per.plan, r));
    await runPerRank(rps, per.counted, sizes);
    const grp = setup();
    const pool = createTransformSourcePool(async () => grp.counted.source);
    await executeRankPlanGroup(rps, pool, rps.map(() => memSink()), new TransformBuffers(sizes));
    const full = (n: string): number => FULL[n]!.reduce((a, b) => a * b, 4);
    // per rank: the covering span of whole rows is read once per destination rank
    expect(per.counted.reads.get('col')).toBeGreaterThanOrEqual(3 * full('col'));
    for (const n of ['col', 'big', 'rep']) expect(grp.counted.reads.get(n), n).toBe(full(n));
    // row split: one positioned read per rank straight into place, nothing more
    expect(grp.counted.reads.get('row')).toBe(full('row'));
    expect(grp.counted.calls.get('row')).toEqual([512, 512, 512, 512]);
    // verbatim scalar read once for the four ranks
    expect(grp.counted.reads.get('s')).toBe(4);
  });

  it('the band hook sees every band of every rank (its box in full-tensor coordinates) and what it changes is written', async () => {
    const { plan, data, counted } = setup();
    const rps = [0, 1, 2, 3].map((r) => planRank(plan, r));
    const sinks = rps.map(() => memSink());
    const seen: Array<{ lane: number; tensor: string; start: number[]; shape: number[] }> = [];
    await executeRankPlanGroup(rps, createTransformSourcePool(async () => counted.source), sinks, new TransformBuffers({ band: 300, scratch: 1024 }), {
      onBand: (b) => {
        seen.push({ lane: b.lane, tensor: b.tensor, start: [...b.box.start], shape: [...b.box.shape] });
        if (b.dtype === 'Float32' && b.box.shape.length === 2) {
          // the band's bytes are the full tensor's at its box
          const [r0, c0] = b.box.start as [number, number];
          const [rows, cols] = b.box.shape as [number, number];
          const full = data.get(b.tensor)!;
          const width = FULL[b.tensor]![1]!;
          for (let i = 0; i < rows; i++) {
            const want = full.subarray(((r0 + i) * width + c0) * 4, ((r0 + i) * width + c0 + cols) * 4);
            expect(Buffer.from(b.bytes.subarray(i * cols * 4, (i + 1) * cols * 4)).equals(Buffer.from(want)), `${b.tensor} lane ${b.lane}`).toBe(true);
          }
          b.bytes.fill(0xab);
        }
      },
    });
    for (let k = 0; k < 4; k++) {
      // every byte of every 2-d Float32 tensor went through the hook, which changed it
      for (const n of Object.keys(FULL)) expect(sinks[k]!.out.get(n)!.every((x) => x === 0xab), `${n} rank ${k}`).toBe(true);
      // the bands of a rank tile its slice: rows in order, each band the slice's width
      for (const n of Object.keys(FULL)) {
        const t = rps[k]!.tensors.find((x) => x.name === n)!;
        const bands = seen.filter((x) => x.lane === k && x.tensor === n);
        let row = t.start[0]!;
        for (const b of bands) {
          expect(b.start).toEqual([row, t.start[1]]);
          expect(b.shape[1]).toBe(t.shape[1]);
          row += b.shape[0]!;
        }
        expect(row).toBe(t.start[0]! + t.shape[0]!);
      }
      // the verbatim scalar is seen as one band of the whole (empty) box
      expect(seen.filter((x) => x.lane === k && x.tensor === 's')).toEqual([{ lane: k, tensor: 's', start: [], shape: [] }]);
    }
  });

  it('groups only plans listing the same tensors of the same stage', () => {
    const { plan } = setup();
    const a = planRank(plan, 0);
    const b = planRank(plan, 1);
    expect(rankPlansShareTensors(a, b)).toBe(true);
    expect(rankPlansShareTensors(a, { ...b, stage: 1 })).toBe(false);
    expect(rankPlansShareTensors(a, { ...b, tensors: [...b.tensors].reverse() })).toBe(false);
    expect(rankPlansShareTensors(a, { ...b, tensors: b.tensors.slice(1) })).toBe(false);
    return expect(executeRankPlanGroup([a, { ...b, stage: 1 }], createTransformSourcePool(async () => { throw new Error('unused'); }), [memSink(), memSink()], new TransformBuffers({ band: 1024, scratch: 1024 }))).rejects.toThrow(/cannot be converted together/);
  });

  it('sizes groups from the budget keeping per-rank bands of a few MiB', () => {
    expect(transformGroupSize(512 * 1024 ** 2)).toBe(8);
    expect(transformGroupBufferSizes(512 * 1024 ** 2, 8)).toEqual({ band: 8 * 1024 ** 2, scratch: 64 * 1024 ** 2 });
    expect(transformGroupSize(4 * 1024 ** 2)).toBe(1);
    const g = transformGroupSize(64 * 1024 ** 2);
    expect(g).toBeGreaterThan(1);
    const s = transformGroupBufferSizes(64 * 1024 ** 2, g);
    expect(s.band).toBeGreaterThanOrEqual(4 * 1024 ** 2);
    expect(s.scratch + 2 * g * s.band).toBeLessThanOrEqual(64 * 1024 ** 2);
  });
});

describe('transformCheckpoints with grouped ranks', () => {
  it('writes the same files (and manifest CRCs) grouped as one rank at a time', async () => {
    await withTempDir(async (dir) => {
      const tensors: GenTensor[] = [
        { name: 'global_step', dtype: 'Int32', shape: [1], data: bytes(4, 3) },
        { name: 'a.weight', dtype: 'Float16', shape: [64, 96], data: bytes(64 * 96 * 2, 4) },
        { name: 'b.weight', dtype: 'Float32', shape: [48, 40], data: bytes(48 * 40 * 4, 5) },
        { name: 'norm', dtype: 'Float32', shape: [40], data: bytes(160, 6) },
      ];
      const src = join(dir, 'full.ckpt');
      await writeCkpt(src, tensors);
      const dst = await saveStrategy(join(dir, 'dst.ckpt'), [
        layout('a.weight', [2, 4], [-1, 0]), layout('b.weight', [2, 4], [1, 0]), layout('norm', [2, 4], [-1]),
      ]);
      for (const format of ['ckpt', 'safetensors'] as const) {
        const grouped = await transformCheckpoints({ srcCheckpoint: src, dstStrategy: dst, dstDir: join(dir, `g-${format}`), outputFormat: format, crc: true, progress: false });
        // 4 MiB leaves room for one rank at a time only
        const single = await transformCheckpoints({ srcCheckpoint: src, dstStrategy: dst, dstDir: join(dir, `s-${format}`), outputFormat: format, crc: true, memory: 4 * 2 ** 20, progress: false });
        expect(grouped.written).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
        expect(grouped.files.map((f) => [f.rank, f.size, f.crc32])).toEqual(single.files.map((f) => [f.rank, f.size, f.crc32]));
        for (const f of grouped.files) {
          const g = await readFile(join(grouped.dstDir, f.path));
          const s = await readFile(join(single.dstDir, f.path));
          expect(g.equals(s), f.path).toBe(true);
          expect(await fileCrc32Of(join(grouped.dstDir, f.path))).toEqual({ size: f.size, crc32: f.crc32 });
        }
      }
    });
  });
});
