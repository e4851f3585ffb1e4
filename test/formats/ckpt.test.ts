import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import protobuf from 'protobufjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../plugin/errors.js';
import {
  CKPT_CHUNK_BYTES,
  createCheckpointSink,
  encodeCkptChunkHeader,
  openCheckpoint,
  rewriteCheckpoint,
  ckptCrc32,
} from '../../plugin/formats/ckpt/index.js';
import { defaultChunks, putVarint, varintSize } from '../../plugin/formats/ckpt/wire.js';
import { readBox } from '../../plugin/formats/box.js';
import { copyEntry } from '../../plugin/formats/copy.js';
import type { SinkTensor } from '../../plugin/formats/types.js';
import { describeFixtures, fixture, repoRoot } from '../helpers/fixtures.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-ckpt-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const enc = (s: string): Uint8Array => Buffer.from(s, 'utf8');

/** One MindSpore chunk record: header + content. */
function record(tag: string, dims: number[], type: string, content: Uint8Array): Buffer {
  return Buffer.concat([encodeCkptChunkHeader({ tag: enc(tag), dims, type: enc(type), contentLength: content.byteLength }), content]);
}

function utf32(s: string): Uint8Array {
  const cps = [...s].map((c) => c.codePointAt(0) as number);
  const out = new Uint8Array(cps.length * 4);
  const dv = new DataView(out.buffer);
  cps.forEach((cp, i) => dv.setUint32(i * 4, cp, true));
  return out;
}

function bytesOf(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

async function writeCkpt(path: string, tensors: Array<[SinkTensor, Uint8Array]>, crc = false, piece = 7): Promise<void> {
  const sink = await createCheckpointSink(path, { crc });
  for (const [t, data] of tensors) {
    await sink.beginTensor(t);
    for (let o = 0; o < data.byteLength; o += piece) await sink.write(data.subarray(o, Math.min(o + piece, data.byteLength)));
    await sink.endTensor();
  }
  await sink.close();
}

async function readAll(path: string, name: string): Promise<Uint8Array> {
  const src = await openCheckpoint(path);
  try {
    const e = src.entry(name);
    if (e === undefined) throw new Error(`no ${name}`);
    const out = new Uint8Array(e.byteLength);
    await src.readBytes(name, 0, e.byteLength, out);
    return out;
  } finally {
    await src.close();
  }
}

describeFixtures('ckpt fixtures', () => {
  const files = [
    'llama2_tiny_tp2/rank_0/checkpoint_0.ckpt',
    'llama2_tiny_tp2/rank_1/checkpoint_1.ckpt',
    'single/checkpoint_lenet-10_1875.ckpt',
    'single/example_net_10000.ckpt',
  ];
  for (const f of files) {
    it(`rewrites ${f} byte for byte`, async () => {
      const out = join(dir, f.replace(/\//g, '_'));
      const r = await rewriteCheckpoint(fixture(f), out);
      expect(r.tensors).toBeGreaterThan(0);
      expect(sha(await readFile(out))).toBe(sha(await readFile(fixture(f))));
      expect((await readdir(dir)).some((n) => n.endsWith('.tmp'))).toBe(false);
    });
  }

  it('indexes the legacy scalars of the lenet checkpoint and reads their values', async () => {
    const src = await openCheckpoint(fixture('single/checkpoint_lenet-10_1875.ckpt'));
    try {
      const lr = src.entry('learning_rate');
      expect(lr).toMatchObject({ dtype: 'Float64', shape: [], byteLength: 8, ckpt: { dims: [0] } });
      const b = new Uint8Array(8);
      await src.readBytes('learning_rate', 0, 8, b);
      const v = new DataView(b.buffer).getFloat64(0, true);
      expect(v).toBeGreaterThan(0);
      expect(v).toBeLessThan(1);
      expect(src.entry('conv1.weight')).toMatchObject({ dtype: 'Float32', shape: [6, 1, 5, 5], byteLength: 600 });
      expect(src.entry('conv1.weight')?.ckpt).toBeUndefined();
      expect(src.crc).toBeNull();
    } finally {
      await src.close();
    }
  });

  it('reads a slice of a fixture tensor at the right file offset', async () => {
    const path = fixture('llama2_tiny_tp2/rank_0/checkpoint_0.ckpt');
    const raw = await readFile(path);
    const src = await openCheckpoint(path);
    try {
      const e = src.entry('lm_head.weight');
      expect(e).toMatchObject({ dtype: 'Float16', shape: [16000, 40] });
      const c = e?.chunkList[0];
      expect(c?.length).toBe(1_280_000);
      const got = new Uint8Array(1000);
      await src.readBytes('lm_head.weight', 5000, 1000, got, 0);
      expect(Buffer.from(got).equals(raw.subarray((c?.offset ?? 0) + 5000, (c?.offset ?? 0) + 6000))).toBe(true);
    } finally {
      await src.close();
    }
  });
});

describe('ckpt writer and reader (synthetic)', () => {
  it('writes every dtype MindSpore uses, str and scalars, and reads them back', async () => {
    const path = join(dir, 'all.ckpt');
    const t: Array<[SinkTensor, Uint8Array]> = [
      [{ name: 'w.bf16', dtype: 'BFloat16', shape: [3, 4], byteLength: 24 }, bytesOf(24, 1)],
      [{ name: 'w.f16', dtype: 'Float16', shape: [5], byteLength: 10 }, bytesOf(10, 2)],
      [{ name: 'w.f32', dtype: 'Float32', shape: [2, 2, 2], byteLength: 32 }, bytesOf(32, 3)],
      [{ name: 'w.f64', dtype: 'Float64', shape: [1], byteLength: 8 }, bytesOf(8, 4)],
      [{ name: 'i8', dtype: 'Int8', shape: [3], byteLength: 3 }, bytesOf(3, 5)],
      [{ name: 'u8', dtype: 'UInt8', shape: [3], byteLength: 3 }, bytesOf(3, 6)],
      [{ name: 'i16', dtype: 'Int16', shape: [3], byteLength: 6 }, bytesOf(6, 7)],
      [{ name: 'u16', dtype: 'UInt16', shape: [3], byteLength: 6 }, bytesOf(6, 8)],
      [{ name: 'i32', dtype: 'Int32', shape: [3], byteLength: 12 }, bytesOf(12, 9)],
      [{ name: 'u32', dtype: 'UInt32', shape: [3], byteLength: 12 }, bytesOf(12, 10)],
      [{ name: 'i64', dtype: 'Int64', shape: [3], byteLength: 24 }, bytesOf(24, 11)],
      [{ name: 'u64', dtype: 'UInt64', shape: [3], byteLength: 24 }, bytesOf(24, 12)],
      [{ name: 'b', dtype: 'Bool', shape: [2], byteLength: 2 }, new Uint8Array([0, 1])],
      [{ name: 'q4', dtype: 'Int4', shape: [5], byteLength: 3 }, bytesOf(3, 13)],
      [{ name: 'global_step', dtype: 'Int64', shape: [], byteLength: 8 }, bytesOf(8, 14)],
      [{ name: 'empty', dtype: 'Float32', shape: [0, 4], byteLength: 0 }, new Uint8Array(0)],
      [{ name: 'note', dtype: 'str', shape: [], byteLength: utf32('héllo ☃').byteLength }, utf32('héllo ☃')],
    ];
    await writeCkpt(path, t);
    const src = await openCheckpoint(path);
    try {
      expect(src.entries().map((e) => e.name)).toEqual(t.map(([x]) => x.name));
      for (const [x, data] of t) {
        const e = src.entry(x.name);
        expect(e).toMatchObject({ dtype: x.dtype, shape: x.shape, byteLength: x.byteLength });
        expect(e?.ckpt).toBeUndefined();
        const got = new Uint8Array(x.byteLength);
        await src.readBytes(x.name, 0, x.byteLength, got);
        expect(Buffer.from(got).equals(Buffer.from(data))).toBe(true);
      }
    } finally {
      await src.close();
    }
    // the exact bytes MindSpore writes: scalar with empty dims, str with dims [0]
    const raw = await readFile(path);
    const gs = record('global_step', [], 'Int64', bytesOf(8, 14));
    const note = record('note', [0], 'str', utf32('héllo ☃'));
    expect(raw.includes(gs)).toBe(true);
    expect(raw.subarray(raw.byteLength - note.byteLength).equals(note)).toBe(true);
    // rewrite is identical
    await rewriteCheckpoint(path, join(dir, 'all2.ckpt'));
    expect(sha(await readFile(join(dir, 'all2.ckpt')))).toBe(sha(raw));
  });

  it('joins consecutive chunks, keeps non-default chunking and dims hints, and rewrites them exactly', async () => {
    const a = bytesOf(40, 21);
    // Float32 [10] cut as 12+0+28 bytes (not on element boundaries), legacy scalar, str with empty dims
    const file = Buffer.concat([
      record('a', [10], 'Float32', a.subarray(0, 12)),
      record('a', [10], 'Float32', new Uint8Array(0)),
      record('a', [10], 'Float32', a.subarray(12)),
      record('lr', [0], 'Float32', bytesOf(4, 22)),
      record('s', [], 'str', utf32('ab')),
      record('e', [0], 'Float16', new Uint8Array(0)),
    ]);
    const path = join(dir, 'chunks.ckpt');
    await writeFile(path, file);
    const src = await openCheckpoint(path);
    try {
      expect(src.entries().map((e) => [e.name, e.shape, e.ckpt ?? null])).toEqual([
        ['a', [10], { chunks: [12, 0, 28] }],
        ['lr', [], { dims: [0] }],
        ['s', [], { dims: [] }],
        ['e', [0], null],
      ]);
      // a read spanning the chunk boundary (and the empty chunk)
      const got = new Uint8Array(20);
      await src.readBytes('a', 5, 20, got);
      expect(Buffer.from(got).equals(Buffer.from(a.subarray(5, 25)))).toBe(true);
      const tail = new Uint8Array(3);
      await src.readBytes('a', 37, 3, tail);
      expect(Buffer.from(tail).equals(Buffer.from(a.subarray(37)))).toBe(true);
    } finally {
      await src.close();
    }
    await rewriteCheckpoint(path, join(dir, 'chunks2.ckpt'));
    expect((await readFile(join(dir, 'chunks2.ckpt'))).equals(file)).toBe(true);
  });

  it('accepts packed dims and skips unknown fields at every level', async () => {
    const content = bytesOf(12, 31);
    const type = enc('Int32');
    const dimsPacked = Buffer.from([0x0a, 2, 1, 3]); // field 1, LEN, dims [1,3]
    const unknownVarint = Buffer.from([0x20, 0x96, 0x01]); // field 4 varint 150
    const unknownFixed = Buffer.from([0x2d, 1, 2, 3, 4]); // field 5 fixed32
    const tensor = Buffer.concat([
      unknownVarint,
      dimsPacked,
      Buffer.from([0x12, type.byteLength]),
      type,
      unknownFixed,
      Buffer.from([0x1a, 12]),
      content,
    ]);
    const tag = enc('x');
    const value = Buffer.concat([
      Buffer.from([0x21, 1, 2, 3, 4, 5, 6, 7, 8]), // field 4 fixed64
      Buffer.from([0x12, tensor.byteLength]),
      tensor,
      Buffer.from([0x0a, tag.byteLength]),
      tag,
    ]);
    const file = Buffer.concat([
      Buffer.from([0x0a, value.byteLength]),
      value,
      Buffer.from([0x12, 3]),
      enc('abc'), // old model_type field 2 of Checkpoint
    ]);
    const path = join(dir, 'packed.ckpt');
    await writeFile(path, file);
    const src = await openCheckpoint(path);
    try {
      expect(src.entries().map((e) => [e.name, e.dtype, e.shape])).toEqual([['x', 'Int32', [1, 3]]]);
      const got = new Uint8Array(12);
      await src.readBytes('x', 0, 12, got);
      expect(Buffer.from(got).equals(Buffer.from(content))).toBe(true);
    } finally {
      await src.close();
    }
  });

  it('writes, strips and verifies the crc_num trailer', async () => {
    const path = join(dir, 'crc.ckpt');
    const data = bytesOf(64, 41);
    await writeCkpt(path, [[{ name: 'w', dtype: 'Float16', shape: [32], byteLength: 64 }, data]], true);
    const raw = await readFile(path);
    const body = raw.subarray(0, raw.byteLength - 17);
    expect(raw.subarray(raw.byteLength - 17, raw.byteLength - 10).toString('latin1')).toBe('crc_num');
    const crcBytes = raw.subarray(raw.byteLength - 10);
    expect(Buffer.from(crcBytes.subarray(0, 6)).equals(Buffer.alloc(6))).toBe(true);
    expect(crcBytes.readUInt32BE(6)).toBe(ckptCrc32(body));
    expect(body.equals(record('w', [32], 'Float16', data))).toBe(true);

    const plain = await openCheckpoint(path);
    expect(plain.crc).toEqual({ present: true, valid: null, stored: ckptCrc32(body) });
    expect(plain.entries().length).toBe(1);
    await plain.close();
    const verified = await openCheckpoint(path, { verifyCrc: true });
    expect(verified.crc?.valid).toBe(true);
    await verified.close();

    // rewrite keeps the trailer
    await rewriteCheckpoint(path, join(dir, 'crc2.ckpt'));
    expect((await readFile(join(dir, 'crc2.ckpt'))).equals(raw)).toBe(true);

    // a flipped content byte makes it invalid (but still readable)
    const bad = Buffer.from(raw);
    bad[body.byteLength - 1] = (bad[body.byteLength - 1] as number) ^ 0xff;
    await writeFile(join(dir, 'crc-bad.ckpt'), bad);
    const b = await openCheckpoint(join(dir, 'crc-bad.ckpt'), { verifyCrc: true });
    expect(b.crc?.valid).toBe(false);
    await b.close();
  });

  it('refuses encrypted checkpoints by their magic', async () => {
    for (const [magic, mode] of [
      [0x7f3a5ed8, 'AES-GCM'],
      [0x7f3a5ed9, 'AES-CBC'],
      [0x7f3a5eda, 'SM4-CBC'],
    ] as const) {
      const b = Buffer.alloc(64);
      b.writeUInt32LE(magic, 0);
      const p = join(dir, `enc-${mode}.ckpt`);
      await writeFile(p, b);
      const err = await openCheckpoint(p).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InputError);
      expect((err as Error).message).toContain(`encrypted checkpoint (${mode})`);
      expect((err as Error).message).toContain(p);
    }
  });

  it('refuses MapTensor values clearly', async () => {
    const tag = enc('map.param');
    const value = Buffer.concat([Buffer.from([0x0a, tag.byteLength]), tag, Buffer.from([0x1a, 0])]);
    const p = join(dir, 'map.ckpt');
    await writeFile(p, Buffer.concat([Buffer.from([0x0a, value.byteLength]), value]));
    const err = await openCheckpoint(p).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toMatch(/map\.param.*MapTensor/);
  });

  it('names file, byte offset and tensor for malformed files', async () => {
    const good = record('w', [2, 2], 'Float32', bytesOf(16, 51));
    const cases: Array<[string, Buffer, RegExp]> = [
      ['truncated', good.subarray(0, good.byteLength - 3), /byte 1: Checkpoint\.value: length \d+ runs past the end/],
      ['wrongdims', record('w', [2, 3], 'Float32', bytesOf(16, 51)), /byte 0, tensor 'w': dims \[2,3\] of Float32 need 24 bytes but the values hold 16/],
      ['overflowdims', record('w', [2 ** 40, 2 ** 40], 'Float32', bytesOf(16, 51)), /tensor 'w': dims .* overflow/],
      ['dtype', record('w', [4], 'Complex64', bytesOf(16, 51)), /tensor 'w': unknown dtype 'Complex64'/],
      ['varint', Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), /byte 1: .*varint longer than 10 bytes/],
      ['garbage', Buffer.concat([Buffer.from([0x0a, 0x05]), Buffer.from('hello world')]), /length \d+ runs past the end|field number 0|wire type/],
      ['strategy', Buffer.from([0x08, 0x01, 0x1a, 0x00]), /first byte is 0x08.*strategy/],
      ['repeat', Buffer.concat([good, record('v', [1], 'Int8', new Uint8Array(1)), good]), /tensor 'w': tag appears again/],
    ];
    for (const [name, bytes, re] of cases) {
      const p = join(dir, `bad-${name}.ckpt`);
      await writeFile(p, bytes);
      const err = await openCheckpoint(p).catch((e: unknown) => e);
      expect(err, name).toBeInstanceOf(InputError);
      expect((err as Error).message, name).toContain(p);
      expect((err as Error).message, name).toMatch(re);
    }
  });

  it('validates tensors given to the sink and cleans up on abort', async () => {
    const p = join(dir, 'sub', 'bad-sink.ckpt');
    const sink = await createCheckpointSink(p);
    await expect(sink.beginTensor({ name: 'x', dtype: 'Float32', shape: [3], byteLength: 8 })).rejects.toBeInstanceOf(InputError);
    await expect(
      sink.beginTensor({ name: 'y', dtype: 'Float32', shape: [3], byteLength: 12, ckpt: { chunks: [4, 4] } }),
    ).rejects.toThrow(/adds up to 8 bytes/);
    await expect(sink.beginTensor({ name: 'z', dtype: 'Float32', shape: [], byteLength: 4, ckpt: { dims: [2] } })).rejects.toThrow(
      /dims hint/,
    );
    await sink.abort();
    expect(await readdir(join(dir, 'sub'))).toEqual([]);
  });

  it('cuts tensors every 536,870,912 bytes by default', () => {
    expect(CKPT_CHUNK_BYTES).toBe(536_870_912);
    expect(defaultChunks(0)).toEqual([0]);
    expect(defaultChunks(CKPT_CHUNK_BYTES)).toEqual([CKPT_CHUNK_BYTES]);
    expect(defaultChunks(2 * CKPT_CHUNK_BYTES + 5)).toEqual([CKPT_CHUNK_BYTES, CKPT_CHUNK_BYTES, 5]);
    // varints past 32 bits
    const b = new Uint8Array(10);
    const n = 5 * 2 ** 32 + 7;
    expect(putVarint(b, 0, n)).toBe(varintSize(n));
  });

  it('streams a copy through copyEntry with small pieces', async () => {
    const path = join(dir, 'copy-src.ckpt');
    const data = bytesOf(1000, 61);
    const file = Buffer.concat([
      record('a', [250], 'Float32', data.subarray(0, 333)),
      record('a', [250], 'Float32', data.subarray(333)),
    ]);
    await writeFile(path, file);
    const src = await openCheckpoint(path);
    const out = join(dir, 'copy-dst.ckpt');
    const sink = await createCheckpointSink(out);
    for (const e of src.entries()) await copyEntry(src, sink, e, 64);
    await sink.close();
    await src.close();
    expect((await readFile(out)).equals(file)).toBe(true);
    expect(Buffer.from(await readAll(out, 'a')).equals(Buffer.from(data))).toBe(true);
  });

  it('reads a hyper-rectangle of a chunked tensor (chunks cut mid-element)', async () => {
    // Int16 [6,5,4] cut into chunks of 50, 101 and 89 bytes
    const data = new Uint8Array(240);
    const dv = new DataView(data.buffer);
    for (let i = 0; i < 120; i++) dv.setInt16(i * 2, i, true);
    const path = join(dir, 'box.ckpt');
    await writeFile(
      path,
      Buffer.concat([
        record('t', [6, 5, 4], 'Int16', data.subarray(0, 50)),
        record('t', [6, 5, 4], 'Int16', data.subarray(50, 151)),
        record('t', [6, 5, 4], 'Int16', data.subarray(151)),
      ]),
    );
    const src = await openCheckpoint(path);
    try {
      const box = { start: [1, 2, 1], shape: [4, 2, 3] };
      const out = new Uint8Array(4 * 2 * 3 * 2);
      await readBox(src, 't', [6, 5, 4], 2, box, out);
      const got = Array.from(new Int16Array(out.buffer));
      const want: number[] = [];
      for (let a = 1; a < 5; a++) for (let b = 2; b < 4; b++) for (let c = 1; c < 4; c++) want.push(a * 20 + b * 4 + c);
      expect(got).toEqual(want);
    } finally {
      await src.close();
    }
  });

  it('agrees with protobufjs decoding through schemas/checkpoint.proto', async () => {
    const root = protobuf.parse(await readFile(join(repoRoot, 'schemas', 'checkpoint.proto'), 'utf8')).root;
    const Checkpoint = root.lookupType('Checkpoint');
    const path = join(dir, 'pbjs.ckpt');
    const a = bytesOf(40, 71);
    await writeFile(
      path,
      Buffer.concat([
        record('a', [2, 5], 'BFloat16', a.subarray(0, 15)),
        record('a', [2, 5], 'BFloat16', a.subarray(15, 20)),
        record('s', [0], 'str', utf32('xyz')),
        record('k', [], 'Int64', a.subarray(0, 8)),
      ]),
    );
    const files = [path];
    try {
      files.push(fixture('single/example_net_10000.ckpt'));
    } catch {
      // fixtures absent: the synthetic file alone
    }
    for (const f of files) {
      const raw = await readFile(f);
      const msg = Checkpoint.toObject(Checkpoint.decode(raw), { longs: Number, bytes: Array }) as {
        value: Array<{ tag: string; tensor: { dims?: number[]; tensorType: string; tensorContent: number[] } }>;
      };
      const src = await openCheckpoint(f);
      try {
        const chunks = src.entries().flatMap((e) => e.chunkList.map((c) => ({ e, c })));
        expect(chunks.length).toBe(msg.value.length);
        msg.value.forEach((v, i) => {
          const { e, c } = chunks[i] as (typeof chunks)[number];
          expect(v.tag).toBe(e.name);
          expect(v.tensor.tensorType).toBe(e.dtype);
          expect(v.tensor.dims ?? []).toEqual(e.ckpt?.dims ?? (e.dtype === 'str' ? [0] : e.shape));
          expect(Buffer.from(v.tensor.tensorContent).equals(raw.subarray(c.offset, c.offset + c.length))).toBe(true);
        });
      } finally {
        await src.close();
      }
    }
  });
});
