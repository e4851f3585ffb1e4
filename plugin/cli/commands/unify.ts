/**
 * `msckpt unify SRC_DIR --src-strategy FILE|DIR DST_DIR`: MindSpore's unified_safetensors.
 */
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { loadNameMap, unifySafetensors, type UnifyOptions } from '../../unify/index.js';
import { createProgress, formatBytes } from '../progress.js';
import { intFlag, MAX_PROCESSES, sizeFlag } from '../flags.js';
import { handleInterrupts } from '../interrupt.js';

export const order = 42;

interface Flags {
  srcStrategy?: string;
  partSize?: string;
  processes?: string;
  memory?: string;
  filter?: string;
  nameMap?: string;
  crc?: boolean;
  json?: boolean;
}

export function register(program: Command): void {
  program
    .command('unify')
    .description('merge distributed slices (rank_N/*.safetensors or .ckpt) into complete safetensors parts + param_name_map.json (MindSpore unified_safetensors)')
    .argument('<src-dir>', 'folder of rank_N/ folders (per rank, the file whose name ends in the largest epoch/step is used)')
    .argument('<dst-dir>', 'output folder: part{i}.safetensors, param_name_map.json, hyper_param.safetensors')
    .requiredOption('--src-strategy <path>', 'source strategy: a (merged) strategy file or a folder of per-stage files')
    .option('--part-size <size>', 'largest part, e.g. 3G or 3GB (K/M/G: powers of 1024, KB/MB/GB: of 1000; a larger tensor gets a part of its own; default 3G)')
    .option('--processes <n>', 'parts written at once (default 1)')
    .option('--memory <size>', 'assembly buffer budget; tensors larger are assembled in dim-0 bands (default 256M)')
    .option('--filter <regex>', 'only keep tensors whose (source) name matches')
    .option('--name-map <json>', 'rename tensors: a JSON object {"old":"new"} or a JSON file holding one')
    .option('--crc', 'store crc_num in each file\'s metadata')
    .option('--json', 'print one JSON object on stdout')
    .action(async (srcDir: string, dstDir: string, flags: Flags) => {
      handleInterrupts('unify');
      const notices: string[] = [];
      const opts: {
        -readonly [K in keyof UnifyOptions]: UnifyOptions[K];
      } = {
        srcDir,
        dstDir,
        srcStrategy: flags.srcStrategy as string,
        partSize: sizeFlag('--part-size', flags.partSize ?? '3G') as number,
        memory: sizeFlag('--memory', flags.memory ?? '256M') as number,
        processes: intFlag('--processes', flags.processes, { min: 1, max: MAX_PROCESSES }) ?? 1,
        onNotice: (m) => {
          notices.push(m);
          if (flags.json !== true) process.stderr.write(`msckpt: ${m}\n`);
        },
      };
      if (flags.filter !== undefined) {
        let re: RegExp;
        try {
          re = new RegExp(flags.filter);
        } catch {
          throw new UsageError(`--filter '${flags.filter}' is not a valid regular expression`);
        }
        opts.filter = (n) => re.test(n);
      }
      if (flags.nameMap !== undefined) opts.nameMap = await loadNameMap(flags.nameMap);
      if (flags.crc === true) opts.crc = true;
      const progress = createProgress(0, flags.json !== true);
      opts.onBytes = (n) => progress.advance(n);
      let report;
      try {
        report = await unifySafetensors(opts);
      } finally {
        progress.done();
      }
      if (flags.json === true) {
        process.stdout.write(`${JSON.stringify({ kind: 'unify', ...report })}\n`);
        return;
      }
      process.stdout.write(`unified ${report.ranks} ranks into ${report.dstDir}: ${report.tensors} tensors, ${formatBytes(report.totalSize)}\n`);
      for (const p of report.parts) process.stdout.write(`  ${p.file}: ${p.tensors} tensors, ${formatBytes(p.bytes)}\n`);
      if (report.hyperParam !== null) process.stdout.write(`  ${report.hyperParam.file}: ${report.hyperParam.tensors} entries\n`);
      process.stdout.write(`  ${report.nameMap}\n`);
    });
}
