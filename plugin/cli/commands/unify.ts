/**
 * `msckpt unify SRC_DIR --src-strategy FILE|DIR DST_DIR`: MindSpore's unified_safetensors.
 */
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { loadNameMap, unifySafetensors, type UnifyOptions } from '../../unify/index.js';
import { createProgress, formatBytes } from '../progress.js';
import { parseProcesses } from './ckpt-to-safetensors.js';

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

const UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kb: 1024, kib: 1024, m: 1024 ** 2, mb: 1024 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gb: 1024 ** 3, gib: 1024 ** 3, t: 1024 ** 4, tb: 1024 ** 4, tib: 1024 ** 4 };

/** `3G`, `512MiB`, `1048576` -> bytes. */
export function parseByteSize(text: string, flag: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m === null ? undefined : UNITS[(m[2] as string).toLowerCase()];
  if (m === null || unit === undefined) throw new InputError(`${flag} must be a size like 3G, 512M or 1048576, got '${text}'`);
  const n = Math.floor(Number(m[1]) * unit);
  if (!Number.isSafeInteger(n) || n < 1) throw new InputError(`${flag} must be a positive size, got '${text}'`);
  return n;
}

export function register(program: Command): void {
  program
    .command('unify')
    .description('merge distributed slices (rank_N/*.safetensors or .ckpt) into complete safetensors parts + param_name_map.json (MindSpore unified_safetensors)')
    .argument('<src-dir>', 'folder of rank_N/ folders (per rank, the file whose name ends in the largest epoch/step is used)')
    .argument('<dst-dir>', 'output folder: part{i}.safetensors, param_name_map.json, hyper_param.safetensors')
    .requiredOption('--src-strategy <path>', 'source strategy: a (merged) strategy file or a folder of per-stage files')
    .option('--part-size <size>', 'largest part (a larger tensor gets a part of its own)', '3G')
    .option('--processes <n>', 'parts written at once', '1')
    .option('--memory <size>', 'assembly buffer budget (tensors larger are assembled in dim-0 bands)', '256M')
    .option('--filter <regex>', 'only keep tensors whose (source) name matches')
    .option('--name-map <json>', 'rename tensors: a JSON object {"old":"new"} or a JSON file holding one')
    .option('--crc', 'store crc_num in each file\'s metadata')
    .option('--json', 'print one JSON object on stdout')
    .action(async (srcDir: string, dstDir: string, flags: Flags) => {
      const notices: string[] = [];
      const opts: {
        -readonly [K in keyof UnifyOptions]: UnifyOptions[K];
      } = {
        srcDir,
        dstDir,
        srcStrategy: flags.srcStrategy as string,
        partSize: parseByteSize(flags.partSize ?? '3G', '--part-size'),
        memory: parseByteSize(flags.memory ?? '256M', '--memory'),
        processes: parseProcesses(flags.processes),
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
          throw new InputError(`--filter '${flags.filter}' is not a valid regular expression`);
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
