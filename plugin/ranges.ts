/**
 * Integer lists as compact text: sorted distinct ranks as ranges, `[0,1,2,3,5,7,8]` -> `0-3,5,7-8`.
 */

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
