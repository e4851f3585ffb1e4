/**
 * "Did you mean ...?" for names a user mistyped: flags, commands, config keys.
 */

/** Levenshtein distance, giving up (returning max+1) once it exceeds `max`. */
export function editDistance(a: string, b: string, max = 3): number {
  if (Math.abs(a.length - b.length) > max) return max + 1;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      const v = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      cur.push(v);
      if (v < rowMin) rowMin = v;
    }
    if (rowMin > max) return max + 1;
    prev = cur;
  }
  return prev[b.length]!;
}

/**
 * The candidates closest to `word` (case-insensitive, `_` and `-` alike), within an edit distance
 * of 2 (1 for words of up to 3 letters), best first; at most `most`.
 */
export function closest(word: string, candidates: readonly string[], most = 3): string[] {
  const norm = (s: string): string => s.toLowerCase().replace(/_/g, '-');
  const w = norm(word);
  const limit = w.replace(/^-+/, '').length <= 3 ? 1 : 2;
  const scored: Array<{ c: string; d: number }> = [];
  for (const c of candidates) {
    const d = editDistance(w, norm(c), limit);
    if (d <= limit) scored.push({ c, d });
  }
  scored.sort((a, b) => a.d - b.d || a.c.localeCompare(b.c));
  return scored.slice(0, most).map((s) => s.c);
}
