/**
 * `glm-n`: GLM4 in ChatGLM format (THUDM/glm-4-9b, `transformer.encoder.layers.N...`) <->
 * mindformers models/glm2 (ChatGLM2/3/4). With the GLM4 yaml defaults (qkv_concat and
 * mlp_concat true) only the embedding is renamed; `--qkv-concat false` splits
 * query_key_value into wq/wk/wv and `--mlp-concat false` splits dense_h_to_4h into
 * dense_left/dense_right.
 */
import { ConfigReader, optionBool, rename, splitRows } from '../layout.js';
import { defineModel } from '../registry.js';
import type { Link } from '../types.js';

export const glm = defineModel({
  name: 'glm-n',
  aliases: ['glm4', 'glm', 'chatglm'],
  description: 'GLM4 ChatGLM format (transformer.encoder.*) <-> mindformers glm2; --qkv-concat false / --mlp-concat false split the fused weights',
  options: ['mlp_concat'],
  layout(config, options, ctx) {
    const cfg = new ConfigReader(config, ctx);
    const H = cfg.int('hidden_size');
    const L = cfg.int('num_layers', cfg.has('num_hidden_layers') ? cfg.int('num_hidden_layers') : undefined);
    const nh = cfg.int('num_attention_heads');
    const kvc = cfg.int('kv_channels', Math.floor(H / nh));
    const groups = cfg.bool('multi_query_attention', false) ? cfg.int('multi_query_group_num') : nh;
    const F = cfg.int('ffn_hidden_size');
    const V = cfg.int('padded_vocab_size', cfg.has('vocab_size') ? cfg.int('vocab_size') : undefined);
    const qkvBias = cfg.bool('add_qkv_bias', false);
    const linBias = cfg.bool('add_bias_linear', false);
    const qkvConcat = optionBool(options, 'qkv_concat', true);
    const mlpConcat = optionBool(options, 'mlp_concat', true);
    const qkvRows = (nh + 2 * groups) * kvc;

    const links: Link[] = [
      rename('transformer.embedding.word_embeddings.weight', 'transformer.embedding.embedding_weight', [V, H]),
      rename('transformer.rotary_pos_emb.inv_freq', 'transformer.rotary_pos_emb.inv_freq', [Math.floor(kvc / 4)], true),
    ];
    for (let i = 0; i < L; i++) {
      const p = `transformer.encoder.layers.${i}`;
      links.push(rename(`${p}.input_layernorm.weight`, `${p}.input_layernorm.weight`, [H]));
      const parts = [
        { name: 'wq', rows: nh * kvc },
        { name: 'wk', rows: groups * kvc },
        { name: 'wv', rows: groups * kvc },
      ];
      for (const suffix of qkvBias ? ['weight', 'bias'] : ['weight']) {
        const shape = suffix === 'weight' ? [qkvRows, H] : [qkvRows];
        const hf = `${p}.self_attention.query_key_value.${suffix}`;
        if (qkvConcat) links.push(rename(hf, hf, shape));
        else links.push(splitRows({ name: hf, shape }, parts.map((x) => ({ name: `${p}.self_attention.${x.name}.${suffix}`, rows: x.rows }))));
      }
      links.push(rename(`${p}.self_attention.dense.weight`, `${p}.self_attention.dense.weight`, [H, nh * kvc]));
      if (linBias) links.push(rename(`${p}.self_attention.dense.bias`, `${p}.self_attention.dense.bias`, [H]));
      links.push(rename(`${p}.post_attention_layernorm.weight`, `${p}.post_attention_layernorm.weight`, [H]));
      const h4 = `${p}.mlp.dense_h_to_4h`;
      for (const suffix of linBias ? ['weight', 'bias'] : ['weight']) {
        const shape = suffix === 'weight' ? [2 * F, H] : [2 * F];
        if (mlpConcat) links.push(rename(`${h4}.${suffix}`, `${h4}.${suffix}`, shape));
        else links.push(splitRows({ name: `${h4}.${suffix}`, shape }, [{ name: `${p}.mlp.dense_left.${suffix}`, rows: F }, { name: `${p}.mlp.dense_right.${suffix}`, rows: F }]));
      }
      links.push(rename(`${p}.mlp.dense_4h_to_h.weight`, `${p}.mlp.dense_4h_to_h.weight`, [H, F]));
      if (linBias) links.push(rename(`${p}.mlp.dense_4h_to_h.bias`, `${p}.mlp.dense_4h_to_h.bias`, [H]));
    }
    links.push(rename('transformer.encoder.final_layernorm.weight', 'transformer.encoder.final_layernorm.weight', [H]));
    links.push(rename('transformer.output_layer.weight', 'transformer.output_layer.weight', [V, H], cfg.bool('tie_word_embeddings', false)));
    return { links };
  },
});

export const convertHfToMs = glm.convertHfToMs;
export const convertMsToHf = glm.convertMsToHf;
