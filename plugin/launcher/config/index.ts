// The run YAML: PyYAML-faithful reading, schema, per-release rules, derivation and summary.
export * from './pyyaml.js';
export * from './derive.js';
