import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCheckpointSink } from '../../plugin/formats/ckpt/index.js';
import { openSafetensorsFile } from '../../plugin/formats/safetensors/index.js';
import { ckptToSafetensors, safetensorsToCkpt, loadNameMap } from '../../plugin/unify/index.js';
import { describeFixtures, fixture } from '../helpers/fixtures.js';
import { runCli } from '../helpers/cli.js';
import { entryOf, readAll, strTensor, tensor, writeAll, type MemTensor } from '../helpers/mem-tensors.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-stconv-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function same(a: string, b: string): Promise<boolean> {
  return Buffer.compare(await readFile(a), await readFile(b)) === 0;
}

describeFixtures('ckpt -> safetensors -> ckpt on the real fixtures', () => {
  for (const rel of ['single/checkpoint_lenet-10_1875.ckpt', 'single/example_net_10000.ckpt', 'llama2_tiny_tp2/rank_0/checkpoint_0.ckpt']) {
    it(`gives back ${rel} byte for byte`, async () => {
      const st = join(dir, 'fx', rel.replace(/\.ckpt$/, '.safetensors'));
      const back = join(dir, 'fx-back', rel);
      await ckptToSafetensors(fixture(rel), st);
      const src = await openSafetensorsFile(st);
      expect(src.metadata['format']).toBe('ms');
      src.entries().forEach((e) => expect(e.dtype).not.toBe('str'));
      await src.close();
      await safetensorsToCkpt(st, back);
      expect(await same(fixture(rel), back)).toBe(true);
    });
  }

  it('converts a whole rank_N/ tree both ways with the CLI (names kept, extension swapped)', async () => {
    const st = join(dir, 'tree-st');
    const back = join(dir, 'tree-back');
    const r1 = await runCli(['ckpt-to-safetensors', fixture('llama2_tiny_tp2'), st, '--processes', '2', '--json']);
    expect(r1.stderr).toBe('');
    expect(r1.exitCode).toBe(0);
    const j = JSON.parse(r1.stdout) as { files: unknown[]; tensors: number };
    expect(j.files.length).toBe(2);
    expect(j.tensors).toBe(24);
    expect(await readdir(join(st, 'rank_1'))).toEqual(['checkpoint_1.safetensors']);
    const r2 = await runCli(['safetensors-to-ckpt', st, back, '--processes=2']);
    expect(r2.exitCode).toBe(0);
    expect(r2.stdout).toMatch(/2 file\(s\), 24 tensors/);
    for (const r of [0, 1]) expect(await same(fixture(`llama2_tiny_tp2/rank_${r}/checkpoint_${r}.ckpt`), join(back, `rank_${r}`, `checkpoint_${r}.ckpt`))).toBe(true);
  });
});

describe('synthetic checkpoints with str, scalars, bf16, chunks and CRC', () => {
  const ts: MemTensor[] = [
    tensor('w.bf16', 'BFloat16', [16, 8], 1),
    strTensor('note', 'hello — 世界 😀'),
    tensor('epoch_num', 'Int64', [], 2),
    tensor('learning_rate', 'Float64', [], 3, { dims: [0] }),
    tensor('flag', 'Bool', [], 4),
    tensor('chunked', 'Float32', [10, 10], 5, { chunks: [100, 300] }),
    strTensor('empty', ''),
    tensor('b.f16', 'Float16', [3], 6),
  ];
  for (const crc of [false, true]) {
    it(`round trip is exact${crc ? ' with a crc_num trailer' : ''}`, async () => {
      const orig = join(dir, `synth${crc ? '-crc' : ''}.ckpt`);
      const sink = await createCheckpointSink(orig, { crc });
      await writeAll(sink, ts, 64);
      const st = join(dir, `synth${crc ? '-crc' : ''}.safetensors`);
      const back = join(dir, `synth-back${crc ? '-crc' : ''}.ckpt`);
      await ckptToSafetensors(orig, st, { crc: true });
      const src = await openSafetensorsFile(st);
      expect(src.entries().map((e) => e.name)).toEqual(ts.map((t) => t.name));
      expect(src.entry('note')?.dtype).toBe('str');
      expect(src.rawMetadata['ms_str:note']).toBe('hello — 世界 😀');
      expect(src.metadata['crc_num']).toMatch(/^\d+$/);
      const got = await readAll(src);
      for (const t of ts) expect(Buffer.from(got.get(t.name) as Uint8Array).equals(Buffer.from(t.data))).toBe(true);
      await src.close();
      await safetensorsToCkpt(st, back);
      expect(await same(orig, back)).toBe(true);
    });
  }

  it('renames with a name map and refuses collisions', async () => {
    const orig = join(dir, 'named.ckpt');
    const small = [tensor('a', 'Float32', [2], 1), tensor('b', 'Float32', [2], 2)];
    const sink = await createCheckpointSink(orig);
    await writeAll(sink, small);
    const st = join(dir, 'named.safetensors');
    await ckptToSafetensors(orig, st, { nameMap: await loadNameMap('{"a":"model.a"}') });
    const src = await openSafetensorsFile(st);
    expect(src.entries().map((e) => e.name)).toEqual(['model.a', 'b']);
    await src.close();
    await expect(ckptToSafetensors(orig, join(dir, 'clash.safetensors'), { nameMap: { a: 'b' } })).rejects.toThrow(/appears twice/);
    const r = await runCli(['safetensors-to-ckpt', st, join(dir, 'x.ckpt'), '--name-map', '{"b":"model.a"}']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/same name/);
    const bad = await runCli(['ckpt-to-safetensors', join(dir, 'missing.ckpt'), join(dir, 'y')]);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr.split('\n').filter((l) => l !== '').length).toBe(1);
    void entryOf;
  });
});
