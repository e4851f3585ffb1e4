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
import { byteLength } from '../../plugin/formats/dtype.js';

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
  it('3000 mutated headers: InputError, or a header whose tensors are consistent and inside the file', () => {
    const rand = rng(12345);
    const n = Number(good.readBigUInt64LE(0));
    const raw = good.subarray(8, 8 + n);
    const dataSize = good.byteLength - 8 - n;
    let ok = 0;
    let refused = 0;
    for (let i = 0; i < 3000; i++) {
      const m = mutate(raw, rand, raw.byteLength);
      let h;
      try {
        h = parseSafetensorsHeader(m, 'fuzz.safetensors', 8 + m.byteLength + dataSize);
      } catch (err) {
        if (!(err instanceof InputError)) throw err;
        expect(err.message).toContain('fuzz.safetensors');
        refused++;
        continue;
      }
      ok++;
      // what a header accepts is consistent: each tensor's bytes fit its dtype and shape, lie in
      // the data area, and no two tensors share a byte
      let end = 0;
      for (const t of h.tensors) {
        expect(t.end - t.begin).toBe(byteLength(t.dtype, t.shape));
        expect(t.end).toBeLessThanOrEqual(dataSize);
        expect(t.begin).toBeGreaterThanOrEqual(end);
        end = t.end;
      }
    }
    // most mutations are refused; some (in metadata, or whitespace) leave a valid header
    expect(refused).toBeGreaterThan(1000);
    expect(ok).toBeGreaterThan(0);
  });

  it('300 mutated files (length prefix included): InputError, or every tensor reads back the bytes its header names', async () => {
    const rand = rng(777);
    const n = Number(good.readBigUInt64LE(0));
    const p = join(dir, 'm.safetensors');
    let opened = 0;
    let refused = 0;
    let checked = 0;
    for (let i = 0; i < 300; i++) {
      const m = mutate(good, rand, 8 + n);
      await writeFile(p, m);
      let s;
      try {
        s = await openSafetensorsFile(p);
      } catch (err) {
        if (!(err instanceof InputError)) throw err;
        refused++;
        continue;
      }
      opened++;
      try {
        const got = await readAll(s);
        // an independent reading of the header: the bytes of each stored tensor are the file's at its offsets
        const len = Number(m.readBigUInt64LE(0));
        const header = JSON.parse(m.subarray(8, 8 + len).toString('utf8')) as Record<string, { data_offsets?: [number, number] }>;
        for (const e of s.entries()) {
          const loc = s.locate(e.name);
          if (loc === undefined) continue; // held in the metadata (str)
          const offs = header[e.name]?.data_offsets as [number, number];
          expect(loc.offset).toBe(8 + len + offs[0]);
          expect(Buffer.from(got.get(e.name) as Uint8Array).equals(m.subarray(loc.offset, loc.offset + e.byteLength)), e.name).toBe(true);
          checked++;
        }
      } finally {
        await s.close();
      }
    }
    expect(refused).toBeGreaterThan(0);
    expect(opened).toBeGreaterThan(0);
    expect(checked).toBeGreaterThan(0);
  });
});
