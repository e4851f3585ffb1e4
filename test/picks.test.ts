/**
 * One rank_N tree whose folders hold several files: inspect, plan, transform, unify, lora-merge
 * the launcher's source listing and validate all take the same file of each folder (the newest), and a
 * wrong pick would show in the bytes (the other files hold other values).
 */
import { mkdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { inspectWeights } from '../plugin/formats/inspect.js';
import { openSafetensors } from '../plugin/formats/safetensors/index.js';
import { loadRunConfig } from '../plugin/launcher/config.js';
import { launchSources } from '../plugin/launcher/launch.js';
import { sliceBox } from '../plugin/layout/index.js';
import { mergeLora } from '../plugin/lora/index.js';
import { loadPlan } from '../plugin/plan/index.js';
import { transformCheckpoints } from '../plugin/transform/index.js';
import { unifySafetensors } from '../plugin/unify/index.js';
import { layout, randomTensor, readCkpt, rng, sliceOf, writeCkpt, writeStrategyFile, type T } from './lora/helpers.js';
import { withTempDir } from './transform/helpers.js';
import { runCli } from './helpers/cli.js';

describe('one rank_N tree, one file per folder for every command', () => {
  it('inspect, plan, transform, unify, lora-merge, validate and the launcher take the newest file of each folder', async () => {
    await withTempDir(async (dir) => {
      const rand = rng(5);
      const model: T[] = [
        randomTensor('w.weight', 'Float16', [8, 6], rand),
        randomTensor('w.mindpet_delta_lora_a', 'Float16', [2, 6], rand, 0.5),
        randomTensor('w.mindpet_delta_lora_b', 'Float16', [8, 2], rand, 0.5),
        randomTensor('norm', 'Float32', [6], rand),
      ];
      const layouts = [layout('w.weight', [2], [0, -1]), layout('w.mindpet_delta_lora_a', [2], [-1, -1]), layout('w.mindpet_delta_lora_b', [2], [0, -1]), layout('norm', [2], [-1])];
      await writeStrategyFile(join(dir, 'strategy.ckpt'), layouts);
      const tree = join(dir, 'tree');
      // by name order the last is net-9_1, by (epoch, step) net-10_1; the newest is net-2_7
      const names = ['net-10_1', 'net-2_7', 'net-9_1'];
      const right = 'net-2_7';
      for (let r = 0; r < 2; r++) {
        for (const [i, n] of names.entries()) {
          const slices = model.map((t) => sliceOf(t, sliceBox(layouts.find((l) => l.name === t.name)!, t.shape, r)));
          const data = n === right ? slices : slices.map((t) => ({ ...t, data: new Uint8Array(t.data.byteLength).fill(0x11 * (i + 1)) }));
          const p = join(tree, `rank_${r}`, `${n}.ckpt`);
          await writeCkpt(p, data);
          const time = new Date(Date.UTC(2025, 0, 1, 0, n === right ? 30 : i));
          await utimes(p, time, time);
        }
      }
      const want = [0, 1].map((r) => join(tree, `rank_${r}`, `${right}.ckpt`));

      // inspect
      const ins = await inspectWeights(tree);
      expect(ins.kind === 'distributed' && ins.ranks.map((x) => x.file)).toEqual(want);
      // plan
      const { plan } = await loadPlan({ srcCheckpoint: tree, srcStrategy: join(dir, 'strategy.ckpt') });
      expect(plan.source.files.map((f) => f.path)).toEqual(want);
      // the launcher's source listing
      await writeFile(
        join(dir, 'run.yaml'),
        ['output_dir: ./output', 'load_checkpoint: ./tree', 'src_strategy_path_or_dir: ./strategy.ckpt', 'auto_trans_ckpt: True', 'use_parallel: True',
          'parallel:', '  parallel_mode: 1', 'parallel_config:', '  data_parallel: 1', '  model_parallel: 2', '  pipeline_stage: 1'].join('\n'),
      );
      const cfg = await loadRunConfig(join(dir, 'run.yaml'), { worldSize: 2, cwd: dir });
      const listed = await launchSources(cfg);
      expect(listed.map((s) => s.resolved.kind === 'ranks' && s.resolved.ranks.map((x) => x.file.path))).toEqual([want]);
      // validate shows the same files
      const v = await runCli(['validate', join(dir, 'run.yaml'), '--world-size', '2', '--cwd', dir, '--json']);
      expect(v.exitCode, v.stderr).toBe(0);
      const sources = (JSON.parse(v.stdout) as { sources: Array<{ files: Array<{ path: string }> }> }).sources;
      expect(sources.map((x) => x.files.map((f) => f.path))).toEqual([want]);

      // transform (merge to one file): the bytes are the right file's
      await transformCheckpoints({ srcCheckpoint: tree, srcStrategy: join(dir, 'strategy.ckpt'), dstDir: join(dir, 'merged') });
      const merged = await readCkpt(join(dir, 'merged', 'rank_0', 'checkpoint_0.ckpt'));
      expect(merged.map((t) => [t.name, Buffer.from(t.data).toString('hex')])).toEqual(model.map((t) => [t.name, Buffer.from(t.data).toString('hex')]));
      // unify
      const u = await unifySafetensors({ srcDir: tree, srcStrategy: join(dir, 'strategy.ckpt'), dstDir: join(dir, 'unified') });
      expect(u.rankFiles).toEqual(want);
      const uni = await openSafetensors(join(dir, 'unified'));
      for (const t of model) {
        const got = new Uint8Array(t.data.byteLength);
        await uni.readBytes(t.name, 0, got.byteLength, got);
        expect(Buffer.from(got).equals(Buffer.from(t.data)), t.name).toBe(true);
      }
      await uni.close();
      // lora-merge from the tree equals lora-merge from the complete model
      await mkdir(join(dir, 'complete'));
      await writeCkpt(join(dir, 'complete', 'model.ckpt'), model);
      const fromTree = await mergeLora({ src: tree, srcStrategy: join(dir, 'strategy.ckpt'), dstDir: join(dir, 'lora-tree'), scaling: 2, threads: 1 });
      const fromFull = await mergeLora({ src: join(dir, 'complete', 'model.ckpt'), dstDir: join(dir, 'lora-full'), scaling: 2, threads: 1 });
      expect(await readFile(fromTree.files[0]!)).toEqual(await readFile(fromFull.files[0]!));
    });
  });
});
