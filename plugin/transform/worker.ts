/**
 * A converter worker of `transformCheckpoints({ processNum })`, started with node (through
 * `pluginModule('transform/worker')`) and told its job over IPC: the plan file and its
 * fingerprint, the destination ranks it writes, where and how, the source CRCs it checks. It
 * reads no source header and merges no strategy: it loads the plan, writes its ranks with the one
 * rank writer, and reports each committed file, each source check, its progress and its result
 * to the parent. Exit code 2 for bad input, 1 for a failure.
 *
 * A worker never outlives its parent: it stops when the IPC channel closes (the parent exited,
 * however it died, SIGKILL included) or when its parent pid changes (checked every 100 ms), and
 * it commits no file once the parent is gone (a guard run right before every rename). SIGTERM
 * and SIGINT stop it too. In every case its temporary files are removed.
 */
import { describeError, exitCodeOf, FailureError } from '../errors.js';
import { removeLiveTempFiles, setCommitGuard } from '../formats/atomic.js';
import { SourceCrcMismatch } from '../formats/crc-check.js';
import type { WeightsFormat } from '../formats/resolve.js';
import { signalExitCode } from '../interrupt.js';
import { readPlanFile } from '../plan/index.js';
import { writeRanks, type CommittedRankFile, type SourceCrcChecked, type WriterFault } from './rank-writer.js';

/** The job a worker is sent. */
export interface WorkerJob {
  readonly planFile: string;
  readonly fingerprint: string;
  readonly ranks: readonly number[];
  /** Output file of each rank, by rank. */
  readonly outputs: Readonly<Record<string, string>>;
  readonly format: WeightsFormat;
  readonly memory: number;
  readonly crc: boolean;
  /** The parent's pid: the worker stops when it is no longer its parent. */
  readonly parentPid: number;
  /** Source ranks whose stored CRC this worker checks. */
  readonly crcSources: readonly number[];
  readonly faults?: WriterFault;
}

/** What a worker sends its parent. */
export type WorkerMessage =
  | { readonly file: CommittedRankFile }
  | { readonly checked: SourceCrcChecked }
  | { readonly progress: number }
  | { readonly done: { readonly bytesRead: number; readonly bytesWritten: number; readonly maxRssBytes: number } }
  | { readonly error: { readonly message: string; readonly exitCode: 1 | 2; readonly crcSource?: number; readonly crcResult?: SourceCrcChecked } };

function send(m: WorkerMessage): Promise<void> {
  return new Promise((resolve) => {
    if (process.send === undefined || !process.connected) resolve();
    else process.send(m, undefined, {}, () => resolve());
  });
}

let parentPid = process.ppid;
/** Set once the worker is done and lets go of the channel itself. */
let leaving = false;

function parentGone(): boolean {
  return !leaving && (!process.connected || process.ppid !== parentPid);
}

/**
 * Stop: nothing more is committed, this worker's temporary files are removed (once the opens
 * under way have finished), then exit (no message: nobody listens).
 */
let stopping = false;
function stop(code: number): void {
  if (stopping) return;
  stopping = true;
  setCommitGuard(() => {
    throw new FailureError('stopping; nothing more is committed');
  });
  void removeLiveTempFiles().finally(() => process.exit(code));
}

async function run(job: WorkerJob): Promise<void> {
  const plan = await readPlanFile(job.planFile, job.fingerprint);
  let pending = 0;
  let last = 0;
  const r = await writeRanks({
    plan, ranks: job.ranks, format: job.format, memory: job.memory, crc: job.crc, crcSources: job.crcSources,
    outputPath: (rank) => job.outputs[String(rank)] as string,
    onCommit: (file) => send({ file }),
    onSourceChecked: (checked) => send({ checked }),
    onBytes: (n) => {
      pending += n;
      const now = Date.now();
      if (now - last >= 100) {
        last = now;
        void send({ progress: pending });
        pending = 0;
      }
    },
    ...(job.faults !== undefined ? { faults: job.faults } : {}),
  });
  if (pending > 0) await send({ progress: pending });
  await send({ done: { bytesRead: r.bytesRead, bytesWritten: r.bytesWritten, maxRssBytes: process.resourceUsage().maxRSS * 1024 } });
}

for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => stop(signalExitCode(sig)));
// the parent went away (any death closes the channel); not when this worker leaves on its own
process.on('disconnect', () => {
  if (!leaving) stop(1);
});
setCommitGuard(() => {
  if (parentGone()) throw new FailureError('the parent process is gone; nothing more is committed');
});

process.once('message', (job: WorkerJob) => {
  parentPid = job.parentPid;
  // a parent that died before the channel says so: its pid is no longer our parent's
  const watch = setInterval(() => {
    if (parentGone()) stop(1);
  }, 100);
  watch.unref();
  if (parentGone()) {
    stop(1);
    return;
  }
  run(job).then(
    () => {
      leaving = true;
      clearInterval(watch);
      process.disconnect?.();
    },
    async (err: unknown) => {
      if (stopping || parentGone()) {
        stop(1); // (already stopping: the exit code chosen then stands)
        return;
      }
      const exitCode = exitCodeOf(err);
      const crc = err instanceof SourceCrcMismatch && err.sourceRank !== undefined
        ? { crcSource: err.sourceRank, crcResult: { ...err.result, sourceRank: err.sourceRank } }
        : {};
      await send({ error: { message: describeError(err), exitCode, ...crc } });
      process.exitCode = exitCode;
      leaving = true;
      clearInterval(watch);
      process.disconnect?.();
    },
  );
});
