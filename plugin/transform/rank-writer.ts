/**
 * The one rank writer: the destination ranks of a plan, written in groups (consecutive ranks of
 * one stage listing the same tensors, `rankPlanGroups`), each file under a temporary name and
 * renamed when complete, each committed file reported with its size and CRC-32 (computed while
 * writing, unless `fileCrc32: false`) as soon as it is committed. Used by `transformCheckpoints` (in one process or in its
 * workers), the launcher's converter ranks and `lora-merge`.
 *
 * Source CRCs (`crcSources`): the CRC a source file stores about itself is checked from the very
 * buffers the executor fills (formats/crc-check.ts). The check of a source completes after the
 * last group that reads it, before that group's files are committed (reading only the bytes no
 * read covered); a source this writer never reads is checked at the end by reading it. A
 * mismatch is a `SourceCrcMismatch` (exit 2): the group's files are not committed.
 */
import { stat } from 'node:fs/promises';
import { FailureError } from '../errors.js';
import { SourceCrcMismatch, type CrcCheckResult, type CrcCoverage } from '../formats/crc-check.js';
import { createWeightsSink } from '../formats/open.js';
import type { WeightsFormat } from '../formats/resolve.js';
import { crcCoverageOf, defaultSourceIO, type SourceIO } from '../formats/source-index.js';
import type { SinkCommit, TensorSink } from '../formats/types.js';
import { openPlanSource, sourceIndexOf, type Plan, type RankPlan } from '../plan/index.js';
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

/**
 * Fault injection for tests: after `afterFiles` committed files, or once half the bytes of group
 * number `midGroup` (1-based) are written, throw, die (SIGKILL), or SIGKILL the parent process
 * and go on (a worker whose parent is killed under it).
 */
export interface RankWriterFaults {
  readonly afterFiles: number;
  readonly action: FaultAction;
}

/** A fault half-way through the bytes of group number `midGroup` (1-based). */
export interface MidGroupFault {
  readonly midGroup: number;
  readonly action: FaultAction;
}

export type FaultAction = 'throw' | 'kill' | 'kill-parent' | 'pause';
export type WriterFault = RankWriterFaults | MidGroupFault;

/** What a source's CRC check found, with the plan's source rank. */
export interface SourceCrcChecked extends CrcCheckResult {
  readonly sourceRank: number;
}

function fire(f: WriterFault, what: string): void {
  if (f.action === 'kill') process.kill(process.pid, 'SIGKILL');
  if (f.action === 'kill-parent') {
    const parent = process.ppid;
    process.kill(parent, 'SIGKILL');
    // go on only once the parent is gone (this process re-parented), as after a real kill
    const wait = new Int32Array(new SharedArrayBuffer(4));
    for (let i = 0; i < 500 && process.ppid === parent; i++) Atomics.wait(wait, 0, 0, 10);
    return;
  }
  if (f.action === 'pause') return;
  throw new FailureError(`injected failure ${what}`);
}

/**
 * `pause` (after a commit): say so on stderr and wait for ever with the event loop free, so that a
 * test can signal or kill the process at a known point (temporary files of the group still open).
 */
async function pauseIf(f: WriterFault): Promise<void> {
  if (f.action !== 'pause') return;
  process.stderr.write(`msckpt test-fault: paused (pid ${process.pid})\n`);
  await new Promise<never>(() => {
    setInterval(() => undefined, 1 << 30);
  });
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
  readonly faults?: WriterFault;
  /** Source ranks whose stored CRC this writer checks (those that store none are skipped). */
  readonly crcSources?: readonly number[];
  /** Called when a source's check completed (also when it failed, before the error is thrown). */
  readonly onSourceChecked?: (result: SourceCrcChecked) => void | Promise<void>;
}

export interface WriteRanksResult {
  readonly files: readonly CommittedRankFile[];
  /** Bytes delivered from the sources. */
  readonly bytesRead: number;
  /** Bytes of the files written. */
  readonly bytesWritten: number;
  /** The source CRC checks completed. */
  readonly crcChecks: readonly SourceCrcChecked[];
}

/** Write the destination ranks of a plan (see the module comment). */
export async function writeRanks(opts: WriteRanksOptions): Promise<WriteRanksResult> {
  const { plan, format } = opts;
  const memory = opts.memory ?? plan.memory;
  const io = opts.io ?? defaultSourceIO;
  // the CRC checks: a coverage per checked source, fed by every read of it (kept across reopenings)
  const coverages = new Map<number, CrcCoverage>();
  for (const r of opts.crcSources ?? []) {
    const s = plan.source.files[r];
    if (s === undefined || s.storedCrc === undefined || s.format === null) continue;
    const c = crcCoverageOf(await sourceIndexOf(s));
    if (c !== null) coverages.set(r, c);
  }
  const lastReader = new Map<number, number>(); // source rank -> the last destination rank (in order) reading it
  if (coverages.size > 0) {
    const summaries = new Map(plan.ranks.map((x) => [x.rank, x]));
    for (const r of opts.ranks) for (const src of summaries.get(r)?.sourceRanks ?? []) if (coverages.has(src)) lastReader.set(src, r);
  }
  const crcChecks: SourceCrcChecked[] = [];
  const check = async (src: number): Promise<void> => {
    const c = coverages.get(src);
    if (c === undefined) return;
    coverages.delete(src);
    const result: SourceCrcChecked = { ...(await c.complete()), sourceRank: src };
    crcChecks.push(result);
    await opts.onSourceChecked?.(result);
    if (!result.ok) throw new SourceCrcMismatch(result, src);
  };
  const pool = createTransformSourcePool((rank) => {
    const s = plan.source.files[rank];
    if (s === undefined) throw new FailureError(`the plan has no source rank ${rank}`);
    const c = coverages.get(rank);
    return openPlanSource(s, io, c !== undefined ? { observer: c.observer } : {});
  });
  // destination ranks of the same stage listing the same tensors are converted together (each
  // source span read once for the whole group); the band budget is split across the group
  const groupSize = transformGroupSize(memory);
  const sizes = transformGroupBufferSizes(memory, groupSize);
  const buffers = new TransformBuffers(opts.bandBytes !== undefined ? { ...sizes, band: opts.bandBytes } : sizes, opts.sharedBuffers === true);
  const files: CommittedRankFile[] = [];
  let bytesRead = 0;
  let bytesWritten = 0;
  const f = opts.faults;
  let groupNo = 0;
  let afterFired = false;
  try {
    for (const group of rankPlanGroups(plan, opts.ranks, format, groupSize)) {
      groupNo++;
      opts.onGroup?.(group.map((rp) => rp.rank));
      const sinks: TensorSink[] = [];
      let closed = 0;
      try {
        for (const rp of group) sinks.push(await createWeightsSink(opts.outputPath(rp.rank), format, rp.tensors.map(sinkTensorOf), { crc: opts.crc === true, fileCrc32: opts.fileCrc32 !== false }));
        let onBytes = opts.onBytes;
        if (f !== undefined && 'midGroup' in f && f.midGroup === groupNo) {
          const half = group.reduce((a, rp) => a + rp.bytesWritten, 0) / 2;
          let done = 0;
          let fired = false;
          onBytes = (n) => {
            opts.onBytes?.(n);
            done += n;
            if (!fired && done >= half) {
              fired = true;
              fire(f, `half-way through group ${groupNo}`);
            }
          };
        }
        bytesRead += await executeRankPlanGroup(group, pool, sinks, buffers, {
          ...(onBytes !== undefined ? { onBytes } : {}),
          ...(opts.onBand !== undefined ? { onBand: opts.onBand } : {}),
        });
        // the sources this group reads last: their checks complete before its files are committed
        for (const rp of group) for (const [src, last] of lastReader) if (last === rp.rank) await check(src);
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
          if (f !== undefined && 'afterFiles' in f && !afterFired && files.length >= f.afterFiles) {
            afterFired = true;
            fire(f, `after ${files.length} file(s)`);
            await pauseIf(f);
          }
        }
      } catch (err) {
        // files already closed are complete; the rest of the group is dropped (temporary files removed)
        for (const sink of sinks.slice(closed)) await sink.abort().catch(() => undefined);
        throw err;
      }
    }
    // sources to check that no group read (their outputs were written by an earlier run): read them
    for (const src of [...coverages.keys()]) await check(src);
  } finally {
    await pool.close();
  }
  return { files, bytesRead, bytesWritten, crcChecks };
}
