/**
 * A sparse checkpoint over 4 GiB: record headers are written at their positions with holes for
 * the tensor bytes, so the file costs almost no disk and the test runs in well under a second.
 */
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CKPT_CHUNK_BYTES, encodeCkptChunkHeader, openCheckpoint } from '../../plugin/formats/ckpt/index.js';

const FOUR_GIB = 2 ** 32;
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-ckpt-large-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const enc = (s: string): Uint8Array => Buffer.from(s, 'utf8');

describe('checkpoint larger than 4 GiB (sparse)', () => {
  it('indexes 9 default chunks and reads bytes of a tensor that starts past 4 GiB', async () => {
    const path = join(dir, 'big.ckpt');
    const bigBytes = FOUR_GIB + 100; // Int8 [4 GiB + 100]: 8 full chunks + 100 bytes
    const bigTail = Buffer.from('end-of-big-tensor');
    const last = new Uint8Array(4096);
    for (let i = 0; i < last.length; i++) last[i] = (i * 7 + 3) & 0xff;
    const fh = await open(path, 'w');
    let pos = 0;
    let bigLastChunkEnd = 0;
    try {
      for (let left = bigBytes; left > 0; left -= CKPT_CHUNK_BYTES) {
        const n = Math.min(left, CKPT_CHUNK_BYTES);
        const h = encodeCkptChunkHeader({ tag: enc('big'), dims: [bigBytes], type: enc('Int8'), contentLength: n });
        await fh.write(h, 0, h.byteLength, pos);
        pos += h.byteLength + n; // content left as a hole (zeros)
        bigLastChunkEnd = pos;
      }
      await fh.write(bigTail, 0, bigTail.byteLength, bigLastChunkEnd - bigTail.byteLength);
      const h = encodeCkptChunkHeader({ tag: enc('last'), dims: [1024], type: enc('Float32'), contentLength: last.byteLength });
      await fh.write(h, 0, h.byteLength, pos);
      pos += h.byteLength;
      expect(pos).toBeGreaterThan(FOUR_GIB);
      await fh.write(last, 0, last.byteLength, pos);
      pos += last.byteLength;
    } finally {
      await fh.close();
    }
    expect((await stat(path)).size).toBe(pos);

    const src = await openCheckpoint(path);
    try {
      const big = src.entry('big');
      expect(big).toMatchObject({ dtype: 'Int8', shape: [bigBytes], byteLength: bigBytes });
      expect(big?.chunkList.length).toBe(9);
      expect(big?.ckpt).toBeUndefined(); // default cutting
      const lastEntry = src.entry('last');
      expect(lastEntry?.chunkList[0]?.offset).toBeGreaterThan(FOUR_GIB);

      // the last bytes of the tensor that starts past 4 GiB
      const got = new Uint8Array(110);
      await src.readBytes('last', 4096 - 100, 100, got, 10);
      expect(Buffer.from(got.subarray(10)).equals(Buffer.from(last.subarray(4096 - 100)))).toBe(true);
      // the end of the big tensor (its last chunk lies past 4 GiB)
      const end = new Uint8Array(bigTail.byteLength);
      await src.readBytes('big', bigBytes - bigTail.byteLength, bigTail.byteLength, end);
      expect(Buffer.from(end).equals(bigTail)).toBe(true);
      // a read across the boundary of chunks 8 and 9
      const across = new Uint8Array(16);
      await src.readBytes('big', 8 * CKPT_CHUNK_BYTES - 8, 16, across);
      expect(Array.from(across)).toEqual(new Array(16).fill(0));
    } finally {
      await src.close();
    }
  });
});
