/**
 * The leader plans once; converter ranks load its plan file and read no source header. Two ranks
 * run `launch()` in this process (rank 0 leads; both convert), each with its own counting source
 * opener, so the header reads of each rank are counted, not guessed.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { defaultSourceIO, type SourceIndex, type SourceIO } from '../../plugin/formats/source-index.js';
import type { TensorSource } from '../../plugin/formats/types.js';
import { launch } from '../../plugin/launcher/launch.js';
import { checkRankFile, writeStrategyForRank } from '../../examples/stand-ins/model.js';
import { runYaml, useJobDirs, writeComplete, writeYaml } from './launch-helpers.js';

const jobDir = useJobDirs();

describe('launch: converters get the plan, not the headers', () => {
  it('after the leader planned, no rank reads a source header; the converted slices are right', async () => {
    const dir = await jobDir();
    await writeComplete(dir);
    await writeStrategyForRank(join(dir, 'dst.ckpt'), { dp: 1, mp: 2, pp: 1 }, 0);
    await writeYaml(dir, runYaml({ load: './weights/model.ckpt', par: { dp: 1, mp: 2, pp: 1 }, tpn: 2 }));
    const headerReads: string[][] = [[], []];
    const opened: number[] = [0, 0];
    const io = (rank: number): SourceIO => ({
      index: async (p: string): Promise<SourceIndex> => {
        headerReads[rank]?.push(p);
        return defaultSourceIO.index(p);
      },
      open: async (index: SourceIndex): Promise<TensorSource> => {
        opened[rank] = (opened[rank] as number) + 1;
        return defaultSourceIO.open(index);
      },
    });
    const logs: string[][] = [[], []];
    const codes = await Promise.all(
      [0, 1].map((rank) =>
        launch({
          config: join(dir, 'run.yaml'),
          cwd: dir,
          command: [process.execPath, '-e', '0', '{config}'],
          env: { ...process.env, RANK_SIZE: '2', MS_WORKER_NUM: '2', RANK_ID: String(rank), DEVICE_ID: String(rank) },
          dstStrategy: './dst.ckpt',
          sourceIO: io(rank),
          log: (line) => logs[rank]?.push(line),
        }),
      ),
    );
    expect(codes, logs.flat().join('\n')).toEqual([0, 0]);
    // the leader read the one source header once, while planning; the other converter none
    expect(headerReads).toEqual([[join(dir, 'weights', 'model.ckpt')], []]);
    // both converted (opening the source from the plan's index)
    expect(opened.every((n) => n > 0)).toBe(true);
    expect(logs[1]?.join('\n')).toMatch(/converted slices 1\.\.1 \(1 file\(s\)\)/);
    for (const rank of [0, 1]) {
      const file = join(dir, 'output', 'transformed_checkpoint', 'model', `rank_${rank}`, `checkpoint_${rank}.ckpt`);
      expect(await checkRankFile(file, { dp: 1, mp: 2, pp: 1 }, rank)).toEqual([]);
    }
  });
});
