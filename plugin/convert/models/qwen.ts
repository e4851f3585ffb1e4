/** `qwen`: Qwen2.5 (HF Qwen2ForCausalLM, q/k/v biases) <-> mindformers research/qwen2_5. */
import { defineModel } from '../registry.js';
import { llamaLikeConfigFromWeights, llamaLikeLayout } from './llamalike.js';

export const qwen = defineModel({
  name: 'qwen',
  aliases: ['qwen2_5', 'qwen2.5', 'qwen2'],
  description: 'Qwen2.5 (Qwen2ForCausalLM, q/k/v biases) <-> mindformers qwen2_5; --qkv-concat fuses w_qkv (+bias) / w_gate_hidden',
  configFromWeights: llamaLikeConfigFromWeights,
  layout: (config, options, ctx) => llamaLikeLayout(config, options, ctx, { qkvBias: 'always' }),
});

export const convertHfToMs = qwen.convertHfToMs;
export const convertMsToHf = qwen.convertMsToHf;
