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

let warned = false;
/** `describe` that runs only when the fixtures are present, and says so loudly when they are not. */
export function describeFixtures(name: string, fn: () => void): void {
  if (fixturesDir() === null) {
    if (!warned) {
      warned = true;
      process.stderr.write(
        '\n*** NOTICE: MindSpore fixtures not found (../shared/fixtures/mindspore or MSCKPT_FIXTURES); fixture tests are SKIPPED ***\n\n',
      );
    }
    describe.skip(`${name} [skipped: fixtures absent]`, fn);
    return;
  }
  describe(name, fn);
}

export { repoRoot };
