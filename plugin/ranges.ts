/**
 * Integer lists as compact text: sorted distinct ranks as ranges, `[0,1,2,3,5,7,8]` -> `0-3,5,7-8`,
 * and back (`--ranks 8-15`, the coordination layer's records).
 */
import { InputError } from './errors.js';

/** Sorted distinct integers as ranges: [0,1,2,3,5,7,8] -> "0-3,5,7-8". */
export function formatRanges(values: readonly number[]): string {
  const s = [...new Set(values)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < s.length; ) {
    let j = i;
    while (j + 1 < s.length && (s[j + 1] as number) === (s[j] as number) + 1) j++;
    parts.push(i === j ? String(s[i]) : `${s[i]}-${s[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

/** `8-15`, `0,2,4-7` -> sorted distinct ranks; text that is not ranges is an input error. */
export function parseRankRanges(text: string): number[] {
  const out = new Set<number>();
  for (const part of text.split(',')) {
    const p = part.trim();
    if (p === '') continue;
    const m = /^(\d+)(?:-(\d+))?$/.exec(p);
    if (m === null) throw new InputError(`cannot read rank range '${p}' (expected e.g. 8-15 or 0,2,4-7)`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (b < a) throw new InputError(`rank range '${p}' runs backwards`);
    if (b - a > 1_000_000) throw new InputError(`rank range '${p}' is too large`);
    for (let r = a; r <= b; r++) out.add(r);
  }
  if (out.size === 0) throw new InputError(`no ranks in '${text}'`);
  return [...out].sort((x, y) => x - y);
}

/** The inverse of formatRanges for text this tool wrote: '' is no ranks, undefined when it is not ranges. */
export function parseRanges(text: string): number[] | undefined {
  if (text === '') return [];
  try {
    return parseRankRanges(text);
  } catch {
    return undefined;
  }
}
