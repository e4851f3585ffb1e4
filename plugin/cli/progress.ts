/**
 * The progress renderer of the CLI: a single redrawn line on a TTY, nothing at all in logs or
 * with --json. The library reports through the callback interface of plugin/progress.ts.
 */
import { SILENT_PROGRESS as SILENT, type Progress } from '../progress.js';
import { formatBytes } from '../units.js';

export { formatBytes, type Progress };

/**
 * A progress line on stderr when it is a TTY and `enabled`; a silent reporter otherwise.
 * `total` is in bytes; rate and ETA are derived from wall time.
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
    const secs = Math.max((now - started) / 1000, 1e-3);
    const rate = doneBytes / secs;
    const eta = rate > 0 && total > doneBytes ? Math.ceil((total - doneBytes) / rate) : 0;
    const pct = total > 0 ? ((100 * doneBytes) / total).toFixed(1) : '100.0';
    stream.write(`\r\x1b[2K${pct}% ${formatBytes(doneBytes)}/${formatBytes(total)} ${formatBytes(rate)}/s ETA ${eta}s ${text}`.slice(0, (stream.columns ?? 120) + 8));
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
