/**
 * The planner's and executor's only contact with file formats: open any weights file as a
 * TensorSource, create an output sink. Kept in one place so a format switch is one edit.
 */
import { openWeights, createWeightsSink } from '../formats/open.js';
import type { SinkTensor, TensorSink, TensorSource } from '../formats/types.js';

export type OutputFormat = 'ckpt' | 'safetensors';

export async function openWeightsFile(path: string): Promise<TensorSource> {
  return openWeights(path);
}

export interface OutputSinkOptions {
  /** `.ckpt`: the CRC trailer; safetensors: `crc_num` in metadata. */
  readonly crc?: boolean;
}

/** Safetensors outputs follow MindSpore's conventions: keys sorted, metadata {"format":"ms"}. */
export async function createOutputSink(path: string, format: OutputFormat, tensors: readonly SinkTensor[], opts: OutputSinkOptions = {}): Promise<TensorSink> {
  return createWeightsSink(path, format, tensors, { crc: opts.crc === true, ...(format === 'safetensors' ? { metadata: { format: 'ms' } } : {}) });
}
