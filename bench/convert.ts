/**
 * `npm run bench -- convert`: a generated ~2 GiB llama-shaped HF checkpoint (bf16, 2 shards +
 * index) converted HF -> MindSpore .ckpt and back to HF shards, each in a child process.
 * Prints throughput, the ratio to `cp` of the same bytes measured in the same run, and the
 * child's peak RSS (goal < 600 MiB).
 */
import { execFile } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { mkdir, mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const exec = promisify(execFile);
const MiB = 1024 * 1024;

const CONFIG = {
  architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 2048, num_hidden_layers: 18, num_attention_heads: 16,
  num_key_value_heads: 16, intermediate_size: 5632, vocab_size: 32000, tie_word_embeddings: false, torch_dtype: 'bfloat16',
};

function tensors(): Array<[string, number[]]> {
  const { hidden_size: H, intermediate_size: I, vocab_size: V } = CONFIG;
  const out: Array<[string, number[]]> = [['model.embed_tokens.weight', [V, H]]];
  for (let i = 0; i < CONFIG.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    out.push([`${p}.input_layernorm.weight`, [H]]);
    for (const n of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) out.push([`${p}.self_attn.${n}.weight`, [H, H]]);
    out.push([`${p}.post_attention_layernorm.weight`, [H]]);
    out.push([`${p}.mlp.gate_proj.weight`, [I, H]], [`${p}.mlp.up_proj.weight`, [I, H]], [`${p}.mlp.down_proj.weight`, [H, I]]);
  }
  out.push(['model.norm.weight', [H]], ['lm_head.weight', [V, H]]);
  return out;
}

async function writeShard(path: string, list: Array<[string, number[]]>, block: Uint8Array): Promise<number> {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let off = 0;
  for (const [n, s] of list) {
    const b = s.reduce((a, x) => a * x, 1) * 2;
    header[n] = { dtype: 'BF16', shape: s, data_offsets: [off, off + b] };
    off += b;
  }
  let json = JSON.stringify(header);
  while ((json.length + 8) % 8 !== 0) json += ' ';
  const h = await open(path, 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  await h.write(len, 0, 8, 0);
  await h.write(Buffer.from(json), 0, json.length, 8);
  let pos = 8 + json.length;
  const end = pos + off;
  let k = 0;
  while (pos < end) {
    const n = Math.min(block.byteLength - (k % 7) * 8, end - pos);
    await h.write(block, (k++ % 7) * 8, n, pos);
    pos += n;
  }
  await h.close();
  return off;
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

interface ChildFigures {
  secs: number;
  bytes: number;
  maxRssKiB: number;
  userSecs: number;
  sysSecs: number;
}

async function child(args: string[]): Promise<ChildFigures> {
  const script = fileURLToPath(new URL('./_convert-child.ts', import.meta.url));
  const { stdout } = await exec(process.execPath, ['--import', 'tsx', script, ...args], { maxBuffer: 1 << 20 });
  return JSON.parse(stdout.trim().split('\n').pop() as string) as ChildFigures;
}

/** Write the bench's llama-shaped HF checkpoint (config.json, 2 shards, index) into `hf`; returns its tensor bytes. */
export async function makeHfCheckpoint(hf: string): Promise<{ total: number; tensors: number }> {
  await mkdir(hf, { recursive: true });
  await writeFile(join(hf, 'config.json'), JSON.stringify(CONFIG));
  const all = tensors();
  const half = Math.ceil(all.length / 2);
  const block = randomFillSync(new Uint8Array(64 * MiB));
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (const [i, part] of [all.slice(0, half), all.slice(half)].entries()) {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    total += await writeShard(join(hf, file), part, block);
    for (const [n] of part) weightMap[n] = file;
  }
  await writeFile(join(hf, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }));
  return { total, tensors: all.length };
}

export async function run(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'msckpt-bench-convert-'));
  try {
    const hf = join(dir, 'hf');
    const { total, tensors: count } = await makeHfCheckpoint(hf);
    // Flush the generated shards now so that the `cp` baseline is not charged for writing them back.
    await exec('sync', []);
    const gib = (total / 1024 ** 3).toFixed(2);
    process.stdout.write(`llama-shaped HF checkpoint: ${count} tensors, ${gib} GiB bf16 in 2 shards\n`);

    const cpDir = join(dir, 'cp');
    await mkdir(cpDir);
    const cpHf = await timed(async () => {
      await exec('cp', [join(hf, 'model-00001-of-00002.safetensors'), join(hf, 'model-00002-of-00002.safetensors'), cpDir]);
      await exec('sync', []); // our outputs are fsynced; so is the copy we compare with
    });
    await rm(cpDir, { recursive: true });
    const ckpt = join(dir, 'model.ckpt');
    await exec('sync', []);
    const fwd = await child(['llama', hf, ckpt, 'forward']);
    const ckptSize = (await stat(ckpt)).size;
    const cpCk = await timed(async () => {
      await exec('cp', [ckpt, join(dir, 'copy.ckpt')]);
      await exec('sync', []);
    });
    await rm(join(dir, 'copy.ckpt'));
    await rm(hf, { recursive: true });
    const back = join(dir, 'back');
    await writeFile(join(dir, 'config.json'), JSON.stringify(CONFIG));
    await exec('sync', []);
    const rev = await child(['llama', ckpt, back, 'reversed', join(dir, 'config.json')]);
    const rate = (bytes: number, s: number): string => `${(bytes / MiB / s).toFixed(0)} MiB/s`;
    process.stdout.write(
      `cp HF shards          ${cpHf.toFixed(2)} s  ${rate(total, cpHf)}\n` +
        `HF -> .ckpt           ${fwd.secs.toFixed(2)} s  ${rate(fwd.bytes, fwd.secs)}  ratio to cp ${(cpHf / fwd.secs).toFixed(2)}  peak RSS ${(fwd.maxRssKiB / 1024).toFixed(0)} MiB  cpu ${fwd.userSecs.toFixed(2)} user ${fwd.sysSecs.toFixed(2)} sys\n` +
        `cp .ckpt              ${cpCk.toFixed(2)} s  ${rate(ckptSize, cpCk)}\n` +
        `.ckpt -> HF shards    ${rev.secs.toFixed(2)} s  ${rate(rev.bytes, rev.secs)}  ratio to cp ${(cpCk / rev.secs).toFixed(2)}  peak RSS ${(rev.maxRssKiB / 1024).toFixed(0)} MiB  cpu ${rev.userSecs.toFixed(2)} user ${rev.sysSecs.toFixed(2)} sys\n` +
        `goal: peak RSS < 600 MiB (${Math.max(fwd.maxRssKiB, rev.maxRssKiB) / 1024 < 600 ? 'met' : 'NOT met'}); throughput >= 0.8 of cp\n`,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) await run();
