/**
 * Layers look only down. Every import of every module in plugin/ (static, type-only, re-exports
 * and dynamic) is checked against the layer order (ARCHITECTURE.md):
 *
 *   0 base        errors, units, package-files, progress, real-paths, interrupt
 *   1 formats     file kinds behind sources and sinks; the resolver; source indexes
 *   2 layout      strategy -> boxes (pure)
 *   3 plan        plans as data
 *   4 transform   the executor and the rank writer
 *   5 clients     convert, lora, unify (each uses 0-4, never another client)
 *   6 launcher    composes everything below, and coordination
 *     cluster     offline work spread over a cluster job: transform + coordination
 *   7 cli, index  on top
 *   coordination  beside the tensor layers: base only (plus formats/atomic.ts, plain files)
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './helpers/fixtures.js';

const PLUGIN = join(repoRoot, 'plugin');

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) => (d.isDirectory() ? files(join(dir, d.name)) : d.name.endsWith('.ts') ? [join(dir, d.name)] : []));
}

/** The part of plugin/ a module belongs to: its top folder, or its file name at the top. */
function partOf(abs: string): string {
  const rel = relative(PLUGIN, abs).split(/[\\/]/);
  return rel.length > 1 ? (rel[0] as string) : (rel[0] as string).replace(/\.[jt]s$/, '');
}

const LAYER: Readonly<Record<string, number>> = {
  errors: 0, units: 0, suggest: 0, 'real-paths': 0, ranges: 0, 'package-files': 0, progress: 0, interrupt: 0, processes: 0,
  formats: 1, layout: 2, plan: 3, transform: 4,
  convert: 5, lora: 5, unify: 5,
  launcher: 6, cluster: 6,
  cli: 7, index: 7,
};
const CLIENTS = new Set(['convert', 'lora', 'unify']);

/** Relative module specifiers a source imports (static, type-only, re-exports, dynamic). */
function importsOf(text: string): string[] {
  const out: string[] = [];
  const re = /(?:^|\n)\s*(?:import|export)\s[^;]*?\sfrom\s+['"](\.[^'"]+)['"]|import\(\s*['"](\.[^'"]+)['"]\s*\)|(?:^|\n)\s*import\s+['"](\.[^'"]+)['"]/g;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) out.push((m[1] ?? m[2] ?? m[3]) as string);
  return out;
}

/** Why an import from part `from` of part `to` breaks the layers, or null. */
function violation(from: string, to: string, target: string): string | null {
  if (from === to) return null;
  if (from === 'coordination') return LAYER[to] === 0 || relative(PLUGIN, target) === join('formats', 'atomic.ts') ? null : 'coordination knows nothing of tensors';
  if (to === 'coordination') return (LAYER[from] ?? 0) >= 6 ? null : 'only the launcher and above use coordination';
  const lf = LAYER[from];
  const lt = LAYER[to];
  if (lf === undefined || lt === undefined) return `unknown part (add it to the layer table): ${lf === undefined ? from : to}`;
  if (lt > lf) return `${to} (layer ${lt}) is above ${from} (layer ${lf})`;
  if (CLIENTS.has(from) && CLIENTS.has(to)) return 'clients do not import each other';
  return null;
}

describe('layers', () => {
  it('the import scanner sees every form of import', () => {
    const text = [
      "import { a } from '../x.js';",
      "import type { B } from './y.js';",
      "export { c } from '../z.js';",
      "export * from './w.js';",
      'import {\n  d,\n  e,\n} from "../v.js";',
      "const m = await import('../u.js');",
      "import './side.js';",
    ].join('\n');
    expect(importsOf(text).sort()).toEqual(['../x.js', './y.js', '../z.js', './w.js', '../v.js', '../u.js', './side.js'].sort());
  });

  it('no module of plugin/ imports from a layer above it', () => {
    const problems: string[] = [];
    let edges = 0;
    for (const f of files(PLUGIN)) {
      const from = partOf(f);
      for (const spec of importsOf(readFileSync(f, 'utf8'))) {
        const target = resolve(dirname(f), spec.replace(/\.js$/, '.ts'));
        edges++;
        const why = violation(from, partOf(target), target);
        if (why !== null) problems.push(`${relative(repoRoot, f)} imports ${spec}: ${why}`);
      }
    }
    expect(edges).toBeGreaterThan(100);
    expect(problems).toEqual([]);
  });

  it('a module importing from above is caught', () => {
    expect(violation('formats', 'plan', join(PLUGIN, 'plan', 'build.ts'))).toMatch(/above/);
    expect(violation('transform', 'cli', join(PLUGIN, 'cli', 'progress.ts'))).toMatch(/above/);
    expect(violation('lora', 'unify', join(PLUGIN, 'unify', 'unify.ts'))).toMatch(/clients/);
    expect(violation('coordination', 'formats', join(PLUGIN, 'formats', 'open.ts'))).toMatch(/tensors/);
    expect(violation('plan', 'coordination', join(PLUGIN, 'coordination', 'index.ts'))).toMatch(/launcher/);
    expect(violation('launcher', 'transform', join(PLUGIN, 'transform', 'rank-writer.ts'))).toBeNull();
  });
});
