import { mkdtemp, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../plugin/errors.js';
import {
  createSafetensorsSink,
  createShardedSafetensorsSink,
  openSafetensors,
  openSafetensorsFile,
  writeShardedSafetensors,
} from '../../plugin/formats/safetensors/index.js';
import { MemSource, readAll, strTensor, tensor, writeAll, entryOf, type MemTensor } from '../helpers/mem-tensors.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-st-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function sample(): MemTensor[] {
  return [
    tensor('model.b.weight', 'Float32', [3, 5], 1),
    tensor('model.a.weight', 'BFloat16', [4, 2], 2),
    tensor('step', 'Int64', [], 3),
    tensor('empty', 'Float16', [0, 3], 4),
    tensor('mask', 'Bool', [6], 5),
    tensor('z.u8', 'UInt8', [9], 6),
  ];
}

/** Raw file: 8-byte length + header JSON (padded) + data. */
async function rawFile(name: string, header: unknown, data: Uint8Array, lengthOverride?: bigint): Promise<string> {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lengthOverride ?? BigInt(json.byteLength));
  const p = join(dir, name);
  await writeFile(p, Buffer.concat([len, json, data]));
  return p;
}

async function expectInput(p: Promise<unknown>, re: RegExp): Promise<InputError> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(InputError);
  expect((err as Error).message).toMatch(re);
  return err as InputError;
}

describe('safetensors file round trip', () => {
  it('writes an HF-compatible file and reads every byte back', async () => {
    const ts = sample();
    const p = join(dir, 'rt.safetensors');
    const sink = await createSafetensorsSink(p, ts.map(entryOf), { metadata: { format: 'ms' } });
    await writeAll(sink, ts);
    const raw = await readFile(p);
    const n = Number(raw.readBigUInt64LE(0));
    expect((8 + n) % 8).toBe(0);
    const header = JSON.parse(raw.subarray(8, 8 + n).toString('utf8')) as Record<string, { data_offsets: number[]; dtype: string; shape: number[] }>;
    expect(header['__metadata__']).toEqual({ format: 'ms' });
    expect(header['model.a.weight']).toEqual({ dtype: 'BF16', shape: [4, 2], data_offsets: [60, 76] });
    // Data contiguous, file ends at the last tensor
    const total = ts.reduce((a, t) => a + t.data.byteLength, 0);
    expect(raw.byteLength).toBe(8 + n + total);

    const src = await openSafetensorsFile(p);
    expect(src.metadata).toEqual({ format: 'ms' });
    expect(src.entries().map((e) => e.name)).toEqual(ts.map((t) => t.name));
    expect(src.entry('step')).toEqual({ name: 'step', dtype: 'Int64', shape: [], byteLength: 8 });
    const got = await readAll(src);
    for (const t of ts) expect(Buffer.from(got.get(t.name) as Uint8Array).equals(Buffer.from(t.data))).toBe(true);
    // partial read at an offset
    const part = new Uint8Array(10);
    await src.readBytes('model.b.weight', 13, 7, part, 3);
    expect([...part.subarray(3, 10)]).toEqual([...(ts[0] as MemTensor).data.subarray(13, 20)]);
    expect(src.locate('model.a.weight')).toEqual({ file: p, offset: 8 + n + 60 });
    await src.close();
    await src.close();
    expect((await readdir(dir)).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('sortKeys lays out and lists tensors sorted, tensors may arrive in any order', async () => {
    const ts = sample();
    const p = join(dir, 'sorted.safetensors');
    const sink = await createSafetensorsSink(p, ts.map(entryOf), { sortKeys: true });
    await writeAll(sink, [...ts].reverse(), 1000);
    const src = await openSafetensors(p);
    expect(src.entries().map((e) => e.name)).toEqual(['empty', 'mask', 'model.a.weight', 'model.b.weight', 'step', 'z.u8']);
    const got = await readAll(src);
    for (const t of ts) expect(Buffer.from(got.get(t.name) as Uint8Array).equals(Buffer.from(t.data))).toBe(true);
    await src.close();
  });

  it('crc_num is MindSpore’s CRC-32 over sorted name+bytes, in order or not', async () => {
    const ts = sample();
    let want = 0;
    for (const t of [...ts].sort((a, b) => (a.name < b.name ? -1 : 1))) {
      want = crc32(Buffer.from(t.name, 'utf8'), want);
      want = crc32(t.data, want);
    }
    for (const [label, order] of [['sorted', [...ts].sort((a, b) => (a.name < b.name ? -1 : 1))], ['shuffled', ts]] as const) {
      const p = join(dir, `crc-${label}.safetensors`);
      const sink = await createSafetensorsSink(p, ts.map(entryOf), { crc: true, sortKeys: true, metadata: { format: 'ms' } });
      await writeAll(sink, [...order], 5);
      const src = await openSafetensorsFile(p);
      expect(src.metadata['crc_num']).toBe(String(want));
      expect(src.metadata['format']).toBe('ms');
      await src.close();
      const raw = await readFile(p);
      expect((8 + Number(raw.readBigUInt64LE(0))) % 8).toBe(0);
    }
  });

  it('str entries, ckpt hints and order travel in metadata and come back exact', async () => {
    const ts: MemTensor[] = [
      tensor('w', 'Float32', [2, 2], 1),
      strTensor('note', 'héllo "wörld"\n\u0001 😀', { dims: [0] }),
      tensor('lr', 'Float64', [], 2, { dims: [0] }),
      tensor('big', 'Float16', [10], 3, { chunks: [8, 12] }),
      { name: 'bad_utf32', dtype: 'str', shape: [], data: new Uint8Array([0, 0xd8, 0, 0, 0x41, 0, 0, 0]) },
      tensor('q4', 'Int4', [3, 3], 4),
      strTensor('empty_str', ''),
    ];
    const p = join(dir, 'meta.safetensors');
    const sink = await createSafetensorsSink(p, ts.map(entryOf), { sortKeys: true, crc: true });
    await writeAll(sink, ts, 3);
    const src = await openSafetensorsFile(p);
    expect(src.entries().map(entryOf2)).toEqual(ts.map(entryOf));
    expect(src.metadata).toEqual({ crc_num: expect.any(String) as string });
    expect(src.rawMetadata['q4']).toBe('Int4');
    const got = await readAll(src);
    for (const t of ts) expect(Buffer.from(got.get(t.name) as Uint8Array).equals(Buffer.from(t.data))).toBe(true);
    await src.close();
  });

  it('refuses what it cannot hold and catches writer misuse', async () => {
    const p = join(dir, 'bad.safetensors');
    await expectInput(createSafetensorsSink(p, [{ name: 'a', dtype: 'Float32', shape: [2], byteLength: 7 }]), /needs 8 bytes/);
    await expectInput(createSafetensorsSink(p, [entryOf(tensor('a', 'Int8', [1])), entryOf(tensor('a', 'Int8', [1]))]), /twice/);
    const sink = await createSafetensorsSink(p, [entryOf(tensor('a', 'Int8', [4]))]);
    await sink.beginTensor(entryOf(tensor('a', 'Int8', [4])));
    await sink.write(new Uint8Array(2));
    await expect(sink.endTensor()).rejects.toThrow(/2 bytes written, 4 declared/);
    await sink.abort();
    expect((await readdir(dir)).filter((f) => f.includes('bad.safetensors'))).toEqual([]);
  });
});

function entryOf2(e: { name: string; dtype: string; shape: readonly number[]; byteLength: number; ckpt?: unknown }): unknown {
  return e.ckpt !== undefined ? { name: e.name, dtype: e.dtype, shape: e.shape, byteLength: e.byteLength, ckpt: e.ckpt } : { name: e.name, dtype: e.dtype, shape: e.shape, byteLength: e.byteLength };
}

describe('safetensors header validation', () => {
  const good = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'I8', shape: [4], data_offsets: [8, 12] } };
  it('accepts a hand-written good file', async () => {
    const p = await rawFile('good.safetensors', good, new Uint8Array(12));
    const s = await openSafetensorsFile(p);
    expect(s.entries().map((e) => e.name)).toEqual(['a', 'b']);
    await s.close();
  });
  it('header length past EOF', async () => {
    const p = await rawFile('eof.safetensors', good, new Uint8Array(12), 5000n);
    const e = await expectInput(openSafetensorsFile(p), /runs past the end/);
    expect(e.message).toContain('eof.safetensors, byte 0');
  });
  it('huge header length', async () => {
    const p = await rawFile('huge.safetensors', good, new Uint8Array(12), 0xffff_ffff_ffffn);
    await expectInput(openSafetensorsFile(p), /exceeds the limit/);
  });
  it('file shorter than 8 bytes', async () => {
    const p = join(dir, 'tiny.safetensors');
    await writeFile(p, Buffer.from([1, 2, 3]));
    await expectInput(openSafetensorsFile(p), /shorter than the 8-byte/);
  });
  it('not JSON / not an object', async () => {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(5n);
    const p = join(dir, 'garbage.safetensors');
    await writeFile(p, Buffer.concat([len, Buffer.from('{"a":'), Buffer.alloc(4)]));
    await expectInput(openSafetensorsFile(p), /not valid JSON/);
    const p2 = await rawFile('arr.safetensors', [1, 2], new Uint8Array(0));
    await expectInput(openSafetensorsFile(p2), /not a JSON object/);
  });
  it('unknown dtype', async () => {
    const p = await rawFile('dtype.safetensors', { a: { dtype: 'F8_E9', shape: [2], data_offsets: [0, 2] } }, new Uint8Array(2));
    const e = await expectInput(openSafetensorsFile(p), /unknown safetensors dtype 'F8_E9'/);
    expect(e.message).toContain("tensor 'a'");
  });
  it('offsets that lie about the shape', async () => {
    const p = await rawFile('lie.safetensors', { a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8));
    const e = await expectInput(openSafetensorsFile(p), /needs 12 bytes/);
    expect(e.message).toMatch(/byte \d+, tensor 'a'/);
  });
  it('offsets past the data area', async () => {
    const p = await rawFile('past.safetensors', { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, new Uint8Array(8));
    await expectInput(openSafetensorsFile(p), /run past the end of the data area/);
  });
  it('overlapping tensors', async () => {
    const p = await rawFile(
      'overlap.safetensors',
      { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } },
      new Uint8Array(12),
    );
    await expectInput(openSafetensorsFile(p), /overlap those of 'a'/);
  });
  it('bad metadata and bad shapes', async () => {
    const p = await rawFile('md.safetensors', { __metadata__: { a: 1 } }, new Uint8Array(0));
    await expectInput(openSafetensorsFile(p), /must be a string/);
    const p2 = await rawFile('shape.safetensors', { a: { dtype: 'F32', shape: [-1], data_offsets: [0, 0] } }, new Uint8Array(0));
    await expectInput(openSafetensorsFile(p2), /non-negative integers/);
    const p3 = await rawFile('ovf.safetensors', { a: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 0] } }, new Uint8Array(0));
    await expectInput(openSafetensorsFile(p3), /too large/);
    const p4 = await rawFile('hint.safetensors', { __metadata__: { 'ms_ckpt:a': '{' }, a: { dtype: 'F32', shape: [], data_offsets: [0, 4] } }, new Uint8Array(4));
    await expectInput(openSafetensorsFile(p4), /not valid JSON/);
  });
  it('a missing file is an InputError', async () => {
    await expectInput(openSafetensors(join(dir, 'nope.safetensors')), /cannot open/);
  });
});

describe('safetensors beyond 4 GiB', () => {
  it('reads the right bytes of a tensor whose data starts past 4 GiB (sparse file)', async () => {
    const gap = 5 * 1024 ** 3; // padding tensor of 5 GiB of zeros (sparse)
    const tail = new Uint8Array(64).map((_, i) => (i * 7 + 3) & 0xff);
    const header = {
      pad: { dtype: 'U8', shape: [gap], data_offsets: [0, gap] },
      tail: { dtype: 'U8', shape: [64], data_offsets: [gap, gap + 64] },
    };
    const json = Buffer.from(JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.byteLength));
    const p = join(dir, 'sparse.safetensors');
    const h = await open(p, 'w');
    await h.write(Buffer.concat([len, json]), 0, 8 + json.byteLength, 0);
    await h.write(tail, 0, 64, 8 + json.byteLength + gap);
    await h.close();
    const src = await openSafetensorsFile(p);
    const e = src.entry('tail');
    expect(e?.byteLength).toBe(64);
    expect(src.locate('tail')?.offset).toBe(8 + json.byteLength + gap);
    const got = new Uint8Array(16);
    await src.readBytes('tail', 48, 16, got, 0);
    expect([...got]).toEqual([...tail.subarray(48)]);
    const padEnd = new Uint8Array(8).fill(9);
    await src.readBytes('pad', gap - 8, 8, padEnd, 0);
    expect([...padEnd]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    await src.close();
    await rm(p);
  });
});

describe('sharded safetensors', () => {
  it('writes HF shards within the size limit and reads them back through the index', async () => {
    const ts = Array.from({ length: 9 }, (_, i) => tensor(`layer.${i}.w`, 'Float32', [i + 1, 10], i + 1));
    const out = join(dir, 'sharded');
    const res = await writeShardedSafetensors(new MemSource(ts), out, { maxShardSize: 150, metadata: { format: 'pt' } });
    expect(res.shards.length).toBeGreaterThan(1);
    for (const s of res.shards) {
      const src = await openSafetensorsFile(s);
      const size = src.entries().reduce((a, e) => a + e.byteLength, 0);
      expect(size <= 150 || src.entries().length === 1).toBe(true);
      await src.close();
    }
    expect(res.shards[0]).toMatch(/model-00001-of-0000\d\.safetensors$/);
    const index = JSON.parse(await readFile(res.index, 'utf8')) as { metadata: { total_size: number }; weight_map: Record<string, string> };
    expect(index.metadata.total_size).toBe(ts.reduce((a, t) => a + t.data.byteLength, 0));
    expect(Object.keys(index.weight_map)).toEqual(ts.map((t) => t.name));
    for (const via of [out, res.index]) {
      const src = await openSafetensors(via);
      expect(src.layout).toBe('index');
      expect(src.entries().map((e) => e.name)).toEqual(ts.map((t) => t.name));
      expect(src.metadata['format']).toBe('pt');
      expect(src.metadata['total_size']).toBe(String(index.metadata.total_size));
      const got = await readAll(src);
      for (const t of ts) expect(Buffer.from(got.get(t.name) as Uint8Array).equals(Buffer.from(t.data))).toBe(true);
      await src.close();
    }
  });

  it('a weight_map that names the wrong shard is an InputError', async () => {
    const out = join(dir, 'lying-index');
    const ts = [tensor('a', 'Int8', [4], 1), tensor('b', 'Int8', [4], 2)];
    const res = await writeShardedSafetensors(new MemSource(ts), out, { maxShardSize: 4 });
    const index = JSON.parse(await readFile(res.index, 'utf8')) as { weight_map: Record<string, string> };
    index.weight_map['a'] = index.weight_map['b'] as string;
    await writeFile(res.index, JSON.stringify(index));
    await expectInput(openSafetensors(out), /does not/);
  });

  it('unified directory: part files, param_name_map.json and hyper_param.safetensors', async () => {
    const out = join(dir, 'unified');
    const ts = [tensor('a', 'Float16', [8], 1), tensor('b', 'Float16', [8], 2), tensor('c', 'Float16', [8], 3)];
    const sink = await createShardedSafetensorsSink(out, ts.map(entryOf), {
      maxShardSize: 32,
      shardName: (i) => `part${i}.safetensors`,
      indexName: 'param_name_map.json',
      metadata: { format: 'ms' },
    });
    await writeAll(sink, ts);
    const hyper = await createSafetensorsSink(join(out, 'hyper_param.safetensors'), [entryOf(tensor('global_step', 'Int32', [1], 9))]);
    await writeAll(hyper, [tensor('global_step', 'Int32', [1], 9)]);
    expect((await readdir(out)).sort()).toEqual(['hyper_param.safetensors', 'param_name_map.json', 'part0.safetensors', 'part1.safetensors']);
    const src = await openSafetensors(out);
    expect(src.layout).toBe('unified');
    expect(src.entries().map((e) => e.name)).toEqual(['a', 'b', 'c', 'global_step']);
    await src.close();
  });
});
