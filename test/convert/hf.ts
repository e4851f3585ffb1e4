/**
 * Test helpers: tiny HuggingFace checkpoints written byte by byte (an independent safetensors
 * writer, so the reader under test is checked against the format, not against itself), the
 * exact HF tensor names/shapes of each architecture, and the MindSpore names/shapes the spec's
 * tables give.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export type StDtype = 'F32' | 'F16' | 'BF16' | 'F8_E4M3' | 'F64';
export const ST_SIZE: Record<StDtype, number> = { F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F64: 8 };

export interface HfTensor {
  name: string;
  dtype: StDtype;
  shape: number[];
  data: Uint8Array;
}

/** Deterministic pseudo-random bytes (xorshift32). */
export function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/** Random finite values of a float dtype (random bytes would include NaN payloads, fine for
 * bit-exact round trips, but keep them finite so value checks are meaningful). */
export function randomTensor(name: string, dtype: StDtype, shape: number[], seed: number): HfTensor {
  const count = shape.reduce((a, b) => a * b, 1);
  const data = randomBytes(count * ST_SIZE[dtype], seed);
  if (dtype === 'BF16' || dtype === 'F16') for (let i = 1; i < data.length; i += 2) data[i] = (data[i] as number) & 0xbf; // clear top exponent bit
  if (dtype === 'F32') for (let i = 3; i < data.length; i += 4) data[i] = (data[i] as number) & 0xbf;
  return { name, dtype, shape, data };
}

export function writeSafetensors(path: string, tensors: readonly HfTensor[], metadata: Record<string, string> = { format: 'pt' }): Promise<void> {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.byteLength] };
    off += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  while ((json.length + 8) % 8 !== 0) json += ' ';
  const hb = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + hb.length + off);
  out.writeBigUInt64LE(BigInt(hb.length), 0);
  hb.copy(out, 8);
  let at = 8 + hb.length;
  for (const t of tensors) {
    out.set(t.data, at);
    at += t.data.byteLength;
  }
  return writeFile(path, out);
}

/** An HF model folder: config.json + model.safetensors, or `shards` shards with an index. */
export async function writeHfFolder(dir: string, config: object, tensors: readonly HfTensor[], shards = 1): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  if (shards === 1) {
    await writeSafetensors(join(dir, 'model.safetensors'), tensors);
    return;
  }
  const per = Math.ceil(tensors.length / shards);
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = tensors.slice(s * per, (s + 1) * per);
    for (const t of part) {
      weightMap[t.name] = file;
      total += t.data.byteLength;
    }
    await writeSafetensors(join(dir, file), part);
  }
  await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }));
}

export type Spec = [string, number[]];

// ---------------------------------------------------------------------------------------------
// Tiny configs and exact HF key sets per architecture

export const LLAMA_CONFIG = {
  architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 4,
  num_key_value_heads: 2, head_dim: 4, intermediate_size: 24, vocab_size: 32, tie_word_embeddings: false,
};

export function llamaHf(c = LLAMA_CONFIG, biases = false): Spec[] {
  const { hidden_size: H, num_attention_heads: nh, num_key_value_heads: nkv, head_dim: hd, intermediate_size: I, vocab_size: V } = c;
  const out: Spec[] = [['model.embed_tokens.weight', [V, H]]];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    out.push([`${p}.input_layernorm.weight`, [H]]);
    out.push([`${p}.self_attn.q_proj.weight`, [nh * hd, H]], [`${p}.self_attn.k_proj.weight`, [nkv * hd, H]], [`${p}.self_attn.v_proj.weight`, [nkv * hd, H]]);
    if (biases) out.push([`${p}.self_attn.q_proj.bias`, [nh * hd]], [`${p}.self_attn.k_proj.bias`, [nkv * hd]], [`${p}.self_attn.v_proj.bias`, [nkv * hd]]);
    out.push([`${p}.self_attn.o_proj.weight`, [H, nh * hd]], [`${p}.post_attention_layernorm.weight`, [H]]);
    out.push([`${p}.mlp.gate_proj.weight`, [I, H]], [`${p}.mlp.up_proj.weight`, [I, H]], [`${p}.mlp.down_proj.weight`, [H, I]]);
  }
  out.push(['model.norm.weight', [H]]);
  if (!c.tie_word_embeddings) out.push(['lm_head.weight', [V, H]]);
  return out;
}

/** MindSpore names per the spec's Llama table (no qkv_concat). */
export function llamaMs(c = LLAMA_CONFIG, biases = false): Spec[] {
  const { hidden_size: H, num_attention_heads: nh, num_key_value_heads: nkv, head_dim: hd, intermediate_size: I, vocab_size: V } = c;
  const out: Spec[] = [['model.tok_embeddings.embedding_weight', [V, H]]];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    out.push([`${p}.attention_norm.weight`, [H]]);
    out.push([`${p}.attention.wq.weight`, [nh * hd, H]], [`${p}.attention.wk.weight`, [nkv * hd, H]], [`${p}.attention.wv.weight`, [nkv * hd, H]]);
    if (biases) out.push([`${p}.attention.wq.bias`, [nh * hd]], [`${p}.attention.wk.bias`, [nkv * hd]], [`${p}.attention.wv.bias`, [nkv * hd]]);
    out.push([`${p}.attention.wo.weight`, [H, nh * hd]], [`${p}.ffn_norm.weight`, [H]]);
    out.push([`${p}.feed_forward.w1.weight`, [I, H]], [`${p}.feed_forward.w3.weight`, [I, H]], [`${p}.feed_forward.w2.weight`, [H, I]]);
  }
  out.push(['model.norm_out.weight', [H]]);
  if (!c.tie_word_embeddings) out.push(['lm_head.weight', [V, H]]);
  return out;
}

export const QWEN_CONFIG = { ...LLAMA_CONFIG, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', tie_word_embeddings: true };

export const GLM_CONFIG = {
  architectures: ['ChatGLMModel'], model_type: 'chatglm', hidden_size: 16, num_layers: 2, num_attention_heads: 4, kv_channels: 4,
  multi_query_attention: true, multi_query_group_num: 2, ffn_hidden_size: 24, padded_vocab_size: 32, add_qkv_bias: true,
  add_bias_linear: false,
};

export function glmHf(c = GLM_CONFIG): Spec[] {
  const { hidden_size: H, num_attention_heads: nh, kv_channels: kvc, multi_query_group_num: g, ffn_hidden_size: F, padded_vocab_size: V } = c;
  const out: Spec[] = [['transformer.embedding.word_embeddings.weight', [V, H]], ['transformer.rotary_pos_emb.inv_freq', [kvc / 4]]];
  for (let i = 0; i < c.num_layers; i++) {
    const p = `transformer.encoder.layers.${i}`;
    out.push([`${p}.input_layernorm.weight`, [H]], [`${p}.self_attention.query_key_value.weight`, [(nh + 2 * g) * kvc, H]]);
    out.push([`${p}.self_attention.query_key_value.bias`, [(nh + 2 * g) * kvc]], [`${p}.self_attention.dense.weight`, [H, nh * kvc]]);
    out.push([`${p}.post_attention_layernorm.weight`, [H]], [`${p}.mlp.dense_h_to_4h.weight`, [2 * F, H]], [`${p}.mlp.dense_4h_to_h.weight`, [H, F]]);
  }
  out.push(['transformer.encoder.final_layernorm.weight', [H]], ['transformer.output_layer.weight', [V, H]]);
  return out;
}

export function glmMs(c = GLM_CONFIG, split = false): Spec[] {
  return glmHf(c).flatMap(([n, s]): Spec[] => {
    if (n === 'transformer.embedding.word_embeddings.weight') return [['transformer.embedding.embedding_weight', s]];
    if (split && n.includes('query_key_value')) {
      const q = c.num_attention_heads * c.kv_channels;
      const kv = c.multi_query_group_num * c.kv_channels;
      return [[n.replace('query_key_value', 'wq'), [q, ...s.slice(1)]], [n.replace('query_key_value', 'wk'), [kv, ...s.slice(1)]], [n.replace('query_key_value', 'wv'), [kv, ...s.slice(1)]]];
    }
    return [[n, s]];
  });
}

export const MIXTRAL_CONFIG = {
  architectures: ['MixtralForCausalLM'], model_type: 'mixtral', hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 4,
  num_key_value_heads: 2, intermediate_size: 24, vocab_size: 32, num_local_experts: 10, num_experts_per_tok: 2, tie_word_embeddings: false,
};

export function mixtralHf(c = MIXTRAL_CONFIG): Spec[] {
  const { hidden_size: H, num_attention_heads: nh, num_key_value_heads: nkv, intermediate_size: I, vocab_size: V } = c;
  const hd = H / nh;
  const out: Spec[] = [['model.embed_tokens.weight', [V, H]]];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    out.push([`${p}.input_layernorm.weight`, [H]], [`${p}.self_attn.q_proj.weight`, [nh * hd, H]], [`${p}.self_attn.k_proj.weight`, [nkv * hd, H]]);
    out.push([`${p}.self_attn.v_proj.weight`, [nkv * hd, H]], [`${p}.self_attn.o_proj.weight`, [H, nh * hd]], [`${p}.post_attention_layernorm.weight`, [H]]);
    out.push([`${p}.block_sparse_moe.gate.weight`, [c.num_local_experts, H]]);
    for (let e = 0; e < c.num_local_experts; e++) {
      out.push([`${p}.block_sparse_moe.experts.${e}.w1.weight`, [I, H]], [`${p}.block_sparse_moe.experts.${e}.w2.weight`, [H, I]], [`${p}.block_sparse_moe.experts.${e}.w3.weight`, [I, H]]);
    }
  }
  out.push(['model.norm.weight', [H]], ['lm_head.weight', [V, H]]);
  return out;
}

export function mixtralMs(c = MIXTRAL_CONFIG): Spec[] {
  const { hidden_size: H, num_attention_heads: nh, num_key_value_heads: nkv, intermediate_size: I, vocab_size: V, num_local_experts: E } = c;
  const hd = H / nh;
  const out: Spec[] = [['model.tok_embeddings.embedding_weight', [V, H]]];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    out.push([`${p}.attention_norm.weight`, [H]], [`${p}.attention.wq.weight`, [nh * hd, H]], [`${p}.attention.wk.weight`, [nkv * hd, H]]);
    out.push([`${p}.attention.wv.weight`, [nkv * hd, H]], [`${p}.attention.wo.weight`, [H, nh * hd]], [`${p}.ffn_norm.weight`, [H]]);
    out.push([`${p}.feed_forward.router.dense.weight`, [E, H]]);
    out.push([`${p}.feed_forward.ffn.w1.weight`, [E, I, H]], [`${p}.feed_forward.ffn.w2.weight`, [E, H, I]], [`${p}.feed_forward.ffn.w3.weight`, [E, I, H]]);
  }
  out.push(['model.norm_out.weight', [H]], ['lm_head.weight', [V, H]]);
  return out;
}

export const DEEPSEEK_CONFIG = {
  architectures: ['DeepseekV3ForCausalLM'], model_type: 'deepseek_v3', hidden_size: 16, num_hidden_layers: 3, num_attention_heads: 2,
  q_lora_rank: 8, kv_lora_rank: 8, qk_nope_head_dim: 4, qk_rope_head_dim: 4, v_head_dim: 4, intermediate_size: 24,
  moe_intermediate_size: 6, n_routed_experts: 4, n_shared_experts: 1, first_k_dense_replace: 1, moe_layer_freq: 1,
  num_nextn_predict_layers: 1, vocab_size: 32, topk_method: 'noaux_tc', tie_word_embeddings: false,
};

export function deepseekHf(c = DEEPSEEK_CONFIG): Spec[] {
  const { hidden_size: H, num_attention_heads: nh, q_lora_rank: ql, kv_lora_rank: kl, qk_nope_head_dim: no, qk_rope_head_dim: ro, v_head_dim: vd } = c;
  const { intermediate_size: I, moe_intermediate_size: mI, n_routed_experts: E, n_shared_experts: S, vocab_size: V } = c;
  const out: Spec[] = [['model.embed_tokens.weight', [V, H]]];
  for (let i = 0; i < c.num_hidden_layers + c.num_nextn_predict_layers; i++) {
    const p = `model.layers.${i}`;
    if (i >= c.num_hidden_layers) out.push([`${p}.embed_tokens.weight`, [V, H]], [`${p}.enorm.weight`, [H]], [`${p}.hnorm.weight`, [H]], [`${p}.eh_proj.weight`, [H, 2 * H]]);
    out.push([`${p}.input_layernorm.weight`, [H]], [`${p}.self_attn.q_a_proj.weight`, [ql, H]], [`${p}.self_attn.q_a_layernorm.weight`, [ql]]);
    out.push([`${p}.self_attn.q_b_proj.weight`, [nh * (no + ro), ql]], [`${p}.self_attn.kv_a_proj_with_mqa.weight`, [kl + ro, H]]);
    out.push([`${p}.self_attn.kv_a_layernorm.weight`, [kl]], [`${p}.self_attn.kv_b_proj.weight`, [nh * (no + vd), kl]], [`${p}.self_attn.o_proj.weight`, [H, nh * vd]]);
    out.push([`${p}.post_attention_layernorm.weight`, [H]]);
    if (i < c.first_k_dense_replace) {
      out.push([`${p}.mlp.gate_proj.weight`, [I, H]], [`${p}.mlp.up_proj.weight`, [I, H]], [`${p}.mlp.down_proj.weight`, [H, I]]);
    } else {
      out.push([`${p}.mlp.gate.weight`, [E, H]], [`${p}.mlp.gate.e_score_correction_bias`, [E]]);
      out.push([`${p}.mlp.shared_experts.gate_proj.weight`, [mI * S, H]], [`${p}.mlp.shared_experts.up_proj.weight`, [mI * S, H]], [`${p}.mlp.shared_experts.down_proj.weight`, [H, mI * S]]);
      for (let e = 0; e < E; e++) {
        out.push([`${p}.mlp.experts.${e}.gate_proj.weight`, [mI, H]], [`${p}.mlp.experts.${e}.up_proj.weight`, [mI, H]], [`${p}.mlp.experts.${e}.down_proj.weight`, [H, mI]]);
      }
    }
    if (i >= c.num_hidden_layers) out.push([`${p}.shared_head.norm.weight`, [H]], [`${p}.shared_head.head.weight`, [V, H]]);
  }
  out.push(['model.norm.weight', [H]], ['lm_head.weight', [V, H]]);
  return out;
}

export function deepseekMs(c = DEEPSEEK_CONFIG): Spec[] {
  const { hidden_size: H, num_attention_heads: nh, q_lora_rank: ql, kv_lora_rank: kl, qk_nope_head_dim: no, qk_rope_head_dim: ro, v_head_dim: vd } = c;
  const { intermediate_size: I, moe_intermediate_size: mI, n_routed_experts: E, n_shared_experts: S, vocab_size: V } = c;
  const out: Spec[] = [['model.tok_embeddings.embedding_weight', [V, H]]];
  for (let i = 0; i < c.num_hidden_layers + c.num_nextn_predict_layers; i++) {
    const p = `model.layers.${i}`;
    out.push([`${p}.attention_norm.weight`, [H]], [`${p}.attention.q2l_proj.weight`, [ql, H]], [`${p}.attention.lq_norm.weight`, [ql]]);
    out.push([`${p}.attention.l2q_nope_proj.weight`, [nh * no, ql]], [`${p}.attention.l2q_pe_proj.weight`, [nh * ro, ql]]);
    out.push([`${p}.attention.kv2l_latent_kv.weight`, [kl, H]], [`${p}.attention.kv2l_k_pe.weight`, [ro, H]], [`${p}.attention.lkv_norm.weight`, [kl]]);
    out.push([`${p}.attention.lkv2kv_k_nope.weight`, [nh * no, kl]], [`${p}.attention.lkv2kv_v.weight`, [nh * vd, kl]], [`${p}.attention.wo.weight`, [H, nh * vd]]);
    out.push([`${p}.ffn_norm.weight`, [H]]);
    const f = `${p}.feed_forward`;
    if (i < c.first_k_dense_replace) {
      out.push([`${f}.w1.weight`, [I, H]], [`${f}.w2.weight`, [H, I]], [`${f}.w3.weight`, [I, H]]);
    } else {
      out.push([`${f}.routed_experts.router.dense.weight`, [E, H]], [`${f}.routed_experts.router.router.topk_bias`, [E]]);
      out.push([`${f}.shared_experts.w1.weight`, [mI * S, H]], [`${f}.shared_experts.w2.weight`, [H, mI * S]], [`${f}.shared_experts.w3.weight`, [mI * S, H]]);
      out.push([`${f}.routed_experts.ffn.w1.weight`, [E, mI, H]], [`${f}.routed_experts.ffn.w2.weight`, [E, H, mI]], [`${f}.routed_experts.ffn.w3.weight`, [E, mI, H]]);
    }
    if (i >= c.num_hidden_layers) {
      const j = i - c.num_hidden_layers;
      out.push([`model.mtp_hidden_fusers.${j}.norm_emb.weight`, [H]], [`model.mtp_hidden_fusers.${j}.norm.weight`, [H]]);
      out.push([`model.mtp_hidden_fusers.${j}.dense.weight`, [H, 2 * H]], [`model.mtp_norms.${j}.weight`, [H]]);
    }
  }
  out.push(['model.norm_out.weight', [H]], ['lm_head.weight', [V, H]]);
  return out;
}

/** Random tensors for a key set; `dtypeOf` picks a dtype per name (default BF16). */
export function makeTensors(specs: readonly Spec[], seed: number, dtypeOf: (name: string) => StDtype = () => 'BF16'): HfTensor[] {
  return specs.map(([n, s], i) => randomTensor(n, dtypeOf(n), s, seed * 7919 + i + 1));
}
