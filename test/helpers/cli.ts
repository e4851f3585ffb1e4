/** Run the real `msckpt` executable in a child process (what users run). */
import { execa } from 'execa';
import { join } from 'node:path';
import { repoRoot } from './fixtures.js';

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export const MSCKPT_BIN = join(repoRoot, 'bin', 'msckpt.js');

export async function runCli(args: string[], opts: { cwd?: string; env?: Record<string, string>; input?: string } = {}): Promise<CliResult> {
  const r = await execa(process.execPath, [MSCKPT_BIN, ...args], {
    cwd: opts.cwd ?? repoRoot,
    env: opts.env,
    input: opts.input,
    reject: false,
    all: false,
  });
  return { exitCode: r.exitCode ?? 1, stdout: String(r.stdout), stderr: String(r.stderr) };
}
