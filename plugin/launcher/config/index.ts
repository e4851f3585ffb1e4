// The run YAML, as mindformers reads it: PyYAML-faithful reading (pyyaml), keys and their typed
// reading (schema), the per-release table (releases), the rules and what launch does (rules),
// derived YAMLs (derive), validate's account built from launch's own functions (summary).
export * from './pyyaml.js';
export * from './types.js';
export * from './releases.js';
export * from './schema.js';
export * from './inspect.js';
export * from './rules.js';
export * from './check.js';
export * from './derive.js';
export * from './summary.js';
export * from './command.js';
export * from './version.js';
