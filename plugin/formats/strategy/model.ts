/**
 * The typed in-memory model of a parallel strategy, whichever encoding (protobuf or JSON, per-rank
 * or merged) it came from. Readers and writers live next to this file; layout math in
 * `plugin/layout/` uses only this model.
 */

/**
 * One entry of a tensor map, per tensor dimension, counted from the right of the device matrix:
 * -1 = not split; k >= 0 = split over device axis `devMatrix[len-1-k]`; an array = nested
 * (Layout API) split over several axes, the first most significant.
 */
export type TensorMapEntry = number | readonly number[];

export interface ParamLayout {
  /** Parameter name without any `{stage}-` prefix. */
  readonly name: string;
  /** Pipeline stage this layout belongs to (0 for unprefixed names). */
  readonly stage: number;
  /** Device matrix of the stage; its product is the stage's device count. */
  readonly devMatrix: readonly number[];
  /** One entry per tensor dimension. */
  readonly tensorMap: readonly TensorMapEntry[];
  /** Uneven dim-0 sizes per slice (manual split); empty when not used. */
  readonly paramSplitShape: readonly number[];
  /** Start row of each slice (manual split); empty when not used. */
  readonly indicesOffset: readonly number[];
  /** Field size for field-sliced embeddings; 0 when not used. */
  readonly field: number;
  /** Rank stride inside the optimizer repeated group; 0 when not sharded. */
  readonly optShardStep: number;
  /** Optimizer shard size; -1 = the whole repeated group; 0 when not sharded. */
  readonly optShardSize: number;
  /** Full tensor shape, when the encoding stores it (JSON does, protobuf does not). */
  readonly tensorShape?: readonly number[];
}

/** One operator's input shard strategy (kept for round trips and merging). */
export interface StrategyItem {
  readonly nodeName: string;
  readonly stage: number;
  readonly strategies: readonly (readonly number[])[];
}

export interface Strategy {
  /** Save counter from the file (not the pipeline stage). */
  readonly currentStage: number;
  /** True when layout names carried `{stage}-` prefixes (a merged pipeline strategy). */
  readonly merged: boolean;
  /** Sorted distinct pipeline stages present in the layouts. */
  readonly stages: readonly number[];
  /** Layouts in file order; a merged file has one per (stage, name). */
  readonly layouts: readonly ParamLayout[];
  readonly items: readonly StrategyItem[];
  /** Where it was read from, for messages. */
  readonly path?: string;
}
