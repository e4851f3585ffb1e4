/**
 * Typed errors. Anything a user can cause (bad file, bad flag, bad YAML) is an InputError and
 * maps to exit code 2; a failure while working (I/O error, a child process dying) is a
 * FailureError and maps to exit code 1. The CLI prints `error.message` as one line.
 */
export interface ErrorContext {
  /** The file the problem is in. */
  file?: string;
  /** Byte offset in that file, when known. */
  offset?: number;
  /** Tensor or parameter name. */
  tensor?: string;
  /** Key path, e.g. `parallel_config.model_parallel`. */
  key?: string;
}

export abstract class MsckptError extends Error {
  abstract readonly exitCode: 1 | 2;
  readonly context: ErrorContext;
  constructor(message: string, context: ErrorContext = {}) {
    super(formatMessage(message, context));
    this.name = new.target.name;
    this.context = context;
  }
}

/** Bad input or usage: exit code 2. */
export class InputError extends MsckptError {
  readonly exitCode = 2 as const;
}

/** A failure while working: exit code 1. */
export class FailureError extends MsckptError {
  readonly exitCode = 1 as const;
}

function formatMessage(message: string, ctx: ErrorContext): string {
  const where: string[] = [];
  if (ctx.file !== undefined) where.push(ctx.file);
  if (ctx.offset !== undefined) where.push(`byte ${ctx.offset}`);
  if (ctx.tensor !== undefined) where.push(`tensor '${ctx.tensor}'`);
  if (ctx.key !== undefined) where.push(`key '${ctx.key}'`);
  return where.length > 0 ? `${where.join(', ')}: ${message}` : message;
}

/** Exit code for any thrown value: 2 for InputError, 1 otherwise. */
export function exitCodeOf(err: unknown): 1 | 2 {
  return err instanceof MsckptError ? err.exitCode : 1;
}

/** One line for a user: our errors' message, or a short form of a system error. */
export function describeError(err: unknown): string {
  if (err instanceof MsckptError) return err.message;
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return code !== undefined ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}
