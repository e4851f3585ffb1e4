// Run YAML, paths and rank identity (engineer "config").
export * from './config.js';
export * from './paths.js';
export * from './identity.js';
// The launcher hook (engineer "launch").
export { launch, assignConverters, cleanJobOutputs, planIsIdentity, substituteConfig, type LaunchOptions, type ConverterAssignment, type CleanReport } from './launch.js';
export { launchSources, safetensorsSlicingOf, type SafetensorsSlicing } from './launch.js';
