/**
 * `msckpt validate RUN.yaml [--world-size N] [--cwd DIR] [--no-check-files] [--json]`: check a
 * run YAML the way `msckpt launch` will, and say what the launcher would do.
 */
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { checkRunConfig, formatConfigProblem, summarizeRunConfig } from '../../launcher/config.js';

export const order = 80;

interface ValidateFlags {
  worldSize?: string;
  cwd?: string;
  checkFiles: boolean;
  json?: boolean;
}

function parseWorldSize(v: string | undefined, from: string): number | undefined {
  if (v === undefined || v === '') return undefined;
  if (!/^\d+$/.test(v.trim()) || Number(v) < 1) throw new InputError(`${from} must be a positive integer, got '${v}'`);
  return Number(v);
}

export function register(program: Command): void {
  program
    .command('validate')
    .description('check a mindformers run YAML (schema, near-miss keys, cross-field and path rules) and show what `launch` would do')
    .argument('<run-yaml>', 'the run YAML')
    .option('--world-size <n>', 'device count of the job (default: RANK_SIZE / MS_WORKER_NUM when set)')
    .option('--cwd <dir>', 'working directory of the training command, for relative paths (default: current directory)')
    .option('--no-check-files', 'do not look at load_checkpoint and strategy paths on disk')
    .option('--json', 'print one JSON object')
    .action(async (file: string, flags: ValidateFlags) => {
      const env = process.env;
      const worldSize =
        parseWorldSize(flags.worldSize, '--world-size') ??
        parseWorldSize(env['RANK_SIZE'], 'RANK_SIZE') ??
        parseWorldSize(env['MS_WORKER_NUM'], 'MS_WORKER_NUM');
      const report = await checkRunConfig(file, { worldSize, cwd: flags.cwd, checkFiles: flags.checkFiles });
      const summary = report.config !== null ? summarizeRunConfig(report.config) : null;
      if (flags.json) {
        process.stdout.write(
          `${JSON.stringify({
            ok: report.ok,
            file: report.file,
            errors: report.errors,
            warnings: report.warnings,
            summary: report.ok ? summary : null,
          })}\n`,
        );
      } else {
        for (const w of report.warnings) process.stderr.write(`warning: ${formatConfigProblem(file, w)}\n`);
        if (!report.ok) {
          for (const e of report.errors) process.stderr.write(`${formatConfigProblem(file, e)}\n`);
          process.stderr.write(`${report.errors.length} problem${report.errors.length === 1 ? '' : 's'} in ${file}\n`);
        } else if (summary !== null) {
          const lines = [`OK ${file}`];
          lines.push(`  mode:      ${summary.mode === 'passthrough' ? 'start the training command unchanged (no auto_trans_ckpt, no only_save_strategy)' : summary.mode === 'convert' ? 'automatic conversion, then training' : 'strategy-only dry run (collect strategies, print the conversion plan, exit 0)'}`);
          lines.push(`  devices:   ${summary.deviceCount ?? 'unknown (pass --world-size)'}`);
          lines.push(`  layout:    ${summary.layout}`);
          lines.push(`  source:    ${summary.source}`);
          if (summary.mode !== 'passthrough') {
            lines.push(`  strategy:  ${summary.strategy}`);
            lines.push(`  emptied:   ${summary.cleans.join(', ')}`);
          }
          if (summary.converters.length > 0) {
            lines.push(
              `  convert:   ${summary.converters.map((c) => `rank ${c.rank} -> slices ${c.from}..${c.to - 1}`).join('; ')}`,
            );
          }
          if (Object.keys(summary.derived).length > 0) {
            lines.push(`  derived:   ${Object.entries(summary.derived).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join(', ')}`);
          }
          process.stdout.write(`${lines.join('\n')}\n`);
        }
      }
      if (!report.ok) process.exitCode = 2;
    });
}
