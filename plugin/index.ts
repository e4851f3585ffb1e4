/**
 * The programmatic API: everything the CLI does, typed, for the launcher and users' scripts.
 */
export * from './errors.js';
export * from './units.js';
export * from './real-paths.js';
export * from './formats/index.js';
export * from './layout/index.js';
export * from './plan/index.js';
export * from './transform/index.js';
export * from './coordination/index.js';
export * from './launcher/index.js';
export * from './convert/index.js';
export * from './lora/index.js';
export * from './unify/index.js';
