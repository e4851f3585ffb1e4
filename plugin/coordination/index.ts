/** Markers, barriers and heartbeats on a shared disk (knows nothing of tensors). */
export * from './coordinator.js';
export * from './shared-disk.js';
export * from '../processes.js';
export { nodeFs, type CoordinationFs, type WriteOptions } from './fs.js';
export { systemClock, type Clock } from './clock.js';
export {
  describeJob, HolderWatch, JOB_BEAT_FILE, JOB_FILE, JobConflictError, JobLock, type HolderLook, type JobEnv, type JobOptions, type JobRecord,
} from './job.js';
export { Waker } from './waker.js';
