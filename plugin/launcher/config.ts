// The run YAML: see plugin/launcher/config/ (schema, rules, derivation, summary, releases, PyYAML reading).
export * from './config/index.js';
