/**
 * The `msckpt` command line. Thin: each command lives in `commands/<name>.ts`, exports
 * `register(program)`, declares its flags and calls the API. Errors become one line and an exit
 * code: 2 for bad input or usage (usage errors end with a pointer to the command's help), 1 for
 * failures while working. A closed stdout (`msckpt plan --json | head`) ends the command quietly.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { describeError, exitCodeOf, UsageError } from '../errors.js';
import { packageFile } from '../package-files.js';
import { closest } from '../suggest.js';
import { helpHint, readCommandArgs } from './args.js';
import { allowInterruptHandling, interrupted } from './interrupt.js';
import { loadCommands } from './commands/index.js';

/** The version in the package's package.json. */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(packageFile('package.json'), 'utf8')) as { version?: unknown };
  return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
}

export async function buildProgram(commandName?: string): Promise<Command> {
  const program = new Command();
  program
    .name('msckpt')
    .description('MindSpore checkpoint weights for mindformers jobs: inspect, re-shard, convert, merge LoRA, launch hook')
    .version(packageVersion(), '-V, --version')
    .configureOutput({ outputError: () => {} })
    .exitOverride();
  for (const register of await loadCommands(commandName)) register(program);
  return program;
}

let stdoutGuarded = false;

/**
 * A reader that goes away (`| head`) closes our stdout: stop quietly with exit 0 instead of an
 * EPIPE stack trace. Output to stderr that cannot be written is dropped.
 */
function guardOutput(): void {
  if (stdoutGuarded) return;
  stdoutGuarded = true;
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE' || err.code === 'ERR_STREAM_DESTROYED') process.exit(0);
    throw err;
  });
  process.stderr.on('error', () => {});
}

function usageLine(message: string, command: string | undefined): string {
  return `msckpt: ${message}; ${helpHint(command)}\n`;
}

export interface MainOptions {
  /**
   * Commands that write files handle SIGINT/SIGTERM (clean up, one line, exit 130/143): the
   * executable asks for it; a caller running `main` inside its own process (tests) does not.
   */
  readonly handleSignals?: boolean;
}

/** Run the CLI; returns the exit code (never calls process.exit itself, except on a closed stdout or a signal). */
export async function main(argv: readonly string[], opts: MainOptions = {}): Promise<number> {
  guardOutput();
  if (opts.handleSignals === true) allowInterruptHandling();
  const first = argv[0];
  if (first === undefined) {
    const program = await buildProgram();
    process.stderr.write(program.helpInformation());
    return 2;
  }
  let commandName: string | undefined;
  try {
    if (first === '-V' || first === '--version') {
      process.stdout.write(`${packageVersion()}\n`);
      return 0;
    }
    if (first === '-h' || first === '--help' || first === 'help') {
      const topic = first === 'help' ? argv[1] : undefined;
      const program = await buildProgram(topic?.replace(/_/g, '-'));
      const cmd = topic === undefined ? undefined : program.commands.find((c) => c.name() === topic.replace(/_/g, '-'));
      if (topic !== undefined && cmd === undefined) throw new UsageError(`unknown command '${topic}'`);
      process.stdout.write((cmd ?? program).helpInformation());
      return 0;
    }
    if (first.startsWith('-')) throw new UsageError(`unknown option '${first}' (the command comes first: msckpt <command> [flags])`);
    commandName = first.replace(/_/g, '-');
    const program = await buildProgram(commandName);
    const cmd = program.commands.find((c) => c.name() === commandName || c.aliases().includes(commandName as string));
    if (cmd === undefined) {
      const hint = closest(first, program.commands.map((c) => c.name()), 2);
      const wanted = commandName;
      commandName = undefined;
      throw new UsageError(`unknown command '${wanted}'${hint.length > 0 ? ` (did you mean ${hint.map((h) => `'${h}'`).join(' or ')}?)` : ''}`);
    }
    const args = readCommandArgs(cmd, argv.slice(1));
    await program.parseAsync([cmd.name(), ...args], { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // help and version exit 0; every other parse problem is a usage error
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
      process.stderr.write(usageLine(err.message.replace(/^error: /, ''), commandName));
      return 2;
    }
    if (err instanceof UsageError) {
      process.stderr.write(usageLine(err.message, commandName));
      return 2;
    }
    // interrupted: the signal handler says so in its one line
    if (interrupted()) return exitCodeOf(err);
    process.stderr.write(`msckpt: ${describeError(err)}\n`);
    if (process.env['MSCKPT_DEBUG'] && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    return exitCodeOf(err);
  }
}
