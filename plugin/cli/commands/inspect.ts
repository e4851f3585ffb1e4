/**
 * `msckpt inspect PATH [--json] [--tensor NAME] [--verify-crc]`: what a weights path holds,
 * detected by content (checkpoint, strategy, safetensors file or index, rank directory).
 */
import type { Command } from 'commander';
import { inspectWeights, openWeights, previewTensor, type InspectReport, type TensorPreview } from '../../formats/open.js';
import { createProgress, formatBytes } from '../progress.js';

export const order = 10;

interface Flags {
  json?: boolean;
  tensor?: string;
  verifyCrc?: boolean;
}

function table(header: readonly string[], rows: readonly (readonly string[])[], rightAligned: ReadonlySet<number>): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (rightAligned.has(i) ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number)))
      .join('  ')
      .trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n') + '\n';
}

const shapeText = (s: readonly number[]): string => `[${s.join(',')}]`;

function render(path: string, r: InspectReport): string {
  switch (r.kind) {
    case 'checkpoint': {
      const total = r.tensors.reduce((a, t) => a + t.bytes, 0);
      const crc = r.crc === null ? 'no crc_num trailer' : r.crc.valid === null ? 'crc_num present (not verified; use --verify-crc)' : r.crc.valid ? 'crc_num valid' : 'crc_num INVALID';
      const rows = r.tensors.map((t) => [t.name, t.dtype, shapeText(t.shape), String(t.chunks), String(t.bytes)]);
      return `checkpoint ${path}: ${r.tensors.length} tensors, ${formatBytes(total)}, ${crc}\n` + table(['name', 'dtype', 'shape', 'chunks', 'bytes'], rows, new Set([3, 4]));
    }
    case 'safetensors': {
      const total = r.tensors.reduce((a, t) => a + t.bytes, 0);
      const md = Object.entries(r.metadata).map(([k, v]) => `${k}=${v.length > 60 ? `${v.slice(0, 57)}...` : v}`);
      const rows = r.tensors.map((t) => [t.name, t.dtype, shapeText(t.shape), String(t.bytes)]);
      return (
        `safetensors ${path}: ${r.tensors.length} tensors, ${formatBytes(total)}${md.length > 0 ? `, metadata: ${md.join(' ')}` : ''}\n` +
        table(['name', 'dtype', 'shape', 'bytes'], rows, new Set([3]))
      );
    }
    case 'strategy': {
      const rows = r.layouts.map((l) => [
        l.name,
        String(l.stage),
        shapeText(l.devMatrix),
        `[${l.tensorMap.map((t) => (typeof t === 'number' ? String(t) : `[${t.join(',')}]`)).join(',')}]`,
        String(l.optShardStep),
        String(l.optShardSize),
        String(l.field),
      ]);
      return (
        `strategy ${path}: ${r.merged ? 'merged' : 'per-rank'}, stages [${r.stages.join(',')}], ${r.layouts.length} layouts\n` +
        table(['name', 'stage', 'devMatrix', 'tensorMap', 'optStep', 'optSize', 'field'], rows, new Set([1, 4, 5, 6]))
      );
    }
    case 'distributed': {
      const rows = r.ranks.map((x) => [String(x.rank), x.file ?? '(no weight file)']);
      return `distributed checkpoint ${path}: ${r.ranks.length} ranks\n` + table(['rank', 'file'], rows, new Set([0]));
    }
  }
}

function num(v: number | null): string {
  if (v === null) return '-';
  return Number.isInteger(v) ? String(v) : v.toPrecision(6);
}

function renderPreview(p: TensorPreview): string {
  const out = [`${p.name}: ${p.dtype} ${shapeText(p.shape)}, ${p.bytes} bytes`];
  if (p.text !== undefined) {
    out.push(`text: ${JSON.stringify(p.text)}`);
    return out.join('\n') + '\n';
  }
  out.push(`first: ${p.head.map(num).join(' ')}`);
  if (p.tail.length > 0) out.push(`last:  ${p.tail.map(num).join(' ')}`);
  const s = p.stats;
  if (s !== null) {
    out.push(`count ${s.count}  min ${num(s.min)}  max ${num(s.max)}  mean ${num(s.mean)}  nan ${s.nan}  inf ${s.inf}`);
  }
  return out.join('\n') + '\n';
}

export function register(program: Command): void {
  program
    .command('inspect')
    .description('show what a checkpoint, strategy, safetensors file/index or rank_N/ directory holds (detected by content)')
    .argument('<path>', 'a .ckpt, strategy file (protobuf or JSON), .safetensors, *.index.json, unified or rank_N/ directory')
    .option('--json', 'print one JSON object on stdout')
    .option('--tensor <name>', "print a tensor's first and last values and statistics (min, max, mean, NaN/Inf counts)")
    .option('--verify-crc', 'checkpoints: compute the CRC-32 of the body and compare it with the crc_num trailer')
    .action(async (path: string, flags: Flags) => {
      if (flags.tensor !== undefined) {
        const src = await openWeights(path, { verifyCrc: flags.verifyCrc === true });
        try {
          const e = src.entry(flags.tensor);
          const progress = createProgress(e?.byteLength ?? 0, flags.json !== true);
          const p = await previewTensor(src, flags.tensor, { onProgress: (n) => progress.advance(n) });
          progress.done();
          process.stdout.write(flags.json === true ? `${JSON.stringify({ kind: 'tensor', ...p })}\n` : renderPreview(p));
        } finally {
          await src.close();
        }
        return;
      }
      const report = await inspectWeights(path, { verifyCrc: flags.verifyCrc === true });
      process.stdout.write(flags.json === true ? `${JSON.stringify(report)}\n` : render(path, report));
      if (report.kind === 'checkpoint' && report.crc?.valid === false) {
        process.stderr.write(`msckpt: ${path}: crc_num trailer does not match the CRC-32 of the body\n`);
        process.exitCode = 2;
      }
    });
}
