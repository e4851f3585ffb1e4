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

export async function createOutputSink(path: string, format: OutputFormat, tensors: readonly SinkTensor[]): Promise<TensorSink> {
  return createWeightsSink(path, format, tensors);
}
