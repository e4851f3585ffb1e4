/**
 * Llama-style decoder names shared by `llama` and `qwen` (mindformers models/llama and
 * research/qwen2_5 convert_weight.py): one table, biases and fusion as options.
 */
import { ConfigReader, interleaveRows, megatronQkv, optionBool, rename } from '../layout.js';
import type { ConfigFromWeights, ConvertOptions, HfConfig, LayoutContext, Link, ModelLayout, TensorSpec } from '../types.js';

export interface LlamaLikeOptions {
  /** q/k/v biases: always (Qwen2), or when config.json says `attention_bias` (Llama). */
  readonly qkvBias: 'always' | 'config';
}

export function llamaLikeLayout(config: HfConfig, options: ConvertOptions, ctx: LayoutContext, kind: LlamaLikeOptions): ModelLayout {
  const cfg = new ConfigReader(config, ctx);
  const H = cfg.int('hidden_size');
  const L = cfg.int('num_hidden_layers');
  const nh = cfg.int('num_attention_heads');
  const nkv = cfg.int('num_key_value_heads', nh);
  cfg.divides(nkv, nh, 'num_attention_heads / num_key_value_heads');
  const hd = cfg.has('head_dim') ? cfg.int('head_dim') : H / nh;
  if (!Number.isInteger(hd)) cfg.divides(nh, H, 'hidden_size / num_attention_heads');
  const I = cfg.int('intermediate_size');
  const V = cfg.int('vocab_size');
  const tied = cfg.bool('tie_word_embeddings', false);
  const qkvBias = kind.qkvBias === 'always' ? true : cfg.bool('attention_bias', false);
  const oBias = kind.qkvBias === 'config' && qkvBias;
  const mlpBias = cfg.bool('mlp_bias', false);
  const fuse = optionBool(options, 'qkv_concat', false);

  const links: Link[] = [rename('model.embed_tokens.weight', 'model.tok_embeddings.embedding_weight', [V, H])];
  for (let i = 0; i < L; i++) {
    const hf = `model.layers.${i}`;
    const ms = `model.layers.${i}`;
    const q = { name: `${hf}.self_attn.q_proj.weight`, shape: [nh * hd, H] };
    const k = { name: `${hf}.self_attn.k_proj.weight`, shape: [nkv * hd, H] };
    const v = { name: `${hf}.self_attn.v_proj.weight`, shape: [nkv * hd, H] };
    const qb = { name: `${hf}.self_attn.q_proj.bias`, shape: [nh * hd] };
    const kb = { name: `${hf}.self_attn.k_proj.bias`, shape: [nkv * hd] };
    const vb = { name: `${hf}.self_attn.v_proj.bias`, shape: [nkv * hd] };
    links.push(rename(`${hf}.input_layernorm.weight`, `${ms}.attention_norm.weight`, [H]));
    if (fuse) {
      links.push(megatronQkv(q, k, v, `${ms}.attention.w_qkv.weight`, nh, nkv, hd));
      if (qkvBias) links.push(megatronQkv(qb, kb, vb, `${ms}.attention.w_qkv.bias`, nh, nkv, hd));
    } else {
      links.push(rename(q.name, `${ms}.attention.wq.weight`, q.shape), rename(k.name, `${ms}.attention.wk.weight`, k.shape), rename(v.name, `${ms}.attention.wv.weight`, v.shape));
      if (qkvBias) links.push(rename(qb.name, `${ms}.attention.wq.bias`, qb.shape), rename(kb.name, `${ms}.attention.wk.bias`, kb.shape), rename(vb.name, `${ms}.attention.wv.bias`, vb.shape));
    }
    links.push(rename(`${hf}.self_attn.o_proj.weight`, `${ms}.attention.wo.weight`, [H, nh * hd]));
    if (oBias) links.push(rename(`${hf}.self_attn.o_proj.bias`, `${ms}.attention.wo.bias`, [H]));
    links.push(rename(`${hf}.post_attention_layernorm.weight`, `${ms}.ffn_norm.weight`, [H]));
    const gate = { name: `${hf}.mlp.gate_proj.weight`, shape: [I, H] };
    const up = { name: `${hf}.mlp.up_proj.weight`, shape: [I, H] };
    if (fuse) links.push(interleaveRows(gate, up, `${ms}.feed_forward.w_gate_hidden.weight`));
    else links.push(rename(gate.name, `${ms}.feed_forward.w1.weight`, gate.shape), rename(up.name, `${ms}.feed_forward.w3.weight`, up.shape));
    links.push(rename(`${hf}.mlp.down_proj.weight`, `${ms}.feed_forward.w2.weight`, [H, I]));
    if (mlpBias) {
      const gb = { name: `${hf}.mlp.gate_proj.bias`, shape: [I] };
      const ub = { name: `${hf}.mlp.up_proj.bias`, shape: [I] };
      if (fuse) links.push(interleaveRows(gb, ub, `${ms}.feed_forward.w_gate_hidden.bias`));
      else links.push(rename(gb.name, `${ms}.feed_forward.w1.bias`, [I]), rename(ub.name, `${ms}.feed_forward.w3.bias`, [I]));
      links.push(rename(`${hf}.mlp.down_proj.bias`, `${ms}.feed_forward.w2.bias`, [H]));
    }
  }
  links.push(rename('model.norm.weight', 'model.norm_out.weight', [H]));
  // tied embeddings: no lm_head in HF files; accept one when present anyway
  links.push(rename('lm_head.weight', 'lm_head.weight', [V, H], tied));
  return { links };
}

/**
 * A llama-style config from MindSpore tensor names and shapes, for reverse conversions without
 * config.json. Separate q/k/v weights are plain renames, so their row counts stand in for the head
 * counts (head_dim 1); fused w_qkv rows cannot be split without the real head counts.
 */
export function llamaLikeConfigFromWeights(tensors: readonly TensorSpec[], options: ConvertOptions): ConfigFromWeights {
  const byName = new Map(tensors.map((t) => [t.name, t.shape] as const));
  const cannot: string[] = [];
  const config: Record<string, unknown> = {};
  const emb = byName.get('model.tok_embeddings.embedding_weight');
  if (emb === undefined || emb.length !== 2) return { config, cannot: ['vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size'] };
  const [V, H] = emb as [number, number];
  let layers = 0;
  for (const t of tensors) {
    const m = /^model\.layers\.(\d+)\./.exec(t.name);
    if (m !== null) layers = Math.max(layers, Number(m[1]) + 1);
  }
  Object.assign(config, { vocab_size: V, hidden_size: H, num_hidden_layers: layers });
  const l0 = 'model.layers.0';
  const q = byName.get(`${l0}.attention.wq.weight`);
  const k = byName.get(`${l0}.attention.wk.weight`);
  const fused = byName.has(`${l0}.attention.w_qkv.weight`) || optionBool(options, 'qkv_concat', false);
  if (!fused && q !== undefined && k !== undefined && (q[0] as number) % (k[0] as number) === 0) {
    Object.assign(config, { num_attention_heads: q[0], num_key_value_heads: k[0], head_dim: 1 });
  } else cannot.push('num_attention_heads', 'num_key_value_heads');
  const w1 = byName.get(`${l0}.feed_forward.w1.weight`);
  const wgh = byName.get(`${l0}.feed_forward.w_gate_hidden.weight`);
  if (w1 !== undefined) config['intermediate_size'] = w1[0];
  else if (wgh !== undefined) config['intermediate_size'] = (wgh[0] as number) / 2;
  else cannot.push('intermediate_size');
  config['attention_bias'] = byName.has(`${l0}.attention.wq.bias`) || byName.has(`${l0}.attention.w_qkv.bias`);
  config['mlp_bias'] = byName.has(`${l0}.feed_forward.w1.bias`) || byName.has(`${l0}.feed_forward.w_gate_hidden.bias`);
  config['tie_word_embeddings'] = !byName.has('lm_head.weight');
  return { config, cannot };
}
