/**
 * What to undo when a command is interrupted (SIGINT, SIGTERM): work in progress registers a
 * synchronous clean-up (kill its worker processes, remove its plan folder) and removes it when
 * done; the CLI's signal handler runs what is registered, newest first, then exits. Knows
 * nothing of signals itself beyond the exit code a signal gives.
 */
import { constants as osConstants } from 'node:os';

/** The exit code of a process ended by `sig`: 128 + its number (SIGINT 130, SIGTERM 143); 1 when unknown. */
export function signalExitCode(sig: string | undefined): number {
  if (sig === undefined) return 1;
  const n = (osConstants.signals as Record<string, number>)[sig];
  return n === undefined ? 1 : 128 + n;
}

const handlers: (() => void)[] = [];

/** Register a clean-up; returns the function that unregisters it. */
export function onInterrupt(fn: () => void): () => void {
  handlers.push(fn);
  return () => {
    const i = handlers.lastIndexOf(fn);
    if (i >= 0) handlers.splice(i, 1);
  };
}

/** Run every registered clean-up once (newest first); errors are ignored, the process is on its way out. */
export function runInterruptHandlers(): void {
  while (handlers.length > 0) {
    const fn = handlers.pop() as () => void;
    try {
      fn();
    } catch {
      // nothing more can be done
    }
  }
}
