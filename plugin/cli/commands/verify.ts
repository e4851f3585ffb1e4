/** `msckpt verify DIR`: re-check a transform output folder against its manifest (sizes, CRC-32). */
import type { Command } from 'commander';
import { verifyTransform } from '../../transform/index.js';

export const order = 22;

export function register(program: Command): void {
  program
    .command('verify')
    .description('re-check the files of a transform output folder against transform_manifest.json (sizes and CRC-32)')
    .argument('<dir>', 'a folder written by msckpt transform')
    .option('--json', 'print one JSON report on stdout')
    .action(async (dir: string, flags: { json?: boolean }) => {
      const r = await verifyTransform(dir);
      if (flags.json === true) process.stdout.write(`${JSON.stringify({ kind: 'verify', ...r })}\n`);
      else {
        for (const f of r.files) if (!f.ok) process.stdout.write(`BAD rank ${f.rank} ${f.path}: ${f.problem ?? ''}\n`);
        if (r.missingRanks.length > 0) process.stdout.write(`missing ranks: ${r.missingRanks.join(',')}\n`);
        process.stdout.write(`verify: ${r.files.filter((f) => f.ok).length}/${r.files.length} file(s) ok, ${r.ok ? 'all good' : 'PROBLEMS FOUND'}\n`);
      }
      if (!r.ok) process.exitCode = 1;
    });
}
