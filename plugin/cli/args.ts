/**
 * The command line of one command, read the way argparse reads the Python tools' command lines,
 * before commander sees it:
 * - snake_case spellings are kebab-case (`--src_checkpoint` is `--src-checkpoint`);
 * - an unambiguous prefix of a long flag is that flag (`--dst_checkpoint` is
 *   `--dst-checkpoint-dir`); an ambiguous one is a usage error naming the candidates;
 * - an unknown flag is a usage error with a did-you-mean, unless the command takes extras
 *   (`convert`: a model's own `--key value` options, judged once the model is known);
 * - `--x` together with `--no-x` is a usage error.
 * How each flag was typed is kept (`typedAs`), so that a command can tell a Python tool's
 * command line from its own.
 */
import type { Command, Option } from 'commander';
import { UsageError } from '../errors.js';
import { closest } from '../suggest.js';

/** An unknown `--key value` of a command that takes extras. */
export interface ExtraArg {
  /** snake_case key, as the Python tools pass it on (`n_head`). */
  readonly key: string;
  readonly value: string | undefined;
  /** As typed, for messages (`--n_head`). */
  readonly typed: string;
}

export interface Invocation {
  readonly command: string;
  /** Long flag (canonical, `--dst-checkpoint-dir`) -> how it was typed (`--dst_checkpoint`). */
  readonly typed: ReadonlyMap<string, string>;
  readonly extras: readonly ExtraArg[];
  /** Whether a bare `--` ended the flags (what follows belongs to another program). */
  readonly doubleDash: boolean;
}

let current: Invocation = { command: '', typed: new Map(), extras: [], doubleDash: false };

/** The command line being run, as read by `readCommandArgs`. */
export function invocation(): Invocation {
  return current;
}

/** How a long flag was typed on the command line, if it was given. */
export function typedAs(long: string): string | undefined {
  return current.typed.get(long);
}

const takesExtras = new WeakSet<Command>();

/** Let `cmd` take unknown `--key value` pairs (read them with `invocation().extras`). */
export function acceptExtras(cmd: Command): Command {
  takesExtras.add(cmd);
  return cmd;
}

/** The pointer every usage error ends with. */
export function helpHint(command: string | undefined): string {
  return command ? `see 'msckpt ${command} --help'` : "see 'msckpt --help'";
}

interface Spec {
  readonly long: string;
  readonly takes: 'none' | 'required' | 'optional';
  readonly hidden: boolean;
}

function specsOf(cmd: Command): { longs: Map<string, Spec>; shorts: Map<string, Spec> } {
  const longs = new Map<string, Spec>();
  const shorts = new Map<string, Spec>();
  const add = (o: Pick<Option, 'long' | 'short' | 'required' | 'optional' | 'hidden'>): void => {
    const spec: Spec = { long: o.long ?? o.short ?? '', takes: o.required ? 'required' : o.optional ? 'optional' : 'none', hidden: o.hidden };
    if (o.long !== undefined) longs.set(o.long, spec);
    if (o.short !== undefined) shorts.set(o.short, spec);
  };
  for (const o of cmd.options) add(o);
  add({ long: '--help', short: '-h', required: false, optional: false, hidden: false });
  return { longs, shorts };
}

const isOptionLike = (s: string): boolean => s.startsWith('-') && s !== '-' && !/^-\d/.test(s);

/**
 * Normalise `args` (what follows the command name) for commander and check the flags; throws a
 * UsageError for unknown, ambiguous or contradictory flags. Records the invocation.
 */
export function readCommandArgs(cmd: Command, args: readonly string[]): string[] {
  const { longs, shorts } = specsOf(cmd);
  const visible = [...longs.values()].filter((s) => !s.hidden).map((s) => s.long);
  const out: string[] = [];
  const typed = new Map<string, string>();
  const extras: ExtraArg[] = [];
  const unknown: string[] = [];
  let doubleDash = false;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    if (arg === '--') {
      out.push(...args.slice(i));
      doubleDash = true;
      break;
    }
    if (!isOptionLike(arg)) {
      out.push(arg);
      continue;
    }
    if (!arg.startsWith('--')) {
      const spec = shorts.get(arg.slice(0, 2));
      if (spec === undefined) {
        unknown.push(arg);
        continue;
      }
      typed.set(spec.long, arg.slice(0, 2));
      out.push(arg);
      if (spec.takes === 'required' && arg.length === 2 && i + 1 < args.length) out.push(args[++i] as string);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = eq < 0 ? arg : arg.slice(0, eq);
    const inline = eq < 0 ? undefined : arg.slice(eq + 1);
    const key = `--${name.slice(2).replace(/_/g, '-')}`;
    let spec = longs.get(key);
    if (spec === undefined) {
      const candidates = [...longs.values()].filter((s) => !s.hidden && s.long.startsWith(key));
      if (candidates.length > 1) {
        throw new UsageError(`option '${name}' is ambiguous: it could be ${candidates.map((c) => c.long).join(', ')}`);
      }
      spec = candidates[0];
    }
    if (spec === undefined) {
      if (takesExtras.has(cmd)) {
        let value = inline;
        if (value === undefined && i + 1 < args.length && !(args[i + 1] as string).startsWith('--')) value = args[++i] as string;
        extras.push({ key: name.slice(2).replace(/-/g, '_'), value, typed: name });
      } else {
        unknown.push(name);
        if (inline === undefined && i + 1 < args.length && !isOptionLike(args[i + 1] as string)) i++; // its value
      }
      continue;
    }
    typed.set(spec.long, name);
    if (spec.takes === 'none' && inline !== undefined) throw new UsageError(`option '${spec.long}' takes no value, got '${arg}'`);
    if (inline !== undefined) out.push(`${spec.long}=${inline}`);
    else {
      out.push(spec.long);
      const next = args[i + 1];
      if (spec.takes === 'required') {
        if (next === undefined || (isOptionLike(next) && next !== '-')) throw new UsageError(`option '${name}' needs a value`);
        out.push(next);
        i++;
      } else if (spec.takes === 'optional' && next !== undefined && !isOptionLike(next)) {
        out.push(next);
        i++;
      }
    }
  }
  if (unknown.length > 0) {
    const first = unknown[0] as string;
    const hint = closest(first, visible, 2);
    const list = unknown.map((u) => `'${u}'`).join(', ');
    throw new UsageError(
      `unknown option${unknown.length > 1 ? 's' : ''} ${list}${hint.length > 0 ? ` (did you mean ${hint.map((h) => `'${h}'`).join(' or ')}?)` : ''}`,
    );
  }
  for (const long of typed.keys()) {
    if (long.startsWith('--no-') && typed.has(`--${long.slice(5)}`)) {
      throw new UsageError(`${typed.get(`--${long.slice(5)}`)} and ${typed.get(long)} contradict each other: give one`);
    }
  }
  current = { command: cmd.name(), typed, extras, doubleDash };
  return out;
}
