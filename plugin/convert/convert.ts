/** The `msckpt convert` API: pick a model (built-in or from a converter module) and run it. */
import { InputError } from '../errors.js';
import './models/index.js';
import { getModel, loadConverterModule } from './registry.js';
import type { ConvertDTypeName, ConvertOptions, ConvertResult } from './types.js';

export interface ConvertWeightsRequest {
  readonly model: string;
  readonly inputPath: string;
  readonly outputPath: string;
  /** MindSpore -> HuggingFace. */
  readonly reversed?: boolean;
  readonly dtype?: ConvertDTypeName;
  /** A user module adding models (see loadConverterModule). */
  readonly converter?: string;
  readonly options?: ConvertOptions;
}

/** Convert HF -> MindSpore (or back with `reversed`). */
export async function convertWeights(req: ConvertWeightsRequest): Promise<ConvertResult> {
  if (req.converter !== undefined) await loadConverterModule(req.converter);
  if (req.dtype !== undefined && !['fp32', 'fp16', 'bf16'].includes(req.dtype)) {
    throw new InputError(`Dtype '${String(req.dtype)}' is not supported (expected fp32, fp16 or bf16)`, { key: 'dtype' });
  }
  const m = getModel(req.model);
  const f = req.reversed === true ? m.convertMsToHf : m.convertHfToMs;
  return f(req.inputPath, req.outputPath, req.dtype, req.options ?? {});
}
