/**
 * Property tests over random layouts with generated checkpoints on disk: slicing a complete
 * checkpoint gives every rank exactly the elements the layout assigns it (checked against an
 * element-wise reference written here, independent of plugin/plan), merging gives it back bit for
 * bit, and A -> B -> C equals A -> C.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { DType } from '../../plugin/formats/dtype.js';
import type { ParamLayout, TensorMapEntry } from '../../plugin/formats/strategy/model.js';
import { transformCheckpoints } from '../../plugin/transform/index.js';
import { layout, readCkpt, saveStrategy, withTempDir, writeCkpt, type GenTensor } from './helpers.js';
import { mulberry32 as rng } from '../helpers/prng.js';


interface Param { name: string; dtype: DType; full: number[]; stages: number[] }
interface Layout { stageDev: number; stages: number; dev: number[]; layouts: ParamLayout[] }

const FULL = [24, 48, 24];

function randomLayout(rand: () => number, params: Param[], stages: number): Layout {
  let dev: number[];
  for (;;) {
    const axes = 1 + Math.floor(rand() * 4);
    dev = Array.from({ length: axes }, () => [1, 2, 2, 3, 4][Math.floor(rand() * 5)] as number);
    const n = dev.reduce((a, b) => a * b, 1);
    const threes = dev.filter((d) => d === 3).length;
    if (n <= 8 && threes <= 1) break;
  }
  const stageDev = dev.reduce((a, b) => a * b, 1);
  const layouts: ParamLayout[] = [];
  for (const p of params) {
    for (const st of p.stages.filter((s) => s < stages)) {
      const free = dev.map((_, i) => i); // axis indices (left-indexed)
      const map: TensorMapEntry[] = [];
      for (let d = 0; d < p.full.length; d++) {
        const r = rand();
        const take = (): number => free.splice(Math.floor(rand() * free.length), 1)[0] as number;
        if (r < 0.35 || free.length === 0) map.push(-1);
        else if (r < 0.8 || free.length < 2) map.push(dev.length - 1 - take());
        else {
          const a = take();
          const b = take();
          map.push([dev.length - 1 - a, dev.length - 1 - b]);
        }
      }
      const used = new Set<number>();
      map.forEach((e) => (typeof e === 'number' ? [e] : e).forEach((m) => m >= 0 && used.add(dev.length - 1 - m)));
      const group = dev.filter((_, i) => !used.has(i)).reduce((a, b) => a * b, 1);
      const mp0 = (typeof map[0] === 'number' ? [map[0]] : [...(map[0] as number[])]).filter((m) => m >= 0)
        .reduce((a, m) => a * (dev[dev.length - 1 - m] as number), 1);
      const extra: Partial<ParamLayout> = { stage: st };
      let opt = 1;
      if (rand() < 0.35 && group > 1) {
        // a shard size must divide the repeated group (MindSpore does not shard otherwise; plugin/layout refuses it)
        const choice = rand() < 0.5 || group % 2 !== 0 ? -1 : 2;
        opt = choice === -1 ? group : Math.min(2, group);
        if ((p.full[0] as number) % (mp0 * opt) === 0) Object.assign(extra, { optShardSize: choice, optShardStep: 1 });
        else opt = 1;
      }
      if (mp0 > 1 && rand() < 0.3) {
        // uneven dim-0 split: sizes multiple of opt adding up to full[0]
        const unit = opt;
        const units = (p.full[0] as number) / unit;
        const cuts = new Set<number>();
        while (cuts.size < mp0 - 1) cuts.add(1 + Math.floor(rand() * (units - 1)));
        const pts = [0, ...[...cuts].sort((a, b) => a - b), units];
        const sizes = pts.slice(1).map((x, i) => (x - (pts[i] as number)) * unit);
        Object.assign(extra, { paramSplitShape: sizes, indicesOffset: sizes.map((_, i) => sizes.slice(0, i).reduce((a, b) => a + b, 0)) });
      }
      layouts.push(layout(p.name, dev, map, extra));
    }
  }
  return { stageDev, stages, dev, layouts };
}

/** Reference: the box [start, end) per dim that global rank `rank` holds of parameter p (null: not held). */
function refBox(L: Layout, l: ParamLayout, full: number[], local: number): Array<[number, number]> {
  const dev = l.devMatrix;
  const coord: number[] = [];
  let rest = local;
  for (let a = dev.length - 1; a >= 0; a--) {
    coord[a] = rest % (dev[a] as number);
    rest = Math.floor(rest / (dev[a] as number));
  }
  const used = new Set<number>();
  const out: Array<[number, number]> = [];
  const mpIdx: number[] = [];
  const mpCnt: number[] = [];
  l.tensorMap.forEach((e) => {
    let idx = 0;
    let cnt = 1;
    for (const m of typeof e === 'number' ? [e] : e) {
      if (m < 0) continue;
      const a = dev.length - 1 - m;
      used.add(a);
      idx = idx * (dev[a] as number) + (coord[a] as number);
      cnt *= dev[a] as number;
    }
    mpIdx.push(idx);
    mpCnt.push(cnt);
  });
  let pos = 0;
  let gsize = 1;
  for (let a = 0; a < dev.length; a++) if (!used.has(a)) { pos = pos * (dev[a] as number) + (coord[a] as number); gsize *= dev[a] as number; }
  const opt = l.optShardSize === 0 ? 1 : l.optShardSize < 0 ? gsize : Math.min(l.optShardSize, gsize);
  for (let d = 0; d < full.length; d++) {
    let s: number;
    let n: number;
    if (d === 0 && l.paramSplitShape.length > 0) {
      s = l.paramSplitShape.slice(0, mpIdx[0]).reduce((a, b) => a + b, 0);
      n = l.paramSplitShape[mpIdx[0] as number] as number;
    } else {
      n = (full[d] as number) / (mpCnt[d] as number);
      s = (mpIdx[d] as number) * n;
    }
    if (d === 0 && opt > 1) {
      n = n / opt;
      s = s + (pos % opt) * n;
    }
    out.push([s, s + n]);
  }
  void L;
  return out;
}

function extract(data: Uint8Array, full: number[], es: number, box: Array<[number, number]>): Uint8Array {
  const shape = box.map(([a, b]) => b - a);
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Uint8Array(n * es);
  const strides = full.map((_, i) => full.slice(i + 1).reduce((a, b) => a * b, 1));
  for (let k = 0; k < n; k++) {
    let rest = k;
    let off = 0;
    for (let d = shape.length - 1; d >= 0; d--) {
      const i = rest % (shape[d] as number);
      rest = Math.floor(rest / (shape[d] as number));
      off += ((box[d] as [number, number])[0] + i) * (strides[d] as number);
    }
    out.set(data.subarray(off * es, off * es + es), k * es);
  }
  return out;
}

async function writeLayoutStrategy(path: string, L: Layout): Promise<string> {
  return saveStrategy(path, L.layouts);
}

function makeParams(rand: () => number, maxStages: number): Param[] {
  const params: Param[] = [{ name: 'embedding', dtype: 'BFloat16', full: [24, 48], stages: Array.from({ length: maxStages }, (_, i) => i) }];
  const shapes = [[24, 48], [48], [24, 48, 24], [48, 24]];
  for (let i = 0; i < 4; i++) {
    params.push({
      name: `layer${i}.w`,
      dtype: rand() < 0.5 ? 'BFloat16' : 'Float32',
      full: (shapes[i] as number[]).map((x) => x),
      stages: [Math.min(maxStages - 1, Math.floor((i * maxStages) / 4))],
    });
  }
  void FULL;
  return params;
}

describe('random layouts: slice, merge, re-shard', () => {
  const cases = Array.from({ length: 10 }, (_, i) => i + 1);
  it.each(cases)('case %i', async (seed) => {
    const rand = rng(seed * 7919);
    const stagesA = 1 + Math.floor(rand() * 4);
    const stagesB = 1 + Math.floor(rand() * 4);
    const stagesC = 1 + Math.floor(rand() * 4);
    const maxStages = Math.max(stagesA, stagesB, stagesC);
    const params = makeParams(rand, maxStages);
    // a stage count only works when every stage holds something: params' stages are clamped per layout
    const clamp = (ps: Param[], n: number): Param[] => ps.map((p) => ({ ...p, stages: [...new Set(p.stages.map((s) => Math.min(s, n - 1)))] }));
    const A = randomLayout(rand, clamp(params, stagesA), stagesA);
    const B = randomLayout(rand, clamp(params, stagesB), stagesB);
    const C = randomLayout(rand, clamp(params, stagesC), stagesC);
    await withTempDir(async (dir) => {
      const fulls = new Map<string, Uint8Array>();
      const tensors: GenTensor[] = [{ name: 'global_step', dtype: 'Int32', shape: [1], data: new Uint8Array([7, 0, 0, 0]) }];
      for (const p of params) {
        const es = p.dtype === 'Float32' ? 4 : 2;
        const data = new Uint8Array(p.full.reduce((a, b) => a * b, es));
        for (let i = 0; i < data.length; i++) data[i] = Math.floor(rand() * 256);
        fulls.set(p.name, data);
        tensors.push({ name: p.name, dtype: p.dtype, shape: p.full, data });
      }
      const complete = join(dir, 'complete.ckpt');
      await writeCkpt(complete, tensors);
      const sA = await writeLayoutStrategy(join(dir, 'A.ckpt'), A);
      const sB = await writeLayoutStrategy(join(dir, 'B.ckpt'), B);
      const sC = await writeLayoutStrategy(join(dir, 'C.ckpt'), C);
      const info = `A dev=${A.dev} stages=${A.stages}; B dev=${B.dev} stages=${B.stages}; C dev=${C.dev} stages=${C.stages}`;

      // complete -> A: every element of every slice is the full tensor's
      await transformCheckpoints({ srcCheckpoint: complete, dstStrategy: sA, dstDir: join(dir, 'A'), progress: false });
      for (let r = 0; r < A.stageDev * A.stages; r++) {
        const got = await readCkpt(join(dir, 'A', `rank_${r}`, `checkpoint_${r}.ckpt`));
        const stage = Math.floor(r / A.stageDev);
        const mine = A.layouts.filter((l) => l.stage === stage);
        expect([...got.keys()].sort(), info).toEqual(['global_step', ...mine.map((l) => l.name)].sort());
        for (const l of mine) {
          const p = params.find((q) => q.name === l.name) as Param;
          const es = p.dtype === 'Float32' ? 4 : 2;
          const box = refBox(A, l, p.full, r % A.stageDev);
          const t = got.get(l.name)!;
          expect(t.shape, `${info} rank ${r} ${l.name}`).toEqual(box.map(([a, b]) => b - a));
          expect(Buffer.from(t.data).equals(Buffer.from(extract(fulls.get(l.name)!, p.full, es, box))), `${info} rank ${r} ${l.name}`).toBe(true);
        }
      }
      // A -> complete gives it back bit for bit
      await transformCheckpoints({ srcCheckpoint: join(dir, 'A'), srcStrategy: sA, dstDir: join(dir, 'A1'), progress: false });
      const back = await readCkpt(join(dir, 'A1', 'rank_0', 'checkpoint_0.ckpt'));
      for (const p of params) expect(Buffer.from(back.get(p.name)!.data).equals(Buffer.from(fulls.get(p.name)!)), `${info} ${p.name}`).toBe(true);

      // A -> B -> C equals A -> C
      await transformCheckpoints({ srcCheckpoint: join(dir, 'A'), srcStrategy: sA, dstStrategy: sB, dstDir: join(dir, 'B'), progress: false });
      await transformCheckpoints({ srcCheckpoint: join(dir, 'B'), srcStrategy: sB, dstStrategy: sC, dstDir: join(dir, 'BC'), progress: false });
      await transformCheckpoints({ srcCheckpoint: join(dir, 'A'), srcStrategy: sA, dstStrategy: sC, dstDir: join(dir, 'AC'), progress: false });
      for (let r = 0; r < C.stageDev * C.stages; r++) {
        const a = await readFile(join(dir, 'BC', `rank_${r}`, `checkpoint_${r}.ckpt`));
        const b = await readFile(join(dir, 'AC', `rank_${r}`, `checkpoint_${r}.ckpt`));
        expect(a.equals(b), `${info} rank ${r}`).toBe(true);
      }
    });
  });
});
