/** `msckpt rank-list --rank R --src-strategy S --dst-strategy D`: source ranks one destination rank needs. */
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { loadStrategy } from '../../formats/strategy/load.js';
import { rankListForTransform } from '../../plan/ranklist.js';
import { intFlag } from './transform.js';

export const order = 23;

export function register(program: Command): void {
  program
    .command('rank-list')
    .description('the source ranks a destination rank needs (rank_list_for_transform)')
    .option('--rank <r>', 'destination rank')
    .option('--src-strategy <path>', 'source strategy file or folder (omit: a complete source, [0])')
    .option('--dst-strategy <path>', 'destination strategy file or folder (omit: one complete file)')
    .option('--json', 'print one JSON object on stdout')
    .action(async (flags: { rank?: string; srcStrategy?: string; dstStrategy?: string; json?: boolean }) => {
      const rank = intFlag('rank', flags.rank, 0);
      if (rank === undefined) throw new InputError('--rank is required');
      const src = flags.srcStrategy ? (await loadStrategy(flags.srcStrategy)).strategy : null;
      const dst = flags.dstStrategy ? (await loadStrategy(flags.dstStrategy)).strategy : null;
      const list = rankListForTransform(rank, src, dst);
      if (flags.json === true) process.stdout.write(`${JSON.stringify({ kind: 'rank-list', rank, sourceRanks: list })}\n`);
      else process.stdout.write(`${list.join(' ')}\n`);
    });
}
