/** MindSpore `.ckpt` checkpoints: streaming reader, byte-exact streaming writer, rewrite. */
export {
  openCheckpoint,
  openCheckpointIndexed,
  encryptionModeOf,
  type CheckpointSource,
  type CheckpointEntry,
  type CheckpointCrc,
  type CkptChunk,
  type OpenCheckpointOptions,
} from './reader.js';
export {
  createCheckpointSink,
  rewriteCheckpoint,
  type CheckpointSinkOptions,
  type RewriteCheckpointOptions,
  type RewriteCheckpointResult,
} from './writer.js';
export {
  CKPT_CHUNK_BYTES,
  CRC_TRAILER_BYTES,
  encodeChunkHeader as encodeCkptChunkHeader,
  encodeCrcTrailer as encodeCkptCrcTrailer,
  crc32 as ckptCrc32,
  type ChunkHeaderParts as CkptChunkHeaderParts,
} from './wire.js';
