export * from './dtype.js';
export * from './types.js';
export * from './box.js';
export * from './atomic.js';
export * from './strategy/model.js';
export * from './ckpt/index.js';
export * from './strategy/index.js';
export * from './safetensors/index.js';
