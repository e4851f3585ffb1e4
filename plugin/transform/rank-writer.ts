/**
 * The one rank writer: the destination ranks of a plan, written in groups (consecutive ranks of
 * one stage listing the same tensors, `rankPlanGroups`), each file under a temporary name and
 * renamed when complete, each committed file reported with its size and CRC-32 (computed while
 * writing, unless `fileCrc32: false`) as soon as it is committed. Used by `transformCheckpoints` (in one process or in its
 * workers), the launcher's converter ranks and `lora-merge`.
 */
import { stat } from 'node:fs/promises';
import { FailureError } from '../errors.js';
import { createWeightsSink } from '../formats/open.js';
import type { WeightsFormat } from '../formats/resolve.js';
import { defaultSourceIO, type SourceIO } from '../formats/source-index.js';
import type { SinkCommit, TensorSink } from '../formats/types.js';
import { openPlanSource, type Plan, type RankPlan } from '../plan/index.js';
import {
  createTransformSourcePool, executeRankPlanGroup, rankPlanGroups, sinkTensorOf,
  TransformBuffers, transformGroupBufferSizes, transformGroupSize, type BandHook,
} from './execute.js';
import { fileCrc32Of } from './file-crc.js';

/** A destination file, complete under its final name. */
export interface CommittedRankFile {
  readonly rank: number;
  /** Absolute path. */
  readonly path: string;
  readonly size: number;
  readonly crc32: number;
}

/** Fault injection for tests: after `afterFiles` committed files, throw or die (SIGKILL). */
export interface RankWriterFaults {
  readonly afterFiles: number;
  readonly action: 'throw' | 'kill';
}

export interface WriteRanksOptions {
  readonly plan: Plan;
  /** Destination ranks to write, in order. */
  readonly ranks: readonly number[];
  /** The file of destination rank `r`. */
  readonly outputPath: (rank: number) => string;
  readonly format: WeightsFormat;
  /** Buffer budget, bytes (default: the plan's). */
  readonly memory?: number;
  /** Largest band buffer per rank, bytes (default: from the budget). */
  readonly bandBytes?: number;
  /** `.ckpt`: the CRC trailer; safetensors: `crc_num` in the metadata. */
  readonly crc?: boolean;
  /**
   * Compute each file's CRC-32 while writing (default true). false: not computed (about 0.26 s of
   * CPU per GiB saved), and each committed file reports `crc32: NaN`; for callers that do not use it.
   */
  readonly fileCrc32?: boolean;
  /** How sources are opened (default: from the plan's indexes, no header read). */
  readonly io?: SourceIO;
  /** Called as each file is committed (awaited before the next group starts). */
  readonly onCommit?: (file: CommittedRankFile) => void | Promise<void>;
  /** Called before each group with its ranks. */
  readonly onGroup?: (ranks: readonly number[]) => void;
  readonly onBytes?: (n: number) => void;
  readonly onBand?: BandHook;
  /** Band buffers in SharedArrayBuffers (a band hook hands them to worker threads). */
  readonly sharedBuffers?: boolean;
  readonly faults?: RankWriterFaults;
}

export interface WriteRanksResult {
  readonly files: readonly CommittedRankFile[];
  /** Bytes delivered from the sources. */
  readonly bytesRead: number;
  /** Bytes of the files written. */
  readonly bytesWritten: number;
}

/** Write the destination ranks of a plan (see the module comment). */
export async function writeRanks(opts: WriteRanksOptions): Promise<WriteRanksResult> {
  const { plan, format } = opts;
  const memory = opts.memory ?? plan.memory;
  const io = opts.io ?? defaultSourceIO;
  const pool = createTransformSourcePool((rank) => {
    const s = plan.source.files[rank];
    if (s === undefined) throw new FailureError(`the plan has no source rank ${rank}`);
    return openPlanSource(s, io);
  });
  // destination ranks of the same stage listing the same tensors are converted together (each
  // source span read once for the whole group); the band budget is split across the group
  const groupSize = transformGroupSize(memory);
  const sizes = transformGroupBufferSizes(memory, groupSize);
  const buffers = new TransformBuffers(opts.bandBytes !== undefined ? { ...sizes, band: opts.bandBytes } : sizes, opts.sharedBuffers === true);
  const files: CommittedRankFile[] = [];
  let bytesRead = 0;
  let bytesWritten = 0;
  try {
    for (const group of rankPlanGroups(plan, opts.ranks, format, groupSize)) {
      opts.onGroup?.(group.map((rp) => rp.rank));
      const sinks: TensorSink[] = [];
      let closed = 0;
      try {
        for (const rp of group) sinks.push(await createWeightsSink(opts.outputPath(rp.rank), format, rp.tensors.map(sinkTensorOf), { crc: opts.crc === true, fileCrc32: opts.fileCrc32 !== false }));
        bytesRead += await executeRankPlanGroup(group, pool, sinks, buffers, {
          ...(opts.onBytes !== undefined ? { onBytes: opts.onBytes } : {}),
          ...(opts.onBand !== undefined ? { onBand: opts.onBand } : {}),
        });
        for (let k = 0; k < sinks.length; k++) {
          const sink = sinks[k] as TensorSink;
          const c: SinkCommit | void = await sink.close();
          closed++;
          // the CRC-32 computed while writing; read the file back only when the writes could not tell
          const known = opts.fileCrc32 === false ? { size: c !== undefined ? c.size : (await stat(sink.path)).size, crc32: Number.NaN }
            : c !== undefined && c.crc32 !== null ? { size: c.size, crc32: c.crc32 } : await fileCrc32Of(sink.path);
          const file: CommittedRankFile = { rank: (group[k] as RankPlan).rank, path: sink.path, ...known };
          files.push(file);
          bytesWritten += file.size;
          await opts.onCommit?.(file);
          const f = opts.faults;
          if (f !== undefined && files.length >= f.afterFiles) {
            if (f.action === 'kill') process.kill(process.pid, 'SIGKILL');
            throw new FailureError(`injected failure after ${files.length} file(s)`);
          }
        }
      } catch (err) {
        // files already closed are complete; the rest of the group is dropped (temporary files removed)
        for (const sink of sinks.slice(closed)) await sink.abort().catch(() => undefined);
        throw err;
      }
    }
  } finally {
    await pool.close();
  }
  return { files, bytesRead, bytesWritten };
}
