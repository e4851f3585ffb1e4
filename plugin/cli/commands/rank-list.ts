/**
 * `msckpt rank-list --rank R --src-strategy S --dst-strategy D`: source ranks one destination
 * rank needs. Takes what `plan` takes (a transform command line unchanged); with
 * `--src-checkpoint` the answer comes from the plan over the real files.
 */
import type { Command } from 'commander';
import { InputError, UsageError } from '../../errors.js';
import type { Strategy } from '../../formats/strategy/model.js';
import { loadStrategy } from '../../formats/strategy/load.js';
import { loadPlan } from '../../plan/load.js';
import { rankListForTransform } from '../../plan/ranklist.js';
import { addTransformFlags, resolveTransformRequest, type TransformFlags } from '../transform-args.js';

export const order = 23;

const examples = (names: readonly string[]): string =>
  `${names.slice(0, 3).map((n) => `'${n}'`).join(', ')}${names.length > 3 ? `, ... (${names.length})` : ''}`;

/** Refuse, in the user's terms, two strategies that share no parameter name. */
function checkNamesMatch(src: Strategy, dst: Strategy, srcPath: string, dstPath: string): void {
  const srcNames = [...new Set(src.layouts.map((l) => l.name))];
  const dstNames = [...new Set(dst.layouts.map((l) => l.name))];
  const have = new Set(srcNames);
  if (dstNames.length === 0 || dstNames.some((n) => have.has(n))) return;
  throw new InputError(
    `no parameter name of the destination strategy ${dstPath} (${examples(dstNames)}) is in the source strategy ${srcPath} (${examples(srcNames)}); are they strategies of the same model?`,
  );
}

export function register(program: Command): void {
  const cmd = program.command('rank-list').description('the source ranks each destination rank needs (rank_list_for_transform); takes what plan takes');
  addTransformFlags(cmd, 'rank-list').action(async (positional: string[], flags: TransformFlags) => {
    const hasSource = flags.srcCheckpoint !== undefined || positional.length > 0;
    const req = await resolveTransformRequest(flags, positional, 'rank-list');
    const ranks = req.ranks;
    if (ranks === undefined || ranks.length === 0) throw new UsageError('give the destination rank: --rank R (or --ranks, or a transform_checkpoint.py --rank_id)');
    let lists: Array<{ rank: number; sourceRanks: number[] }>;
    if (hasSource) {
      const loaded = await loadPlan({
        srcCheckpoint: (req.jobs[0] as { srcCheckpoint: string }).srcCheckpoint,
        srcStrategy: req.srcStrategy,
        dstStrategy: req.dstStrategy,
        ranks,
        ...(req.pick !== undefined ? { pick: req.pick } : {}),
        ...(req.srcFormat !== undefined ? { srcFormat: req.srcFormat } : {}),
        ...(req.worldSize !== undefined ? { worldSize: req.worldSize } : {}),
      });
      lists = loaded.plan.ranks.map((r) => ({ rank: r.rank, sourceRanks: [...r.sourceRanks] }));
    } else {
      const src = req.srcStrategy !== null ? (await loadStrategy(req.srcStrategy)).strategy : null;
      const dst = req.dstStrategy !== null ? (await loadStrategy(req.dstStrategy)).strategy : null;
      if (src !== null && dst !== null) checkNamesMatch(src, dst, req.srcStrategy as string, req.dstStrategy as string);
      lists = ranks.map((rank) => ({ rank, sourceRanks: rankListForTransform(rank, src, dst) }));
    }
    if (flags.json === true) {
      const one = lists.length === 1 ? (lists[0] as { rank: number; sourceRanks: number[] }) : null;
      process.stdout.write(`${JSON.stringify(one !== null ? { kind: 'rank-list', ...one } : { kind: 'rank-list', ranks: lists })}\n`);
    } else if (lists.length === 1) process.stdout.write(`${(lists[0] as { sourceRanks: number[] }).sourceRanks.join(' ')}\n`);
    else for (const l of lists) process.stdout.write(`rank ${l.rank}: ${l.sourceRanks.join(' ')}\n`);
  });
}
