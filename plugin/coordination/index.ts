/** Markers, barriers and heartbeats on a shared disk (knows nothing of tensors). */
export * from './coordinator.js';
export * from './shared-disk.js';
export * from './liveness.js';
export { Waker } from './waker.js';
