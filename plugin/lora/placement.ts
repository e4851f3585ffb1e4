/**
 * Where the pieces are: opening a source (complete `.ckpt` or `rank_N/` folders + strategy) as a
 * ModelView, and the destination plan (complete, or one box per tensor per destination rank).
 *
 * Rank folders: `rank_0 .. rank_{n-1}` must all exist (mindformers requires contiguous ranks). In
 * a folder with several `.ckpt` files the lexicographically last is used, as
 * `ms.transform_checkpoints` does. A strategy given as a folder of per-rank files is merged into a
 * temporary file msckpt creates (and removes), never by touching the user's files.
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { resolveWeights } from '../formats/resolve.js';
import { fullBox } from '../formats/box.js';
import { openCheckpoint } from '../formats/ckpt/index.js';
import { mergeStrategies, readStrategy } from '../formats/strategy/index.js';
import type { ParamLayout, Strategy } from '../formats/strategy/model.js';
import type { Box, TensorSource } from '../formats/types.js';
import { fullShapeFromSlice, localRankOf, sliceBox, stageDeviceCount, stageOf, totalDeviceCount } from '../layout/index.js';
import { ModelView } from './view.js';

/** Read a strategy file, or merge a folder of per-rank / per-stage files first. */
export async function loadStrategy(path: string): Promise<Strategy> {
  let st;
  try {
    st = await stat(path);
  } catch {
    throw new InputError('strategy file or folder not found', { file: path });
  }
  if (!st.isDirectory()) return readStrategy(path);
  const tmp = await mkdtemp(join(tmpdir(), 'msckpt-lora-strategy-'));
  try {
    const out = join(tmp, 'merged_ckpt_strategy.ckpt');
    await mergeStrategies(path, out);
    return await readStrategy(out);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** Layout lookup: (stage, name) -> layout. */
class Layouts {
  private readonly map = new Map<string, ParamLayout>();
  constructor(readonly strategy: Strategy) {
    for (const l of strategy.layouts) {
      const key = `${l.stage}\u0000${l.name}`;
      if (!this.map.has(key)) this.map.set(key, l);
    }
    this.stageDevices = stageDeviceCount(strategy);
    this.devices = totalDeviceCount(strategy);
  }
  get(stage: number, name: string): ParamLayout | undefined {
    return this.map.get(`${stage}\u0000${name}`);
  }
  readonly stageDevices: number;
  readonly devices: number;
  /** Total device count over all stages. */
  deviceCount(): number {
    return this.devices;
  }
  stageOf(rank: number): number {
    return stageOf(rank, this.stageDevices);
  }
  localRankOf(rank: number): number {
    return localRankOf(rank, this.stageDevices);
  }
}

async function listRankDirs(dir: string): Promise<Array<{ rank: number; file: string }>> {
  const r = await resolveWeights(dir, { format: 'ckpt' });
  if (r.kind !== 'ranks') throw new InputError('expected a .ckpt file or a folder holding rank_0/, rank_1/, ... slice folders', { file: dir });
  return r.ranks.map((x) => ({ rank: x.rank, file: x.file.path }));
}

/** Open a complete `.ckpt` or a `rank_N/` tree (with its strategy) as one model. */
export async function openSourceView(src: string, srcStrategy?: string): Promise<ModelView> {
  let st;
  try {
    st = await stat(src);
  } catch {
    throw new InputError('source checkpoint not found', { file: src });
  }
  const opened: Array<{ rank: number; source: TensorSource }> = [];
  try {
    if (!st.isDirectory()) {
      opened.push({ rank: 0, source: await openCheckpoint(src) });
      return new ModelView(opened, (_r, e) => ({ fullShape: e.shape, box: fullBox(e.shape) }));
    }
    const ranks = await listRankDirs(src);
    if (ranks.length === 1) {
      // one rank folder is a complete checkpoint; a strategy, if given, is not needed
      opened.push({ rank: 0, source: await openCheckpoint((ranks[0] as { file: string }).file) });
      return new ModelView(opened, (_r, e) => ({ fullShape: e.shape, box: fullBox(e.shape) }));
    }
    if (srcStrategy === undefined) {
      throw new InputError(`the source is sliced over ${ranks.length} ranks; --src-ckpt-strategy is required`, { file: src });
    }
    const layouts = new Layouts(await loadStrategy(srcStrategy));
    const devices = layouts.deviceCount();
    if (devices !== ranks.length) {
      throw new InputError(
        `the source strategy describes ${devices} devices but the source has ${ranks.length} rank folders`,
        { file: srcStrategy },
      );
    }
    for (const { rank, file } of ranks) opened.push({ rank, source: await openCheckpoint(file) });
    return new ModelView(opened, (rank, entry) => {
      const layout = layouts.get(layouts.stageOf(rank), entry.name);
      if (layout === undefined || entry.shape.length === 0) return { fullShape: entry.shape, box: fullBox(entry.shape) };
      const local = layouts.localRankOf(rank);
      const fullShape = fullShapeFromSlice(layout, entry.shape, local);
      return { fullShape, box: sliceBox(layout, fullShape, local) };
    });
  } catch (err) {
    await Promise.all(opened.map((o) => o.source.close().catch(() => undefined)));
    throw err;
  }
}

export interface DestinationPlan {
  /** Destination ranks, ascending. */
  readonly ranks: readonly number[];
  /** The box of the full tensor this rank stores; null when the tensor is not on this rank. */
  boxOf(name: string, fullShape: readonly number[], rank: number): Box | null;
}

/** Complete output (rank 0 only), or one slice per rank of the destination strategy. */
export async function openDestination(dstStrategy?: string): Promise<DestinationPlan> {
  if (dstStrategy === undefined) {
    return { ranks: [0], boxOf: (_n, fullShape) => fullBox(fullShape) };
  }
  const layouts = new Layouts(await loadStrategy(dstStrategy));
  const strategy = layouts.strategy;
  const n = layouts.deviceCount();
  const dstPath = dstStrategy;
  const multiStage = strategy.stages.length > 1;
  const named = new Set(strategy.layouts.map((l) => l.name));
  return {
    ranks: Array.from({ length: n }, (_v, i) => i),
    boxOf(name, fullShape, rank) {
      const layout = layouts.get(layouts.stageOf(rank), name);
      if (layout === undefined) {
        // a parameter of another pipeline stage is not stored here; tensors no stage lays out
        // (global_step, scalars, ...) go to every rank whole
        if (multiStage && named.has(name)) return null;
        return fullBox(fullShape);
      }
      if (fullShape.length === 0) return fullBox(fullShape);
      if (layout.tensorMap.length !== fullShape.length) {
        throw new InputError(
          `the destination layout has ${layout.tensorMap.length} dims but the tensor has shape [${fullShape}]`,
          { file: dstPath, tensor: name },
        );
      }
      return sliceBox(layout, fullShape, layouts.localRankOf(rank));
    },
  };
}
