/**
 * Growth: re-sharding time and peak RSS for 1, 4 and 16 GiB models, to show time linear in bytes
 * and memory flat. The model is N Float16 tensors [4096, 8192] (64 MiB each), held as mp=4 slices
 * (`rank_0..3`, half the tensors split on dim 0, half on dim 1) and re-sharded to mp=2 with the
 * splits swapped (every slice is read with strided runs), by `msckpt transform` in one process.
 * The source files are sparse (record headers at their places, the tensor bytes holes), so they
 * cost no disk and reading them costs no disk I/O; the output is written for real. For each size:
 * the transform's own seconds, seconds per GiB, `cp -r` + sync of the same output measured right
 * after (ratio = cp time / transform time, 1.00 = at cp speed), the seconds `cat` takes to read a
 * fresh all-holes file of the same size (the floor for reading the sparse sources, which `cp` of
 * the output does not pay), and the converter's peak RSS.
 *
 * Disk: before each size, free space must hold the output and its copy with 20 GiB to spare;
 * otherwise the size is halved until it fits, and a notice says so. `MSCKPT_BENCH_GROWTH_GIB`
 * changes the sizes (default `1,4,16`).
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, open, rm, statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { CKPT_CHUNK_BYTES, encodeCkptChunkHeader } from '../plugin/formats/ckpt/index.js';
import { makeStrategy, writeStrategy } from '../plugin/formats/strategy/index.js';
import type { ParamLayout, TensorMapEntry } from '../plugin/formats/strategy/model.js';
import { cpSyncSeconds, loadText } from './_copy.js';

const run$ = promisify(execFile);
const BIN = resolve(fileURLToPath(new URL('../bin/msckpt.js', import.meta.url)));
const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const ROWS = 4096;
const COLS = 8192;
const TENSOR_BYTES = ROWS * COLS * 2;
const SRC_MP = 4;
const DST_MP = 2;
/** Free space kept on the disk whatever happens. */
const RESERVE = 20 * GiB;

const enc = (s: string): Uint8Array => Buffer.from(s, 'utf8');

/** Tensor i: split on dim 0 in the source when even, on dim 1 when odd; swapped in the destination. */
function srcMap(i: number): TensorMapEntry[] {
  return i % 2 === 0 ? [0, -1] : [-1, 0];
}
function dstMap(i: number): TensorMapEntry[] {
  return i % 2 === 0 ? [-1, 0] : [0, -1];
}

async function strategy(path: string, count: number, mp: number, map: (i: number) => TensorMapEntry[]): Promise<void> {
  const layouts: ParamLayout[] = Array.from({ length: count }, (_, i) => ({
    name: `model.layers.${i}.weight`, stage: 0, devMatrix: [mp], tensorMap: map(i), paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0,
  }));
  await writeStrategy(path, makeStrategy({ currentStage: 1, layouts, items: [{ nodeName: 'MatMul_x', stage: 0, strategies: [[1, 1]] }] }));
}

/** One rank's slice file, sparse: record headers written at their places, the tensor bytes left as holes. */
async function sparseSlices(path: string, count: number): Promise<void> {
  await mkdir(resolve(path, '..'), { recursive: true });
  const fh = await open(path, 'w');
  try {
    let pos = 0;
    for (let i = 0; i < count; i++) {
      const shape = srcMap(i)[0] === 0 ? [ROWS / SRC_MP, COLS] : [ROWS, COLS / SRC_MP];
      const bytes = shape[0]! * shape[1]! * 2;
      for (let left = bytes; left > 0; left -= CKPT_CHUNK_BYTES) {
        const n = Math.min(left, CKPT_CHUNK_BYTES);
        const h = encodeCkptChunkHeader({ tag: enc(`model.layers.${i}.weight`), dims: shape, type: enc('Float16'), contentLength: n });
        await fh.write(h, 0, h.byteLength, pos);
        pos += h.byteLength + n;
      }
    }
    await fh.truncate(pos);
  } finally {
    await fh.close();
  }
}

interface Report { bytesWritten: number; seconds: number; maxRssBytes: number; processes: number }

async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return Number(s.bavail) * Number(s.bsize);
}

/**
 * Seconds `cat` takes to read a fresh sparse file of `bytes` (all holes) to /dev/null: what reading
 * the sparse sources costs before any conversion (the kernel fills the page cache with zeros; on
 * some machines that grows faster than linearly with the size). The file is removed after.
 */
async function readHolesSeconds(path: string, bytes: number): Promise<number> {
  const f = await open(path, 'w');
  await f.truncate(bytes);
  await f.close();
  const t0 = performance.now();
  await run$('sh', ['-c', 'cat "$1" > /dev/null', 'sh', path]);
  const s = (performance.now() - t0) / 1000;
  await rm(path, { force: true });
  return s;
}

export async function run(): Promise<void> {
  const sizes = (process.env['MSCKPT_BENCH_GROWTH_GIB'] ?? '1,4,16').split(',').map(Number).filter((x) => x > 0);
  const dir = await mkdtemp(join(tmpdir(), 'msckpt-bench-growth-'));
  process.stdout.write(
    `mp=${SRC_MP} -> mp=${DST_MP} re-sharding (dims swapped) of Float16 [${ROWS}, ${COLS}] tensors, sparse .ckpt source, 1 process; ${loadText()}\n` +
      'size       tensors   seconds   s/GiB   cp+sync s   ratio   read holes s   peak RSS\n',
  );
  const rows: Array<{ gib: number; perGiB: number; rss: number }> = [];
  try {
    for (const want of sizes) {
      let gib = want;
      const free = await freeBytes(dir);
      // the output and its copy, with the reserve left free
      while (gib > 1 / 16 && 2 * gib * GiB + RESERVE > free) gib /= 2;
      if (2 * gib * GiB + RESERVE > free) {
        process.stdout.write(`skipped ${want} GiB: ${(free / GiB).toFixed(1)} GiB free leaves no room above the 20 GiB reserve\n`);
        continue;
      }
      if (gib !== want) {
        process.stdout.write(`NOTICE: ${want} GiB scaled down to ${gib} GiB: ${(free / GiB).toFixed(1)} GiB free, the output and its copy need ${(2 * want).toFixed(0)} GiB plus 20 GiB kept free\n`);
      }
      const count = Math.max(2, Math.round((gib * GiB) / TENSOR_BYTES / 2) * 2);
      const src = join(dir, `src_${count}`);
      for (let r = 0; r < SRC_MP; r++) await sparseSlices(join(src, `rank_${r}`, `checkpoint_${r}.ckpt`), count);
      await strategy(join(dir, `src_${count}.ckpt`), count, SRC_MP, srcMap);
      await strategy(join(dir, `dst_${count}.ckpt`), count, DST_MP, dstMap);
      const out = join(dir, 'out');
      try {
        const { stdout } = await run$(
          process.execPath,
          [BIN, 'transform', '--src-checkpoint', src, '--src-strategy', join(dir, `src_${count}.ckpt`), '--dst-strategy', join(dir, `dst_${count}.ckpt`), '--dst-checkpoint-dir', out, '--json'],
          { maxBuffer: 64 * MiB },
        );
        const r = JSON.parse(stdout) as Report;
        const cp = await cpSyncSeconds(out, join(dir, 'out_cp'));
        const holes = await readHolesSeconds(join(dir, 'holes'), r.bytesWritten);
        const size = r.bytesWritten / GiB;
        rows.push({ gib: size, perGiB: r.seconds / size, rss: r.maxRssBytes });
        process.stdout.write(
          `${`${size.toFixed(2)} GiB`.padEnd(10)} ${String(count).padStart(7)} ${r.seconds.toFixed(2).padStart(9)} ${(r.seconds / size).toFixed(2).padStart(7)} ` +
            `${cp.toFixed(2).padStart(11)} ${(cp / r.seconds).toFixed(2).padStart(7)} ${holes.toFixed(2).padStart(14)} ${`${(r.maxRssBytes / MiB).toFixed(0)} MiB`.padStart(10)}   (${loadText()})\n`,
        );
      } finally {
        await rm(out, { recursive: true, force: true });
        await rm(src, { recursive: true, force: true });
      }
    }
    if (rows.length > 1) {
      const first = rows[0] as { gib: number; perGiB: number; rss: number };
      const last = rows[rows.length - 1] as { gib: number; perGiB: number; rss: number };
      process.stdout.write(
        `from ${first.gib.toFixed(2)} to ${last.gib.toFixed(2)} GiB (${(last.gib / first.gib).toFixed(0)}x the bytes): time per GiB x${(last.perGiB / first.perGiB).toFixed(2)}, ` +
          `peak RSS x${(last.rss / first.rss).toFixed(2)} (linear time and flat memory: both near 1)\n`,
      );
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
