/** Run the CLI's `main` in this process (fast), capturing what it writes. */
import { vi } from 'vitest';
import { main } from '../../plugin/cli/main.js';

export interface MainResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export async function runMain(args: string[]): Promise<MainResult> {
  let stdout = '';
  let stderr = '';
  const out = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stdout += String(chunk);
    return true;
  });
  const err = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stderr += String(chunk);
    return true;
  });
  const before = process.exitCode;
  try {
    const exitCode = await main(args);
    return { exitCode, stdout, stderr };
  } finally {
    out.mockRestore();
    err.mockRestore();
    process.exitCode = before;
  }
}
