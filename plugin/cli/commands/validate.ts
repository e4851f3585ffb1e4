/**
 * `msckpt validate RUN.yaml [--world-size N] [--cwd DIR] [--no-check-files] [--mindformers-version V] [--json]`:
 * judge a run YAML the way `msckpt launch` will (the same functions), and say what launch would
 * do and which mindformers release's rules apply.
 */
import { basename } from 'node:path';
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { checkRunConfig, formatConfigProblem, releaseOf, summarizeRunConfig } from '../../launcher/config.js';
import { launchSources } from '../../launcher/launch.js';

export const order = 80;

interface ValidateFlags {
  worldSize?: string;
  cwd?: string;
  checkFiles: boolean;
  mindformersVersion?: string;
  json?: boolean;
}

function parseWorldSize(v: string | undefined, from: string): number | undefined {
  if (v === undefined || v === '') return undefined;
  if (!/^\d+$/.test(v.trim()) || Number(v) < 1) throw new InputError(`${from} must be a positive integer, got '${v}'`);
  return Number(v);
}

const MODE_TEXT = {
  passthrough: 'start the training command on your YAML unchanged (nothing for msckpt to do)',
  handover: 'hand over to mindformers unchanged (it slices the weights while loading)',
  convert: 'automatic conversion, then training on a derived YAML',
  'strategy-only': 'strategy-only dry run (collect strategies, print the conversion plan, exit 0)',
} as const;

export function register(program: Command): void {
  program
    .command('validate')
    .description('check a mindformers run YAML as mindformers reads it (PyYAML, per-release rules) and show what `launch` would do')
    .argument('<run-yaml>', 'the run YAML')
    .option('--world-size <n>', 'device count of the job (default: RANK_SIZE / MS_WORKER_NUM when set)')
    .option('--cwd <dir>', 'working directory of the training command, for relative paths (default: current directory)')
    .option('--no-check-files', 'do not look at load_checkpoint and strategy paths on disk')
    .option('--mindformers-version <version>', "the installed mindformers release whose rules apply, e.g. 1.5.0 (default: the YAML's msckpt.mindformers_version, else every release's)")
    .option('--json', 'print one JSON object')
    .action(async (file: string, flags: ValidateFlags) => {
      const env = process.env;
      const worldSize =
        parseWorldSize(flags.worldSize, '--world-size') ??
        parseWorldSize(env['RANK_SIZE'], 'RANK_SIZE') ??
        parseWorldSize(env['MS_WORKER_NUM'], 'MS_WORKER_NUM');
      const version = flags.mindformersVersion;
      if (version !== undefined && releaseOf(version) === undefined) {
        throw new InputError(`--mindformers-version must be a version such as 1.5.0, got '${version}'`);
      }
      const report = await checkRunConfig(file, {
        worldSize, cwd: flags.cwd, checkFiles: flags.checkFiles, env,
        ...(version !== undefined ? { mindformersVersion: { version, from: 'flag' as const } } : {}),
      });
      const cfg = report.config;
      // the <name>s launch converts, from launch's own list (so the derived load_checkpoint agrees)
      // and the file each rank folder contributes, picked by the one resolver as launch picks it
      let names: string[] | undefined;
      let sources: Array<{ name: string; path: string; files: Array<{ rank: number; path: string }>; rule?: string }> | undefined;
      if (report.ok && cfg !== null && cfg.mode === 'convert' && cfg.source !== undefined) {
        const listed = await launchSources(cfg).catch(() => undefined);
        names = listed?.map((s) => s.name);
        sources = listed?.map((s) => {
          const r = s.resolved;
          if (r.kind === 'ranks') return { name: s.name, path: s.path, rule: r.rule, files: r.ranks.map((x) => ({ rank: x.rank, path: x.file.path })) };
          return { name: s.name, path: s.path, files: r.kind === 'file' ? [{ rank: 0, path: r.file.path }] : [] };
        });
      }
      const summary = cfg !== null ? summarizeRunConfig(cfg, names) : null;
      if (flags.json) {
        process.stdout.write(
          `${JSON.stringify({
            ok: report.ok,
            file: report.file,
            errors: report.errors,
            warnings: report.warnings,
            mindformers: cfg === null ? null : { release: cfg.release.rules.name, version: cfg.release.version ?? null, from: cfg.release.from, description: cfg.release.description },
            summary: report.ok ? summary : null,
            sources: report.ok ? (sources ?? null) : null,
          })}\n`,
        );
      } else {
        for (const w of report.warnings) process.stderr.write(`warning: ${formatConfigProblem(file, w)}\n`);
        if (!report.ok) {
          for (const e of report.errors) process.stderr.write(`${formatConfigProblem(file, e)}\n`);
          if (cfg !== null) process.stderr.write(`(judged by ${cfg.release.description})\n`);
          process.stderr.write(`${report.errors.length} problem${report.errors.length === 1 ? '' : 's'} in ${file}\n`);
        } else if (summary !== null) {
          const lines = [`OK ${file}`];
          lines.push(`  rules:     ${summary.release}`);
          lines.push(`  mode:      ${MODE_TEXT[summary.mode]}`);
          lines.push(`  why:       ${summary.reason}`);
          lines.push(`  devices:   ${summary.deviceCount ?? 'unknown (pass --world-size)'}`);
          lines.push(`  layout:    ${summary.layout}`);
          lines.push(`  source:    ${summary.source}`);
          for (const src of sources ?? []) {
            if (src.rule === undefined) continue;
            const shown = src.files.slice(0, 4).map((f) => `rank_${f.rank}/${basename(f.path)}`).join(', ');
            const rule = src.rule === 'newest' ? 'newest by modification time' : 'largest epoch/step in the name';
            lines.push(`  files:     ${shown}${src.files.length > 4 ? `, ... (${src.files.length} ranks)` : ''} (${rule})`);
          }
          if (summary.sourceStrategy !== undefined) lines.push(`  src strategy: ${summary.sourceStrategy}`);
          if (summary.mode === 'convert' || summary.mode === 'strategy-only') {
            lines.push(`  strategy:  ${summary.strategy}`);
            lines.push(`  emptied:   ${summary.cleans.join(', ')}`);
          }
          if (summary.converters.length > 0) {
            lines.push(`  convert:   ${summary.converters.map((c) => `rank ${c.rank} -> slices ${c.from}..${c.to - 1}`).join('; ')}`);
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
