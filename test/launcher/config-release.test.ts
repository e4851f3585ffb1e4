/**
 * Which mindformers release's rules apply (flag, YAML, detection from the training command's
 * files or Python), and the training command's run_mindformer.py flags read and rewritten.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checkRunConfig, chooseRelease, commandOverrides, detectMindformersVersion, MINDFORMERS_RELEASES, releaseOf, rewriteCommand,
  versionOfPackage,
} from '../../plugin/launcher/config/index.js';
import { launch } from '../../plugin/launcher/launch.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-release-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A mindformers source checkout as far as version detection looks at it. */
async function fakeMindformers(root: string, version: string, files: Record<string, string> = {}): Promise<string> {
  const pkg = join(root, 'mindformers');
  await mkdir(join(pkg, 'tools', 'register'), { recursive: true });
  await mkdir(join(pkg, 'core', 'context'), { recursive: true });
  await writeFile(join(pkg, '__init__.py'), `# Copyright\n"""mindformers init"""\n\n__version__ = "${version}"\n\nfrom mindformers import core\n`);
  for (const [rel, text] of Object.entries(files)) await writeFile(join(pkg, rel), text);
  await writeFile(join(root, 'run_mindformer.py'), '# stand-in\n');
  return pkg;
}

describe('the release table', () => {
  it('maps version strings to releases, with the nearest covered release outside the range', () => {
    expect(releaseOf('1.5.0')?.rules.name).toBe('r1.5.0');
    expect(releaseOf('r1.3.0')?.rules.name).toBe('r1.3.0'); // the v1.3.0 tag's own spelling
    expect(releaseOf('1.3.2')?.rules.name).toBe('r1.3.0');
    expect(releaseOf('1.7.0rc1')?.rules.name).toBe('r1.7.0');
    expect(releaseOf('1.4.0')).toMatchObject({ rules: { name: 'r1.3.0' }, caveat: expect.stringContaining('not a release msckpt covers') });
    expect(releaseOf('1.2.0')?.caveat).toContain('older than r1.3.0');
    expect(releaseOf('2.0.0')?.caveat).toContain('newer than r1.8.0');
    expect(releaseOf('latest')).toBeUndefined();
    expect(MINDFORMERS_RELEASES.map((r) => r.name)).toEqual(['r1.3.0', 'r1.5.0', 'r1.6.0', 'r1.7.0', 'r1.8.0']);
  });

  it('a flag wins over the YAML, the YAML over detection; unknown means every release', () => {
    expect(chooseRelease({ flag: '1.6.0', yaml: '1.5.0', detected: { version: '1.3.2' } })).toMatchObject({ from: 'flag', rules: { name: 'r1.6.0' } });
    expect(chooseRelease({ yaml: '1.5.0', detected: { version: '1.3.2' } })).toMatchObject({ from: 'yaml', rules: { name: 'r1.5.0' } });
    expect(chooseRelease({ detected: { version: '1.3.2', detail: 'x' } })).toMatchObject({ from: 'detected', description: 'r1.3.0 rules (mindformers 1.3.2 x)' });
    const unknown = chooseRelease({});
    expect(unknown.from).toBe('unknown');
    expect(unknown.candidates).toHaveLength(5);
    expect(unknown.rules.name).toBe('r1.8.0');
  });

  it('msckpt.mindformers_version in the YAML (a float 1.5 too); an unreadable one is ignored with a warning', async () => {
    const p = join(dir, 'v.yaml');
    await writeFile(p, 'msckpt:\n  mindformers_version: 1.5\n');
    expect((await checkRunConfig(p, { checkFiles: false, env: {} })).config!.release).toMatchObject({ from: 'yaml', rules: { name: 'r1.5.0' } });
    await writeFile(p, 'msckpt:\n  mindformers_version: newest\n');
    const r = await checkRunConfig(p, { checkFiles: false, env: {} });
    expect(r.config!.release.from).toBe('unknown');
    expect(r.warnings.map((w) => w.message)).toContain("'newest' is not a version such as 1.5.0; ignored");
  });

  it('msckpt durations: a bare number is seconds, units as units.ts reads them', async () => {
    const p = join(dir, 'd.yaml');
    await writeFile(p, 'msckpt:\n  poll_interval: 2\n  barrier_timeout: 1h\n  heartbeat_timeout: 500ms\n');
    const m = (await checkRunConfig(p, { checkFiles: false, env: {} })).config!.msckpt;
    expect([m.pollInterval, m.barrierTimeout, m.heartbeatTimeout]).toEqual([2, 3600, 0.5]);
  });
});

describe('finding the installed mindformers', () => {
  it('reads __version__ beside run_mindformer.py without importing it; files tell master (1.7.0) from r1.7.0', async () => {
    const r15 = join(dir, 'mf15');
    await fakeMindformers(r15, '1.5.0', { 'tools/register/template.py': 'class GeneralConfig:\n    pass\n' });
    expect(await detectMindformersVersion(['python', join(r15, 'run_mindformer.py'), '--config', '{config}'], { cwd: dir })).toEqual({
      version: '1.5.0',
      detail: `detected: ${join(r15, 'mindformers', '__init__.py')} says "1.5.0"`,
    });
    const master = join(dir, 'mfmaster');
    const pkg = await fakeMindformers(master, '1.7.0', { 'tools/register/template.py': '    use_legacy_format = True\n' });
    const found = versionOfPackage(pkg)!;
    expect(found.version).toBe('1.8.0');
    expect(found.detail).toContain('as on the master branch');
    const r17 = await fakeMindformers(join(dir, 'mf17'), '1.7.0', { 'tools/register/template.py': '    ckpt_use_legacy_format = True\n' });
    expect(versionOfPackage(r17)!.version).toBe('1.7.0');
    // relative to the command's working directory
    expect((await detectMindformersVersion(['python3', 'mf15/run_mindformer.py'], { cwd: dir }))?.version).toBe('1.5.0');
  });

  it('else asks the command\'s Python where mindformers is (find_spec, no import)', async () => {
    try {
      execFileSync('python3', ['-c', 'import importlib.util'], { stdio: 'ignore', timeout: 20_000 });
    } catch {
      process.stderr.write('\n*** NOTICE: python3 not found; detection through Python is not checked ***\n\n');
      return;
    }
    const site = join(dir, 'site');
    await fakeMindformers(site, '1.6.0', { 'tools/register/template.py': '\n' });
    const env = { ...process.env, PYTHONPATH: site };
    expect(await detectMindformersVersion(['python3', '-m', 'some_module'], { cwd: dir, env })).toMatchObject({ version: '1.6.0' });
    expect(await detectMindformersVersion(['bash', 'train.sh'], { cwd: dir, env: { ...process.env, PYTHONPATH: join(dir, 'nothing') } })).toBeUndefined();
  });
});

describe('run_mindformer.py flags in the training command', () => {
  it('are read as argparse and mindformers read them (prefixes, = forms, str2bool, trailing --a.b pairs)', () => {
    const cmd = ['python', 'mf/run_mindformer.py', '--config', '{config}', '--load_checkpoint', '/w/llama', '--auto_trans_ckpt=True',
      '--use_par', 'false', '--run_mode', 'finetune', '--parallel_config.data_parallel', '4', '--resume_training', 'last.ckpt', '--options', 'a=1', 'b=2'];
    const o = commandOverrides(cmd);
    expect(o.overrides).toEqual({
      load_checkpoint: '/w/llama', auto_trans_ckpt: true, use_parallel: false, run_mode: 'finetune', 'parallel_config.data_parallel': 4, resume_training: 'last.ckpt',
    });
    expect(o.notes).toEqual(['--options is not read by msckpt; set those keys in the YAML if msckpt needs them']);
    expect(commandOverrides(['node', 'train.ts', '--load_checkpoint', 'x']).overrides).toEqual({});
    expect(commandOverrides(['python', 'run_mindformer.py', '--auto_trans_ckpt', 'yes']).notes[0]).toContain('refuses this value');
  });

  it('are rewritten where a derived YAML changes the same key', () => {
    const cmd = ['python', 'run_mindformer.py', '--config', '{config}', '--load_checkpoint', '/w/llama', '--auto_trans_ckpt=True'];
    expect(rewriteCommand(cmd, { load_checkpoint: '/out/transformed_checkpoint/llama', auto_trans_ckpt: false, only_save_strategy: true })).toEqual([
      'python', 'run_mindformer.py', '--config', '{config}', '--load_checkpoint', '/out/transformed_checkpoint/llama', '--auto_trans_ckpt=False',
    ]);
  });

  it('launch judges the YAML with them: --load_checkpoint on the command line fills an empty load_checkpoint', async () => {
    const p = join(dir, 'finetune.yaml');
    await writeFile(p, "run_mode: finetune\nload_checkpoint: ''\nauto_trans_ckpt: True\nuse_parallel: False\n");
    expect((await checkRunConfig(p, { checkFiles: false, env: {} })).ok).toBe(false);
    const given = await checkRunConfig(p, { checkFiles: false, env: {}, commandOverrides: commandOverrides(['python', 'run_mindformer.py', '--load_checkpoint', '/w/x.ckpt']).overrides });
    expect(given.ok).toBe(true);
    expect(given.config!.loadCheckpoint).toBe('/w/x.ckpt');
    // and --auto_trans_ckpt False on the command line makes it a plain run: launch starts it at once
    const list = join(dir, 'received.txt');
    const code = await launch({
      config: p, cwd: dir, env: { PATH: process.env['PATH'] ?? '' }, log: () => undefined,
      command: ['sh', '-c', 'printf "%s" "$1" > "$2"', 'sh', '{config}', list, 'run_mindformer.py', '--auto_trans_ckpt', 'False'],
    });
    expect(code).toBe(0);
    expect(await readFile(list, 'utf8')).toBe(p);
  });
});
