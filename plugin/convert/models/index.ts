/** Importing this registers every built-in model. */
export { llama } from './llama.js';
export { qwen } from './qwen.js';
export { glm } from './glm.js';
export { mixtral } from './mixtral.js';
export { deepseek } from './deepseek.js';
