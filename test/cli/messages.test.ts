/**
 * What the CLI says when the world is not as expected: a reader that goes away, system errors,
 * a launch outside msrun, progress on odd terminals.
 */
import { execa } from 'execa';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createProgress, FALLBACK_COLUMNS, progressLine } from '../../plugin/cli/progress.js';
import { MSCKPT_BIN } from '../helpers/cli.js';
import { layout, saveStrategy, withTempDir, writeCkpt, type GenTensor } from '../transform/helpers.js';
import { runMain } from './run-main.js';

describe('a closed stdout', () => {
  it('`plan --json | head -c 10` ends quietly with exit 0 (no EPIPE stack)', async () => {
    await withTempDir(async (dir) => {
      const names = Array.from({ length: 300 }, (_v, i) => `model.layers.${i}.w`);
      const tensors: GenTensor[] = names.map((name) => ({ name, dtype: 'Float32', shape: [8, 4], data: new Uint8Array(128) }));
      const src = join(dir, 'big.ckpt');
      await writeCkpt(src, tensors);
      const s8 = await saveStrategy(join(dir, 's8.ckpt'), names.map((n) => layout(n, [8], [0, -1])));
      const cmd = `set -o pipefail; "${process.execPath}" "${MSCKPT_BIN}" plan --src-checkpoint "${src}" --dst-strategy "${s8}" --json | head -c 10`;
      const r = await execa('bash', ['-c', cmd], { reject: false, env: process.env });
      expect(r.stdout).toBe('{"kind":"p');
      expect(r.stderr).toBe('');
      expect(r.exitCode).toBe(0);
    });
  });
});

describe('system errors: one plain line with the path and what to do', () => {
  it('no doubled codes, no stack; the flag or path is named', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'x.ckpt');
      await writeCkpt(src, [{ name: 'w', dtype: 'Float32', shape: [2], data: new Uint8Array(8) }]);
      const same = await runMain(['ckpt-to-safetensors', src, src]);
      expect(same.exitCode).toBe(2);
      expect(same.stderr).not.toMatch(/EEXIST: EEXIST|\n\s+at /);
      expect(same.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(same.stderr).toMatch(/x\.ckpt: the output of one \.ckpt file is a \.safetensors file/);
      // an output under a file: the path and plain words
      await writeFile(join(dir, 'blocker'), 'x');
      const under = await runMain(['ckpt-to-safetensors', src, join(dir, 'blocker', 'out.safetensors')]);
      expect(under.exitCode).not.toBe(0);
      expect(under.stderr).toMatch(/^msckpt: \S*blocker: [a-z ]+ \(E[A-Z]+\); [a-z ]+\n$/);
      expect(under.stderr).not.toMatch(/E[A-Z]+: E[A-Z]+|\n\s+at /);
      const mem = await runMain(['plan', '--src-checkpoint', src, '--memory', '-5']);
      expect(mem.exitCode).toBe(2);
      expect(mem.stderr).toMatch(/^msckpt: --memory: cannot read '-5'/);
    });
  });

  it('launch outside msrun says that no msrun environment was found, and which variables were looked for', async () => {
    await withTempDir(async (dir) => {
      await mkdir(join(dir, 'w'));
      await writeFile(
        join(dir, 'run.yaml'),
        ['output_dir: ./output', 'load_checkpoint: ./w', 'auto_trans_ckpt: True', 'use_parallel: True', 'parallel_config:', '  data_parallel: 2', '  model_parallel: 4', '  pipeline_stage: 1', ''].join('\n'),
      );
      const env: Record<string, string> = {};
      for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !/^(RANK_ID|RANK_SIZE|MS_WORKER_NUM|MS_NODE_RANK|DEVICE_ID|MS_ROLE)$/.test(k)) env[k] = v;
      const r = await execa(process.execPath, [MSCKPT_BIN, 'launch', '--config', 'run.yaml', '--', 'true'], { cwd: dir, env, extendEnv: false, reject: false });
      expect(r.exitCode).toBe(2);
      expect(r.stderr).toMatch(/no msrun environment found \(none of RANK_ID, RANK_SIZE, MS_WORKER_NUM, MS_NODE_RANK, DEVICE_ID, MS_ROLE is set\), but run\.yaml describes 8 devices/);
      expect(r.stderr).not.toMatch(/device count 1/);
    });
  });
});

class FakeTty extends PassThrough {
  isTTY = true;
  constructor(readonly columns: number) {
    super();
  }
}

describe('progress', () => {
  it('a real total shows a percentage; an unknown total shows bytes and rate only', () => {
    expect(progressLine(512, 1024, 1000, '', 200)).toMatch(/^50\.0% 512 B\/1\.0 KiB 512 B\/s ETA 1\.0 s$/);
    const unknown = progressLine(2.4 * 2 ** 20, 0, 2000, 'rank_0/x.safetensors', 200);
    expect(unknown).toBe('2.4 MiB 1.2 MiB/s rank_0/x.safetensors');
    expect(unknown).not.toMatch(/%/);
    // work that outgrows the total it announced: no "140%"
    expect(progressLine(1400, 1000, 1000, '', 200)).not.toMatch(/%/);
  });

  it('a terminal reporting 0 columns gets the fallback width, not a line cut to nothing', () => {
    const stream = new FakeTty(0);
    let written = '';
    stream.on('data', (c: Buffer) => (written += c.toString()));
    const p = createProgress(1000, true, stream as unknown as NodeJS.WriteStream);
    p.label('rank_3/checkpoint_3.ckpt');
    p.advance(500);
    p.done();
    const last = written.split('\r\x1b[2K').pop() as string;
    expect(last).toMatch(/^50\.0% 500 B\/1000 B .* rank_3\/checkpoint_3\.ckpt\n$/);
    const long = progressLine(1, 2, 1000, 'x'.repeat(300), 0);
    expect(long.length).toBe(FALLBACK_COLUMNS - 1);
  });
});
