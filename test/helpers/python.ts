/**
 * python3 with PyYAML, the reader mindformers uses, for tests that check what PyYAML makes of a
 * YAML. CI has it; elsewhere such checks are skipped with a visible notice.
 */
import { execFileSync } from 'node:child_process';

let found: string | null | undefined;

/** `python3` when it imports yaml, else null (and a notice, once). */
export function pythonWithPyYaml(): string | null {
  if (found !== undefined) return found;
  try {
    execFileSync('python3', ['-c', 'import yaml'], { stdio: 'ignore', timeout: 20_000 });
    found = 'python3';
  } catch {
    process.stderr.write('\n*** NOTICE: python3 with PyYAML not found; what PyYAML reads is NOT checked ***\n\n');
    found = null;
  }
  return found;
}
