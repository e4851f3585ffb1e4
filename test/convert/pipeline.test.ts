/**
 * The overlapped read/write pipeline of executeConvertPlan: with tiny staging buffers, every
 * output tensor spans many buffers, writes are slow (they yield several times), and the test
 * checks that no piece changes while its write is in flight, that writer calls stay in order,
 * that the bytes are exactly the planned gather (and cast), and that a failing write stops the run.
 */
import { randomFillSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { executeConvertPlan, type ConvertPlannedTensor, type ConvertWriter } from '../../plugin/convert/index.js';
import { castBuffer } from '../../plugin/formats/dtype.js';
import type { SinkTensor, TensorEntry, TensorSource } from '../../plugin/formats/types.js';

function memorySource(tensors: Record<string, { dtype: TensorEntry['dtype']; bytes: Uint8Array }>): TensorSource & { reads: number } {
  const list: TensorEntry[] = Object.entries(tensors).map(([name, t]) => ({ name, dtype: t.dtype, shape: [t.bytes.byteLength], byteLength: t.bytes.byteLength }));
  return {
    path: 'memory',
    reads: 0,
    entries: () => list,
    entry: (n) => list.find((e) => e.name === n),
    async readBytes(name, offset, length, dst, dstOffset = 0) {
      this.reads++;
      await new Promise<void>((r) => setImmediate(r));
      const t = tensors[name];
      if (t === undefined || offset + length > t.bytes.byteLength) throw new Error(`bad read ${name} ${offset}+${length}`);
      dst.set(t.bytes.subarray(offset, offset + length), dstOffset);
    },
    async close() {},
  };
}

const yields = async (n: number): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
};

class RecordingWriter implements ConvertWriter {
  readonly log: string[] = [];
  readonly out = new Map<string, Uint8Array[]>();
  private cur: string | null = null;
  private inFlight = 0;
  writes = 0;
  constructor(private readonly failAt = -1) {}
  async begin(t: SinkTensor): Promise<void> {
    expect(this.inFlight).toBe(0);
    expect(this.cur).toBeNull();
    this.cur = t.name;
    this.log.push(`begin ${t.name}`);
    this.out.set(t.name, []);
  }
  async write(piece: Uint8Array): Promise<void> {
    expect(this.inFlight).toBe(0); // calls never overlap
    this.inFlight++;
    try {
      this.writes++;
      if (this.writes === this.failAt) throw new Error('disk full (simulated)');
      const snapshot = piece.slice();
      await yields(4); // the engine gathers the next piece meanwhile
      expect(Buffer.compare(piece, snapshot)).toBe(0); // the piece was not overwritten in flight
      this.out.get(this.cur as string)?.push(snapshot);
    } finally {
      this.inFlight--;
    }
  }
  async end(): Promise<void> {
    expect(this.inFlight).toBe(0);
    this.log.push(`end ${this.cur as string}`);
    this.cur = null;
  }
  async commit(): Promise<string[]> {
    return [];
  }
  async abort(): Promise<void> {}
  bytes(name: string): Buffer {
    return Buffer.concat(this.out.get(name) ?? []);
  }
}

function gather(src: Record<string, { bytes: Uint8Array }>, t: ConvertPlannedTensor): Buffer {
  return Buffer.concat(t.parts.map((p) => (src[p.input] as { bytes: Uint8Array }).bytes.subarray(p.offset, p.offset + p.length)));
}

describe('executeConvertPlan pipeline', () => {
  const a = randomFillSync(new Uint8Array(40_000));
  const b = randomFillSync(new Uint8Array(24_000));
  // float32 values in a sane range so the cast is meaningful
  const f = new Float32Array(5_000).map((_v, i) => Math.sin(i) * 100);
  const inputs = {
    a: { dtype: 'BFloat16' as const, bytes: a },
    b: { dtype: 'BFloat16' as const, bytes: b },
    f: { dtype: 'Float32' as const, bytes: new Uint8Array(f.buffer) },
  };
  const rows = (input: string, row: number, n: number, rowBytes: number) => ({ input, offset: row * rowBytes, length: n * rowBytes });
  // interleaved rows of a and b (many small parts, via read windows), then a whole copy (direct reads), then a cast
  const interleaved: Array<ConvertPlannedTensor['parts'][number]> = [];
  for (let r = 0; r < 100; r++) interleaved.push(rows('a', r, 1, 200), rows('b', r, 1, 200));
  const plan: ConvertPlannedTensor[] = [
    { name: 'mix', shape: [200, 100], from: 'BFloat16', dtype: 'BFloat16', byteLength: 40_000, parts: interleaved },
    { name: 'whole', shape: [20_000], from: 'BFloat16', dtype: 'BFloat16', byteLength: 40_000, parts: [{ input: 'a', offset: 0, length: 40_000 }] },
    { name: 'tail', shape: [2_000], from: 'BFloat16', dtype: 'BFloat16', byteLength: 4_000, parts: [{ input: 'b', offset: 20_000, length: 4_000 }] },
    { name: 'cast', shape: [5_000], from: 'Float32', dtype: 'BFloat16', byteLength: 10_000, parts: [{ input: 'f', offset: 0, length: 20_000 }] },
  ];

  for (const stagingBytes of [1024, 4096, 65536]) {
    it(`gathers exactly the planned bytes with ${stagingBytes}-byte staging buffers`, async () => {
      const src = memorySource(inputs);
      const w = new RecordingWriter();
      let progress = 0;
      const n = await executeConvertPlan(src, plan, w, (k) => (progress += k), { stagingBytes });
      expect(n).toBe(94_000);
      expect(progress).toBe(94_000);
      expect(w.log).toEqual(plan.flatMap((t) => [`begin ${t.name}`, `end ${t.name}`]));
      for (const t of plan.slice(0, 3)) expect(Buffer.compare(w.bytes(t.name), gather(inputs, t))).toBe(0);
      const cast = castBuffer(new Uint8Array(f.buffer), 'Float32', 'BFloat16');
      expect(Buffer.compare(w.bytes('cast'), Buffer.from(cast))).toBe(0);
      if (stagingBytes === 1024) expect(w.writes).toBeGreaterThan(80); // many buffers per tensor
    });
  }

  it('stops at a failing write, surfaces its error and makes no further writer calls', async () => {
    const src = memorySource(inputs);
    const w = new RecordingWriter(5);
    await expect(executeConvertPlan(src, plan, w, () => undefined, { stagingBytes: 4096 })).rejects.toThrow('disk full (simulated)');
    const before = w.writes;
    await yields(20);
    expect(w.writes).toBe(before);
    expect(w.log).not.toContain('end whole');
  });

  it('surfaces a failing read after the queued writes have settled', async () => {
    const src = memorySource(inputs);
    const bad: ConvertPlannedTensor[] = [...plan, { name: 'oops', shape: [10], from: 'BFloat16', dtype: 'BFloat16', byteLength: 20, parts: [{ input: 'zzz', offset: 0, length: 20 }] }];
    const w = new RecordingWriter();
    await expect(executeConvertPlan(src, bad, w, () => undefined, { stagingBytes: 4096 })).rejects.toThrow(/bad read|outside/);
    expect(w.log).toContain('end cast'); // everything queued before the failure was written in order
  });

  it('rejects a staging size that could split an element', async () => {
    await expect(executeConvertPlan(memorySource(inputs), plan, new RecordingWriter(), () => undefined, { stagingBytes: 1000 + 3 })).rejects.toThrow(/staging size/);
  });
});
