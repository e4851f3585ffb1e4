/**
 * The yardstick every bench compares with, measured in the same run: `cp -r` of the same bytes
 * plus `sync` of every file the copy wrote (what our writers do: each output is fsynced before its
 * rename). Only the copy's own files are synced, so other work on a shared machine is not timed;
 * a global `sync` first puts earlier writes out of the way.
 */
import { execa } from 'execa';
import { readdir, rm, stat } from 'node:fs/promises';
import { availableParallelism, loadavg } from 'node:os';
import { join } from 'node:path';

async function filesUnder(path: string): Promise<string[]> {
  const st = await stat(path);
  if (!st.isDirectory()) return [path];
  const out: string[] = [];
  for (const d of await readdir(path, { withFileTypes: true })) {
    const p = join(path, d.name);
    if (d.isDirectory()) out.push(...(await filesUnder(p)));
    else if (d.isFile()) out.push(p);
  }
  return out;
}

/** Seconds `cp -r from to` plus `sync` of the copied files take; the copy is removed after. */
export async function cpSyncSeconds(from: string, to: string): Promise<number> {
  await execa('sync', []);
  const t0 = performance.now();
  await execa('cp', ['-r', from, to]);
  const files = await filesUnder(to);
  for (let i = 0; i < files.length; i += 256) await execa('sync', files.slice(i, i + 256));
  const s = (performance.now() - t0) / 1000;
  await rm(to, { recursive: true, force: true });
  return s;
}

/** The machine's load, to print next to every figure: `load 1.2 0.9 0.8 on 2 cores`. */
export function loadText(): string {
  return `load ${loadavg().map((x) => x.toFixed(1)).join(' ')} on ${availableParallelism()} cores`;
}
