/**
 * Re-sharding throughput on a generated llama-like BFloat16 checkpoint (>= 2 GiB): 1 -> 8 slicing,
 * 8 -> 1 merging, dp2·mp4 -> mp8 re-sharding, each with 1 and 2 converter processes. Prints
 * throughput (output bytes / s), the ratio to `cp -r` of the same output measured in the same run,
 * and peak RSS of the converter process(es) (reported by the children themselves), plus the
 * same re-sharding with safetensors in and out (issue 7).
 * `MSCKPT_BENCH_LAYERS` changes the size (default 6 layers of hidden 4096 ~ 2.3 GiB).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { createCheckpointSink } from '../plugin/formats/ckpt/index.js';
import { makeStrategy, writeStrategy } from '../plugin/formats/strategy/index.js';
import type { ParamLayout, TensorMapEntry } from '../plugin/formats/strategy/model.js';
import { cpSyncSeconds, loadText } from './_copy.js';

const run$ = promisify(execFile);
const BIN = resolve(fileURLToPath(new URL('../bin/msckpt.js', import.meta.url)));
const GiB = 1024 ** 3;

interface T { name: string; shape: number[]; map: TensorMapEntry[] }

function model(layers: number): T[] {
  const h = 4096;
  const f = 11008;
  const out: T[] = [{ name: 'model.tok_embeddings.embedding_weight', shape: [32000, h], map: [0, -1] }];
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}.`;
    out.push({ name: `${p}attention_norm.weight`, shape: [h], map: [-1] });
    for (const w of ['wq', 'wk', 'wv']) out.push({ name: `${p}attention.${w}.weight`, shape: [h, h], map: [0, -1] });
    out.push({ name: `${p}attention.wo.weight`, shape: [h, h], map: [-1, 0] });
    out.push({ name: `${p}ffn_norm.weight`, shape: [h], map: [-1] });
    out.push({ name: `${p}feed_forward.w1.weight`, shape: [f, h], map: [0, -1] });
    out.push({ name: `${p}feed_forward.w2.weight`, shape: [h, f], map: [-1, 0] });
    out.push({ name: `${p}feed_forward.w3.weight`, shape: [f, h], map: [0, -1] });
  }
  out.push({ name: 'model.norm_out.weight', shape: [h], map: [-1] });
  return out;
}

async function generate(path: string, ts: T[]): Promise<number> {
  const sink = await createCheckpointSink(path);
  const piece = new Uint8Array(16 * 1024 * 1024);
  for (let i = 0; i < piece.length; i++) piece[i] = (i * 131 + (i >> 9)) & 255;
  let total = 0;
  await sink.beginTensor({ name: 'global_step', dtype: 'Int32', shape: [1], byteLength: 4 });
  await sink.write(new Uint8Array([1, 0, 0, 0]));
  await sink.endTensor();
  for (const t of ts) {
    const bytes = t.shape.reduce((a, b) => a * b, 2);
    await sink.beginTensor({ name: t.name, dtype: 'BFloat16', shape: t.shape, byteLength: bytes });
    for (let off = 0; off < bytes; off += piece.length) await sink.write(piece.subarray(0, Math.min(piece.length, bytes - off)));
    await sink.endTensor();
    total += bytes;
  }
  await sink.close();
  return total;
}

async function strategy(path: string, ts: T[], dev: number[]): Promise<string> {
  const layouts: ParamLayout[] = ts.map((t) => ({
    name: t.name, stage: 0, devMatrix: dev, tensorMap: t.map, paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0,
  }));
  await writeStrategy(path, makeStrategy({ currentStage: 1, layouts, items: [{ nodeName: 'MatMul_x', stage: 0, strategies: [[1]] }] }));
  return path;
}

interface Report { bytesWritten: number; seconds: number; maxRssBytes: number; processes: number }

async function transform(args: string[]): Promise<Report> {
  const { stdout } = await run$(process.execPath, [BIN, 'transform', ...args, '--json'], { maxBuffer: 64 * 1024 * 1024 });
  return JSON.parse(stdout) as Report;
}

function fmt(name: string, r: Report, cp: number): string {
  const gib = r.bytesWritten / GiB;
  const thr = gib / r.seconds;
  const cpThr = gib / cp;
  return `${name.padEnd(34)} ${gib.toFixed(2)} GiB in ${r.seconds.toFixed(1)} s = ${(thr * 1024).toFixed(0)} MiB/s; cp -r + sync ${(cpThr * 1024).toFixed(0)} MiB/s; ratio ${(thr / cpThr).toFixed(2)}; peak RSS ${(r.maxRssBytes / 1024 ** 2).toFixed(0)} MiB (${r.processes} proc)`;
}

export async function run(): Promise<void> {
  const layers = Number(process.env['MSCKPT_BENCH_LAYERS'] ?? 6);
  const dir = await mkdtemp(join(tmpdir(), 'msckpt-bench-transform-'));
  try {
    const ts = model(layers);
    const complete = join(dir, 'complete.ckpt');
    const bytes = await generate(complete, ts);
    process.stdout.write(`generated ${(bytes / GiB).toFixed(2)} GiB BFloat16 llama-like checkpoint (${ts.length} tensors); ${loadText()}\n`);
    const mp8 = await strategy(join(dir, 'mp8.ckpt'), ts, [8]);
    const dp2mp4 = await strategy(join(dir, 'dp2mp4.ckpt'), ts, [2, 4]);
    await transform(['--src-checkpoint', complete, '--dst-strategy', dp2mp4, '--dst-checkpoint-dir', join(dir, 'src_dp2mp4')]);
    await transform(['--src-checkpoint', complete, '--dst-strategy', mp8, '--dst-checkpoint-dir', join(dir, 'src_mp8')]);
    // issue 7: the same dp2·mp4 slices as safetensors (output format defaults to the source's)
    await transform(['--src-checkpoint', complete, '--dst-strategy', dp2mp4, '--dst-checkpoint-dir', join(dir, 'src_dp2mp4_st'), '--output-format', 'safetensors']);
    const cases: Array<[string, string[]]> = [
      ['1 -> 8 slicing', ['--src-checkpoint', complete, '--dst-strategy', mp8]],
      ['8 -> 1 merging', ['--src-checkpoint', join(dir, 'src_mp8'), '--src-strategy', mp8]],
      ['dp2·mp4 -> mp8 re-sharding', ['--src-checkpoint', join(dir, 'src_dp2mp4'), '--src-strategy', dp2mp4, '--dst-strategy', mp8]],
      ['safetensors dp2·mp4 -> mp8', ['--src-checkpoint', join(dir, 'src_dp2mp4_st'), '--src-strategy', dp2mp4, '--dst-strategy', mp8]],
    ];
    for (const procs of [1, 2]) {
      for (const [name, args] of cases) {
        const out = join(dir, 'out');
        const r = await transform([...args, '--dst-checkpoint-dir', out, '--process-num', String(procs)]);
        const cp = await cpSyncSeconds(out, join(dir, 'out_cp'));
        process.stdout.write(`${fmt(`${name} (process-num ${procs})`, r, cp)}\n`);
        await rm(out, { recursive: true, force: true });
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
