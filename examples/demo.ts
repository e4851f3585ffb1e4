/**
 * `npm run demo`: builds a small Llama-like checkpoint in a temporary folder with the streaming
 * writer, inspects it with the same API as `msckpt inspect`, and prints what it found.
 * Later features extend `demo()`; it returns the temporary folder's findings so steps can chain.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  createCheckpointSink,
  fromFloat32,
  inspectWeights,
  openCheckpoint,
  previewTensor,
  type CheckpointInspectReport,
  type DType,
  type FloatDType,
} from '../plugin/formats/index.js';

interface DemoTensor {
  name: string;
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}

/** Deterministic pseudo-random values in [-scale, scale). */
function values(n: number, seed: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = ((x / 2 ** 32) * 2 - 1) * scale;
  }
  return out;
}

function floatTensor(name: string, dtype: FloatDType, shape: number[], seed: number, fill?: number): DemoTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const v = fill === undefined ? values(n, seed, 0.02) : new Float32Array(n).fill(fill);
  return { name, dtype, shape, data: fromFloat32(v, dtype) };
}

function utf32(text: string): Uint8Array {
  const cps = [...text].map((c) => c.codePointAt(0) as number);
  const out = new Uint8Array(cps.length * 4);
  const dv = new DataView(out.buffer);
  cps.forEach((cp, i) => dv.setUint32(i * 4, cp, true));
  return out;
}

/** The tensors of a one-layer Llama-like model (hidden 64, vocab 256, FFN 172) plus training info. */
export function demoModel(): DemoTensor[] {
  const h = 64;
  const vocab = 256;
  const ffn = 172;
  const step = new Uint8Array(8);
  new DataView(step.buffer).setBigInt64(0, 1000n, true);
  return [
    floatTensor('model.tok_embeddings.embedding_weight', 'Float16', [vocab, h], 1),
    floatTensor('model.layers.0.attention_norm.weight', 'Float32', [h], 0, 1),
    floatTensor('model.layers.0.attention.wq.weight', 'BFloat16', [h, h], 2),
    floatTensor('model.layers.0.attention.wk.weight', 'BFloat16', [h, h], 3),
    floatTensor('model.layers.0.attention.wv.weight', 'BFloat16', [h, h], 4),
    floatTensor('model.layers.0.attention.wo.weight', 'BFloat16', [h, h], 5),
    floatTensor('model.layers.0.ffn_norm.weight', 'Float32', [h], 0, 1),
    floatTensor('model.layers.0.feed_forward.w1.weight', 'BFloat16', [ffn, h], 6),
    floatTensor('model.layers.0.feed_forward.w2.weight', 'BFloat16', [h, ffn], 7),
    floatTensor('model.layers.0.feed_forward.w3.weight', 'BFloat16', [ffn, h], 8),
    floatTensor('model.norm_out.weight', 'Float32', [h], 0, 1),
    floatTensor('lm_head.weight', 'Float16', [vocab, h], 9),
    { name: 'global_step', dtype: 'Int64', shape: [], data: step },
    { name: 'model_name', dtype: 'str', shape: [], data: utf32('llama-tiny-demo') },
  ];
}

export interface DemoResult {
  dir: string;
  checkpoint: string;
  report: CheckpointInspectReport;
}

/** Run the demo; prints to `out`. Removes its folder unless `keep` is set. */
export async function demo(opts: { keep?: boolean; out?: (line: string) => void } = {}): Promise<DemoResult> {
  const print = opts.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  const dir = await mkdtemp(join(tmpdir(), 'msckpt-demo-'));
  try {
    const checkpoint = join(dir, 'rank_0', 'checkpoint_0.ckpt');
    print(`msckpt demo: writing a small Llama-like checkpoint to ${checkpoint}`);
    const sink = await createCheckpointSink(checkpoint, { crc: true });
    for (const t of demoModel()) {
      await sink.beginTensor({ name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.data.byteLength });
      await sink.write(t.data);
      await sink.endTensor();
    }
    await sink.close();

    const report = (await inspectWeights(checkpoint, { verifyCrc: true })) as CheckpointInspectReport;
    const total = report.tensors.reduce((a, t) => a + t.bytes, 0);
    print(`inspect: ${report.tensors.length} tensors, ${total} bytes, crc ${report.crc?.valid === true ? 'valid' : 'INVALID'}`);
    const w = Math.max(...report.tensors.map((t) => t.name.length));
    for (const t of report.tensors) {
      print(`  ${t.name.padEnd(w)}  ${t.dtype.padEnd(8)} [${t.shape.join(',')}]`.padEnd(w + 26) + `${String(t.bytes).padStart(8)} B`);
    }
    const src = await openCheckpoint(checkpoint);
    try {
      const p = await previewTensor(src, 'model.layers.0.attention.wq.weight', { edge: 3 });
      const s = p.stats;
      print(
        `wq (bf16): first ${p.head.map((v) => v.toFixed(5)).join(' ')}; min ${s?.min?.toFixed(5)} max ${s?.max?.toFixed(5)} mean ${s?.mean?.toFixed(6)}`,
      );
      const step = await previewTensor(src, 'global_step');
      const name = await previewTensor(src, 'model_name');
      print(`global_step = ${step.head[0]}, model_name = ${JSON.stringify(name.text)}`);
    } finally {
      await src.close();
    }
    return { dir, checkpoint, report };
  } finally {
    if (opts.keep !== true) await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  demo().catch((err: unknown) => {
    process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
