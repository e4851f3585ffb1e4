/**
 * The installed mindformers version, found without importing it (importing mindformers loads
 * MindSpore and the model zoo). The copy that runs is the one the training command's Python
 * imports: `mindformers/` beside run_mindformer.py (a source checkout: the script's folder is
 * sys.path[0]), else what `importlib.util.find_spec('mindformers')` finds. Its
 * `mindformers/__init__.py` holds `__version__ = "..."`; a few files tell releases apart where
 * the string does not (master reports "1.7.0" with r1.8.0's code).
 */
import { execFile } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';

export interface FoundVersion {
  /** The version whose rules apply (`1.8.0` for master's "1.7.0"). */
  version: string;
  /** How it was found, for `validate` and the launch log. */
  detail: string;
}

function readText(p: string): string | undefined {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return undefined;
  }
}

/** The version of the mindformers package in `pkgDir` (the folder holding __init__.py), from its files. */
export function versionOfPackage(pkgDir: string): FoundVersion | undefined {
  const init = readText(join(pkgDir, '__init__.py'));
  if (init === undefined) return undefined;
  const m = /^__version__\s*=\s*['"]([^'"]+)['"]/m.exec(init);
  if (m === null) return undefined;
  const said = m[1]!;
  const template = readText(join(pkgDir, 'tools', 'register', 'template.py'));
  const parallel = readText(join(pkgDir, 'core', 'context', 'parallel.py')) ?? '';
  // what the files say, where the version string cannot tell
  let version = said;
  let why = '';
  if (template !== undefined && /\buse_legacy_format\b/.test(template) && !/\bckpt_use_legacy_format\b/.test(template) && /^r?1\.7\b/.test(said)) {
    version = '1.8.0';
    why = `; its files are r1.8.0's (template.py has use_legacy_format), as on the master branch`;
  } else if (template === undefined && /^[rv]?1\.([5-9]|\d\d)\b/.test(said)) {
    why = '; note: it has no tools/register/template.py';
  } else if (/def _set_manmul_parallel/.test(parallel) && /^r?1\.6\b/.test(said)) {
    version = '1.7.0';
    why = '; its files are r1.7.0\'s (_set_manmul_parallel)';
  }
  return { version, detail: `detected: ${join(pkgDir, '__init__.py')} says "${said}"${why}` };
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** The Python a training command runs (its first word when that is a python), else python3. */
export function pythonOf(command: readonly string[]): string {
  const first = command[0];
  if (first !== undefined && /^python[\d.]*$/.test(basename(first))) return first;
  return 'python3';
}

const FIND_SPEC = [
  'import importlib.util, json, sys',
  'if len(sys.argv) > 1 and sys.argv[1]: sys.path.insert(0, sys.argv[1])',
  's = importlib.util.find_spec("mindformers")',
  'print(json.dumps({"origin": s.origin if s else None}))',
].join('\n');

/**
 * Find the mindformers a training command runs: beside its run_mindformer.py, else through its
 * Python's import path (one short subprocess, `timeoutMs`). Undefined when not found.
 */
export async function detectMindformersVersion(
  command: readonly string[],
  opts: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number },
): Promise<FoundVersion | undefined> {
  const script = command.find((a) => /(^|[\\/])run_mindformer\.py$/.test(a));
  const scriptDir = script !== undefined ? dirname(resolve(opts.cwd, script)) : undefined;
  if (scriptDir !== undefined && isDir(join(scriptDir, 'mindformers'))) {
    const v = versionOfPackage(join(scriptDir, 'mindformers'));
    if (v !== undefined) return v;
  }
  const origin = await new Promise<string | undefined>((done) => {
    execFile(
      pythonOf(command),
      ['-c', FIND_SPEC, scriptDir ?? ''],
      { cwd: opts.cwd, env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 20_000, encoding: 'utf8' },
      (err, stdout) => {
        if (err !== null) return done(undefined);
        try {
          const o = JSON.parse(stdout.trim().split('\n').pop() ?? '') as { origin: string | null };
          done(o.origin ?? undefined);
        } catch {
          done(undefined);
        }
      },
    );
  });
  if (origin === undefined || basename(origin) !== '__init__.py') return undefined;
  return versionOfPackage(dirname(origin));
}
