/**
 * `msckpt merge-strategy DIR|FILES... [-o FILE] [--json]`: merge per-stage strategy files into one
 * pipeline strategy (MindSpore's `merge_pipeline_strategys`). Inputs are never modified.
 */
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { DEFAULT_MERGED_STRATEGY_NAME, mergeStrategies } from '../../formats/strategy/index.js';
import { createProgress, type Progress } from '../progress.js';
import { handleInterrupts } from '../interrupt.js';

export const order = 40;

interface Flags {
  output?: string;
  json?: boolean;
}

export function register(program: Command): void {
  program
    .command('merge-strategy')
    .description(
      'merge per-stage parallel strategy files (a folder of *.ckpt or *.json, or files) into one pipeline strategy; ' +
        'byte-identical files and stages already merged are skipped, layout names get {stage}- prefixes',
    )
    .argument('<inputs...>', 'a folder of strategy files, or strategy files')
    .option('-o, --output <file>', `merged file (.json = JSON, else protobuf), or a folder to write ${DEFAULT_MERGED_STRATEGY_NAME} into; default ./${DEFAULT_MERGED_STRATEGY_NAME}`)
    .option('--json', 'print one JSON object on stdout')
    .action(async (inputs: string[], flags: Flags) => {
      handleInterrupts('merge-strategy');
      let out = resolve(flags.output ?? DEFAULT_MERGED_STRATEGY_NAME);
      // -o DIR: write DIR/merged_ckpt_strategy.ckpt
      if (flags.output !== undefined && (await stat(out).catch(() => null))?.isDirectory() === true) out = join(out, DEFAULT_MERGED_STRATEGY_NAME);
      let progress: Progress | null = null;
      let last = 0;
      const report = await mergeStrategies(inputs, out, {
        onFile: (done, total) => {
          progress ??= createProgress(total, flags.json !== true);
          progress.label('files');
          progress.advance(done - last);
          last = done;
        },
      });
      (progress as Progress | null)?.done();
      if (flags.json === true) {
        process.stdout.write(JSON.stringify(report) + '\n');
        return;
      }
      const lines = [
        `merged ${report.stages.length} stage(s) [${report.stages.join(',')}] from ${report.files} file(s) ` +
          `(${report.duplicates} byte-identical, ${report.skippedStages} of an already merged stage skipped)`,
        `wrote ${report.output} (${report.format}): ${report.layouts} layout items, ${report.items} strategy items`,
      ];
      const shown = report.sources.slice(0, 16);
      for (const s of shown) lines.push(`  stage ${s.stage}: ${s.file}`);
      if (report.sources.length > shown.length) lines.push(`  ... and ${report.sources.length - shown.length} more stages`);
      if (report.missingStages.length > 0) lines.push(`warning: no file for stage(s) ${report.missingStages.join(',')}`);
      process.stdout.write(lines.join('\n') + '\n');
    });
}
