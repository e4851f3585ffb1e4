/**
 * Files shipped with the package (schemas/), found from the sources, a compiled dist/ or any
 * other output folder alike: walk up from this module to the folder that holds the file.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const found = new Map<string, string>();

/** Absolute path of `rel` (e.g. `schemas/strategy.proto`) in the msckpt package. */
export function packageFile(rel: string): string {
  const cached = found.get(rel);
  if (cached !== undefined) return cached;
  const start = dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; dir = dirname(dir)) {
    const p = join(dir, rel);
    if (existsSync(join(dir, 'package.json')) && existsSync(p)) {
      found.set(rel, p);
      return p;
    }
    if (dirname(dir) === dir) throw new Error(`msckpt: cannot find ${rel} above ${start}`);
  }
}
