/**
 * LoRA merge benchmark: a generated ~1 GiB llama-shaped Float16 checkpoint (hidden 2048, FFN 5632,
 * 8 layers, vocab 32000) with rank-16 LoRA on every linear layer (wq, wk, wv, wo, w1, w2, w3).
 * The merge runs in a child `node` process (once with one thread, once with two) so its peak RSS is
 * its own; printed: wall time, the share in the product kernel versus I/O, throughput, CPU time
 * (worker threads included) and peak RSS. On a loaded machine compare CPU time, not wall time.
 */
import { execa } from 'execa';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createCheckpointSink } from '../plugin/formats/ckpt/index.js';
import { fromFloat32, type DType } from '../plugin/formats/dtype.js';

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

async function generate(path: string): Promise<number> {
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

export async function run(): Promise<void> {
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
      const pct = (x: number): string => `${((100 * x) / res.wall).toFixed(0)}%`;
      process.stdout.write(
        `threads=${threads}: ${res.wall.toFixed(2)} s wall, product ${res.product.toFixed(2)} s (${pct(res.product)}), ` +
          `I/O ${res.io.toFixed(2)} s (${pct(res.io)}), ${(res.bytes / 2 ** 20 / res.wall).toFixed(0)} MiB/s, ` +
          `${res.merged} weights merged, CPU ${res.cpu.toFixed(1)} s, peak RSS ${(res.maxRssKiB / 1024).toFixed(0)} MiB\n`,
      );
      await rm(out, { recursive: true, force: true });
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
