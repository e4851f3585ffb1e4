/** The executor's buffer budget: how a memory budget splits into band and scratch buffers. */
import type { BufferSizes } from './types.js';

export const DEFAULT_MEMORY = 512 * 1024 * 1024;
const MAX_BUFFER = 1024 * 1024 * 1024 - 1;

/** Largest band buffer: large enough for big sequential reads, small enough to pipeline. */
const MAX_BAND = 8 * 1024 * 1024;

/** The executor holds two band buffers (one assembled while the other is written) and a scratch buffer. */
export function bufferSizes(memory: number = DEFAULT_MEMORY): BufferSizes {
  const m = Math.max(memory, 1024 * 1024);
  const scratch = Math.min(64 * 1024 * 1024, Math.floor(m / 4));
  return { band: Math.min(MAX_BUFFER, MAX_BAND, Math.floor((m - scratch) / 2)), scratch };
}
