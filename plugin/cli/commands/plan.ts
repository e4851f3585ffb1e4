/** `msckpt plan`: the dry run of a transform: per destination rank its sources, bytes and memory. */
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { loadPlan, planCore, planRank } from '../../plan/index.js';
import { formatBytes } from '../progress.js';
import { addTransformFlags, coverageNote, resolveTransformRequest, type TransformFlags } from '../transform-args.js';

export const order = 21;

function write(text: string): Promise<void> {
  return new Promise((res) => {
    if (process.stdout.write(text)) res();
    else process.stdout.once('drain', () => res());
  });
}

export function register(program: Command): void {
  const cmd = program
    .command('plan')
    .description('dry run of transform (takes a transform command line unchanged): per destination rank the source ranks, bytes read and written, and buffer memory (--json: every copy operation)');
  addTransformFlags(cmd, 'plan').action(async (positional: string[], flags: TransformFlags) => {
      const req = await resolveTransformRequest(flags, positional, 'plan');
      const job = req.jobs[0];
      if (job === undefined || req.jobs.length > 1) throw new UsageError('plan one source at a time');
      if (req.idle !== undefined) {
        if (flags.json === true) await write(`${JSON.stringify({ kind: 'plan', notices: [...req.notices, req.idle], ranks: [] })}\n`);
        else process.stderr.write(`msckpt: ${req.idle}\n`);
        return;
      }
      const loaded = await loadPlan({
        srcCheckpoint: job.srcCheckpoint,
        srcStrategy: req.srcStrategy,
        dstStrategy: req.dstStrategy,
        memory: req.memory,
        ...(req.ranks !== undefined ? { ranks: req.ranks } : {}),
        ...(req.worldSize !== undefined ? { worldSize: req.worldSize } : {}),
        ...(req.pick !== undefined ? { pick: req.pick } : {}),
        ...(req.srcFormat !== undefined ? { srcFormat: req.srcFormat } : {}),
      });
      const note = coverageNote(req, loaded.plan.destination.deviceCount);
      const notices = [...req.notices, ...loaded.notices, ...(note !== undefined ? [note] : [])];
      const plan = loaded.plan;
      if (flags.json === true) {
        // streamed: one rank's operations at a time
        // the sources' indexes stand as their sha256 (the plan file keeps them apart, too)
        const { ranks: summaries, ...head } = { ...planCore(plan), fingerprint: plan.fingerprint };
        await write(`{"kind":"plan","notices":${JSON.stringify(notices)},${JSON.stringify(head).slice(1, -1)},"ranks":[`);
        for (let i = 0; i < summaries.length; i++) {
          const rp = planRank(plan, (summaries[i] as { rank: number }).rank);
          await write(`${i > 0 ? ',' : ''}${JSON.stringify(rp)}`);
        }
        await write(']}\n');
        return;
      }
      for (const n of notices) process.stderr.write(`msckpt: ${n}\n`);
      const s = plan.source;
      const d = plan.destination;
      const lines = [
        `source: ${s.deviceCount} rank(s) (${s.stages} stage(s) x ${s.stageDevices}), strategy ${s.strategy ?? '(none: complete)'}`,
        `destination: ${d.deviceCount} rank(s) (${d.stages} stage(s) x ${d.stageDevices}), strategy ${d.strategy ?? '(none: complete)'}`,
        `parameters re-sharded: ${plan.parameters}; copied verbatim: ${plan.verbatim.length}${plan.verbatim.length > 0 ? ` (${plan.verbatim.slice(0, 5).join(', ')}${plan.verbatim.length > 5 ? ', ...' : ''})` : ''}; dropped: ${plan.dropped.length}`,
        `total: read ${formatBytes(plan.bytesRead)}, write ${formatBytes(plan.bytesWritten)}, peak buffers ${formatBytes(plan.peakMemory)} (budget ${formatBytes(plan.memory)})`,
        'rank  stage  tensors  read        write       memory      source ranks',
      ];
      for (const r of plan.ranks) {
        lines.push(
          `${String(r.rank).padEnd(5)} ${String(r.stage).padEnd(6)} ${String(r.tensorCount).padEnd(8)} ${formatBytes(r.bytesRead).padEnd(11)} ${formatBytes(r.bytesWritten).padEnd(11)} ${formatBytes(r.peakMemory).padEnd(11)} ${r.sourceRanks.join(',')}`,
        );
      }
      await write(`${lines.join('\n')}\n`);
  });
}
