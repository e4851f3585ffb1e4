/**
 * Readers of flag values. Every one names the flag in its message and throws a UsageError
 * (exit 2, one line, a pointer to the command's help). Durations and sizes go through
 * plugin/units.ts, the one reader of both; the library receives milliseconds and bytes.
 */
import { InputError, UsageError } from '../errors.js';
import { parseDuration, parseSize, type UnitOptions } from '../units.js';

function asUsage<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof InputError && !(err instanceof UsageError)) throw new UsageError(err.message);
    throw err;
  }
}

/** A duration flag (bare number = seconds, `500ms`, `2s`, `10m`, `1h`) in milliseconds. */
export function durationFlag(flag: string, v: string | undefined, opts: UnitOptions = {}): number | undefined {
  if (v === undefined) return undefined;
  return asUsage(() => parseDuration(v, flag, opts));
}

/** A size flag (bare number = bytes, K/M/G binary, KB/MB/GB decimal) in bytes. */
export function sizeFlag(flag: string, v: string | undefined, opts: UnitOptions = {}): number | undefined {
  if (v === undefined) return undefined;
  return asUsage(() => parseSize(v, flag, opts));
}

export interface IntRange {
  readonly min: number;
  readonly max?: number;
}

/** Largest process or thread count any flag accepts. */
export const MAX_PROCESSES = 256;
/** Largest device count (world size) any flag accepts. */
export const MAX_WORLD_SIZE = 1 << 20;

/** An integer flag within `range` (decimal digits only: no `1e3`, `0x10`, `2.0`). */
export function intFlag(flag: string, v: string | undefined, range: IntRange): number | undefined {
  if (v === undefined) return undefined;
  const t = v.trim();
  const n = /^[+-]?\d+$/.test(t) ? Number(t) : Number.NaN;
  const max = range.max ?? Number.MAX_SAFE_INTEGER;
  if (!Number.isSafeInteger(n) || n < range.min || n > max) {
    const want = range.max !== undefined ? `an integer from ${range.min} to ${range.max}` : `an integer >= ${range.min}`;
    throw new UsageError(`${flag} must be ${want}, got '${v}'`);
  }
  return n;
}

/** One of `choices`. */
export function choiceFlag<T extends string>(flag: string, v: string | undefined, choices: readonly T[]): T | undefined {
  if (v === undefined) return undefined;
  if (!(choices as readonly string[]).includes(v)) {
    throw new UsageError(`${flag} must be ${choices.map((c) => `'${c}'`).join(' or ')}, got '${v}'`);
  }
  return v as T;
}

/**
 * A boolean written as a word, as the Python tools' `str2bool` reads it: true/false, yes/no,
 * 1/0, t/f, y/n (any case). `true` (a flag given without a value) is true.
 */
export function boolFlag(flag: string, v: string | boolean | undefined): boolean | undefined {
  if (v === undefined || typeof v === 'boolean') return v;
  const s = v.trim().toLowerCase();
  if (['true', 't', 'yes', 'y', '1'].includes(s)) return true;
  if (['false', 'f', 'no', 'n', '0'].includes(s)) return false;
  throw new UsageError(`${flag} expects true or false, got '${v}'`);
}

/** A required flag: its value, or a UsageError naming it. */
export function required<T>(flag: string, v: T | undefined, why = ''): T {
  if (v === undefined) throw new UsageError(`${flag} is required${why}`);
  return v;
}
