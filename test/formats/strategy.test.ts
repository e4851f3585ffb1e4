import { mkdtemp, readFile, rm, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../plugin/errors.js';
import type { ParamLayout, Strategy } from '../../plugin/formats/strategy/model.js';
import {
  loadStrategySchema,
  detectStrategyFormat,
  encodeStrategy,
  makeStrategy,
  parseStrategyBytes,
  readStrategy,
  splitStageName,
  strategyToJson,
  writeStrategy,
} from '../../plugin/formats/strategy/index.js';
import {
  layoutsOfStage,
  stageCount,
  stageDeviceCount,
  stagesOfParam,
  splitCounts,
  sliceBox,
  fullShapeFromSlice,
} from '../../plugin/layout/index.js';
import { describeFixtures, fixture } from '../helpers/fixtures.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-strategy-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function layout(name: string, over: Partial<ParamLayout> = {}): ParamLayout {
  return {
    name,
    stage: 0,
    devMatrix: [2],
    tensorMap: [0, -1],
    paramSplitShape: [],
    indicesOffset: [],
    field: 0,
    optShardStep: 0,
    optShardSize: 0,
    ...over,
  };
}

/** A strategy exercising every field: nested maps (incl. a 1-dim one), opt shard, manual split, stages. */
function richStrategy(merged: boolean): Strategy {
  const st = (s: number): number => (merged ? s : 0);
  return makeStrategy({
    currentStage: merged ? 1 : 3,
    merged,
    items: [
      { nodeName: 'MatMul_w', stage: 0, strategies: [[1, 2], [2, 1]] },
      { nodeName: 'Gather_emb', stage: merged ? 1 : 0, strategies: [[4, 1], [1, 1]] },
    ],
    layouts: [
      layout('w', { devMatrix: [4, 2], tensorMap: [-1, 0], optShardStep: 2, optShardSize: 4 }),
      layout('nested', { devMatrix: [4, 2, 2], tensorMap: [[2, 1], [0]] }), // protobuf: one list per dim
      layout('nested1', { devMatrix: [2, 2], tensorMap: [[1, 0]] }),
      layout('nested-mixed', { devMatrix: [2, 2, 2], tensorMap: [[-1], [2, 0], [-1]] }),
      layout('emb', { stage: st(1), devMatrix: [4], tensorMap: [0, -1], paramSplitShape: [3, 5, 2, 6], indicesOffset: [0, 3, 8, 10] }),
      layout('all', { stage: st(1), devMatrix: [8], tensorMap: [-1], optShardStep: 1, optShardSize: -1 }),
      layout('scalar', { devMatrix: [8], tensorMap: [] }),
    ],
  });
}

function normalized(s: Strategy): unknown {
  const j = strategyToJson(s);
  delete j.path;
  return j;
}

describe('strategy encodings', () => {
  it('splits stage prefixes on the first dash, only for an all-digit prefix', () => {
    expect(splitStageName('1-a-b')).toEqual({ stage: 1, name: 'a-b', prefixed: true });
    expect(splitStageName('12-x')).toEqual({ stage: 12, name: 'x', prefixed: true });
    expect(splitStageName('a-1-b')).toEqual({ stage: 0, name: 'a-1-b', prefixed: false });
    expect(splitStageName('1a-b')).toEqual({ stage: 0, name: '1a-b', prefixed: false });
    expect(splitStageName('plain')).toEqual({ stage: 0, name: 'plain', prefixed: false });
  });

  for (const merged of [false, true]) {
    for (const format of ['protobuf', 'json'] as const) {
      it(`round-trips a ${merged ? 'merged' : 'per-rank'} ${format} strategy with nested maps, opt shard and manual split`, async () => {
        const s = richStrategy(merged);
        const path = join(dir, `rich-${merged}.${format}`);
        await writeStrategy(path, s, { format });
        const bytes = new Uint8Array(await readFile(path));
        expect(detectStrategyFormat(bytes)).toBe(format);
        const back = await readStrategy(path);
        expect(back.merged).toBe(merged);
        expect(back.stages).toEqual(merged ? [0, 1] : [0]);
        expect(normalized(back)).toEqual(normalized(s));
        // and writing what was read gives the same bytes again
        expect(Buffer.compare(Buffer.from(encodeStrategy(back, format)), Buffer.from(bytes))).toBe(0);
        // no temporary files left behind
        expect((await readdir(dir)).filter((f) => f.endsWith('.tmp'))).toEqual([]);
      });
    }
  }

  it('writes a nested 1-dim tensor map with the extra empty TensorMap and drops it on read', () => {
    const s = makeStrategy({ currentStage: 1, items: [], layouts: [layout('n1', { devMatrix: [2, 2], tensorMap: [[1, 0]] })] });
    const bytes = encodeStrategy(s, 'protobuf');
    // ParallelLayouts.tensor_map entries: 0x12 len {0x08 1 0x08 0}, then 0x12 0x00 (the empty one)
    const hex = Buffer.from(bytes).toString('hex');
    expect(hex).toContain('1204080108001200');
    expect(parseStrategyBytes(bytes, 'n1').layouts[0]?.tensorMap).toEqual([[1, 0]]);
  });

  it('reads a JSON strategy as MindSpore writes it, keeping tensor_shape', () => {
    const text = JSON.stringify({
      current_stage: 2,
      parallel_strategy_item: { 'MatMul_x': { stage: 0, parallel_strategy: [[2, 1]] } },
      parallel_layout_item: {
        'x': { dev_matrix: [2, 4], tensor_map: [1, -1], tensor_shape: [32, 32], field: 0, opt_weight_shard_step: 0, opt_weight_shard_size: 0 },
      },
      parallel_layout_value_item: { ignored: true },
    });
    const s = parseStrategyBytes(Buffer.from(`  \n${text}`), 'x.json');
    expect(s.currentStage).toBe(2);
    expect(s.merged).toBe(false);
    expect(s.layouts[0]).toMatchObject({ name: 'x', devMatrix: [2, 4], tensorMap: [1, -1], tensorShape: [32, 32] });
    expect(s.items).toEqual([{ nodeName: 'MatMul_x', stage: 0, strategies: [[2, 1]] }]);
  });

  it('reads missing required fields of an old protobuf file as 0', () => {
    // ParallelStrategyMap { parallel_layout_item { param_name "w"; parallel_layouts { dev_matrix { dim 2 } } } }
    const layouts = [0x0a, 0x02, 0x08, 0x02];
    const item = [0x0a, 0x01, 0x77, 0x12, layouts.length, ...layouts];
    const bytes = Uint8Array.from([0x1a, item.length, ...item]);
    const s = parseStrategyBytes(bytes, 'old.ckpt');
    expect(s.currentStage).toBe(0);
    expect(s.layouts).toEqual([
      { name: 'w', stage: 0, devMatrix: [2], tensorMap: [], paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0 },
    ]);
  });

  it('accepts packed repeated fields', () => {
    // current_stage 1; layout "w" with packed dev_matrix [2,4] and packed tensor_map [1,-1]
    const neg1 = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    const tm = [0x0a, 1 + neg1.length, 0x01, ...neg1];
    const lay = [0x0a, 0x04, 0x0a, 0x02, 0x02, 0x04, 0x12, tm.length, ...tm, 0x28, 0, 0x30, 0, 0x38, 0];
    const item = [0x0a, 0x01, 0x77, 0x12, lay.length, ...lay];
    const s = parseStrategyBytes(Uint8Array.from([0x08, 0x01, 0x1a, item.length, ...item]), 'packed.ckpt');
    expect(s.layouts[0]?.devMatrix).toEqual([2, 4]);
    expect(s.layouts[0]?.tensorMap).toEqual([1, -1]);
  });

  it('agrees with protobufjs decoding and encoding the same .proto (random strategies, int64 and negative values)', () => {
    const T = loadStrategySchema().lookupType('mindspore.straspb.ParallelStrategyMap');
    let seed = 99;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return Math.floor((seed / 2147483648) * n);
    };
    for (let t = 0; t < 30; t++) {
      const layouts: ParamLayout[] = [];
      for (let i = 0; i < 1 + rnd(6); i++) {
        const nested = rnd(3) === 0;
        const ndim = 1 + rnd(3);
        layouts.push(layout(`p${t}.${i}-x\u00e9`, {
          stage: rnd(3),
          devMatrix: Array.from({ length: 1 + rnd(3) }, () => 1 + rnd(300)),
          tensorMap: Array.from({ length: ndim }, () => (nested ? [rnd(4) - 1, rnd(4) - 1] : rnd(4) - 1)),
          paramSplitShape: rnd(2) === 0 ? [] : [2 ** 40 + rnd(1000), rnd(5)],
          indicesOffset: rnd(2) === 0 ? [] : [0, 2 ** 45],
          field: rnd(2),
          optShardStep: rnd(2) === 0 ? 0 : 1 + rnd(200),
          optShardSize: rnd(3) - 1,
        }));
      }
      const s = makeStrategy({ currentStage: rnd(5), merged: true, layouts, items: [{ nodeName: `Op${t}`, stage: rnd(4), strategies: [[1 + rnd(200), 1], []] }] });
      const mine = encodeStrategy(s);
      const obj = T.toObject(T.decode(mine), { longs: Number, defaults: true }) as Record<string, unknown>;
      // protobufjs re-encoding its own decode of our bytes gives our bytes
      expect(Buffer.compare(Buffer.from(T.encode(T.fromObject(obj)).finish()), Buffer.from(mine))).toBe(0);
      // and our decoder reads back what protobufjs sees
      const back = parseStrategyBytes(mine, 'x.ckpt');
      const pl = (obj['parallelLayoutItem'] as Array<{ paramName: string; parallelLayouts: { paramSplitShape: Array<{ dim: number[] }>; optWeightShardSize: number } }>);
      expect(back.layouts.map((l) => `${l.stage}-${l.name}`)).toEqual(pl.map((p) => p.paramName));
      expect(back.layouts.map((l) => l.paramSplitShape)).toEqual(pl.map((p) => p.parallelLayouts.paramSplitShape[0]?.dim));
      expect(back.layouts.map((l) => l.optShardSize)).toEqual(pl.map((p) => p.parallelLayouts.optWeightShardSize));
      expect(normalized(back)).toEqual(normalized(s));
    }
  });

  describe('bad input is an InputError naming the file', () => {
    const cases: Array<[string, Uint8Array, RegExp]> = [
      ['empty', new Uint8Array(0), /bad\.ckpt: empty/],
      ['garbage first byte', Uint8Array.from([0xde, 0xad, 0xbe, 0xef]), /bad\.ckpt, byte 0: not a strategy file/],
      ['a checkpoint', Uint8Array.from([0x0a, 0x03, 0x0a, 0x01, 0x61]), /bad\.ckpt, byte 0: not a strategy file/],
      ['truncated length', Uint8Array.from([0x08, 0x01, 0x1a, 0x40, 0x0a]), /bad\.ckpt, byte 2: length 64/],
      ['truncated varint', Uint8Array.from([0x08, 0x81]), /bad\.ckpt, byte 2: truncated varint/],
      ['overlong varint', Uint8Array.from([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), /varint/],
      ['wrong wire type', Uint8Array.from([0x08, 0x01, 0x18, 0x05]), /bad\.ckpt, byte 2: ParallelStrategyMap\.parallel_layout_item.*wire type 0/],
      ['nested wrong wire type', Uint8Array.from([0x1a, 0x02, 0x0d, 0x00]), /bad\.ckpt, byte 2: .*param_name.*wire type 5/],
      ['group wire type', Uint8Array.from([0x08, 0x01, 0x23]), /unsupported wire type 3/],
      ['bad JSON', Buffer.from('{"current_stage": '), /bad\.ckpt: not valid JSON/],
      ['JSON wrong type', Buffer.from('{"parallel_layout_item": {"w": {"dev_matrix": "x"}}}'), /bad\.ckpt, key 'parallel_layout_item\.w\.dev_matrix'/],
      ['JSON array', Buffer.from('{"parallel_layout_item": [1]}'), /key 'parallel_layout_item'/],
    ];
    for (const [what, bytes, msg] of cases) {
      it(what, () => {
        let caught: unknown;
        try {
          parseStrategyBytes(bytes, 'bad.ckpt');
        } catch (err) {
          caught = err;
        }
        expect(caught).toBeInstanceOf(InputError);
        expect((caught as Error).message).toMatch(msg);
      });
    }

    it('missing file and directory', async () => {
      await expect(readStrategy(join(dir, 'nope.ckpt'))).rejects.toThrow(/nope\.ckpt: no such file/);
      await expect(readStrategy(dir)).rejects.toThrow(/is a directory/);
    });

    it('random mutations never escape as anything but InputError', async () => {
      const good = encodeStrategy(richStrategy(true), 'protobuf');
      let seed = 12345;
      const rnd = (): number => {
        seed = (seed * 1103515245 + 12345) % 2147483648;
        return seed / 2147483648;
      };
      let refused = 0;
      let parsed = 0;
      for (let i = 0; i < 2000; i++) {
        const b = Uint8Array.from(good);
        const edits = 1 + Math.floor(rnd() * 4);
        for (let e = 0; e < edits; e++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
        const cut = rnd() < 0.3 ? b.subarray(0, Math.floor(rnd() * b.length)) : b;
        let s;
        try {
          s = parseStrategyBytes(cut, 'm.ckpt');
        } catch (err) {
          expect(err).toBeInstanceOf(InputError);
          expect((err as Error).message).toContain('m.ckpt');
          refused++;
          continue;
        }
        // what is accepted is a strategy that encodes and reads back as itself
        parsed++;
        const again = parseStrategyBytes(encodeStrategy(s, 'protobuf'), 'again.ckpt');
        expect({ ...again, path: s.path }).toEqual(s);
      }
      expect(refused).toBeGreaterThan(100);
      expect(parsed).toBeGreaterThan(0);
    });
  });
});

describeFixtures('real merged pipeline strategy (mindformers_pp2)', () => {
  const path = (): string => fixture('mindformers_pp2/strategy_4_npus.ckpt');

  it('reads stages, counts and layouts', async () => {
    const s = await readStrategy(path());
    expect(s.merged).toBe(true);
    expect(s.currentStage).toBe(1);
    expect(s.stages).toEqual([0, 1]);
    expect(s.layouts).toHaveLength(148);
    expect(s.layouts.filter((l) => l.stage === 0)).toHaveLength(72);
    expect(s.layouts.filter((l) => l.stage === 1)).toHaveLength(76);
    expect(s.items).toHaveLength(34);
    expect(s.items.filter((i) => i.stage === 0)).toHaveLength(17);
    expect(s.items[0]).toEqual({ nodeName: 'MatMul_backbone.blocks.0.attention.dense1.weight', stage: 0, strategies: [[1, 1], [2, 1]] });
    expect(stageCount(s)).toBe(2);
    expect(stageDeviceCount(s)).toBe(2);
    expect(layoutsOfStage(s, 0).size).toBe(72);
    expect(layoutsOfStage(s, 1).size).toBe(76);
    const emb = 'backbone.embedding.word_embedding.embedding_table';
    expect(stagesOfParam(s, emb)).toEqual([0, 1]);
    expect(stagesOfParam(s, 'backbone.embedding.position_embedding.embedding_table')).toEqual([0]);
    const maps = new Set(s.layouts.map((l) => JSON.stringify(l.tensorMap)));
    expect([...maps].sort()).toEqual(['[-1,-1]', '[-1,0]', '[-1]', '[0,-1]', '[0]']);
    for (const l of s.layouts) {
      expect(l.devMatrix).toEqual([2]);
      expect(l.optShardSize).toBe(0);
      expect(l.optShardStep).toBe(0);
      expect(l.field).toBe(0);
      expect(l.name).not.toMatch(/^\d+-/);
    }
    const dense2 = layoutsOfStage(s, 0).get('backbone.blocks.0.attention.dense2.weight') as ParamLayout;
    expect(dense2.tensorMap).toEqual([0, -1]);
    expect(splitCounts(dense2)).toEqual([2, 1]);
    expect(fullShapeFromSlice(dense2, [8, 16])).toEqual([16, 16]);
    expect(sliceBox(dense2, [16, 16], 1)).toEqual({ start: [8, 0], shape: [8, 16] });
  });

  it('writes back byte for byte (protobuf), and survives a JSON round trip', async () => {
    const original = await readFile(path());
    const s = await readStrategy(path());
    const out = join(dir, 'pp2.ckpt');
    await writeStrategy(out, s);
    expect(Buffer.compare(await readFile(out), original)).toBe(0);
    const json = join(dir, 'pp2.json');
    await writeStrategy(json, s, { format: 'json' });
    const fromJson = await readStrategy(json);
    // JSON holds each node name once; this file has no repeated op names
    expect(normalized(fromJson)).toEqual(normalized(s));
    expect(Buffer.compare(Buffer.from(encodeStrategy(fromJson)), original)).toBe(0);
  });

  it('inspect-shaped JSON', async () => {
    const j = strategyToJson(await readStrategy(path()));
    expect(j.kind).toBe('strategy');
    expect(j.layouts[0]).toEqual({
      name: 'adam_v.backbone.blocks.0.attention.dense1.bias',
      stage: 0,
      devMatrix: [2],
      tensorMap: [0],
      optShardStep: 0,
      optShardSize: 0,
      field: 0,
    });
  });
});
