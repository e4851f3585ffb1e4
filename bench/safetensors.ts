/**
 * Safetensors figures: a generated mp=4 model (MSCKPT_BENCH_ST_MIB MiB of weights, default 1024)
 * re-sharded to mp=2 safetensors -> safetensors (and the same data .ckpt -> .ckpt for comparison),
 * unified into parts, and converted ckpt -> safetensors. Each job runs in a child `node` process
 * that reports its wall time and peak RSS (process.resourceUsage().maxRSS).
 */
import { execa } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createSafetensorsSink } from '../plugin/formats/safetensors/index.js';
import { makeStrategy, writeStrategy } from '../plugin/formats/strategy/index.js';
import type { ParamLayout, TensorMapEntry } from '../plugin/formats/strategy/model.js';
import type { SinkTensor } from '../plugin/formats/types.js';
import { cpSyncSeconds, loadText } from './_copy.js';

const root = resolve(fileURLToPath(new URL('..', import.meta.url)));

function layout(name: string, devMatrix: number[], tensorMap: TensorMapEntry[]): ParamLayout {
  return { name, stage: 0, devMatrix, tensorMap, paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0 };
}

interface ChildFigures {
  seconds: number;
  maxRssBytes: number;
}

/** Run `body` (an async function body using `api`) in a child node process. */
async function child(module: string, body: string): Promise<ChildFigures> {
  const script = `
    const api = await import(${JSON.stringify(join(root, module))});
    const t0 = performance.now();
    ${body}
    process.stdout.write(JSON.stringify({ seconds: (performance.now() - t0) / 1000, maxRssBytes: process.resourceUsage().maxRSS * 1024 }));
  `;
  const r = await execa(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: root, reject: false });
  if (r.exitCode !== 0) throw new Error(`child failed: ${String(r.stderr).slice(0, 500)}`);
  return JSON.parse(String(r.stdout)) as ChildFigures;
}

function line(label: string, bytes: number, f: ChildFigures): string {
  const mib = bytes / 2 ** 20;
  return `${label.padEnd(52)} ${f.seconds.toFixed(2).padStart(7)} s  ${(mib / f.seconds).toFixed(0).padStart(6)} MiB/s  peak RSS ${(f.maxRssBytes / 2 ** 20).toFixed(0).padStart(5)} MiB`;
}

export async function run(): Promise<void> {
  const totalMiB = Number(process.env['MSCKPT_BENCH_ST_MIB'] ?? '1024');
  const dir = await mkdtemp(join(tmpdir(), 'msckpt-bench-st-'));
  try {
    // 16 tensors [rows, 4096] Float16, half split on dim 0, half on dim 1, mp=4 -> mp=2 swaps the split.
    const count = 16;
    const cols = 4096;
    const rows = Math.max(4, Math.floor((totalMiB * 2 ** 20) / count / (cols * 2) / 4) * 4);
    const full = count * rows * cols * 2;
    const params = Array.from({ length: count }, (_, i) => ({ name: `layers.${i}.weight`, src: (i % 2 === 0 ? [0, -1] : [-1, 0]) as TensorMapEntry[], dst: (i % 2 === 0 ? [-1, 0] : [0, -1]) as TensorMapEntry[] }));
    const srcStrategy = join(dir, 'src_strategy.ckpt');
    const dstStrategy = join(dir, 'dst_strategy.ckpt');
    await writeStrategy(srcStrategy, makeStrategy({ currentStage: 0, layouts: params.map((p) => layout(p.name, [4], p.src)), items: [] }));
    await writeStrategy(dstStrategy, makeStrategy({ currentStage: 0, layouts: params.map((p) => layout(p.name, [2], p.dst)), items: [] }));
    const pattern = new Uint8Array(8 * 2 ** 20);
    for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 131 + (i >>> 9)) & 0xff;
    const t0 = performance.now();
    for (let r = 0; r < 4; r++) {
      const slices: SinkTensor[] = params.map((p) => {
        const shape = p.src[0] === 0 ? [rows / 4, cols] : [rows, cols / 4];
        return { name: p.name, dtype: 'Float16', shape, byteLength: shape[0]! * shape[1]! * 2 };
      });
      const sink = await createSafetensorsSink(join(dir, 'st', `rank_${r}`, `net_rank_${r}-1_1.safetensors`), slices, { sortKeys: true, metadata: { format: 'ms' } });
      for (const t of slices) {
        await sink.beginTensor(t);
        for (let off = 0; off < t.byteLength; off += pattern.byteLength) await sink.write(pattern.subarray(0, Math.min(pattern.byteLength, t.byteLength - off)));
        await sink.endTensor();
      }
      await sink.close();
    }
    process.stdout.write(`model: ${count} x [${rows},${cols}] Float16 = ${(full / 2 ** 20).toFixed(0)} MiB, mp=4 slices written in ${((performance.now() - t0) / 1000).toFixed(2)} s; ${loadText()}\n`);

    const f1 = await child('plugin/unify/index.ts', `await api.safetensorsToCkpt(${JSON.stringify(join(dir, 'st'))}, ${JSON.stringify(join(dir, 'ck'))});`);
    process.stdout.write(`${line('safetensors -> ckpt (4 files)', full, f1)}\n`);
    const f2 = await child('plugin/unify/index.ts', `await api.ckptToSafetensors(${JSON.stringify(join(dir, 'ck'))}, ${JSON.stringify(join(dir, 'st2'))});`);
    process.stdout.write(`${line('ckpt -> safetensors (4 files)', full, f2)}\n`);
    await rm(join(dir, 'st2'), { recursive: true, force: true });

    for (const [label, src, fmt] of [
      ['transform safetensors -> safetensors', 'st', 'safetensors'],
      ['transform ckpt -> ckpt', 'ck', 'ckpt'],
      ['transform ckpt -> safetensors', 'ck', 'safetensors'],
    ] as const) {
      const out = join(dir, 'out');
      const f = await child(
        'plugin/transform/index.ts',
        `await api.transformCheckpoints({ srcCheckpoint: ${JSON.stringify(join(dir, src))}, srcStrategy: ${JSON.stringify(srcStrategy)}, dstStrategy: ${JSON.stringify(dstStrategy)}, dstDir: ${JSON.stringify(out)}, outputFormat: '${fmt}', progress: false });`,
      );
      const cp = await cpSyncSeconds(out, join(dir, 'out_cp'));
      const ratio = full / f.seconds / (full / cp);
      process.stdout.write(`${line(`${label} (mp4 -> mp2)`, full, f)}  cp -r + sync ${(full / 2 ** 20 / cp).toFixed(0)} MiB/s, ratio ${ratio.toFixed(2)}\n`);
      await rm(out, { recursive: true, force: true });
    }
    const uni = join(dir, 'unified');
    const fu = await child('plugin/unify/index.ts', `await api.unifySafetensors({ srcDir: ${JSON.stringify(join(dir, 'st'))}, srcStrategy: ${JSON.stringify(srcStrategy)}, dstDir: ${JSON.stringify(uni)}, partSize: 256 * 2 ** 20 });`);
    process.stdout.write(`${line('unify mp=4 -> parts of 256 MiB', full, fu)}\n`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
