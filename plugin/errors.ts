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

/**
 * A command line the CLI cannot take (unknown or conflicting flags, a flag's value out of range):
 * exit code 2, printed as one line followed by a pointer to the command's help.
 */
export class UsageError extends InputError {}

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
  if (err instanceof MsckptError) return err.exitCode;
  const mapped = fromSystemError(err, undefined);
  return mapped instanceof MsckptError ? mapped.exitCode : 1;
}

/** What each system error code means, in plain words, and what the user can do about it. */
const SYSTEM_ERRORS: Readonly<Record<string, { text: string; hint: string; input: boolean }>> = {
  ENOSPC: { text: 'no space left on the device', hint: 'free space or choose another output folder', input: false },
  EDQUOT: { text: 'disk quota exceeded', hint: 'free space within your quota or choose another output folder', input: false },
  EACCES: { text: 'permission denied', hint: 'check the permissions of the path and its parent folders', input: true },
  EPERM: { text: 'operation not permitted', hint: 'check the permissions and ownership of the path', input: true },
  EROFS: { text: 'the file system is read-only', hint: 'choose a writable location', input: true },
  ENOENT: { text: 'no such file or directory', hint: 'check the path', input: true },
  ENOTDIR: { text: 'a part of the path is not a directory', hint: 'check the path', input: true },
  EISDIR: { text: 'is a directory, expected a file', hint: 'name a file', input: true },
  EEXIST: { text: 'already exists', hint: 'choose another name', input: true },
  ENOTEMPTY: { text: 'the directory is not empty', hint: 'empty it or choose another folder', input: true },
  ENAMETOOLONG: { text: 'the path is too long', hint: 'use a shorter path', input: true },
  ELOOP: { text: 'too many levels of symbolic links', hint: 'check the symbolic links on the path', input: true },
  EMFILE: { text: 'too many open files', hint: 'raise the open-file limit (ulimit -n)', input: false },
  ENFILE: { text: 'too many open files on the system', hint: 'retry when the system is less loaded', input: false },
  EIO: { text: 'input/output error', hint: 'the disk or network file system failed; check it and retry', input: false },
  EXDEV: { text: 'cannot move across file systems', hint: 'keep temporary and final files on one file system', input: false },
  ENOMEM: { text: 'out of memory', hint: 'lower --memory or free memory', input: false },
  ESTALE: { text: 'stale network file handle', hint: 'the network file system lost the file; retry', input: false },
  ETIMEDOUT: { text: 'timed out', hint: 'the disk or network did not answer; retry', input: false },
};

/** The errno code of a Node system error, if it is one. */
export function systemErrorCode(err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : undefined;
}

/**
 * A system error (ENOSPC, EACCES, ...) as one of ours: plain words, the path, what to do, and the
 * exit code (2 when the user can fix the path or its permissions, 1 otherwise). `action` says what
 * was being done (`writing`, `creating the folder`, ...). Other errors are returned unchanged.
 */
export function fromSystemError(err: unknown, path: string | undefined, action?: string): unknown {
  if (err instanceof MsckptError) return err;
  const code = systemErrorCode(err);
  if (code === undefined) return err;
  const known = SYSTEM_ERRORS[code];
  const sysPath = (err as NodeJS.ErrnoException).path;
  const file = path ?? sysPath;
  const what = known !== undefined ? known.text : ((err as Error).message.replace(/^[A-Z0-9]+: /, '').split(',')[0] ?? code);
  const message = `${action !== undefined ? `${action}: ` : ''}${what} (${code})${known !== undefined ? `; ${known.hint}` : ''}`;
  const context: ErrorContext = file !== undefined ? { file } : {};
  return known?.input === true ? new InputError(message, context) : new FailureError(message, context);
}

/** One line for a user: our errors' message, or a system error in plain words with its path. */
export function describeError(err: unknown): string {
  if (err instanceof MsckptError) return err.message;
  const mapped = fromSystemError(err, undefined);
  if (mapped instanceof MsckptError) return mapped.message;
  if (err instanceof Error) return err.message;
  return String(err);
}
