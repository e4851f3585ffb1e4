/**
 * Bench: generate a 2 GiB checkpoint (streaming; three tensors over 512 MiB so chunking is
 * exercised), then in child processes (1) index it and (2) copy it tensor by tensor through the
 * streaming writer. Prints time, throughput and peak RSS of each child (goal: < 200 MiB).
 */
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createCheckpointSink, openCheckpoint, rewriteCheckpoint } from '../plugin/formats/ckpt/index.js';
import type { SinkTensor } from '../plugin/formats/types.js';

const MiB = 1024 * 1024;
const self = fileURLToPath(import.meta.url);
const repoRoot = resolve(self, '../..');

/** ~2 GiB: three tensors over 512 MiB (two chunks each) and 48 of 8 MiB. */
function plan(): SinkTensor[] {
  const t: SinkTensor[] = [
    { name: 'model.tok_embeddings.embedding_weight', dtype: 'Float16', shape: [152064, 2048], byteLength: 152064 * 2048 * 2 }, // 594 MiB
    { name: 'model.layers.0.feed_forward.w1.weight', dtype: 'BFloat16', shape: [11008, 28672], byteLength: 11008 * 28672 * 2 }, // 602 MiB
    { name: 'lm_head.weight', dtype: 'Float32', shape: [76032, 2048], byteLength: 76032 * 2048 * 4 }, // 594 MiB
  ];
  for (let i = 0; i < 48; i++) t.push({ name: `model.layers.${i}.attention.wq.weight`, dtype: 'BFloat16', shape: [2048, 2048], byteLength: 2048 * 2048 * 2 });
  t.push({ name: 'global_step', dtype: 'Int64', shape: [], byteLength: 8 });
  return t;
}

async function generate(path: string): Promise<number> {
  const piece = new Uint8Array(16 * MiB);
  for (let i = 0; i < piece.length; i++) piece[i] = (i * 131 + 7) & 0xff;
  const sink = await createCheckpointSink(path);
  let total = 0;
  for (const t of plan()) {
    await sink.beginTensor(t);
    for (let off = 0; off < t.byteLength; off += piece.byteLength) {
      const n = Math.min(piece.byteLength, t.byteLength - off);
      await sink.write(piece.subarray(0, n));
    }
    await sink.endTensor();
    total += t.byteLength;
  }
  await sink.close();
  return total;
}

async function sha(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 8 * MiB })) h.update(chunk as Buffer);
  return h.digest('hex');
}

interface ChildReport {
  ms: number;
  maxRssKiB: number;
  tensors: number;
  chunks: number;
  bytes: number;
}

async function child(mode: 'index' | 'copy', src: string, dst: string): Promise<ChildReport> {
  const r = await execa(process.execPath, ['--import', 'tsx', self, '--child', mode, src, dst], { cwd: repoRoot, reject: false });
  if (r.exitCode !== 0) throw new Error(`child ${mode} failed: ${String(r.stderr)}`);
  return JSON.parse(String(r.stdout).trim().split('\n').pop() as string) as ChildReport;
}

async function childMain(mode: string, src: string, dst: string): Promise<void> {
  const t0 = performance.now();
  let tensors = 0;
  let chunks = 0;
  let bytes = 0;
  if (mode === 'index') {
    const s = await openCheckpoint(src);
    for (const e of s.entries()) {
      tensors++;
      chunks += e.chunkList.length;
      bytes += e.byteLength;
    }
    await s.close();
  } else {
    const r = await rewriteCheckpoint(src, dst);
    tensors = r.tensors;
    bytes = r.bytes;
  }
  const ms = performance.now() - t0;
  const report: ChildReport = { ms, maxRssKiB: process.resourceUsage().maxRSS, tensors, chunks, bytes };
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

export async function run(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'msckpt-bench-ckpt-'));
  try {
    const src = join(dir, 'big.ckpt');
    const t0 = performance.now();
    const bytes = await generate(src);
    const genMs = performance.now() - t0;
    const size = (await stat(src)).size;
    const gib = size / 1024 ** 3;
    console.log(`generated ${src}: ${size} bytes (${gib.toFixed(2)} GiB, ${plan().length} tensors, ${bytes} tensor bytes) in ${(genMs / 1000).toFixed(1)} s`);

    const idx = await child('index', src, '');
    console.log(
      `index: ${idx.tensors} tensors / ${idx.chunks} chunks in ${idx.ms.toFixed(1)} ms ` +
        `(${(size / MiB / (idx.ms / 1000)).toFixed(0)} MiB/s of file indexed), peak RSS ${(idx.maxRssKiB / 1024).toFixed(1)} MiB`,
    );
    const dst = join(dir, 'copy.ckpt');
    const cp = await child('copy', src, dst);
    console.log(
      `copy tensor by tensor: ${(cp.bytes / MiB).toFixed(0)} MiB in ${(cp.ms / 1000).toFixed(2)} s ` +
        `(${(cp.bytes / MiB / (cp.ms / 1000)).toFixed(0)} MiB/s, incl. fsync), peak RSS ${(cp.maxRssKiB / 1024).toFixed(1)} MiB`,
    );
    const same = (await sha(src)) === (await sha(dst));
    console.log(`copy is byte-identical: ${same}`);
    const ok = idx.maxRssKiB < 200 * 1024 && cp.maxRssKiB < 200 * 1024;
    console.log(`peak RSS goal (< 200 MiB for both): ${ok ? 'met' : 'NOT MET'}`);
    if (!same) throw new Error('copy differs from the source');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === self) {
  const i = process.argv.indexOf('--child');
  const p = (k: number): string => process.argv[i + k] ?? '';
  const task = i >= 0 ? childMain(p(1), p(2), p(3)) : run();
  task.catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
