/**
 * The one way tests reach the real MindSpore fixtures: `MSCKPT_FIXTURES`, else
 * `../shared/fixtures/mindspore` beside the checkout. Where they are absent (a user's fresh
 * clone), `describeFixtures` skips with a visible notice; CI has them.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe } from 'vitest';

const repoRoot = resolve(fileURLToPath(new URL('../..', import.meta.url)));

export function fixturesDir(): string | null {
  const env = process.env['MSCKPT_FIXTURES'];
  const candidates = env ? [resolve(env)] : [resolve(repoRoot, '../shared/fixtures/mindspore')];
  for (const c of candidates) if (existsSync(join(c, 'README.md'))) return c;
  return null;
}

/** Path of a fixture file, e.g. fixture('llama2_tiny_tp2/rank_0/checkpoint_0.ckpt'). */
export function fixture(rel: string): string {
  const dir = fixturesDir();
  if (dir === null) throw new Error('MindSpore fixtures not found (set MSCKPT_FIXTURES)');
  return join(dir, rel);
}

/**
 * The mindformers run YAMLs of releases r1.3.0 and r1.5.0 (every configs/ and research/ YAML):
 * `MSCKPT_MINDFORMERS_CONFIGS`, else `../shared/fixtures/mindformers-configs` beside the checkout.
 */
export function mindformersConfigsDir(): string | null {
  const env = process.env['MSCKPT_MINDFORMERS_CONFIGS'];
  const candidates = env ? [resolve(env)] : [resolve(repoRoot, '../shared/fixtures/mindformers-configs')];
  for (const c of candidates) if (existsSync(join(c, 'README.md'))) return c;
  return null;
}

const warned = new Set<string>();
function describeWhen(present: boolean, what: string, name: string, fn: () => void): void {
  if (!present) {
    if (!warned.has(what)) {
      warned.add(what);
      process.stderr.write(`\n*** NOTICE: ${what} not found; their tests are SKIPPED ***\n\n`);
    }
    describe.skip(`${name} [skipped: fixtures absent]`, fn);
    return;
  }
  describe(name, fn);
}

/** `describe` that runs only when the fixtures are present, and says so loudly when they are not. */
export function describeFixtures(name: string, fn: () => void): void {
  describeWhen(fixturesDir() !== null, 'MindSpore fixtures (../shared/fixtures/mindspore or MSCKPT_FIXTURES)', name, fn);
}

/** `describe` over the shipped mindformers run YAMLs, skipped with a notice when they are absent. */
export function describeMindformersConfigs(name: string, fn: () => void): void {
  describeWhen(mindformersConfigsDir() !== null, 'mindformers run YAMLs (../shared/fixtures/mindformers-configs or MSCKPT_MINDFORMERS_CONFIGS)', name, fn);
}

export { repoRoot };
