/**
 * Loading a strategy path for use: a file is read; a folder of per-rank / per-stage files is
 * merged first into a temporary file msckpt creates and removes (the user's files are never
 * touched).
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { resolveStrategy } from '../resolve.js';
import { readStrategy } from './io.js';
import { mergeStrategies } from './merge.js';
import type { Strategy } from './model.js';

export interface LoadedStrategy {
  readonly strategy: Strategy;
  /** The path given (file or folder), absolute. */
  readonly path: string;
  /** sha256 of the strategy bytes used (the merged bytes for a folder). */
  readonly sha256: string;
}

/** Read a strategy file, or merge a folder of per-stage files into a temporary file first. */
export async function loadStrategy(path: string): Promise<LoadedStrategy> {
  const r = await resolveStrategy(path);
  if (r.kind === 'strategy') {
    const bytes = await readFile(path);
    const strategy = await readStrategy(path);
    return { strategy, path: resolve(path), sha256: createHash('sha256').update(bytes).digest('hex') };
  }
  const tmp = await mkdtemp(join(tmpdir(), 'msckpt-strategy-'));
  try {
    const out = join(tmp, 'merged_ckpt_strategy.ckpt');
    await mergeStrategies(r.files.map((f) => f.path), out);
    const bytes = await readFile(out);
    const strategy = await readStrategy(out);
    return { strategy: { ...strategy, path: resolve(path) }, path: resolve(path), sha256: createHash('sha256').update(bytes).digest('hex') };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
