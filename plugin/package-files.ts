/**
 * Files shipped with the package (schemas/), found from the sources, a compiled dist/ or any
 * other output folder alike: walk up from this module to the folder that holds the file.
 */
import { existsSync } from 'node:fs';
import { dirname, extname, join } from 'node:path';
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

/**
 * A module of msckpt to start as its own node process (`rel` without extension, from plugin/,
 * e.g. `transform/worker`): the compiled `.js` beside this module, or under tsx the `.ts` source
 * with the tsx loader, so it works from the sources and from dist alike.
 */
export function pluginModule(rel: string): { path: string; execArgv: string[] } {
  const self = fileURLToPath(import.meta.url);
  const ext = extname(self);
  const path = join(dirname(self), `${rel}${ext}`);
  if (!existsSync(path)) throw new Error(`msckpt: cannot find ${rel}${ext} beside ${self}`);
  return { path, execArgv: ext === '.ts' ? ['--import', import.meta.resolve('tsx')] : [] };
}
