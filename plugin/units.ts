/**
 * The one reader of durations and sizes, used by every flag and every YAML key.
 *
 * Durations: a bare number is **seconds** (`2`, `0.5`); a number with a unit is `ms`, `s`, `m`,
 * `h` or `d` (`500ms`, `2s`, `10m`, `1h`), and units may be chained (`1h30m`). Results are in
 * milliseconds.
 *
 * Sizes: a bare number is bytes. `K M G T` and `KiB MiB GiB TiB` are powers of 1024; `KB MB GB TB`
 * are powers of 1000 (GNU coreutils' convention, and HuggingFace's `max_shard_size` for the `B`
 * and `iB` forms). Letters are case-insensitive, a trailing `B` alone means bytes (`512B`).
 *
 * Errors are InputErrors that name the flag or key (`what`) and say what was expected.
 */
import { InputError } from './errors.js';

const DURATION_UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

export interface UnitOptions {
  /** Accept zero (default: false, the value must be positive). */
  readonly allowZero?: boolean;
}

function fail(what: string, text: string, expected: string): never {
  throw new InputError(`${what}: cannot read '${text}' (expected ${expected})`);
}

/**
 * A duration in milliseconds. `value` may already be a number (from YAML): then it is seconds.
 * `what` names the flag or key for messages (`--barrier-timeout`, `msckpt.poll_interval`).
 */
export function parseDuration(value: string | number, what: string, opts: UnitOptions = {}): number {
  const expected = 'a duration such as 30, 0.5, 500ms, 2s, 10m or 1h; a bare number is seconds';
  let ms: number;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) fail(what, String(value), expected);
    ms = value * 1000;
  } else {
    const text = value.trim();
    if (/^[+]?(\d+(\.\d*)?|\.\d+)$/.test(text)) ms = Number(text) * 1000;
    else {
      const re = /(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)/giy;
      ms = 0;
      let at = 0;
      let parts = 0;
      const squeezed = text.replace(/\s+/g, '');
      for (;;) {
        re.lastIndex = at;
        const m = re.exec(squeezed);
        if (m === null) break;
        ms += Number(m[1]) * (DURATION_UNITS[(m[2] as string).toLowerCase()] as number);
        at = re.lastIndex;
        parts++;
      }
      if (parts === 0 || at !== squeezed.length) fail(what, value, expected);
    }
  }
  ms = Math.round(ms);
  if (ms < 0 || (ms === 0 && opts.allowZero !== true) || !Number.isSafeInteger(ms)) {
    throw new InputError(`${what}: ${String(value)} is not a ${opts.allowZero === true ? 'non-negative' : 'positive'} duration`);
  }
  return ms;
}

const SIZE_UNITS: Readonly<Record<string, number>> = {
  '': 1, b: 1,
  k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4,
  kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4,
  kb: 1000, mb: 1000 ** 2, gb: 1000 ** 3, tb: 1000 ** 4,
};

/** A size in bytes (see the module comment for the units). `value` as a number is bytes. */
export function parseSize(value: string | number, what: string, opts: UnitOptions = {}): number {
  const expected = 'a size such as 1048576, 512M, 512MiB, 2G or 5GB (K/M/G and KiB/MiB/GiB are powers of 1024, KB/MB/GB of 1000)';
  let bytes: number;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) fail(what, String(value), expected);
    bytes = value;
  } else {
    const m = /^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$/i.exec(value);
    if (m === null) fail(what, value, expected);
    const mult = SIZE_UNITS[(m[2] as string).toLowerCase()];
    if (mult === undefined) fail(what, value, expected);
    bytes = Number(m[1]) * mult;
  }
  bytes = Math.floor(bytes);
  if (bytes < 0 || (bytes === 0 && opts.allowZero !== true) || !Number.isSafeInteger(bytes)) {
    throw new InputError(`${what}: ${String(value)} is not a ${opts.allowZero === true ? 'non-negative' : 'positive'} size`);
  }
  return bytes;
}

/** Bytes for people: binary units, one decimal (`1.5 GiB`). */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}

/** Milliseconds for people: `850 ms`, `12.5 s`, `3 min 20 s`, `2 h 5 min`. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const totalS = Math.round(s);
  if (totalS < 3600) return `${Math.floor(totalS / 60)} min${totalS % 60 > 0 ? ` ${totalS % 60} s` : ''}`;
  const mins = Math.round(totalS / 60);
  return `${Math.floor(mins / 60)} h${mins % 60 > 0 ? ` ${mins % 60} min` : ''}`;
}
