/**
 * Layout math: strategy model -> the box of the full tensor each rank holds. Pure, no I/O.
 */
export {
  type SliceShapeSource,
  MAX_STAGE_DEVICES,
  deviceCoordinate,
  localRankOf,
  stageOf,
  stageDeviceCount,
  stageCount,
  totalDeviceCount,
  layoutsOfStage,
  stagesOfParam,
  layoutForRank,
  tensorStrategy,
  resolvedOptShardSize,
  repeatedGroupSize,
  splitCounts,
  layoutDeviceCount,
  sliceIndex,
  replicaKey,
  sliceBox,
  dimPartBounds,
  fullShapeFromSlice,
  distinctSlices,
  completeLayout,
  checkShapes,
} from './layout.js';
