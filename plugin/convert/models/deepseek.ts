/**
 * `deepseek`: DeepSeek-V3 (HF DeepseekV3ForCausalLM) <-> mindformers research/deepseek3 (legacy
 * names, batched-matmul expert layout `routed_experts.ffn.w1/w2/w3.weight` [E, out, in]).
 * MLA projections are split per head, the rotary rows of q and k_pe de-interleaved (even rows,
 * then odd rows). FP8 weights with `*_scale_inv` are dequantised in 128x128 blocks on the way in
 * (engine + fp8.ts). MTP layers (index >= num_hidden_layers) go to mtp_hidden_fusers/mtp_norms;
 * their copies of embed_tokens and the head are dropped and written back as copies on the way out.
 */
import { ConfigReader, deinterleavedRows, expertCount, rename, stackExperts } from '../layout.js';
import { defineModel } from '../registry.js';
import type { DuplicateSpec, Link, RowSegment } from '../types.js';

export const deepseek = defineModel({
  name: 'deepseek',
  aliases: ['deepseekv3', 'deepseek3', 'deepseek-v3'],
  description: 'DeepSeek-V3 (MLA, shared + routed experts, router bias, MTP; FP8 dequantised) <-> mindformers deepseek3',
  layout(config, options, ctx) {
    const cfg = new ConfigReader(config, ctx);
    const H = cfg.int('hidden_size');
    const L = cfg.int('num_hidden_layers');
    const nh = cfg.int('num_attention_heads');
    const qlr = config['q_lora_rank'] === null ? 0 : cfg.count('q_lora_rank', 0);
    const kvlr = cfg.int('kv_lora_rank');
    const nope = cfg.int('qk_nope_head_dim');
    const rope = cfg.int('qk_rope_head_dim');
    const vd = cfg.int('v_head_dim');
    const I = cfg.int('intermediate_size');
    const mI = cfg.int('moe_intermediate_size');
    const E = expertCount(cfg, 'n_routed_experts', options);
    const S = cfg.count('n_shared_experts', 0);
    const K = cfg.count('first_k_dense_replace', 0);
    const freq = cfg.int('moe_layer_freq', 1);
    const mtp = cfg.count('num_nextn_predict_layers', 0);
    const V = cfg.int('vocab_size');
    const biasOptional = config['topk_method'] !== 'noaux_tc';
    const qk = nope + rope;

    const links: Link[] = [rename('model.embed_tokens.weight', 'model.tok_embeddings.embedding_weight', [V, H])];
    const duplicates: DuplicateSpec[] = [];
    for (let i = 0; i < L + mtp; i++) {
      const hf = `model.layers.${i}`;
      const ms = `model.layers.${i}`;
      const a = `${hf}.self_attn`;
      links.push(rename(`${hf}.input_layernorm.weight`, `${ms}.attention_norm.weight`, [H]));
      if (qlr > 0) {
        links.push(rename(`${a}.q_a_proj.weight`, `${ms}.attention.q2l_proj.weight`, [qlr, H]));
        links.push(rename(`${a}.q_a_layernorm.weight`, `${ms}.attention.lq_norm.weight`, [qlr]));
        const nopeSegs: RowSegment[] = [];
        const peSegs: RowSegment[] = [];
        for (let h = 0; h < nh; h++) {
          nopeSegs.push({ from: 0, row: h * qk, rows: nope });
          peSegs.push(...deinterleavedRows(0, h * qk + nope, rope));
        }
        links.push({
          hf: [{ name: `${a}.q_b_proj.weight`, shape: [nh * qk, qlr] }],
          ms: [{ name: `${ms}.attention.l2q_nope_proj.weight`, shape: [nh * nope, qlr] }, { name: `${ms}.attention.l2q_pe_proj.weight`, shape: [nh * rope, qlr] }],
          rowElements: qlr,
          segments: [nopeSegs, peSegs],
        });
      } else {
        links.push(rename(`${a}.q_proj.weight`, `${ms}.attention.q_proj.weight`, [nh * qk, H]));
      }
      links.push({
        hf: [{ name: `${a}.kv_a_proj_with_mqa.weight`, shape: [kvlr + rope, H] }],
        ms: [{ name: `${ms}.attention.kv2l_latent_kv.weight`, shape: [kvlr, H] }, { name: `${ms}.attention.kv2l_k_pe.weight`, shape: [rope, H] }],
        rowElements: H,
        segments: [[{ from: 0, row: 0, rows: kvlr }], deinterleavedRows(0, kvlr, rope)],
      });
      links.push(rename(`${a}.kv_a_layernorm.weight`, `${ms}.attention.lkv_norm.weight`, [kvlr]));
      const kSegs: RowSegment[] = [];
      const vSegs: RowSegment[] = [];
      for (let h = 0; h < nh; h++) {
        kSegs.push({ from: 0, row: h * (nope + vd), rows: nope });
        vSegs.push({ from: 0, row: h * (nope + vd) + nope, rows: vd });
      }
      links.push({
        hf: [{ name: `${a}.kv_b_proj.weight`, shape: [nh * (nope + vd), kvlr] }],
        ms: [{ name: `${ms}.attention.lkv2kv_k_nope.weight`, shape: [nh * nope, kvlr] }, { name: `${ms}.attention.lkv2kv_v.weight`, shape: [nh * vd, kvlr] }],
        rowElements: kvlr,
        segments: [kSegs, vSegs],
      });
      links.push(rename(`${a}.o_proj.weight`, `${ms}.attention.wo.weight`, [H, nh * vd]));
      links.push(rename(`${hf}.post_attention_layernorm.weight`, `${ms}.ffn_norm.weight`, [H]));
      const m = `${hf}.mlp`;
      const f = `${ms}.feed_forward`;
      const moe = i >= K && i % freq === 0;
      if (!moe) {
        links.push(rename(`${m}.gate_proj.weight`, `${f}.w1.weight`, [I, H]));
        links.push(rename(`${m}.down_proj.weight`, `${f}.w2.weight`, [H, I]));
        links.push(rename(`${m}.up_proj.weight`, `${f}.w3.weight`, [I, H]));
      } else {
        links.push(rename(`${m}.gate.weight`, `${f}.routed_experts.router.dense.weight`, [E, H]));
        links.push(rename(`${m}.gate.e_score_correction_bias`, `${f}.routed_experts.router.router.topk_bias`, [E], biasOptional));
        if (S > 0) {
          links.push(rename(`${m}.shared_experts.gate_proj.weight`, `${f}.shared_experts.w1.weight`, [mI * S, H]));
          links.push(rename(`${m}.shared_experts.down_proj.weight`, `${f}.shared_experts.w2.weight`, [H, mI * S]));
          links.push(rename(`${m}.shared_experts.up_proj.weight`, `${f}.shared_experts.w3.weight`, [mI * S, H]));
        }
        for (const [hfName, w, shape] of [['gate_proj', 'w1', [mI, H]], ['down_proj', 'w2', [H, mI]], ['up_proj', 'w3', [mI, H]]] as const) {
          const experts = Array.from({ length: E }, (_x, e) => ({ name: `${m}.experts.${e}.${hfName}.weight`, shape }));
          links.push(stackExperts(experts, `${f}.routed_experts.ffn.${w}.weight`));
        }
      }
      if (i >= L) {
        const j = i - L;
        links.push(rename(`${hf}.enorm.weight`, `model.mtp_hidden_fusers.${j}.norm_emb.weight`, [H]));
        links.push(rename(`${hf}.hnorm.weight`, `model.mtp_hidden_fusers.${j}.norm.weight`, [H]));
        links.push(rename(`${hf}.eh_proj.weight`, `model.mtp_hidden_fusers.${j}.dense.weight`, [H, 2 * H]));
        links.push(rename(`${hf}.shared_head.norm.weight`, `model.mtp_norms.${j}.weight`, [H]));
        duplicates.push({ hf: { name: `${hf}.embed_tokens.weight`, shape: [V, H] }, copyOf: 'model.embed_tokens.weight' });
        duplicates.push({ hf: { name: `${hf}.shared_head.head.weight`, shape: [V, H] }, copyOf: 'lm_head.weight' });
      }
    }
    links.push(rename('model.norm.weight', 'model.norm_out.weight', [H]));
    links.push(rename('lm_head.weight', 'lm_head.weight', [V, H], cfg.bool('tie_word_embeddings', false)));
    return { links, duplicates };
  },
});

export const convertHfToMs = deepseek.convertHfToMs;
export const convertMsToHf = deepseek.convertMsToHf;
