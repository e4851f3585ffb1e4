/**
 * Comparing paths the way the kernel resolves them: every path that is written or cleaned is
 * compared with every path that is read after resolving symlinks on both sides (the realpath of
 * the nearest existing ancestor, the rest appended), `..` and trailing slashes. One place for
 * every command and the launcher.
 */
import { lstat, realpath } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { InputError } from './errors.js';

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * The canonical absolute form of `p`: walked component by component from the root, each existing
 * prefix replaced by its realpath (so symlinks are followed before a later `..` is applied, as
 * the kernel does), the non-existing rest appended lexically. Trailing slashes are dropped.
 */
export async function canonicalPath(p: string, baseDir: string = process.cwd()): Promise<string> {
  const abs = isAbsolute(p) ? p : `${baseDir}${sep}${p}`;
  const parts = abs.split(/[\\/]+/).filter((c) => c !== '' && c !== '.');
  let cur: string = sep;
  let existing = true;
  for (const part of parts) {
    if (part === '..') {
      cur = dirname(cur);
      continue;
    }
    const next = join(cur, part);
    if (existing && (await exists(next))) {
      try {
        cur = await realpath(next);
      } catch {
        // a dangling symlink: keep the lexical name, nothing below it exists
        cur = next;
        existing = false;
      }
    } else {
      cur = next;
      existing = false;
    }
  }
  return cur;
}

/** True when `a` and `b` are the same path or `a` lies inside `b`, after canonicalising both. */
export async function isSameOrInside(a: string, b: string, baseDir: string = process.cwd()): Promise<boolean> {
  const [ca, cb] = await Promise.all([canonicalPath(a, baseDir), canonicalPath(b, baseDir)]);
  return isSameOrInsideCanonical(ca, cb);
}

/** `isSameOrInside` on already canonical paths (no I/O). */
export function isSameOrInsideCanonical(a: string, b: string): boolean {
  if (a === b) return true;
  const prefix = b.endsWith(sep) ? b : b + sep;
  return a.startsWith(prefix);
}

/** How two paths relate: `a` is `b`, inside it, contains it, or neither (after canonicalising). */
export type PathRelation = 'same' | 'inside' | 'contains' | 'apart';


export async function pathRelation(a: string, b: string, baseDir: string = process.cwd()): Promise<PathRelation> {
  const [ca, cb] = await Promise.all([canonicalPath(a, baseDir), canonicalPath(b, baseDir)]);
  if (ca === cb) return 'same';
  if (isSameOrInsideCanonical(ca, cb)) return 'inside';
  if (isSameOrInsideCanonical(cb, ca)) return 'contains';
  return 'apart';
}

/** A path a command reads or writes, with what it is for messages (`--src-checkpoint`, `load_checkpoint`). */
export interface NamedPath {
  readonly what: string;
  readonly path: string;
}

/** How an output relates to an input: the same path, the output contains the input, or lies inside it. */
export type OverlapRelation = 'is' | 'contains' | 'lies inside';

/** An output that overlaps an input, with both canonical paths. */
export interface Overlap<O extends NamedPath = NamedPath, I extends NamedPath = NamedPath> {
  readonly output: O & { readonly real: string };
  readonly input: I & { readonly real: string };
  readonly relation: OverlapRelation;
}

/**
 * Every output that is, contains or lies inside an input, compared after resolving symlinks on
 * both sides (`lexical: true`: `..` and trailing slashes only, nothing looked up on disk). The
 * one comparison behind `refuseOverlaps` and the run-YAML rules.
 */
export async function findOverlaps<O extends NamedPath, I extends NamedPath>(
  outputs: readonly O[], inputs: readonly I[], baseDir: string = process.cwd(), opts: { lexical?: boolean } = {},
): Promise<Array<Overlap<O, I>>> {
  const canon = async <T extends NamedPath>(p: T): Promise<T & { real: string }> => ({
    ...p,
    real: opts.lexical === true ? resolve(baseDir, p.path) : await canonicalPath(p.path, baseDir),
  });
  const outs = await Promise.all(outputs.map(canon));
  const ins = await Promise.all(inputs.map(canon));
  const found: Array<Overlap<O, I>> = [];
  for (const o of outs) {
    for (const i of ins) {
      let relation: OverlapRelation | null = null;
      if (o.real === i.real) relation = 'is';
      else if (isSameOrInsideCanonical(i.real, o.real)) relation = 'contains';
      else if (isSameOrInsideCanonical(o.real, i.real)) relation = 'lies inside';
      if (relation !== null) found.push({ output: o, input: i, relation });
    }
  }
  return found;
}

/** A path as given, with its canonical form when that differs. */
export function shownPath(p: { readonly path: string; readonly real: string }): string {
  return p.real === p.path ? p.path : `${p.path} (${p.real})`;
}

/**
 * Refuse (InputError, exit 2) when any output is, lies inside or contains any input, compared
 * after resolving symlinks on both sides. `outputs` are what the command writes or cleans; an
 * output folder that merely holds the inputs' parent is fine, one the inputs live in is not.
 */
export async function refuseOverlaps(outputs: readonly NamedPath[], inputs: readonly NamedPath[], baseDir: string = process.cwd()): Promise<void> {
  const first = (await findOverlaps(outputs, inputs, baseDir))[0];
  if (first === undefined) return;
  const { output: o, input: i, relation } = first;
  throw new InputError(
    `${o.what} ${shownPath(o)} ${relation} ${i.what} ${shownPath(i)}: writing there could overwrite or remove what is read; choose another ${o.what}`,
  );
}
