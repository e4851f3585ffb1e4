/**
 * The LoRA product kernel: W[rows, cols] += scale * B[rows, r] @ A[r, cols], in place on W's
 * stored bytes (Float32, Float16, BFloat16 or Float64).
 *
 * Numerics: W, B and A are float32 values (or W's float64). Per element of W, in this order:
 * `v = W; for k in 0..r-1: v = v + (scale * B[i,k]) * A[k,j]`, every operation in IEEE double
 * with round to nearest even (no fused multiply-add); then v is rounded once to float32 and from
 * there to W's dtype with round to nearest even (Float64 W takes v itself). The result is within
 * one unit in the last place of the exact value for 16-bit and 32-bit W. A NaN result is stored as
 * the dtype's canonical quiet NaN; overflow gives Inf as a cast does.
 *
 * The product runs in WebAssembly SIMD128 (`kernel/lora.wat`, assembled into `kernel/wasm.ts` by
 * `npm run build:kernel`): two rows x eight columns of W held as float64 pairs in registers take
 * all r rank steps at once (the rank steps run at the two-lane float64 limit, about four
 * multiply-adds per cycle); A is packed as float64 in strips of eight columns (once per thread for
 * consecutive jobs with the same `aKey`), walked in column blocks that stay in cache; W is decoded
 * and encoded with integer SIMD (no tables). The WebAssembly instance has its own memory: W (rows
 * padded to a multiple of eight columns) and B are staged into it in tiles of 256 KiB and W is
 * copied back.
 *
 * The glue below is written once, as plain JavaScript source: it runs on the main thread (compiled
 * with `new Function`) and in worker threads (`new Worker(source, { eval: true })`, which works
 * when the TypeScript sources run through tsx, since workers do not inherit its loader). Every
 * thread instantiates the same compiled module (compiled once, handed to the workers).
 */
import { Worker } from 'node:worker_threads';
import { FailureError } from '../errors.js';
import type { DType } from '../formats/dtype.js';
import { KERNEL_WASM_BASE64 } from './kernel/wasm.js';

/** dtype codes understood by the kernel. */
export const KERNEL_DTYPES: Readonly<Record<string, number>> = { Float32: 0, Float16: 1, BFloat16: 2, Float64: 3 };

export function kernelDTypeCode(dtype: DType): number | undefined {
  return KERNEL_DTYPES[dtype];
}

/** One piece of work. Offsets are in bytes into the given buffers. */
export interface KernelJob {
  /** W rows (C order, `cols` elements each) in W's dtype. */
  readonly w: ArrayBufferLike;
  readonly wOffset: number;
  readonly dtype: number;
  /** Rows [rowBegin, rowEnd) of the chunk are updated. */
  readonly rowBegin: number;
  readonly rowEnd: number;
  readonly cols: number;
  /** float32 [rowsOfChunk, r]: row i of the chunk uses B row i. */
  readonly b: ArrayBufferLike;
  readonly bOffset: number;
  /** float32 [r, cols]. */
  readonly a: ArrayBufferLike;
  readonly aOffset: number;
  readonly r: number;
  readonly scale: number;
  /**
   * Identifies A's values (the [r, cols] block at `a`/`aOffset`): a thread whose previous job had
   * the same key (and the same r and cols) reuses A as it packed it then, instead of packing it
   * again. Keys come from `kernelAKey()` (unique in the process), one per distinct A; without a
   * key A is packed for every job.
   */
  readonly aKey?: number;
}

let lastAKey = 0;

/** A new key for `KernelJob.aKey`, unique in this process. */
export function kernelAKey(): number {
  lastAKey += 1;
  return lastAKey;
}

/**
 * The glue's JavaScript source: defines `makeLoraKernel(module)` returning `kernel(job)`, which
 * stages a job through one WebAssembly instance of the kernel module.
 */
const GLUE_SOURCE = String.raw`
function makeLoraKernel(wasmModule) {
  var TILE = 256 * 1024;     // W bytes staged per call
  var A_BLOCK = 64 * 1024;   // packed A bytes per column block (64 KiB measured best)
  var ES = [4, 2, 2, 8];
  var exp = new WebAssembly.Instance(wasmModule, {}).exports;
  var memory = exp.memory;
  var merge = exp.merge;
  function align(x) { return (x + 63) & ~63; }
  var packedKey, packedR = 0, packedCols = 0;   // the A packed at offset 0, and its shape
  return function kernel(job) {
    var code = job.dtype;
    var es = ES[code];
    if (es === undefined) throw new Error('unknown dtype code ' + code);
    var cols = job.cols, r = job.r, rowBegin = job.rowBegin, rows = job.rowEnd - rowBegin;
    if (!(rows > 0) || !(cols > 0)) return;
    // rows are staged padded to a multiple of 8 columns (zeros), A is packed in strips of 8
    var strips = (cols + 7) >>> 3, padded = strips * 8;
    var bs = Math.max(1, Math.min(strips, Math.floor(A_BLOCK / (Math.max(1, r) * 64))));
    var rowBytes = cols * es, stride = padded * es;
    var tileRows = Math.max(1, Math.min(rows, Math.floor(TILE / stride)));
    if (tileRows > 1 && tileRows < rows) tileRows &= ~1;
    // memory: A packed[strips x r x 8] (first, so that it stays in place for the next job with
    // the same A), e[row pairs x r x 2], B tile, W tile
    var ap = 0, e = align(strips * r * 64);
    var bOff = align(e + ((tileRows + 1) >>> 1) * r * 16), wOff = align(bOff + tileRows * r * 4);
    var end = wOff + tileRows * stride;
    var have = memory.buffer.byteLength;
    if (end > have) memory.grow(Math.ceil((end - have) / 65536));
    var buf = memory.buffer;
    var key = job.aKey;
    if (key === undefined || key !== packedKey || r !== packedR || cols !== packedCols) {
      packedKey = undefined;
      var A = new Float32Array(job.a, job.aOffset, r * cols);
      var P = new Float64Array(buf, ap, strips * r * 8);
      for (var s = 0; s < strips; s++) {
        var c0 = s * 8, w = cols - c0 < 8 ? cols - c0 : 8;
        for (var k = 0; k < r; k++) {
          var src = k * cols + c0, dst = (s * r + k) * 8, j = 0;
          for (; j < w; j++) P[dst + j] = A[src + j];
          for (; j < 8; j++) P[dst + j] = 0;
        }
      }
      packedKey = key; packedR = r; packedCols = cols;
    }
    var B = new Float32Array(job.b, job.bOffset + rowBegin * r * 4, rows * r);
    var W = new Uint8Array(job.w, job.wOffset + rowBegin * rowBytes, rows * rowBytes);
    var Bm = new Float32Array(buf, bOff, tileRows * r);
    var Wm = new Uint8Array(buf, wOff, tileRows * stride);
    for (var t = 0; t < rows; t += tileRows) {
      var n = rows - t < tileRows ? rows - t : tileRows, i;
      if (stride === rowBytes) Wm.set(W.subarray(t * rowBytes, (t + n) * rowBytes));
      else {
        for (i = 0; i < n; i++) {
          Wm.set(W.subarray((t + i) * rowBytes, (t + i + 1) * rowBytes), i * stride);
          Wm.fill(0, i * stride + rowBytes, (i + 1) * stride);
        }
      }
      Bm.set(B.subarray(t * r, (t + n) * r));
      merge(code, wOff, n, padded, bOff, r, ap, job.scale, e, bs);
      if (stride === rowBytes) W.set(Wm.subarray(0, n * rowBytes), t * rowBytes);
      else for (i = 0; i < n; i++) W.set(Wm.subarray(i * stride, i * stride + rowBytes), (t + i) * rowBytes);
    }
  };
}
`;

type KernelFn = (job: KernelJob) => void;

/** The WebAssembly API this file uses (the project's TypeScript libs do not declare it). */
interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
}

let compiled: object | null = null;
let mainKernel: KernelFn | null = null;

/** The kernel's compiled WebAssembly module (compiled once per process, shared with workers). */
function kernelModule(): object {
  if (compiled === null) {
    const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
    compiled = new wasm.Module(Buffer.from(KERNEL_WASM_BASE64, 'base64'));
  }
  return compiled;
}

/** Run the kernel on the calling thread. */
export function runKernel(job: KernelJob): void {
  if (mainKernel === null) {
    // eslint-disable-next-line @typescript-eslint/no-implied-eval
    const make = new Function(`${GLUE_SOURCE}\nreturn makeLoraKernel;`)() as (m: object) => KernelFn;
    mainKernel = make(kernelModule());
  }
  try {
    mainKernel(job);
  } catch (err) {
    throw new FailureError(`LoRA kernel: ${err instanceof Error ? err.message : String(err)}`);
  }
}

const WORKER_SOURCE = `${GLUE_SOURCE}
const { parentPort, workerData } = require('node:worker_threads');
const kernel = makeLoraKernel(workerData.module);
parentPort.on('message', (msg) => {
  try {
    kernel(msg.job);
    parentPort.postMessage({ id: msg.id });
  } catch (err) {
    parentPort.postMessage({ id: msg.id, error: String(err && err.message || err) });
  }
});
`;

interface Pending {
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * Helper threads for large layers. Jobs must use SharedArrayBuffers (the threads write W in
 * place). `threads` is the total parallelism including the calling thread, so `threads = 2` starts
 * one worker and splits rows between it and the main thread.
 */
export class KernelPool {
  readonly threads: number;
  private workers: Worker[] = [];
  private pending = new Map<number, Pending>();
  private nextId = 1;

  constructor(threads: number) {
    this.threads = Math.max(1, Math.floor(threads));
  }

  private ensureWorkers(): void {
    while (this.workers.length < this.threads - 1) {
      const w = new Worker(WORKER_SOURCE, { eval: true, execArgv: [], workerData: { module: kernelModule() } });
      w.on('message', (msg: { id: number; error?: string }) => {
        const p = this.pending.get(msg.id);
        if (p === undefined) return;
        this.pending.delete(msg.id);
        if (msg.error !== undefined) p.reject(new FailureError(`LoRA kernel worker: ${msg.error}`));
        else p.resolve();
      });
      w.on('error', (err) => this.failAll(err));
      w.on('exit', (code) => {
        if (code !== 0) this.failAll(new Error(`LoRA kernel worker exited with code ${code}`));
      });
      w.unref();
      this.workers.push(w);
    }
  }

  private failAll(err: Error): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(new FailureError(`LoRA kernel worker failed: ${err.message}`));
  }

  private post(worker: Worker, job: KernelJob): Promise<void> {
    const id = this.nextId++;
    return new Promise<void>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.ref();
      worker.postMessage({ id, job });
    }).finally(() => {
      if (this.pending.size === 0) for (const w of this.workers) w.unref();
    });
  }

  /**
   * Run a job, splitting its rows across the threads when the job is shared and large enough
   * (`minWork` multiply-adds per thread).
   */
  async run(job: KernelJob, minWork = 1 << 22): Promise<void> {
    const rows = job.rowEnd - job.rowBegin;
    const work = rows * job.cols * job.r;
    const shared = job.w instanceof SharedArrayBuffer && job.a instanceof SharedArrayBuffer && job.b instanceof SharedArrayBuffer;
    const parts = Math.min(this.threads, rows, Math.max(1, Math.floor(work / minWork)));
    if (!shared || parts <= 1) {
      runKernel(job);
      return;
    }
    this.ensureWorkers();
    const per = Math.ceil(rows / parts);
    const remote: Promise<void>[] = [];
    // the main thread takes the first part, workers the rest
    for (let p = 1; p < parts; p++) {
      const begin = job.rowBegin + p * per;
      const end = Math.min(job.rowEnd, begin + per);
      if (begin >= end) continue;
      remote.push(this.post(this.workers[p - 1] as Worker, { ...job, rowBegin: begin, rowEnd: end }));
    }
    try {
      runKernel({ ...job, rowEnd: Math.min(job.rowEnd, job.rowBegin + per) });
    } finally {
      await Promise.allSettled(remote);
    }
    await Promise.all(remote);
  }

  async close(): Promise<void> {
    const ws = this.workers;
    this.workers = [];
    await Promise.all(ws.map((w) => w.terminate()));
  }
}
