/**
 * `msckpt launch` with `load_ckpt_format: safetensors`, end to end: real processes through the
 * msrun stand-in, each rank running the real CLI, the training stand-in checking every rank's
 * safetensors bytes.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { openSafetensors } from '../../plugin/formats/safetensors/index.js';
import { loadRunConfig } from '../../plugin/launcher/config.js';
import { launchSources, safetensorsSlicingOf } from '../../plugin/launcher/launch.js';
import { writeCompleteSafetensors, writeStrategyForRank } from '../../examples/stand-ins/model.js';
import { exitCodes, trainReports, useJobDirs, runJob, runYaml, writeSlicedST, writeUnified, writeYaml } from './launch-helpers.js';

const jobDir = useJobDirs();

describe('launch: load_ckpt_format safetensors', () => {
  it('ACCEPTANCE: unified complete safetensors -> dp2·mp2·pp2, 8 ranks on 2 nodes, 2 converters', async () => {
    const dir = await jobDir();
    await writeUnified(dir);
    expect((await readdir(join(dir, 'weights', 'llama_unified'))).filter((n) => /^part\d+\.safetensors$/.test(n)).length).toBeGreaterThan(1);
    await writeYaml(
      dir,
      runYaml({ load: './weights/llama_unified', format: 'safetensors', par: { dp: 2, mp: 2, pp: 2 }, tpn: 2, msckpt: { shared_disk: true, poll_interval: '100ms' } }),
    );
    const logs = join(dir, 'logs');
    const r = await runJob({ nodeDirs: [dir, dir], logDir: logs });
    expect(exitCodes(r), r.logs.join('\n')).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    const reps = await trainReports(logs);
    expect([...reps.keys()].sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    for (const [rank, rep] of reps) {
      expect(rep.problems).toEqual([]);
      expect(rep.format).toBe('safetensors');
      expect(rep.autoTrans).toBe(false);
      expect(rep.file).toBe(join(dir, 'output', 'transformed_checkpoint', 'llama_unified', `rank_${rank}`, `checkpoint_${rank}.safetensors`));
      // MindSpore's safetensors conventions: {"format":"ms"}, keys sorted (checked by the stand-in)
      const st = await openSafetensors(rep.file);
      try {
        expect(st.rawMetadata['format']).toBe('ms');
        const names = st.entries().map((e) => e.name);
        expect(names).toEqual([...names].sort());
      } finally {
        await st.close();
      }
    }
    expect(r.logs[0]).toMatch(/merged 8 strategy files \(stages 0, 1\)/);
    expect(r.logs[0]).toMatch(/llama_unified: .* -> .*rank_R\/checkpoint_R\.safetensors/);
    expect(r.logs[0]).toMatch(/converted slices 0\.\.3 \(4 file\(s\)\)/);
    expect(r.logs[4]).toMatch(/converted slices 4\.\.7 \(4 file\(s\)\)/);
    // the derived YAML keeps the format and points at the converted folder
    const derived = await readFile(join(dir, 'output', 'msckpt', 'train_rank_3.yaml'), 'utf8');
    expect(derived).toMatch(/load_ckpt_format: '?safetensors'?/);
    expect(derived).toContain(join(dir, 'output', 'transformed_checkpoint', 'llama_unified'));
    expect(await readFile(join(dir, 'run.yaml'), 'utf8')).toContain('auto_trans_ckpt: True');
  });

  it('distributed safetensors mp2 -> mp4: per rank the newest file, strategy folder beside the weights', async () => {
    const dir = await jobDir();
    // names end -1_10 and -1_9: file-name order would pick 1_9 (zeros, older); the newest is 1_10
    await writeSlicedST(dir, { dp: 1, mp: 2, pp: 1 }, [[1, 9], [1, 10]]);
    await writeYaml(dir, runYaml({ load: './sliced', format: 'safetensors', par: { dp: 1, mp: 4, pp: 1 }, tpn: 2 }));
    // the job's strategy given (the strategy pass is covered above)
    await writeStrategyForRank(join(dir, 'dst.ckpt'), { dp: 1, mp: 4, pp: 1 }, 0);
    const logs = join(dir, 'logs');
    const r = await runJob({ nodeDirs: [dir], workerNum: 4, logDir: logs, launchArgs: ['--dst-strategy', './dst.ckpt'] });
    expect(exitCodes(r), r.logs.join('\n')).toEqual([0, 0, 0, 0]);
    const reps = await trainReports(logs);
    expect([...reps.keys()].sort()).toEqual([0, 1, 2, 3]);
    for (const [rank, rep] of reps) {
      expect(rep.problems).toEqual([]);
      expect(rep.file).toBe(join(dir, 'output', 'transformed_checkpoint', 'sliced', `rank_${rank}`, `checkpoint_${rank}.safetensors`));
    }
    expect(r.logs[0]).toMatch(/rank_0: 2 \.safetensors files, using llama_rank_0-1_10\.safetensors/);
    expect(r.logs[0]).toMatch(/converted slices 0\.\.1 \(2 file\(s\)\)/);
    expect(r.logs[2]).toMatch(/converted slices 2\.\.3 \(2 file\(s\)\)/);
  });

  it('msckpt.safetensors_slicing: load-time leaves an HF-indexed folder unified for load-time slicing', async () => {
    const dir = await jobDir();
    const weights = await writeUnified(dir, 'llama_hf', true);
    await writeYaml(
      dir,
      runYaml({ load: './weights/llama_hf', format: 'safetensors', par: { dp: 1, mp: 2, pp: 2 }, msckpt: { safetensors_slicing: 'load-time' } }),
    );
    const logs = join(dir, 'logs');
    const r = await runJob({ nodeDirs: [dir], workerNum: 4, logDir: logs });
    expect(exitCodes(r), r.logs.join('\n')).toEqual([0, 0, 0, 0]);
    const reps = await trainReports(logs);
    expect([...reps.keys()].sort()).toEqual([0, 1, 2, 3]);
    for (const rep of reps.values()) {
      expect(rep.problems).toEqual([]);
      expect(rep.loadTime).toBe(true);
      expect(rep.autoTrans).toBe(true);
      expect(rep.file).toBe(weights);
    }
    expect(r.logs[0]).toMatch(/load-time slicing .* is left unified/);
    // no strategy pass, no conversion
    expect(existsSync(join(dir, 'output', 'transformed_checkpoint'))).toBe(false);
    expect(existsSync(join(dir, 'output', 'strategy'))).toBe(false);
  });
});

describe('launch: safetensors sources (no processes)', () => {
  async function cfgFor(dir: string, yaml: string): Promise<Awaited<ReturnType<typeof loadRunConfig>>> {
    await writeYaml(dir, yaml);
    return loadRunConfig(join(dir, 'run.yaml'), { worldSize: 4, cwd: dir });
  }

  it('a unified folder, an HF index and a lone file are one source each; several files without an index are refused', async () => {
    const dir = await jobDir();
    const par = { dp: 1, mp: 4, pp: 1 };
    await writeUnified(dir, 'uni');
    await writeUnified(dir, 'hf', true);
    await mkdir(join(dir, 'weights', 'one'), { recursive: true });
    await writeCompleteSafetensors(join(dir, 'weights', 'one', 'model.safetensors'));
    const uni = await cfgFor(dir, runYaml({ load: './weights/uni', format: 'safetensors', par }));
    expect((await launchSources(uni)).map(({ name, path }) => ({ name, path }))).toEqual([{ name: 'uni', path: join(dir, 'weights', 'uni') }]);
    expect(safetensorsSlicingOf(uni)).toBe('convert');
    const hf = await cfgFor(dir, runYaml({ load: './weights/hf', format: 'safetensors', par, msckpt: { safetensors_slicing: 'load-time' } }));
    expect((await launchSources(hf)).map(({ name, path }) => ({ name, path }))).toEqual([{ name: 'hf', path: join(dir, 'weights', 'hf', 'model.safetensors.index.json') }]);
    expect(safetensorsSlicingOf(hf)).toBe('load-time');
    const one = await cfgFor(dir, runYaml({ load: './weights/one', format: 'safetensors', par }));
    expect((await launchSources(one)).map(({ name, path }) => ({ name, path }))).toEqual([{ name: 'model', path: join(dir, 'weights', 'one', 'model.safetensors') }]);
    await writeFile(join(dir, 'weights', 'one', 'extra.safetensors'), await readFile(join(dir, 'weights', 'one', 'model.safetensors')));
    const two = await cfgFor(dir, runYaml({ load: './weights/one', format: 'safetensors', par }));
    await expect(launchSources(two)).rejects.toThrow(/2 \.safetensors files but no param_name_map\.json or \*\.index\.json/);
  });

  it('the schema refuses an unknown safetensors_slicing value', async () => {
    const dir = await jobDir();
    await writeUnified(dir, 'uni');
    await expect(cfgFor(dir, runYaml({ load: './weights/uni', format: 'safetensors', par: { dp: 1, mp: 4, pp: 1 }, msckpt: { safetensors_slicing: 'lazy' } }))).rejects.toThrow(
      /safetensors_slicing/,
    );
  });
});
