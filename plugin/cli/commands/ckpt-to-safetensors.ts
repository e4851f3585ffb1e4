/**
 * `msckpt ckpt-to-safetensors SRC DST` and (in safetensors-to-ckpt.ts) the reverse: one file or a
 * whole rank_N/ tree, names kept with the extension swapped.
 */
import { stat } from 'node:fs/promises';
import { extname } from 'node:path';
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { ckptToSafetensors, loadNameMap, safetensorsToCkpt, type WeightsConvertOptions, type WeightsConvertResult } from '../../unify/index.js';
import { intFlag, MAX_PROCESSES } from '../flags.js';
import { createProgress, formatBytes } from '../progress.js';
import { handleInterrupts } from '../interrupt.js';

export const order = 40;

interface Flags {
  nameMap?: string;
  processes?: string;
  crc?: boolean;
  fileNameRegex?: string;
  json?: boolean;
}

export function registerConversion(program: Command, name: 'ckpt-to-safetensors' | 'safetensors-to-ckpt'): void {
  const toSt = name === 'ckpt-to-safetensors';
  const [from, to] = toSt ? ['.ckpt', '.safetensors'] : ['.safetensors', '.ckpt'];
  program
    .command(name)
    .description(
      toSt
        ? 'convert MindSpore .ckpt files (one file, or every *.ckpt in a folder and its rank*/ folders) to safetensors; str entries and ckpt details go to metadata and come back exactly'
        : 'convert safetensors files (one file, or every *.safetensors in a folder and its rank*/ folders) to MindSpore .ckpt',
    )
    .argument('<src>', `a ${from} file or a folder of them (rank*/ folders included)`)
    .argument('<dst>', `output ${to} file (for one file) or output folder (same tree, extension swapped)`)
    .option('--name-map <json>', 'rename tensors: a JSON object {"old":"new"} or a JSON file holding one')
    .option('--processes <n>', 'files converted at once (default 1)')
    .option('--crc', toSt ? 'store crc_num in the safetensors metadata' : 'append the crc_num trailer (default: when the original .ckpt had one)')
    .option('--file-name-regex <re>', 'only convert files whose name matches')
    .option('--json', 'print one JSON object on stdout')
    .action(async (src: string, dst: string, flags: Flags) => {
      handleInterrupts(toSt ? 'ckpt-to-safetensors' : 'safetensors-to-ckpt');
      if ((await stat(src).catch(() => null))?.isFile() === true && extname(dst).toLowerCase() === from) {
        throw new UsageError(`<dst> ${dst}: the output of one ${from} file is a ${to} file (or a folder to put it in)`);
      }
      const opts: WeightsConvertOptions = { processes: intFlag('--processes', flags.processes, { min: 1, max: MAX_PROCESSES }) ?? 1 };
      if (flags.nameMap !== undefined) opts.nameMap = await loadNameMap(flags.nameMap);
      if (flags.crc === true) opts.crc = true;
      if (flags.fileNameRegex !== undefined) opts.fileNameRegex = flags.fileNameRegex;
      const progress = createProgress(0, flags.json !== true);
      opts.onBytes = (n) => progress.advance(n);
      opts.onFile = (f) => progress.label(f.output);
      let r: WeightsConvertResult;
      try {
        r = toSt ? await ckptToSafetensors(src, dst, opts) : await safetensorsToCkpt(src, dst, opts);
      } finally {
        progress.done();
      }
      if (flags.json === true) {
        process.stdout.write(`${JSON.stringify({ kind: name, ...r })}\n`);
        return;
      }
      for (const f of r.files) process.stdout.write(`${f.source} -> ${f.output} (${f.tensors} tensors, ${formatBytes(f.bytes)})\n`);
      process.stdout.write(`${r.files.length} file(s), ${r.tensors} tensors, ${formatBytes(r.bytes)}\n`);
    });
}

export function register(program: Command): void {
  registerConversion(program, 'ckpt-to-safetensors');
}
