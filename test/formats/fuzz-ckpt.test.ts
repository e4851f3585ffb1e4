/**
 * Seeded fuzzing of the checkpoint reader: mutated fixtures and synthetic files must either parse
 * (and every tensor read back) or fail with an InputError, never another exception or a hang.
 */
import { mkdtemp, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../plugin/errors.js';
import { createCheckpointSink, encodeCkptChunkHeader, openCheckpoint } from '../../plugin/formats/ckpt/index.js';
import { describeFixtures, fixture } from '../helpers/fixtures.js';
import { mulberry32 as rng } from '../helpers/prng.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-fuzz-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});


function mutate(base: Buffer, r: () => number): Buffer {
  const int = (n: number): number => Math.floor(r() * n);
  const b = Buffer.from(base);
  const pos = int(b.byteLength);
  switch (int(8)) {
    case 0: {
      for (let k = 1 + int(4); k > 0; k--) {
        const p = int(b.byteLength);
        b[p] = (b[p] as number) ^ (1 << int(8));
      }
      return b;
    }
    case 1:
      b[pos] = [0x00, 0xff, 0x80, 0x7f, 0x0a, 0x12, 0x1a, int(256)][int(8)] as number;
      return b;
    case 2:
      return b.subarray(0, int(b.byteLength));
    case 3: {
      const ins = Buffer.from(Array.from({ length: 1 + int(12) }, () => int(256)));
      return Buffer.concat([b.subarray(0, pos), ins, b.subarray(pos)]);
    }
    case 4:
      return Buffer.concat([b.subarray(0, pos), b.subarray(Math.min(b.byteLength, pos + 1 + int(40)))]);
    case 5: {
      // an overflowing varint or a huge length
      const v = int(2) === 0 ? Buffer.alloc(11, 0xff) : Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
      v.copy(b, pos, 0, Math.min(v.byteLength, b.byteLength - pos));
      return b;
    }
    case 6: {
      const len = 1 + int(64);
      return Buffer.concat([b.subarray(0, pos), b.subarray(pos, pos + len), b.subarray(pos)]);
    }
    default: {
      // a length byte of a record header bumped up or down
      const p = int(Math.min(b.byteLength, 64));
      b[p] = ((b[p] as number) + (int(2) === 0 ? 1 : 255)) & 0xff;
      return b;
    }
  }
}

let maxArrayBuffers = 0;
async function runCase(path: string, bytes: Buffer, verifyCrc: boolean): Promise<'ok' | 'input-error'> {
  await writeFile(path, bytes);
  let src;
  try {
    src = await openCheckpoint(path, { verifyCrc });
  } catch (err) {
    if (err instanceof InputError) {
      expect(err.message.startsWith(path)).toBe(true);
      return 'input-error';
    }
    throw new Error(`non-InputError for a mutated file: ${String(err)}`, { cause: err });
  }
  try {
    let total = 0;
    let lastEnd = 0;
    for (const e of src.entries()) {
      total += e.byteLength;
      expect(total).toBeLessThanOrEqual(bytes.byteLength);
      const buf = new Uint8Array(e.byteLength);
      await src.readBytes(e.name, 0, e.byteLength, buf);
      // the bytes read are the file's at the chunks the index names, chunks in order inside the body
      for (const c of e.chunkList) {
        expect(c.offset).toBeGreaterThanOrEqual(lastEnd);
        lastEnd = c.offset + c.length;
        expect(lastEnd).toBeLessThanOrEqual(src.bodyBytes);
      }
      expect(Buffer.from(buf).equals(Buffer.concat(e.chunkList.map((c) => bytes.subarray(c.offset, c.offset + c.length)))), e.name).toBe(true);
    }
    maxArrayBuffers = Math.max(maxArrayBuffers, process.memoryUsage().arrayBuffers);
    return 'ok';
  } finally {
    await src.close();
  }
}

async function fuzz(base: Buffer, seed: number, cases: number): Promise<Record<string, number>> {
  const r = rng(seed);
  const tally: Record<string, number> = { ok: 0, 'input-error': 0 };
  for (let i = 0; i < cases; i++) {
    // a fresh name per case: truncating and rewriting one file forces a flush on some filesystems
    const path = join(dir, `fuzz-${seed}-${i}.ckpt`);
    const m = mutate(base, r);
    const res = await runCase(path, m, r() < 0.5);
    await unlink(path);
    tally[res] = (tally[res] ?? 0) + 1;
  }
  return tally;
}

/** A synthetic file with the features the fixtures lack: str, chunks, bf16, CRC trailer. */
async function synthetic(): Promise<Buffer> {
  const p = join(dir, 'base.ckpt');
  const sink = await createCheckpointSink(p, { crc: true });
  const put = async (name: string, dtype: 'BFloat16' | 'str' | 'Int64', shape: number[], data: Uint8Array, chunks?: number[]): Promise<void> => {
    await sink.beginTensor({ name, dtype, shape, byteLength: data.byteLength, ...(chunks ? { ckpt: { chunks } } : {}) });
    await sink.write(data);
    await sink.endTensor();
  };
  await put('w', 'BFloat16', [4, 6], new Uint8Array(48).map((_, i) => i), [20, 28]);
  await put('global_step', 'Int64', [], new Uint8Array(8).fill(1));
  await put('note', 'str', [], new Uint8Array([104, 0, 0, 0, 105, 0, 0, 0]));
  await sink.close();
  return readFile(p);
}

describe('fuzz: synthetic checkpoint', () => {
  it('every mutation parses or is an InputError (1500 cases)', async () => {
    const base = await synthetic();
    // sanity: the base itself parses
    expect(await runCase(join(dir, 'sanity.ckpt'), base, true)).toBe('ok');
    const tally = await fuzz(base, 1234, 1500);
    expect(tally['input-error']).toBeGreaterThan(100);
    expect(tally['ok']).toBeGreaterThan(10);
    expect(maxArrayBuffers).toBeLessThan(256 * 1024 * 1024);
  });

  it('hand-made hostile headers are InputErrors', async () => {
    const enc = (s: string): Uint8Array => Buffer.from(s);
    const hostile = [
      // tensor_content claims 2^50 bytes
      Buffer.concat([encodeCkptChunkHeader({ tag: enc('x'), dims: [4], type: enc('Int8'), contentLength: 2 ** 50 }), Buffer.alloc(4)]),
      // 100 dims
      Buffer.concat([encodeCkptChunkHeader({ tag: enc('x'), dims: new Array(100).fill(1), type: enc('Int8'), contentLength: 1 }), Buffer.alloc(1)]),
      // dims product overflowing 2^53
      Buffer.concat([encodeCkptChunkHeader({ tag: enc('x'), dims: [2 ** 30, 2 ** 30, 2 ** 30], type: enc('Int8'), contentLength: 1 }), Buffer.alloc(1)]),
      // only a record key
      Buffer.from([0x0a]),
    ];
    for (const [i, h] of hostile.entries()) {
      expect(await runCase(join(dir, `hostile-${i}.ckpt`), h, false), `case ${i}`).toBe('input-error');
    }
  });
});

describeFixtures('fuzz: fixtures', () => {
  it('example_net_10000.ckpt (1200 cases)', async () => {
    const tally = await fuzz(await readFile(fixture('single/example_net_10000.ckpt')), 42, 1200);
    expect(tally['input-error']).toBeGreaterThan(100);
  });
  it('checkpoint_lenet-10_1875.ckpt (120 cases)', async () => {
    const tally = await fuzz(await readFile(fixture('single/checkpoint_lenet-10_1875.ckpt')), 7, 120);
    expect(tally['input-error']).toBeGreaterThan(10);
  });
  it('llama2 rank 0 (20 cases)', async () => {
    const tally = await fuzz(await readFile(fixture('llama2_tiny_tp2/rank_0/checkpoint_0.ckpt')), 99, 20);
    expect(tally['input-error']).toBeGreaterThan(0);
  });
});
