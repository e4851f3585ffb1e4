/** `msckpt verify DIR`: re-check a transform output folder against its manifest (sizes, CRC-32) and for what does not belong. */
import type { Command } from 'commander';
import { verifyTransform } from '../../transform/index.js';

export const order = 22;

const SHOWN = 10;

export function register(program: Command): void {
  program
    .command('verify')
    .description(
      're-check the files of a transform output folder against transform_manifest.json (sizes and CRC-32), and report leftovers of ' +
        'interrupted runs and files or rank_N folders the manifest does not list; exit 1 when anything is wrong',
    )
    .argument('<dir>', 'a folder written by msckpt transform')
    .option('--json', 'print one JSON report on stdout')
    .action(async (dir: string, flags: { json?: boolean }) => {
      const r = await verifyTransform(dir);
      if (flags.json === true) process.stdout.write(`${JSON.stringify({ kind: 'verify', ...r })}\n`);
      else {
        const list = (title: string, items: readonly string[]): void => {
          if (items.length === 0) return;
          process.stdout.write(`${title} (${items.length}): ${items.slice(0, SHOWN).join(', ')}${items.length > SHOWN ? ', ...' : ''}\n`);
        };
        for (const f of r.files) if (!f.ok) process.stdout.write(`BAD rank ${f.rank} ${f.path}: ${f.problem ?? ''}\n`);
        if (r.files.length === 0 && r.leftovers.some((l) => l.includes('did not finish'))) process.stdout.write('no manifest: a transform into this folder did not finish; run it again\n');
        if (r.missingRanks.length > 0) process.stdout.write(`missing ranks: ${r.missingRanks.join(',')}\n`);
        list('leftovers of interrupted runs', r.leftovers);
        list('files the manifest does not list', r.unlisted);
        list('folders the manifest does not list', r.unlistedFolders);
        process.stdout.write(`verify: ${r.files.filter((f) => f.ok).length}/${r.files.length} file(s) ok, ${r.ok ? 'all good' : 'PROBLEMS FOUND'}\n`);
      }
      if (!r.ok) process.exitCode = 1;
    });
}
