/**
 * Progress for long work: a single redrawn line on a TTY, nothing at all in logs or with --json.
 * With a known total: percentage, bytes of total, rate and time left. Without one (a total of 0,
 * or work that outgrows the total it announced): bytes done and rate only, never a made-up
 * percentage. The library reports through the callback interface of plugin/progress.ts.
 */
import { SILENT_PROGRESS as SILENT, type Progress } from '../progress.js';
import { formatBytes, formatDuration } from '../units.js';

export { formatBytes, type Progress };

/** Columns used when the terminal reports none (0 or unknown). */
export const FALLBACK_COLUMNS = 80;

/** The text of one progress line (no escape codes), cut to `columns - 1` characters. */
export function progressLine(done: number, total: number, elapsedMs: number, label: string, columns: number): string {
  const secs = Math.max(elapsedMs / 1000, 1e-3);
  const rate = done / secs;
  let text: string;
  if (total > 0 && done <= total) {
    const pct = ((100 * done) / total).toFixed(1);
    const left = rate > 0 && total > done ? ` ETA ${formatDuration(((total - done) / rate) * 1000)}` : '';
    text = `${pct}% ${formatBytes(done)}/${formatBytes(total)} ${formatBytes(rate)}/s${left}`;
  } else {
    text = `${formatBytes(done)} ${formatBytes(rate)}/s`;
  }
  if (label !== '') text += ` ${label}`;
  const width = columns > 0 ? columns : FALLBACK_COLUMNS;
  return text.length < width ? text : text.slice(0, Math.max(width - 1, 1));
}

/**
 * A progress line on stderr when it is a TTY and `enabled`; a silent reporter otherwise.
 * `total` is in bytes, 0 when unknown; rate and time left are derived from wall time.
 */
export function createProgress(total: number, enabled = true, stream: NodeJS.WriteStream = process.stderr): Progress {
  if (!enabled || !stream.isTTY) return SILENT;
  const started = Date.now();
  let doneBytes = 0;
  let text = '';
  let lastDraw = 0;
  const draw = (force: boolean): void => {
    const now = Date.now();
    if (!force && now - lastDraw < 200) return;
    lastDraw = now;
    stream.write(`\r\x1b[2K${progressLine(doneBytes, total, now - started, text, stream.columns ?? 0)}`);
  };
  return {
    advance(n) {
      doneBytes += n;
      draw(false);
    },
    label(t) {
      text = t;
      draw(false);
    },
    done() {
      draw(true);
      stream.write('\n');
    },
  };
}
