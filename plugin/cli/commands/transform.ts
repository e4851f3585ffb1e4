/**
 * `msckpt transform`: re-shard checkpoints between two layouts (slice, merge, convert). Takes its
 * own flags, and the command lines of mindformers' transform_checkpoint.py and
 * transform_checkpoint.sh unchanged (see ../transform-args.ts). With `--cluster`, every process
 * of a cluster job runs the same command and writes its block of destination ranks
 * (plugin/cluster).
 */
import type { Command } from 'commander';
import { clusterPlace, transformOnCluster } from '../../cluster/index.js';
import { injectWriteErrorForTests } from '../../formats/atomic.js';
import { transformCheckpoints, type TransformFaults, type TransformOptions, type TransformReport } from '../../transform/index.js';
import { handleInterrupts } from '../interrupt.js';
import { createProgress, formatBytes } from '../progress.js';
import { addTransformFlags, coverageNote, resolveTransformRequest, type TransformFlags } from '../transform-args.js';

export const order = 20;

export function register(program: Command): void {
  const cmd = program
    .command('transform')
    .description('re-shard checkpoints between parallel layouts: slice a complete file, merge rank_N/ slices, or convert one layout to another; takes transform_checkpoint.py/.sh command lines too');
  addTransformFlags(cmd, 'transform').action(async (positional: string[], flags: TransformFlags) => {
    handleInterrupts('transform');
    const req = await resolveTransformRequest(flags, positional, 'transform');
    const json = flags.json === true;
    const notice = (m: string): void => {
      if (!json) process.stderr.write(`msckpt: ${m}\n`);
    };
    for (const n of req.notices) notice(n);
    if (req.idle !== undefined) {
      if (json) process.stdout.write(`${JSON.stringify({ kind: 'transform', dialect: req.dialect, notices: [...req.notices, req.idle], jobs: [] })}\n`);
      else notice(req.idle);
      return;
    }
    const tf = req.testFault;
    if (tf?.error !== undefined) injectWriteErrorForTests(tf.error);
    const faults: TransformFaults | undefined = tf?.at !== undefined
      ? { at: tf.at, action: tf.action ?? 'kill', ...(tf.n !== undefined ? { n: tf.n } : {}), ...(tf.worker !== undefined ? { worker: tf.worker } : {}) }
      : undefined;
    const place = req.cluster !== undefined ? clusterPlace(req.cluster) : undefined;
    if (place?.scheduler === true) {
      notice("this is msrun's scheduler process: nothing to convert here");
      return;
    }
    if (place !== undefined) notice(`cluster: process ${place.index} of ${place.count}, from ${place.from}`);
    const reports: TransformReport[] = [];
    for (const job of req.jobs) {
      const opts: TransformOptions = {
        srcCheckpoint: job.srcCheckpoint,
        srcStrategy: req.srcStrategy,
        dstStrategy: req.dstStrategy,
        dstDir: job.dstDir,
        prefix: req.prefix,
        processNum: req.processNum,
        memory: req.memory,
        overwrite: req.overwrite,
        ...(req.outputFormat !== undefined ? { outputFormat: req.outputFormat } : {}),
        ...(req.srcFormat !== undefined ? { srcFormat: req.srcFormat } : {}),
        ...(req.crc ? { crc: true } : {}),
        progress: json ? false : (total: number) => createProgress(total, true),
        ...(req.worldSize !== undefined ? { worldSize: req.worldSize } : {}),
        ...(req.ranks !== undefined ? { ranks: req.ranks } : {}),
        ...(req.pick !== undefined ? { pick: req.pick } : {}),
        ...(json ? {} : { onNotice: notice }),
        ...(faults !== undefined ? { faults } : {}),
      };
      reports.push(place !== undefined ? await transformOnCluster(opts, place) : await transformCheckpoints(opts));
    }
    const notes = reports.map((r) => coverageNote(req, r.worldSize)).filter((n): n is string => n !== undefined);
    if (json) {
      const one = reports.length === 1 && req.dialect === 'msckpt' ? (reports[0] as TransformReport) : null;
      if (one !== null) process.stdout.write(`${JSON.stringify({ kind: 'transform', ...one })}\n`);
      else process.stdout.write(`${JSON.stringify({ kind: 'transform', dialect: req.dialect, notices: [...req.notices, ...notes], jobs: reports })}\n`);
      return;
    }
    for (const r of reports) {
      const rate = r.seconds > 0 ? r.bytesWritten / r.seconds : 0;
      const checks = r.sourceChecks.length > 0
        ? `  source CRCs checked: ${r.sourceChecks.length} file(s), ${formatBytes(r.sourceChecks.reduce((a, c) => a + c.extraBytes, 0))} read only for the checks\n`
        : '';
      process.stdout.write(
        `transform: ${r.written.length} file(s) written, ${r.skipped.length} skipped (complete for the same inputs, re-checked)` +
          `${r.redone.length > 0 ? `, ${r.redone.length} rewritten after failing their re-check` : ''} of ${r.worldSize} rank(s)\n` +
          `  read ${formatBytes(r.bytesRead)}, wrote ${formatBytes(r.bytesWritten)} in ${r.seconds.toFixed(2)} s (${formatBytes(rate)}/s), ${r.processes} process(es), peak RSS ${formatBytes(r.maxRssBytes)}\n` +
          checks +
          `  output ${r.dstDir}${r.manifest !== null ? `, manifest ${r.manifest}` : ''}\n`,
      );
    }
    for (const n of notes) notice(n);
  });
}
