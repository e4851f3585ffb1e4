/**
 * `msckpt inspect PATH [--json] [--tensor NAME] [--verify-crc]`: what a weights path holds,
 * detected by content (checkpoint, strategy, safetensors file or index, rank directory).
 */
import type { Command } from 'commander';
import { basename } from 'node:path';
import { inspectWeights, previewTensor, type InspectReport, type StrategyInspectReport, type TensorPreview } from '../../formats/inspect.js';
import type { ParallelDegree } from '../../formats/strategy/summary.js';
import { formatRanges } from '../../ranges.js';
import { openWeights } from '../../formats/open.js';
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
    case 'strategy':
      return renderStrategy(path, r);
    case 'hf-model': {
      const head =
        `HF model ${path}: model_type ${r.modelType ?? 'unknown (config.json has none)'}` +
        `${r.architectures.length > 0 ? ` (${r.architectures.join(', ')})` : ''}${r.torchDtype !== null ? `, torch_dtype ${r.torchDtype}` : ''}\n` +
        `${r.tensorCount} tensors, ${formatBytes(r.bytes)} in ${r.shards.length} shard(s)${r.index !== null ? ` (index ${basename(r.index)})` : ''}; ` +
        `${r.dtypes.map((d) => `${d.dtype} ${d.tensors} (${formatBytes(d.bytes)})`).join(', ')}\n` +
        (r.unindexed.length > 0 ? `not named by the index (not part of the model): ${r.unindexed.map((f) => basename(f)).join(', ')}\n` : '');
      const shards = table(['shard', 'tensors', 'bytes', 'file size'], r.shards.map((x) => [basename(x.file), String(x.tensors), String(x.bytes), String(x.size)]), new Set([1, 2, 3]));
      const rows = r.tensors.map((t) => [t.name, t.dtype, shapeText(t.shape), String(t.bytes), t.file !== null ? basename(t.file) : '(metadata)']);
      return `${head}${shards}\n${table(['name', 'dtype', 'shape', 'bytes', 'shard'], rows, new Set([3]))}`;
    }
    case 'files': {
      const rows = r.sources.map((x) => [x.name, basename(x.file), String(x.tensors), String(x.bytes), String(x.size)]);
      return (
        `folder of ${r.sources.length} complete .${r.format} file(s) ${path}: ${r.tensorCount} tensors, ${formatBytes(r.bytes)}\n` +
        r.notices.map((n) => `note: ${n}\n`).join('') +
        table(['source', 'file', 'tensors', 'bytes', 'file size'], rows, new Set([2, 3, 4]))
      );
    }
    case 'distributed': {
      const rows = r.ranks.map((x) => [String(x.rank), x.file ?? '(no weight file)']);
      return `distributed checkpoint ${path}: ${r.ranks.length} ranks\n` + table(['rank', 'file'], rows, new Set([0]));
    }
  }
}

const degree = (d: ParallelDegree): string => (d.value === null ? 'unknown' : String(d.value));

function renderStrategy(path: string, r: StrategyInspectReport): string {
  const m = r.summary;
  const head =
    r.source === 'folder'
      ? `strategy folder ${path}: ${r.files?.length ?? 0} per-rank file(s) merged in memory, stages [${r.stages.join(',')}], ${r.layouts.length} layouts\n`
      : `strategy ${path}: ${r.merged ? `merged, stages [${r.stages.join(',')}]` : `per-rank, stage ${m.stages.map((x) => x.stage).join(',') || '?'}`}, ${r.layouts.length} layouts\n`;
  const lines: string[][] = [
    ['devices', degree(m.devices), m.devices.how],
    ['pp', degree(m.pp), m.pp.how],
    ['mp', degree(m.mp), m.mp.how],
    ['dp', degree(m.dp), m.dp.how],
    [
      'parameters',
      String(m.parameters),
      `distinct names${m.optimizerStates > 0 ? `, besides ${m.optimizerStates} optimizer/accumulator states (adam_m., accu_grads., ...)` : ''}` +
        (m.elements !== null ? `; ${m.elements} elements (tensor_shape)` : ''),
    ],
  ];
  const w0 = Math.max(...lines.map((l) => (l[0] as string).length));
  const w1 = Math.max(...lines.map((l) => (l[1] as string).length));
  const summary = lines.map(([a, b, c]) => `  ${(a as string).padEnd(w0)}  ${(b as string).padStart(w1)}  ${c}`).join('\n') + '\n';
  const notes = m.notes.map((n) => `  note: ${n}\n`).join('');
  const folder = r.source === 'folder';
  const stageRows = m.stages.map((x) => [
    String(x.stage),
    x.devices === null ? '?' : String(x.devices),
    x.devMatrices.map(shapeText).join(' '),
    String(x.layouts),
    x.splits.map(([k, n]) => `${n} over ${k}`).join(', '),
    x.mp === null ? '?' : String(x.mp),
    x.dp === null ? '?' : String(x.dp),
    ...(folder ? [String(x.files ?? 0), x.ranks !== undefined ? formatRanges(x.ranks) : '-'] : []),
  ]);
  const stageHeader = ['stage', 'devices', 'dev_matrix', 'layouts', 'layouts split over N devices', 'mp', 'dp', ...(folder ? ['files', 'ranks'] : [])];
  const stages = table(stageHeader, stageRows, new Set([0, 1, 3, 5, 6, ...(folder ? [7] : [])]));
  const rows = r.layouts.map((l) => [
    l.name,
    String(l.stage),
    shapeText(l.devMatrix),
    `[${l.tensorMap.map((t) => (typeof t === 'number' ? String(t) : `[${t.join(',')}]`)).join(',')}]`,
    String(l.optShardStep),
    String(l.optShardSize),
    String(l.field),
  ]);
  return `${head}${summary}${notes}\n${stages}\n${table(['name', 'stage', 'devMatrix', 'tensorMap', 'optStep', 'optSize', 'field'], rows, new Set([1, 4, 5, 6]))}`;
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
    .description('show what a checkpoint, strategy (file or folder of per-rank files), safetensors file/index, HF model folder or rank_N/ folder holds (detected by content)')
    .argument('<path>', 'a .ckpt, strategy file (protobuf or JSON) or folder of them (output/strategy), .safetensors, *.index.json, HF model folder, unified, rank_N/ or a folder of weights files')
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
