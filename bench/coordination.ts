/**
 * Coordination figures: CPU an idle waiting rank uses (file events vs polling), and how long
 * after a converter is SIGKILLed a waiting rank on the same machine fails.
 */
import { execa } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Coordinator, CoordinationError } from '../plugin/coordination/index.js';

const CHILD = fileURLToPath(new URL('./_coord-child.ts', import.meta.url));

async function withRoot<T>(fn: (root: string) => Promise<T>): Promise<T> {
  const root = await mkdtemp(join(tmpdir(), 'msckpt-bench-coord-'));
  try {
    return await fn(root);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

async function idle(mode: string, ms: number): Promise<void> {
  await withRoot(async (root) => {
    const polling = mode !== 'events';
    const lead = Coordinator.open({ root, rank: 0, ranks: [0, 1], sharedDisk: polling, ...(polling ? { pollInterval: Number(mode) } : {}) });
    const child = execa(process.execPath, ['--import', 'tsx', CHILD, root, '1', 'idle', String(ms), mode], { reject: false });
    const c = await lead;
    const r = await child;
    await c.close();
    const f = JSON.parse(String(r.stdout).trim()) as { wallMs: number; userMs: number; systemMs: number };
    const pct = (100 * (f.userMs + f.systemMs)) / f.wallMs;
    process.stdout.write(
      `idle wait, ${polling ? `polling every ${mode} ms` : 'file events + 1 s safety poll'}: ${(f.wallMs / 1000).toFixed(1)} s waited, ` +
        `CPU ${f.userMs.toFixed(0)} ms user + ${f.systemMs.toFixed(0)} ms system = ${pct.toFixed(2)}% of one core\n`,
    );
  });
}

async function detect(mode: string): Promise<void> {
  await withRoot(async (root) => {
    const polling = mode !== 'events';
    const lead = Coordinator.open({ root, rank: 0, ranks: [0, 1], sharedDisk: polling, ...(polling ? { pollInterval: Number(mode) } : {}) });
    const child = execa(process.execPath, ['--import', 'tsx', CHILD, root, '1', 'die', '0', mode], { reject: false });
    const c = await lead;
    let failedAt = 0;
    try {
      await c.waitAll('converted', { ranks: [1], heartbeats: [1] });
    } catch (err) {
      if (!(err instanceof CoordinationError)) throw err;
      failedAt = Date.now();
    }
    const killedAt = Number(String((await child).stdout).trim());
    await c.close();
    process.stdout.write(
      `converter SIGKILLed, ${polling ? `polling every ${mode} ms` : 'file events'}: the waiting rank failed ${failedAt - killedAt} ms later (same machine: /proc check)\n`,
    );
  });
}

export async function run(): Promise<void> {
  await idle('events', 5000);
  await idle('1000', 5000);
  await idle('100', 5000);
  await detect('events');
  await detect('1000');
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) await run();
