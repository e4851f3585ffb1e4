/**
 * Reading a hyper-rectangle (box) of a C-order tensor with as few positioned reads as possible:
 * trailing dimensions that the box covers whole are merged into one contiguous run, so a slice
 * that splits only dim 0 is a single read and a column split is one read per row.
 */
import { InputError } from '../errors.js';
import type { Box, TensorSource } from './types.js';

/** Number of elements of a shape. */
export function volume(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Row-major strides (in elements) of a shape. */
export function stridesOf(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = (s[i + 1] as number) * (shape[i + 1] as number);
  return s;
}

/** The whole tensor as a box. */
export function fullBox(shape: readonly number[]): Box {
  return { start: shape.map(() => 0), shape: [...shape] };
}

export function checkBox(full: readonly number[], box: Box, what = 'box'): void {
  if (box.start.length !== full.length || box.shape.length !== full.length) {
    throw new InputError(`${what} rank ${box.shape.length} does not match tensor rank ${full.length}`);
  }
  for (let i = 0; i < full.length; i++) {
    const s = box.start[i] as number;
    const n = box.shape[i] as number;
    if (s < 0 || n < 0 || s + n > (full[i] as number)) {
      throw new InputError(`${what} [${box.start}]+[${box.shape}] lies outside shape [${full}]`);
    }
  }
}

/**
 * Contiguous runs of a box inside a C-order tensor, in destination (C-order of the box) order.
 * Calls `visit(srcElementOffset, runElements)` once per run; the destination offset is the running
 * sum of the previous runs.
 */
export function forEachRun(
  full: readonly number[],
  box: Box,
  visit: (srcOffset: number, elements: number) => void,
): void {
  const rank = full.length;
  if (rank === 0) {
    visit(0, 1);
    return;
  }
  if (volume(box.shape) === 0) return;
  // Find the innermost dims covered whole; they merge into the run.
  let k = rank - 1;
  let run = box.shape[k] as number;
  while (k > 0 && box.shape[k] === full[k] && box.start[k] === 0) {
    k--;
    run *= box.shape[k] as number;
  }
  // dims [0, k) are iterated; dim k contributes `run` elements starting at box.start[k].
  const strides = stridesOf(full);
  const idx = new Array<number>(k).fill(0);
  let base = 0;
  for (let i = 0; i <= k; i++) base += (box.start[i] as number) * (strides[i] as number);
  for (;;) {
    let off = base;
    for (let i = 0; i < k; i++) off += (idx[i] as number) * (strides[i] as number);
    visit(off, run);
    let d = k - 1;
    while (d >= 0) {
      idx[d] = (idx[d] as number) + 1;
      if ((idx[d] as number) < (box.shape[d] as number)) break;
      idx[d] = 0;
      d--;
    }
    if (d < 0) return;
  }
}

/**
 * Read `box` of tensor `name` from `source` into `dst[dstOffset ...]` (C order of the box).
 * `elementSize` is the dtype's size in bytes.
 */
export async function readBox(
  source: TensorSource,
  name: string,
  full: readonly number[],
  elementSize: number,
  box: Box,
  dst: Uint8Array,
  dstOffset = 0,
): Promise<void> {
  checkBox(full, box, `box of '${name}'`);
  const runs: Array<[number, number]> = [];
  forEachRun(full, box, (src, n) => {
    const last = runs[runs.length - 1];
    // merge runs that happen to be adjacent in the source
    if (last !== undefined && last[0] + last[1] === src) last[1] += n;
    else runs.push([src, n]);
  });
  let at = dstOffset;
  for (const [src, n] of runs) {
    await source.readBytes(name, src * elementSize, n * elementSize, dst, at);
    at += n * elementSize;
  }
}

/**
 * Copy `box` (given in the coordinates of a C-order tensor of shape `srcShape` held in `src`)
 * into the region `dstBox` of a C-order buffer of shape `dstShape` held in `dst`. Both boxes have
 * the same shape. Used to assemble a destination slice from source pieces in memory.
 */
export function copyBox(
  src: Uint8Array,
  srcShape: readonly number[],
  srcBox: Box,
  dst: Uint8Array,
  dstShape: readonly number[],
  dstBox: Box,
  elementSize: number,
): void {
  const srcRuns: Array<[number, number]> = [];
  forEachRun(srcShape, srcBox, (o, n) => srcRuns.push([o, n]));
  const dstRuns: Array<[number, number]> = [];
  forEachRun(dstShape, dstBox, (o, n) => dstRuns.push([o, n]));
  // Runs may be cut at different places; walk both lists.
  let i = 0;
  let j = 0;
  let si = srcRuns[0]?.[0] ?? 0;
  let sn = srcRuns[0]?.[1] ?? 0;
  let di = dstRuns[0]?.[0] ?? 0;
  let dn = dstRuns[0]?.[1] ?? 0;
  while (i < srcRuns.length && j < dstRuns.length) {
    const n = Math.min(sn, dn);
    dst.set(src.subarray(si * elementSize, (si + n) * elementSize), di * elementSize);
    si += n; sn -= n; di += n; dn -= n;
    if (sn === 0 && ++i < srcRuns.length) [si, sn] = srcRuns[i] as [number, number];
    if (dn === 0 && ++j < dstRuns.length) [di, dn] = dstRuns[j] as [number, number];
  }
}
