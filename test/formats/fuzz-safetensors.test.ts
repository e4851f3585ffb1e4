/**
 * Seeded fuzz: mutated safetensors headers and files give an InputError (never another error,
 * a hang, or a huge allocation) or a valid source whose every tensor reads back.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../plugin/errors.js';
import { createSafetensorsSink, openSafetensorsFile, parseSafetensorsHeader } from '../../plugin/formats/safetensors/index.js';
import { entryOf, readAll, strTensor, tensor, writeAll } from '../helpers/mem-tensors.js';
import { readFile } from 'node:fs/promises';
import { xorshift32 as rng } from '../helpers/prng.js';

let dir: string;
let good: Buffer;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-stfuzz-'));
  const ts = [tensor('a.weight', 'Float32', [4, 3], 1), tensor('b', 'BFloat16', [5], 2), strTensor('s', 'xyz', { dims: [0] }), tensor('c', 'Int64', [], 3, { dims: [0] })];
  const p = join(dir, 'good.safetensors');
  const sink = await createSafetensorsSink(p, ts.map(entryOf), { crc: true });
  await writeAll(sink, ts);
  good = await readFile(p);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});


function mutate(buf: Buffer, rand: () => number, headerEnd: number): Buffer {
  const out = Buffer.from(buf);
  const kind = Math.floor(rand() * 4);
  const n = 1 + Math.floor(rand() * 4);
  for (let i = 0; i < n; i++) {
    const at = Math.floor(rand() * headerEnd);
    if (kind === 0) out[at] = Math.floor(rand() * 256);
    else if (kind === 1) out[at] = '0123456789[]{},:"-.e'.charCodeAt(Math.floor(rand() * 20));
    else if (kind === 2) out[at] = (out[at] as number) ^ (1 << Math.floor(rand() * 8));
    else return out.subarray(0, Math.floor(rand() * out.byteLength));
  }
  return out;
}

describe('safetensors fuzz', () => {
  it('3000 mutated headers: InputError or a valid header, never anything else', () => {
    const rand = rng(12345);
    const n = Number(good.readBigUInt64LE(0));
    const raw = good.subarray(8, 8 + n);
    let ok = 0;
    let refused = 0;
    for (let i = 0; i < 3000; i++) {
      const m = mutate(raw, rand, raw.byteLength);
      try {
        const h = parseSafetensorsHeader(m, 'fuzz.safetensors', 8 + m.byteLength + (good.byteLength - 8 - n));
        for (const t of h.tensors) expect(t.end).toBeLessThanOrEqual(good.byteLength);
        ok++;
      } catch (err) {
        if (!(err instanceof InputError)) throw err;
        expect(err.message).toContain('fuzz.safetensors');
        refused++;
      }
    }
    expect(refused).toBeGreaterThan(100);
    expect(ok + refused).toBe(3000);
  });

  it('300 mutated files (length prefix included): InputError, or every tensor reads', async () => {
    const rand = rng(777);
    const n = Number(good.readBigUInt64LE(0));
    const p = join(dir, 'm.safetensors');
    for (let i = 0; i < 300; i++) {
      const m = mutate(good, rand, 8 + n);
      await writeFile(p, m);
      try {
        const s = await openSafetensorsFile(p);
        try {
          await readAll(s);
        } finally {
          await s.close();
        }
      } catch (err) {
        if (!(err instanceof InputError)) throw err;
      }
    }
  });
});
