/**
 * Opening any weights path by content and creating a sink by format (what `msckpt inspect`
 * reports is in inspect.ts).
 */
import { InputError } from '../errors.js';
import { openCheckpoint } from './ckpt/reader.js';
import { createCheckpointSink } from './ckpt/writer.js';
import { detectKind, type WeightsKind } from './detect.js';
import { createSafetensorsSink, openSafetensors } from './safetensors/index.js';
import type { WeightsFormat } from './resolve.js';
import type { SinkTensor, TensorSink, TensorSource } from './types.js';

function notWeights(kind: WeightsKind, path: string): InputError {
  switch (kind) {
    case 'strategy':
    case 'strategy-json':
      return new InputError('this is a parallel strategy file, not a weights file', { file: path });
    case 'distributed':
      return new InputError('this is a directory of rank_N/ slices; name one rank\'s file', { file: path });
    default:
      return new InputError(
        'not a recognised weights file (expected a MindSpore .ckpt, a safetensors file or index, or a unified safetensors directory)',
        { file: path },
      );
  }
}

export interface OpenWeightsOptions {
  /** For checkpoints: verify the CRC trailer. */
  verifyCrc?: boolean;
}

/** Open a `.ckpt`, safetensors file, safetensors index or unified directory, detected by content. */
export async function openWeights(path: string, opts: OpenWeightsOptions = {}): Promise<TensorSource> {
  const kind = await detectKind(path);
  switch (kind) {
    case 'checkpoint':
    case 'encrypted': // openCheckpoint refuses it with a clear message
      return openCheckpoint(path, opts);
    case 'safetensors':
    case 'safetensors-index':
    case 'unified':
      return openSafetensors(path);
    default:
      throw notWeights(kind, path);
  }
}

export interface WeightsSinkOptions {
  /** `.ckpt`: append the CRC trailer; safetensors: `crc_num` in the metadata. */
  crc?: boolean;
  /** Compute the CRC-32 of the whole file while writing it (reported by `close()`). */
  fileCrc32?: boolean;
  /** safetensors: `__metadata__`. */
  metadata?: Record<string, string>;
}

/**
 * A sink for `format`. `tensors` declares everything that will be written (safetensors needs the
 * header up front; the checkpoint writer ignores it).
 */
export async function createWeightsSink(
  path: string,
  format: WeightsFormat,
  tensors: readonly SinkTensor[],
  opts: WeightsSinkOptions = {},
): Promise<TensorSink> {
  const fileCrc32 = opts.fileCrc32 === true;
  if (format === 'ckpt') return createCheckpointSink(path, { crc: opts.crc === true, fileCrc32 });
  return createSafetensorsSink(path, tensors, { metadata: opts.metadata ?? { format: 'ms' }, sortKeys: true, crc: opts.crc === true, fileCrc32 });
}
