/**
 * A converter worker of `transformCheckpoints({ processNum })`, started with node (through
 * `pluginModule('transform/worker')`) and told its job over IPC: the plan file and its
 * fingerprint, the destination ranks it writes, where and how. It reads no source header and
 * merges no strategy: it loads the plan, writes its ranks with the one rank writer, and reports
 * each committed file, its progress and its result to the parent. Exit code 2 for bad input,
 * 1 for a failure.
 */
import { describeError, exitCodeOf } from '../errors.js';
import type { WeightsFormat } from '../formats/resolve.js';
import { readPlanFile } from '../plan/index.js';
import { writeRanks, type CommittedRankFile } from './rank-writer.js';

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
}

/** What a worker sends its parent. */
export type WorkerMessage =
  | { readonly file: CommittedRankFile }
  | { readonly progress: number }
  | { readonly done: { readonly bytesRead: number; readonly bytesWritten: number; readonly maxRssBytes: number } }
  | { readonly error: { readonly message: string; readonly exitCode: 1 | 2 } };

function send(m: WorkerMessage): Promise<void> {
  return new Promise((resolve) => {
    if (process.send === undefined || !process.connected) resolve();
    else process.send(m, undefined, {}, () => resolve());
  });
}

async function run(job: WorkerJob): Promise<void> {
  const plan = await readPlanFile(job.planFile, job.fingerprint);
  let pending = 0;
  let last = 0;
  const r = await writeRanks({
    plan, ranks: job.ranks, format: job.format, memory: job.memory, crc: job.crc,
    outputPath: (rank) => job.outputs[String(rank)] as string,
    onCommit: (file) => send({ file }),
    onBytes: (n) => {
      pending += n;
      const now = Date.now();
      if (now - last >= 100) {
        last = now;
        void send({ progress: pending });
        pending = 0;
      }
    },
  });
  if (pending > 0) await send({ progress: pending });
  await send({ done: { bytesRead: r.bytesRead, bytesWritten: r.bytesWritten, maxRssBytes: process.resourceUsage().maxRSS * 1024 } });
}

process.once('message', (job: WorkerJob) => {
  run(job).then(
    () => process.disconnect?.(),
    async (err: unknown) => {
      const exitCode = exitCodeOf(err);
      await send({ error: { message: describeError(err), exitCode } });
      process.exitCode = exitCode;
      process.disconnect?.();
    },
  );
});
