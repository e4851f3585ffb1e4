/**
 * LoRA merge benchmark: a generated ~1 GiB llama-shaped Float16 checkpoint (hidden 2048, FFN 5632,
 * 8 layers, vocab 32000) with rank-16 LoRA on every linear layer (wq, wk, wv, wo, w1, w2, w3).
 *
 * 1. The kernel alone, in this process: GMAC/s (multiply-adds of the rank-16 product per second)
 *    of the scalar reference and of the SIMD kernel on 1 and 2 threads, on a w1-shaped layer, and
 *    the SIMD kernel at rank 1 (what decoding/encoding W and staging it cost per element).
 * 2. The merge in a child `node` process (once with one thread, once with two) so its peak RSS is
 *    its own: wall time, the share in the product kernel versus I/O, throughput, CPU time (worker
 *    threads included), peak RSS, and the ratio to `cp` + `sync` of the same output measured in
 *    the same run (merge at cp speed = 1.00), and the floor for any merge that moves the bytes
 *    through user space: the same output read and written through one band-sized buffer plus
 *    fsync, no product. On a loaded machine compare CPU time, not wall time.
 */
import { execa } from 'execa';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createCheckpointSink } from '../plugin/formats/ckpt/index.js';
import { fromFloat32, type DType } from '../plugin/formats/dtype.js';
import { KernelPool, runKernel, type KernelJob } from '../plugin/lora/kernel.js';
import { LORA_BAND_BYTES } from '../plugin/lora/merge.js';
import { referenceKernel } from '../test/lora/kernel-reference.js';
import { cpSyncSeconds, loadText } from './_copy.js';

const HIDDEN = 2048;
const FFN = 5632;
const LAYERS = 8;
const VOCAB = 32000;
const RANK = 16;
const PIECE = 32 * 1024 * 1024;

const repo = fileURLToPath(new URL('..', import.meta.url));

interface Spec {
  name: string;
  dtype: DType;
  shape: number[];
}

function modelSpecs(): Spec[] {
  const out: Spec[] = [{ name: 'model.tok_embeddings.embedding_weight', dtype: 'Float16', shape: [VOCAB, HIDDEN] }];
  const linears: Array<[string, number, number]> = [
    ['attention.wq', HIDDEN, HIDDEN], ['attention.wk', HIDDEN, HIDDEN], ['attention.wv', HIDDEN, HIDDEN],
    ['attention.wo', HIDDEN, HIDDEN], ['feed_forward.w1', FFN, HIDDEN], ['feed_forward.w2', HIDDEN, FFN],
    ['feed_forward.w3', FFN, HIDDEN],
  ];
  for (let l = 0; l < LAYERS; l++) {
    out.push({ name: `model.layers.${l}.attention_norm.weight`, dtype: 'Float32', shape: [HIDDEN] });
    for (const [m, o, i] of linears) {
      const base = `model.layers.${l}.${m}`;
      out.push({ name: `${base}.weight`, dtype: 'Float16', shape: [o, i] });
      out.push({ name: `${base}.mindpet_delta_lora_a`, dtype: 'Float16', shape: [RANK, i] });
      out.push({ name: `${base}.mindpet_delta_lora_b`, dtype: 'Float16', shape: [o, RANK] });
    }
    out.push({ name: `model.layers.${l}.ffn_norm.weight`, dtype: 'Float32', shape: [HIDDEN] });
  }
  out.push({ name: 'model.norm_out.weight', dtype: 'Float32', shape: [HIDDEN] });
  out.push({ name: 'lm_head.weight', dtype: 'Float16', shape: [VOCAB, HIDDEN] });
  return out;
}

export async function generate(path: string): Promise<number> {
  // one piece of plausible values per dtype, reused (generation speed is not what we measure)
  const vals = new Float32Array(PIECE / 2);
  let s = 12345;
  for (let i = 0; i < vals.length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    vals[i] = ((s / 0x100000000) * 2 - 1) * 0.05;
  }
  const f16 = fromFloat32(vals, 'Float16');
  const f32 = fromFloat32(vals.subarray(0, PIECE / 4), 'Float32');
  const sink = await createCheckpointSink(path);
  let total = 0;
  for (const t of modelSpecs()) {
    const es = t.dtype === 'Float16' ? 2 : 4;
    const bytes = t.shape.reduce((a, b) => a * b, 1) * es;
    await sink.beginTensor({ name: t.name, dtype: t.dtype, shape: t.shape, byteLength: bytes });
    const src = t.dtype === 'Float16' ? f16 : f32;
    for (let off = 0; off < bytes; off += PIECE) await sink.write(src.subarray(0, Math.min(PIECE, bytes - off)));
    await sink.endTensor();
    total += bytes;
  }
  await sink.close();
  return total;
}

const CHILD = `
import { mergeLora } from ${JSON.stringify(join(repo, 'plugin/lora/index.ts'))};
const [src, dst, threads] = process.argv.slice(-3);
const t0 = performance.now();
const r = await mergeLora({ src, dstDir: dst, scaling: 2, threads: Number(threads) });
const wall = (performance.now() - t0) / 1000;
process.stdout.write(JSON.stringify({ wall, product: r.productSeconds, io: r.ioSeconds, bytes: r.bytesWritten,
  merged: r.merged.length, maxRssKiB: process.resourceUsage().maxRSS,
  cpu: (process.cpuUsage().user + process.cpuUsage().system) / 1e6 }));
`;

interface ChildResult {
  wall: number;
  product: number;
  io: number;
  bytes: number;
  merged: number;
  maxRssKiB: number;
  cpu: number;
}

/**
 * The floor for any merge that moves the bytes through user space: read the file in pieces of the
 * merge's band (1 MiB, which stays in the CPU caches; 64 MiB pieces measured 2-4x slower here) into
 * one buffer, write them to a new file, fsync (seconds; the copy removed after).
 */
async function userCopySeconds(from: string, to: string): Promise<{ read: number; write: number; sync: number }> {
  await execa('sync', []);
  const buf = new Uint8Array(LORA_BAND_BYTES);
  const src = await open(from, 'r');
  const dst = await open(to, 'w');
  let read = 0;
  let write = 0;
  try {
    for (let pos = 0; ; ) {
      const t0 = performance.now();
      const { bytesRead } = await src.read(buf, 0, buf.byteLength, pos);
      const t1 = performance.now();
      read += t1 - t0;
      if (bytesRead === 0) break;
      await dst.write(buf, 0, bytesRead, pos);
      write += performance.now() - t1;
      pos += bytesRead;
    }
    const t2 = performance.now();
    await dst.sync();
    return { read: read / 1000, write: write / 1000, sync: (performance.now() - t2) / 1000 };
  } finally {
    await src.close();
    await dst.close();
    await rm(to, { force: true });
  }
}

/** A w1-shaped Float16 job (rows x cols, rank r) on shared buffers, with plausible values. */
function kernelJob(rows: number, cols: number, r: number): { job: KernelJob; w: Uint8Array; orig: Uint8Array } {
  let s = 99;
  const rnd = (): number => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s / 0x100000000) * 2 - 1;
  };
  const vals = new Float32Array(rows * cols).map(() => rnd() * 0.05);
  const w = new Uint8Array(new SharedArrayBuffer(rows * cols * 2));
  w.set(fromFloat32(vals, 'Float16'));
  // filled in place: TypedArray.map would return a copy on an ordinary ArrayBuffer, and the pool
  // splits only jobs whose buffers are all shared
  const a = new Float32Array(new SharedArrayBuffer(r * cols * 4));
  for (let i = 0; i < a.length; i++) a[i] = rnd() * 0.05;
  const b = new Float32Array(new SharedArrayBuffer(rows * r * 4));
  for (let i = 0; i < b.length; i++) b[i] = rnd() * 0.05;
  const job: KernelJob = { w: w.buffer, wOffset: 0, dtype: 1, rowBegin: 0, rowEnd: rows, cols, b: b.buffer, bOffset: 0, a: a.buffer, aOffset: 0, r, scale: 2 };
  return { job, w, orig: w.slice() };
}

/** Best GMAC/s of `reps` runs (W restored before each). */
async function gmacs(x: { job: KernelJob; w: Uint8Array; orig: Uint8Array }, run: (j: KernelJob) => void | Promise<void>, reps: number): Promise<number> {
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    x.w.set(x.orig);
    const t0 = performance.now();
    await run(x.job);
    best = Math.min(best, performance.now() - t0);
  }
  const j = x.job;
  return ((j.rowEnd - j.rowBegin) * j.cols * j.r) / (best / 1000) / 1e9;
}

async function kernelFigures(): Promise<void> {
  const big = kernelJob(FFN, HIDDEN, RANK);
  const small = kernelJob(256, HIDDEN, RANK);
  const rank1 = kernelJob(FFN, HIDDEN, 1);
  const pool = new KernelPool(2);
  try {
    const scalar = await gmacs(small, referenceKernel, 2);
    const simd1 = await gmacs(big, runKernel, 5);
    const simd2 = await gmacs(big, (j) => pool.run(j), 5);
    const r1 = await gmacs(rank1, runKernel, 5);
    const perElemNs = (1 / (r1 * 1e9)) * 1e9;
    process.stdout.write(
      `kernel, Float16 [${FFN}, ${HIDDEN}] rank ${RANK}: scalar reference ${scalar.toFixed(2)} GMAC/s (1 thread), ` +
        `SIMD ${simd1.toFixed(2)} GMAC/s (1 thread, ${(simd1 / scalar).toFixed(0)}x), ${simd2.toFixed(2)} GMAC/s (2 threads); ` +
        `rank 1: ${perElemNs.toFixed(2)} ns per element (decode + encode + staging), ` +
        `${(((1 / simd1) * RANK - perElemNs) / (RANK - 1)).toFixed(2)} ns per element per further rank\n`,
    );
  } finally {
    await pool.close();
  }
}

export async function run(): Promise<void> {
  process.stdout.write(`${loadText()}\n`);
  await kernelFigures();
  const dir = await mkdtemp(join(tmpdir(), 'msckpt-bench-lora-'));
  try {
    const src = join(dir, 'src.ckpt');
    const g0 = performance.now();
    const bytes = await generate(src);
    const size = (await stat(src)).size;
    process.stdout.write(
      `generated ${(size / 2 ** 30).toFixed(2)} GiB llama-shaped checkpoint (${(bytes / 2 ** 30).toFixed(2)} GiB of tensors, ` +
        `${LAYERS} layers, rank-${RANK} LoRA on 7 linears/layer) in ${((performance.now() - g0) / 1000).toFixed(1)} s\n`,
    );
    for (const threads of [1, 2]) {
      const out = join(dir, `out${threads}`);
      const r = await execa(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD, src, out, String(threads)], {
        cwd: repo,
      });
      const res = JSON.parse(String(r.stdout)) as ChildResult;
      const outFile = join(out, 'rank_0', 'checkpoint_0.ckpt');
      const cp = await cpSyncSeconds(outFile, join(dir, 'cp.ckpt'));
      const uc = await userCopySeconds(outFile, join(dir, 'copy.ckpt'));
      const ucAll = uc.read + uc.write + uc.sync;
      const pct = (x: number): string => `${((100 * x) / res.wall).toFixed(0)}%`;
      process.stdout.write(
        `threads=${threads}: ${res.wall.toFixed(2)} s wall, product ${res.product.toFixed(2)} s (${pct(res.product)}), ` +
          `I/O ${res.io.toFixed(2)} s (${pct(res.io)}), ${(res.bytes / 2 ** 20 / res.wall).toFixed(0)} MiB/s, ` +
          `${res.merged} weights merged, CPU ${res.cpu.toFixed(1)} s, peak RSS ${(res.maxRssKiB / 1024).toFixed(0)} MiB; ` +
          `cp + sync ${cp.toFixed(2)} s: ratio ${(cp / res.wall).toFixed(2)}x cp\n` +
          `  the same bytes read + written through a ${LORA_BAND_BYTES / 2 ** 20} MiB buffer + fsync (no product): ${ucAll.toFixed(2)} s ` +
          `(read ${uc.read.toFixed(2)}, write ${uc.write.toFixed(2)}, fsync ${uc.sync.toFixed(2)}) = ${(cp / ucAll).toFixed(2)}x cp\n`,
      );
      await rm(out, { recursive: true, force: true });
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
