/**
 * A model seen whole through its pieces: one complete checkpoint, or one slice file per rank plus
 * the box of the full tensor each slice holds. Any box of any tensor can be read from it, piece by
 * piece with positioned reads; nothing is loaded whole.
 */
import { InputError } from '../errors.js';
import { copyBox, fullBox, readBox, volume } from '../formats/box.js';
import { byteLength, elementSize, type DType } from '../formats/dtype.js';
import type { Box, TensorEntry, TensorSource } from '../formats/types.js';

/** One stored slice of a tensor. */
export interface TensorPiece {
  readonly rank: number;
  readonly source: TensorSource;
  readonly entry: TensorEntry;
  /** Where the slice sits in the full tensor. */
  readonly box: Box;
}

export interface ViewTensor {
  readonly name: string;
  readonly dtype: DType;
  readonly fullShape: readonly number[];
  /** Distinct slices (replicas dropped), first-seen rank first. */
  readonly pieces: readonly TensorPiece[];
}

/** How a rank's entry maps into the full tensor. */
export type PlaceEntry = (rank: number, entry: TensorEntry) => { fullShape: readonly number[]; box: Box };

function sameBox(a: Box, b: Box): boolean {
  return a.start.every((s, i) => s === b.start[i]) && a.shape.every((s, i) => s === b.shape[i]);
}

function intersect(a: Box, b: Box): Box | null {
  const start: number[] = [];
  const shape: number[] = [];
  for (let i = 0; i < a.start.length; i++) {
    const s = Math.max(a.start[i] as number, b.start[i] as number);
    const e = Math.min((a.start[i] as number) + (a.shape[i] as number), (b.start[i] as number) + (b.shape[i] as number));
    if (e <= s) return null;
    start.push(s);
    shape.push(e - s);
  }
  return { start, shape };
}

function contains(outer: Box, inner: Box): boolean {
  return inner.start.every(
    (s, i) => s >= (outer.start[i] as number) && s + (inner.shape[i] as number) <= (outer.start[i] as number) + (outer.shape[i] as number),
  );
}

function relative(box: Box, origin: Box): Box {
  return { start: box.start.map((s, i) => s - (origin.start[i] as number)), shape: [...box.shape] };
}

export class ModelView {
  /** Tensor names in output order: rank 0's file order, then names first seen on later ranks. */
  readonly order: readonly string[];
  private readonly tensors: Map<string, ViewTensor>;
  readonly sources: readonly { rank: number; source: TensorSource }[];
  /** True when the view is made of more than one slice file. */
  readonly distributed: boolean;

  constructor(sources: readonly { rank: number; source: TensorSource }[], place: PlaceEntry) {
    this.sources = sources;
    this.distributed = sources.length > 1;
    const tensors = new Map<string, { name: string; dtype: DType; fullShape: readonly number[]; pieces: TensorPiece[] }>();
    const order: string[] = [];
    const problems: string[] = [];
    for (const { rank, source } of sources) {
      for (const entry of source.entries()) {
        const { fullShape, box } = place(rank, entry);
        let t = tensors.get(entry.name);
        if (t === undefined) {
          t = { name: entry.name, dtype: entry.dtype, fullShape, pieces: [] };
          tensors.set(entry.name, t);
          order.push(entry.name);
        } else {
          if (t.dtype !== entry.dtype) {
            problems.push(`'${entry.name}' is ${t.dtype} on rank ${t.pieces[0]?.rank ?? 0} but ${entry.dtype} on rank ${rank} (${source.path})`);
            continue;
          }
          if (t.fullShape.length !== fullShape.length || t.fullShape.some((d, i) => d !== fullShape[i])) {
            problems.push(`'${entry.name}' has full shape [${t.fullShape}] on rank ${t.pieces[0]?.rank ?? 0} but [${fullShape}] on rank ${rank} (${source.path})`);
            continue;
          }
        }
        if (!t.pieces.some((p) => sameBox(p.box, box))) t.pieces.push({ rank, source, entry, box });
      }
    }
    if (problems.length > 0) throw new InputError(`source slices disagree:\n  ${problems.join('\n  ')}`);
    this.tensors = tensors;
    this.order = order;
  }

  tensor(name: string): ViewTensor | undefined {
    return this.tensors.get(name);
  }

  /** Bytes of a tensor's full form (null for str / unsized entries). */
  fullBytes(name: string): number | null {
    const t = this.tensors.get(name);
    if (t === undefined) return null;
    return byteLength(t.dtype, t.fullShape);
  }

  /**
   * Read `box` (in full-tensor coordinates) of a fixed-size tensor into `dst[dstOffset...]`, C order
   * of the box. Reads only the parts of the slices that overlap the box.
   */
  async readRegion(name: string, box: Box, dst: Uint8Array, dstOffset = 0): Promise<void> {
    const t = this.tensors.get(name);
    if (t === undefined) throw new InputError(`no tensor '${name}' in the source`);
    const es = elementSize(t.dtype);
    const total = volume(box.shape);
    if (total === 0) return;
    // Fast path: one slice holds the whole box.
    for (const p of t.pieces) {
      if (contains(p.box, box)) {
        await readBox(p.source, name, p.box.shape, es, relative(box, p.box), dst, dstOffset);
        return;
      }
    }
    let covered = 0;
    const target = dst.subarray(dstOffset, dstOffset + total * es);
    for (const p of t.pieces) {
      const part = intersect(p.box, box);
      if (part === null) continue;
      const n = volume(part.shape);
      const scratch = new Uint8Array(n * es);
      await readBox(p.source, name, p.box.shape, es, relative(part, p.box), scratch, 0);
      copyBox(scratch, part.shape, fullBox(part.shape), target, box.shape, relative(part, box), es);
      covered += n;
    }
    if (covered < total) {
      throw new InputError(
        `the source slices of '${name}' do not cover box [${box.start}]+[${box.shape}] of shape [${t.fullShape}] (a rank folder or strategy layout is missing)`,
      );
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.sources.map((s) => s.source.close()));
  }
}
