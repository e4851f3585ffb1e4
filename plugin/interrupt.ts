/**
 * What to undo when a command is interrupted (SIGINT, SIGTERM): work in progress registers a
 * synchronous clean-up (kill its worker processes, remove its plan folder) and removes it when
 * done; the CLI's signal handler runs what is registered, newest first, then exits. Knows
 * nothing of signals itself.
 */
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
