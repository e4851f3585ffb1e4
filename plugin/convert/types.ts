/**
 * Public types of HuggingFace <-> MindSpore conversion.
 *
 * A model is described declaratively (`ModelDefinition`): from config.json it lists *links*, each
 * relating a few HuggingFace tensors to a few MindSpore tensors by rows. One streaming engine
 * (engine.ts) runs every model in both directions from that description.
 */
import type { Progress } from '../progress.js';
import type { DType } from '../formats/dtype.js';

/** `--dtype` values, as the Python tool spells them. */
export type ConvertDTypeName = 'fp32' | 'fp16' | 'bf16';

/** Parsed config.json of a HuggingFace model. */
export type HfConfig = Readonly<Record<string, unknown>>;

export interface ConvertOptions {
  /** config.json to use; default: `config.json` in the HF folder, or beside the input file. */
  readonly configPath?: string;
  /**
   * Reverse only: the model's config as an object, used when there is no config.json (e.g. the
   * `model_config` of a mindformers YAML, whose keys are the HF config's for glm-n).
   */
  readonly config?: HfConfig;
  /** Fuse q/k/v (and gate/up) the way the MindSpore model with `qkv_concat: True` expects. */
  readonly qkvConcat?: boolean;
  /** Number of routed experts when config.json does not give it (must agree when it does). */
  readonly numExperts?: number;
  /** Reverse only: largest safetensors shard in bytes (default 5 GB = 5e9). */
  readonly maxShardSize?: number;
  /** Further model options (`--key value` pairs a model understands), e.g. `mlp_concat`. */
  readonly extra?: Readonly<Record<string, string | number | boolean>>;
  /** Called once the output size is known; the reporter then gets the bytes written. */
  readonly progress?: (totalBytes: number) => Progress;
}

export type ConvertDirection = 'hf-to-ms' | 'ms-to-hf';

export interface ConvertResult {
  readonly model: string;
  readonly direction: ConvertDirection;
  readonly input: string;
  readonly output: string;
  /** Files written (weights, index, config copy). */
  readonly files: readonly string[];
  readonly tensorsIn: number;
  readonly tensorsOut: number;
  readonly bytesOut: number;
  /** `--dtype` target, or null when each tensor kept its dtype. */
  readonly dtype: DType | null;
}

/** The signature every model exports twice (`convertHfToMs`, `convertMsToHf`). */
export type ConvertFunction = (
  inputPath: string,
  outputPath: string,
  dtype: ConvertDTypeName | undefined,
  options?: ConvertOptions,
) => Promise<ConvertResult>;

/** A registered model. */
export interface ModelConverter {
  readonly name: string;
  readonly aliases?: readonly string[];
  readonly description?: string;
  /** snake_case options it reads from `ConvertOptions.extra` (`--key value` on the command line). */
  readonly options?: readonly string[];
  readonly convertHfToMs: ConvertFunction;
  readonly convertMsToHf: ConvertFunction;
}

// ---------------------------------------------------------------------------------------------
// Declarative layout

export interface TensorSpec {
  readonly name: string;
  readonly shape: readonly number[];
}

/** `rows` rows of HF tensor number `from` of the link, starting at row `row`. */
export interface RowSegment {
  readonly from: number;
  readonly row: number;
  readonly rows: number;
}

/**
 * HF tensors <-> MS tensors by rows. A row is `rowElements` consecutive elements (C order) and
 * every tensor of the link is a whole number of rows. Each MS tensor is the concatenation of its
 * `segments` (HF row ranges) in order; together they use every HF row exactly once, so the
 * reverse is derived. Renames, concatenations, splits, expert stacking, Megatron q/k/v
 * interleave and row permutations are all links.
 */
export interface Link {
  readonly hf: readonly TensorSpec[];
  readonly ms: readonly TensorSpec[];
  readonly rowElements: number;
  /** One list per MS tensor. */
  readonly segments: readonly (readonly RowSegment[])[];
  /** The link may be absent as a whole (tied lm_head, optional biases, buffers). */
  readonly optional?: boolean;
}

/** An HF tensor that is a copy of another HF tensor (DeepSeek MTP embed/head): dropped on the
 * way in (checked when present), written again on the way out. */
export interface DuplicateSpec {
  readonly hf: TensorSpec;
  readonly copyOf: string;
}

export interface ModelLayout {
  readonly links: readonly Link[];
  readonly duplicates?: readonly DuplicateSpec[];
}

export interface LayoutContext {
  /** The config.json path (for messages). */
  readonly configPath: string;
  readonly direction: ConvertDirection;
  /**
   * Discovery (no config.json at hand): readers add every config key the layout cannot do without
   * to this set and go on with stand-in values, so that a message can name all of them.
   */
  readonly discover?: Set<string>;
}

/** What the MindSpore tensors of a reverse conversion tell about the model's config. */
export interface ConfigFromWeights {
  /** config.json values read from tensor names and shapes. */
  readonly config: HfConfig;
  /** Keys the layout needs that the tensors cannot tell (empty: no config.json needed). */
  readonly cannot: readonly string[];
}

/** A model for the shared engine. `defineModel` turns it into a `ModelConverter`. */
export interface ModelDefinition {
  readonly name: string;
  readonly aliases?: readonly string[];
  readonly description?: string;
  /** snake_case model options it reads from `ConvertOptions.extra` (given as `--key value`). */
  readonly options?: readonly string[];
  layout(config: HfConfig, options: ConvertOptions, ctx: LayoutContext): ModelLayout;
  /**
   * Reverse conversion without config.json: the config the MindSpore tensors give. Models
   * without it need config.json for the reverse direction.
   */
  configFromWeights?(tensors: readonly TensorSpec[], options: ConvertOptions): ConfigFromWeights;
}
