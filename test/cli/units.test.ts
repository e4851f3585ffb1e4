/**
 * Every duration and size flag goes through plugin/units.ts: a bare duration is seconds, sizes
 * follow one convention, errors name the flag; README's table lists every such flag and key.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { durationFlag, sizeFlag } from '../../plugin/cli/flags.js';
import { loadCommands } from '../../plugin/cli/commands/index.js';
import { repoRoot } from '../helpers/fixtures.js';
import { withTempDir, writeCkpt } from '../transform/helpers.js';
import { runMain } from './run-main.js';

async function unitFlags(): Promise<Array<{ command: string; flag: string; kind: 'size' | 'duration' }>> {
  const program = new Command();
  for (const register of await loadCommands()) register(program);
  const out: Array<{ command: string; flag: string; kind: 'size' | 'duration' }> = [];
  for (const c of program.commands) {
    for (const o of c.options) {
      const kind = /<size>/.test(o.flags) ? 'size' : /<duration>/.test(o.flags) ? 'duration' : null;
      if (kind !== null) out.push({ command: c.name(), flag: o.long as string, kind });
    }
  }
  return out;
}

describe('units', () => {
  it('durations: a bare number is seconds (0.5 works); sizes: K/M/G binary, KB/MB/GB decimal', () => {
    expect(durationFlag('--poll-interval', '0.5')).toBe(500);
    expect(durationFlag('--poll-interval', '2')).toBe(2000);
    expect(durationFlag('--barrier-timeout', '10m')).toBe(600_000);
    expect(durationFlag('--heartbeat-timeout', '500ms')).toBe(500);
    expect(sizeFlag('--memory', '512M')).toBe(512 * 2 ** 20);
    expect(sizeFlag('--memory', '512MB')).toBe(512e6);
    expect(sizeFlag('--max-shard-size', '5GB')).toBe(5e9);
    expect(sizeFlag('--part-size', '3GiB')).toBe(3 * 2 ** 30);
    expect(() => durationFlag('--poll-interval', '0')).toThrow(/--poll-interval/);
    expect(() => sizeFlag('--part-size', 'big')).toThrow(/--part-size/);
  });

  it('every duration and size flag of every command is in README.md\'s table, with the YAML keys', async () => {
    const flags = await unitFlags();
    expect(flags.length).toBeGreaterThanOrEqual(8);
    const readme = await readFile(join(repoRoot, 'README.md'), 'utf8');
    const table = readme.slice(readme.indexOf('### Units'));
    const rows = table.split('\n').filter((l) => l.startsWith('| `'));
    for (const { command, flag, kind } of flags) {
      const row = rows.find((r) => r.startsWith(`| \`${flag}\` |`) && r.includes(`\`${command}`));
      expect(row, `${command} ${flag}`).toBeDefined();
      expect(row, `${command} ${flag}`).toContain(`| ${kind} |`);
    }
    for (const key of ['barrier_timeout', 'heartbeat_timeout', 'poll_interval', 'join_timeout']) {
      expect(rows.some((r) => r.startsWith(`| \`msckpt.${key}\` |`) && r.includes('| duration |')), key).toBe(true);
    }
  });

  it('the same size means the same bytes in every command (plan reports its buffer budget)', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'a.ckpt');
      await writeCkpt(src, [{ name: 'w', dtype: 'Float32', shape: [4], data: new Uint8Array(16) }]);
      const budget = async (v: string): Promise<number> => {
        const r = await runMain(['plan', '--src-checkpoint', src, '--memory', v, '--json']);
        expect(r.exitCode, r.stderr).toBe(0);
        return (JSON.parse(r.stdout) as { memory: number }).memory;
      };
      expect(await budget('1M')).toBe(2 ** 20);
      expect(await budget('1MiB')).toBe(2 ** 20);
      expect(await budget('1MB')).toBe(1e6);
      expect(await budget('1048576')).toBe(2 ** 20);
    });
  });

  it('launch takes --poll-interval 0.5 and durations with units; bad ones name the flag', async () => {
    await withTempDir(async (dir) => {
      const yaml = join(dir, 'run.yaml');
      await writeFile(yaml, 'output_dir: ./output\nuse_parallel: False\n');
      const ok = await runMain(['launch', '--config', yaml, '--poll-interval', '0.5', '--barrier-timeout', '2h', '--heartbeat-timeout', '90s', '--memory', '1G', '--', process.execPath, '-e', '0']);
      expect(ok.exitCode, ok.stderr).toBe(0);
      for (const [flag, v] of [['--poll-interval', '-1'], ['--barrier-timeout', 'soon'], ['--heartbeat-timeout', '0'], ['--memory', '-5']] as const) {
        const bad = await runMain(['launch', '--config', yaml, flag, v, '--', 'true']);
        expect(bad.exitCode).toBe(2);
        expect(bad.stderr).toMatch(new RegExp(`^msckpt: ${flag}: `));
      }
    });
  });
});
