/**
 * The package as a user gets it: `npm pack` of a clean tree (prepack builds dist/), installed
 * from the tarball into a temporary folder without the network (dependencies from the npm cache,
 * pinned by our lock file), then `msckpt --version` and `msckpt inspect` from there.
 */
import { execa } from 'execa';
import { cp, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { expect, it } from 'vitest';
import { repoRoot } from '../helpers/fixtures.js';
import { writeCkpt } from '../transform/helpers.js';

interface Lock {
  packages: Record<string, { dev?: boolean; devOptional?: boolean; [k: string]: unknown }>;
}

/** Files of the checkout as a clean clone has them (tracked, plus new files not ignored). */
async function cleanFiles(): Promise<string[]> {
  const r = await execa('git', ['ls-files', '-co', '--exclude-standard', '-z'], { cwd: repoRoot });
  return r.stdout.split('\0').filter((f) => f !== '' && !f.startsWith('node_modules/'));
}

it('npm pack of a clean tree installs offline and runs: --version, inspect; no tests or bench inside, the linked docs are', async () => {
  const tmp = await mkdtemp(join(tmpdir(), 'msckpt-pack-'));
  try {
    const tree = join(tmp, 'tree');
    for (const f of await cleanFiles()) {
      await mkdir(dirname(join(tree, f)), { recursive: true });
      await cp(join(repoRoot, f), join(tree, f)).catch(() => undefined); // a deleted, not yet committed file
    }
    await symlink(join(repoRoot, 'node_modules'), join(tree, 'node_modules'), 'dir');
    const env = { ...process.env };
    delete env['MSCKPT_DIST'];
    const pack = await execa('npm', ['pack', '--pack-destination', tmp, '--json'], { cwd: tree, env, reject: false });
    expect(pack.exitCode, pack.stderr).toBe(0);
    const [info] = JSON.parse(pack.stdout) as Array<{ filename: string; version: string; files: Array<{ path: string }> }>;
    const files = (info as { files: Array<{ path: string }> }).files.map((f) => f.path);
    expect(files).toContain('dist/plugin/cli/main.js');
    expect(files).toContain('bin/msckpt.py');
    expect(files.filter((f) => /^(test|bench|dist\/test|dist\/bench)\//.test(f) || f.endsWith('.test.js') || f.startsWith('examples/stand-ins'))).toEqual([]);
    // every local document README.md links is in the package
    const readme = await readFile(join(repoRoot, 'README.md'), 'utf8');
    const links = [...readme.matchAll(/\]\(([^)#\s]+)(#[^)]*)?\)/g)].map((m) => m[1] as string).filter((l) => !/^[a-z]+:/.test(l));
    expect(links.length).toBeGreaterThan(0);
    for (const l of links) expect(files, l).toContain(l);

    // install the tarball with our lock file's versions of its dependencies, from the cache only
    const inst = join(tmp, 'inst');
    await mkdir(inst);
    const pkg = JSON.parse(await readFile(join(repoRoot, 'package.json'), 'utf8')) as { version: string; dependencies: Record<string, string> };
    const lock = JSON.parse(await readFile(join(repoRoot, 'package-lock.json'), 'utf8')) as Lock;
    const tgz = `file:../${(info as { filename: string }).filename}`;
    const packages: Record<string, unknown> = { '': { name: 'msckpt-install-check', dependencies: { msckpt: tgz } } };
    packages['node_modules/msckpt'] = { version: pkg.version, resolved: tgz, dependencies: pkg.dependencies, bin: { msckpt: 'bin/msckpt.js' } };
    for (const [k, v] of Object.entries(lock.packages)) if (k !== '' && v.dev !== true && v.devOptional !== true) packages[k] = v;
    await writeFile(join(inst, 'package.json'), JSON.stringify({ name: 'msckpt-install-check', private: true, dependencies: { msckpt: tgz } }));
    await writeFile(join(inst, 'package-lock.json'), JSON.stringify({ name: 'msckpt-install-check', lockfileVersion: 3, requires: true, packages }));
    const install = await execa('npm', ['ci', '--offline', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: inst, env, reject: false });
    expect(install.exitCode, install.stderr).toBe(0);

    const bin = join(inst, 'node_modules', '.bin', 'msckpt');
    const version = await execa(bin, ['--version'], { env, reject: false });
    expect(version.stdout.trim()).toBe(pkg.version);
    const ckpt = join(tmp, 'model.ckpt');
    await writeCkpt(ckpt, [{ name: 'w', dtype: 'Float32', shape: [2, 2], data: new Uint8Array(16) }]);
    const inspect = await execa(bin, ['inspect', ckpt], { env, reject: false });
    expect(inspect.exitCode, inspect.stderr).toBe(0);
    expect(inspect.stdout).toMatch(/^checkpoint .*model\.ckpt: 1 tensors, 16 B/);
    // the msrun entry hands over to the same program
    const py = await execa('python3', [join(inst, 'node_modules', 'msckpt', 'bin', 'msckpt.py'), '--version'], { env, reject: false });
    const noPython = py.failed && (py as { code?: string }).code === 'ENOENT';
    if (!noPython) expect(py.stdout.trim()).toBe(pkg.version);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
});
