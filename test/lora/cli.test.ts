import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { maxUlp, randomTensor, readCkpt, referenceMerge, rng, writeCkpt } from './helpers.js';

let root = '';
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'msckpt-lora-cli-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('msckpt lora-merge (CLI)', () => {
  it('merges with snake_case flags, an alpha/rank scaling and --json', async () => {
    const rand = rng(77);
    const w = randomTensor('m.q.weight', 'Float16', [8, 6], rand);
    const a = randomTensor('m.q.mindpet_delta_lora_a', 'Float16', [2, 6], rand, 0.5);
    const b = randomTensor('m.q.mindpet_delta_lora_b', 'Float16', [8, 2], rand, 0.5);
    const src = join(root, 'ok.ckpt');
    await writeCkpt(src, [w, a, b]);
    const r = await runCli([
      'lora-merge', '--src_ckpt_path_or_dir', src, '--dst_ckpt_dir', join(root, 'ok'), '--lora_scaling', '4/2', '--json',
    ]);
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    const out = JSON.parse(r.stdout) as { ok: boolean; scaling: number; files: string[]; merged: unknown[] };
    expect(out.ok).toBe(true);
    expect(out.scaling).toBe(2);
    expect(out.merged.length).toBe(1);
    const got = await readCkpt(out.files[0] as string);
    expect(got.map((t) => t.name)).toEqual(['m.q.weight']);
    expect(maxUlp((got[0] as { data: Uint8Array }).data, referenceMerge(w, a, b, 2).data, 'Float16')).toBeLessThanOrEqual(1);
  });

  it('takes the scaling from --adapter-config', async () => {
    const rand = rng(78);
    const src = join(root, 'peft.ckpt');
    await writeCkpt(src, [
      randomTensor('m.k.weight', 'BFloat16', [4, 4], rand),
      randomTensor('base_model.model.m.k.lora_A.weight', 'BFloat16', [2, 4], rand),
      randomTensor('base_model.model.m.k.lora_B.weight', 'BFloat16', [4, 2], rand),
    ]);
    const cfg = join(root, 'adapter_config.json');
    await writeFile(cfg, JSON.stringify({ r: 2, lora_alpha: 8 }));
    const r = await runCli(['lora-merge', '--src-ckpt-path-or-dir', src, '--dst-ckpt-dir', join(root, 'peft'), '--adapter-config', cfg]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/merged 1 LoRA pair\(s\) with scaling 4 \(alpha 8 \/ rank 2, from adapter-config\)/);
  });

  it('exit 2 and one line for: no scaling, no base, shape mismatch', async () => {
    const rand = rng(79);
    const src = join(root, 'bad.ckpt');
    await writeCkpt(src, [
      randomTensor('m.q.weight', 'Float16', [8, 6], rand),
      randomTensor('m.q.mindpet_delta_lora_a', 'Float16', [2, 6], rand),
      randomTensor('m.q.mindpet_delta_lora_b', 'Float16', [7, 2], rand),
      randomTensor('m.nobase.mindpet_delta_lora_a', 'Float16', [2, 6], rand),
      randomTensor('m.nobase.mindpet_delta_lora_b', 'Float16', [8, 2], rand),
    ]);
    const noScale = await runCli(['lora-merge', '--src-ckpt-path-or-dir', src, '--dst-ckpt-dir', join(root, 'bad')]);
    expect(noScale.exitCode).toBe(2);
    expect(noScale.stderr).toMatch(/no LoRA scaling given/);
    expect(noScale.stderr).not.toMatch(/\n\s+at /);

    const bad = await runCli(['lora-merge', '--src-ckpt-path-or-dir', src, '--dst-ckpt-dir', join(root, 'bad'), '--lora-scaling', '2']);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toMatch(/2 LoRA problem\(s\)/);
    expect(bad.stderr).toMatch(/'m\.nobase\.mindpet_delta_lora_a' has no base weight/);
    expect(bad.stderr).toMatch(/B m\.q\.mindpet_delta_lora_b \[7,2\] Float16 has 7 rows but W m\.q\.weight \[8,6\] Float16 has 8/);
    expect(bad.stderr).not.toMatch(/\n\s+at /);

    const rankMismatch = await runCli(['lora-merge', '--src-ckpt-path-or-dir', src, '--dst-ckpt-dir', join(root, 'bad'), '--lora-scaling', '16/8']);
    expect(rankMismatch.exitCode).toBe(2);
    expect(rankMismatch.stderr).toMatch(/LoRA rank is 2 but the scaling was given for rank 8/);
  });
});
