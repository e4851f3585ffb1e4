/**
 * `npm run bench`: runs every bench/<name>.ts that exports `run()`, or only those named on the
 * command line (`npm run bench -- transform lora`). Each prints its own figures; ratios are
 * measured in the same run, so they compare like with like on this machine.
 */
import { readdir } from 'node:fs/promises';

interface BenchModule {
  run: () => Promise<void>;
}

const dir = new URL('./', import.meta.url);
const wanted = process.argv.slice(2);
const files = (await readdir(dir))
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts' && !f.startsWith('_'))
  .filter((f) => wanted.length === 0 || wanted.includes(f.replace(/\.ts$/, '')))
  .sort();
let failed = 0;
for (const f of files) {
  const mod = (await import(new URL(f, dir).href)) as Partial<BenchModule>;
  if (typeof mod.run !== 'function') continue;
  process.stdout.write(`\n=== bench/${f} ===\n`);
  try {
    await mod.run();
  } catch (err) {
    failed++;
    process.stdout.write(`bench/${f} failed: ${err instanceof Error ? err.message : String(err)}\n`);
  }
}
process.exitCode = failed > 0 ? 1 : 0;
