/** `msckpt plan`: the dry run of a transform: per destination rank its sources, bytes and memory. */
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { planCore, planRank } from '../../plan/index.js';
import { loadPlan } from '../../plan/load.js';
import { parseMemorySize, parseRankRanges } from '../../transform/index.js';
import { formatBytes } from '../progress.js';
import { intFlag, pickFlag } from './transform.js';

export const order = 21;

interface Flags {
  srcFormat?: string;
  srcCheckpoint?: string;
  srcStrategy?: string;
  dstStrategy?: string;
  worldSize?: string;
  rank?: string;
  ranks?: string;
  memory?: string;
  pick?: string;
  json?: boolean;
}

function write(text: string): Promise<void> {
  return new Promise((res) => {
    if (process.stdout.write(text)) res();
    else process.stdout.once('drain', () => res());
  });
}

export function register(program: Command): void {
  program
    .command('plan')
    .description('dry run of transform: per destination rank the source ranks, bytes read and written, and buffer memory (--json: every copy operation)')
    .option('--src-checkpoint <path>', 'a complete checkpoint file, or a folder of rank_N/ folders')
    .option('--src-strategy <path>', 'source strategy file or folder')
    .option('--dst-strategy <path>', 'destination strategy file or folder')
    .option('--world-size <n>', 'expected destination device count')
    .option('--rank <r>', 'plan only this destination rank')
    .option('--ranks <list>', 'plan only these destination ranks, e.g. 8-15')
    .option('--memory <size>', 'buffer budget, e.g. 512M', '512M')
    .option('--pick <rule>', 'last or newest file of a rank_N folder', 'last')
    .option('--json', 'print the full plan (with copy operations) as one JSON object')
    // accepted so that a transform command line can be re-run as `plan` unchanged; plan writes nothing
    .option('--dst-checkpoint-dir <dir>', 'ignored (plan writes nothing)')
    .option('--prefix <prefix>', 'ignored (plan writes nothing)')
    .option('--process-num <k>', 'ignored (plan writes nothing)')
    .option('--src-format <format>', 'ckpt or safetensors, for rank_N folders holding both')
    .option('--output-format <format>', 'ignored (plan writes nothing)')
    .action(async (flags: Flags, cmd: Command) => {
      if (flags.srcCheckpoint === undefined) throw new InputError('--src-checkpoint is required');
      let ranks: number[] | undefined;
      const one = intFlag('rank', flags.rank, 0);
      if (one !== undefined) ranks = [one];
      if (flags.ranks !== undefined) ranks = parseRankRanges(flags.ranks);
      const worldSize = intFlag('world-size', flags.worldSize, 1);
      const pick = pickFlag(flags.pick, cmd.getOptionValueSource('pick'));
      const srcFormat = flags.srcFormat;
      if (srcFormat !== undefined && srcFormat !== 'ckpt' && srcFormat !== 'safetensors') {
        throw new InputError(`--src-format must be 'ckpt' or 'safetensors', got '${srcFormat}'`);
      }
      const loaded = await loadPlan({
        srcCheckpoint: flags.srcCheckpoint,
        srcStrategy: flags.srcStrategy ?? null,
        dstStrategy: flags.dstStrategy ?? null,
        memory: parseMemorySize(flags.memory ?? '512M'),
        ...(ranks !== undefined ? { ranks } : {}),
        ...(worldSize !== undefined ? { worldSize } : {}),
        ...(pick !== undefined ? { pick } : {}),
        ...(srcFormat !== undefined ? { srcFormat } : {}),
      });
      const plan = loaded.plan;
      if (flags.json === true) {
        // streamed: one rank's operations at a time
        // the sources' indexes stand as their sha256 (the plan file keeps them apart, too)
        const { ranks: summaries, ...head } = { ...planCore(plan), fingerprint: plan.fingerprint };
        await write(`{"kind":"plan","notices":${JSON.stringify(loaded.notices)},${JSON.stringify(head).slice(1, -1)},"ranks":[`);
        for (let i = 0; i < summaries.length; i++) {
          const rp = planRank(plan, (summaries[i] as { rank: number }).rank);
          await write(`${i > 0 ? ',' : ''}${JSON.stringify(rp)}`);
        }
        await write(']}\n');
        return;
      }
      for (const n of loaded.notices) process.stderr.write(`msckpt: ${n}\n`);
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
