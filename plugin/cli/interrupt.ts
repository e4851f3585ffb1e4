/**
 * SIGINT and SIGTERM for the commands that write files: stop at once, undo the work in progress
 * (worker processes killed, plan folders and this process's temporary files removed), print one
 * line and exit 130 (SIGINT) or 143 (SIGTERM). Installed by each such command when it starts
 * (once per process); `launch` has its own (it forwards signals to the training process).
 */
import { FailureError } from '../errors.js';
import { removeLiveTempFiles, setCommitGuard } from '../formats/atomic.js';
import { runInterruptHandlers, signalExitCode } from '../interrupt.js';

let installed = false;
let stopping = false;
let allowed = false;

/** Let commands install their handlers (the executable does; `main` run inside another program does not). */
export function allowInterruptHandling(): void {
  allowed = true;
}

/** True once a signal stopped the command (its errors from then on are the signal's). */
export function interrupted(): boolean {
  return stopping;
}

export function handleInterrupts(command: string): void {
  if (installed || !allowed) return;
  installed = true;
  const on = (signal: 'SIGINT' | 'SIGTERM'): void => {
    const code = signalExitCode(signal);
    process.on(signal, () => {
      // a second signal while cleaning up: out at once
      if (stopping) process.exit(code);
      stopping = true;
      // nothing more is committed; the opens under way finish, then every temporary file goes
      setCommitGuard(() => {
        throw new FailureError(`interrupted (${signal})`);
      });
      runInterruptHandlers();
      void removeLiveTempFiles().then((n) => {
        process.stderr.write(
          `msckpt: ${command} interrupted (${signal}); stopped, ${n} temporary file(s) of this run removed; what was complete is kept, run the same command again to finish\n`,
        );
        process.exit(code);
      });
    });
  };
  on('SIGINT');
  on('SIGTERM');
}
