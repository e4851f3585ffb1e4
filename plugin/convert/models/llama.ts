/** `llama`: Llama 3.1 (HF LlamaForCausalLM) <-> mindformers models/llama. */
import { defineModel } from '../registry.js';
import { llamaLikeConfigFromWeights, llamaLikeLayout } from './llamalike.js';

export const llama = defineModel({
  name: 'llama',
  aliases: ['llama3', 'llama3.1', 'llama2'],
  description: 'Llama 3.1 (LlamaForCausalLM) <-> mindformers llama; --qkv-concat fuses w_qkv / w_gate_hidden (Megatron layout)',
  configFromWeights: llamaLikeConfigFromWeights,
  layout: (config, options, ctx) => llamaLikeLayout(config, options, ctx, { qkvBias: 'config' }),
});

export const convertHfToMs = llama.convertHfToMs;
export const convertMsToHf = llama.convertMsToHf;
