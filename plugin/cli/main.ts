/**
 * The `msckpt` command line. Thin: each command lives in `commands/<name>.ts`, exports
 * `register(program)`, parses flags and calls the API. Errors become one line and an exit code:
 * 2 for bad input or usage, 1 for failures while working.
 */
import { Command, CommanderError } from 'commander';
import { describeError, exitCodeOf } from '../errors.js';
import { loadCommands } from './commands/index.js';

/**
 * Accept the snake_case spellings users know from the Python tools (`--src_checkpoint`) as well
 * as kebab-case: flag names have `_` turned into `-`, up to a bare `--`.
 */
export function normalizeArgv(argv: readonly string[]): string[] {
  const out: string[] = [];
  let passthrough = false;
  for (const arg of argv) {
    if (passthrough) {
      out.push(arg);
      continue;
    }
    if (arg === '--') {
      passthrough = true;
      out.push(arg);
      continue;
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = eq < 0 ? arg : arg.slice(0, eq);
      const rest = eq < 0 ? '' : arg.slice(eq);
      out.push(name.replace(/_/g, '-') + rest);
      continue;
    }
    out.push(arg);
  }
  return out;
}

export async function buildProgram(commandName?: string): Promise<Command> {
  const program = new Command();
  program
    .name('msckpt')
    .description('MindSpore checkpoint weights for mindformers jobs: inspect, re-shard, convert, merge LoRA, launch hook')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride();
  for (const register of await loadCommands(commandName)) register(program);
  return program;
}

/** Run the CLI; returns the exit code (never calls process.exit itself). */
export async function main(argv: readonly string[]): Promise<number> {
  const args = normalizeArgv(argv);
  const first = args.find((a) => !a.startsWith('-'));
  const program = await buildProgram(first);
  try {
    await program.parseAsync(args, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // help and version exit 0; every other parse problem is a usage error
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
      return 2;
    }
    process.stderr.write(`msckpt: ${describeError(err)}\n`);
    if (process.env['MSCKPT_DEBUG'] && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    return exitCodeOf(err);
  }
}
