/** The `msckpt convert` API: pick a model (built-in or from a converter module) and run it. */
import { InputError } from '../errors.js';
import { canonicalPath, refuseOverlaps } from '../real-paths.js';
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
  // the output (a file, or the folder of HF shards) apart from the weights read, symlinks resolved;
  // the config.json read may sit in the output folder (HF layout: config next to the shards, which
  // the engine refuses to overwrite), but the output is never the config itself
  await refuseOverlaps([{ what: '--output-path', path: req.outputPath }], [{ what: '--input-path', path: req.inputPath }]);
  const configPath = req.options?.configPath;
  if (configPath !== undefined && (await canonicalPath(configPath)) === (await canonicalPath(req.outputPath))) {
    throw new InputError(`--output-path is --config ${configPath}: writing there would overwrite what is read; choose another --output-path`, { file: req.outputPath });
  }
  const f = req.reversed === true ? m.convertMsToHf : m.convertHfToMs;
  return f(req.inputPath, req.outputPath, req.dtype, req.options ?? {});
}
