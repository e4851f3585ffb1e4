/**
 * `mixtral`: Mixtral (HF MixtralForCausalLM) <-> mindformers research/mixtral. The experts of a
 * layer are stacked into [E, out, in] tensors (`feed_forward.ffn.w1/w2/w3.weight`); the number
 * of experts comes from config.json `num_local_experts` (or --num-experts), not a hard-coded 8.
 */
import { ConfigReader, expertCount, rename, stackExperts } from '../layout.js';
import { defineModel } from '../registry.js';
import type { Link } from '../types.js';

export const mixtral = defineModel({
  name: 'mixtral',
  aliases: ['mixtral8x7b'],
  description: 'Mixtral (MixtralForCausalLM) <-> mindformers mixtral; experts stacked [E, out, in] per layer',
  layout(config, options, ctx) {
    const cfg = new ConfigReader(config, ctx);
    const H = cfg.int('hidden_size');
    const L = cfg.int('num_hidden_layers');
    const nh = cfg.int('num_attention_heads');
    const nkv = cfg.int('num_key_value_heads', nh);
    const hd = cfg.has('head_dim') ? cfg.int('head_dim') : Math.floor(H / nh);
    const I = cfg.int('intermediate_size');
    const V = cfg.int('vocab_size');
    const E = expertCount(cfg, 'num_local_experts', options);
    const links: Link[] = [rename('model.embed_tokens.weight', 'model.tok_embeddings.embedding_weight', [V, H])];
    for (let i = 0; i < L; i++) {
      const hf = `model.layers.${i}`;
      links.push(rename(`${hf}.input_layernorm.weight`, `${hf}.attention_norm.weight`, [H]));
      links.push(rename(`${hf}.self_attn.q_proj.weight`, `${hf}.attention.wq.weight`, [nh * hd, H]));
      links.push(rename(`${hf}.self_attn.k_proj.weight`, `${hf}.attention.wk.weight`, [nkv * hd, H]));
      links.push(rename(`${hf}.self_attn.v_proj.weight`, `${hf}.attention.wv.weight`, [nkv * hd, H]));
      links.push(rename(`${hf}.self_attn.o_proj.weight`, `${hf}.attention.wo.weight`, [H, nh * hd]));
      links.push(rename(`${hf}.post_attention_layernorm.weight`, `${hf}.ffn_norm.weight`, [H]));
      links.push(rename(`${hf}.block_sparse_moe.gate.weight`, `${hf}.feed_forward.router.dense.weight`, [E, H]));
      for (const [w, shape] of [['w1', [I, H]], ['w2', [H, I]], ['w3', [I, H]]] as const) {
        const experts = Array.from({ length: E }, (_x, e) => ({ name: `${hf}.block_sparse_moe.experts.${e}.${w}.weight`, shape }));
        links.push(stackExperts(experts, `${hf}.feed_forward.ffn.${w}.weight`));
      }
    }
    links.push(rename('model.norm.weight', 'model.norm_out.weight', [H]));
    links.push(rename('lm_head.weight', 'lm_head.weight', [V, H], cfg.bool('tie_word_embeddings', false)));
    return { links };
  },
});

export const convertHfToMs = mixtral.convertHfToMs;
export const convertMsToHf = mixtral.convertMsToHf;
