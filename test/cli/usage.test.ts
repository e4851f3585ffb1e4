/**
 * Command lines the CLI cannot take: one line naming the problem (with a did-you-mean where one
 * fits) and a pointer to the command's help, exit 2; never the whole help.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { layout, saveStrategy, withTempDir } from '../transform/helpers.js';
import { runMain } from './run-main.js';

function oneUsageLine(r: { exitCode: number; stderr: string; stdout: string }, command: string | undefined): string {
  expect(r.exitCode, r.stderr).toBe(2);
  expect(r.stdout).toBe('');
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(new RegExp(`^msckpt: .*; see 'msckpt ${command !== undefined ? `${command} ` : ''}--help'$`));
  return lines[0] as string;
}

describe('unknown, ambiguous and contradicting flags', () => {
  it.each([
    [['transform', '--src-checkpiont', 'a'], 'transform', /unknown option '--src-checkpiont' \(did you mean '--src-checkpoint'\?\)/],
    [['unify', 'a', 'b', '--src-strategy', 's', '--part_sise', '3G'], 'unify', /unknown option '--part_sise' \(did you mean '--part-size'\?\)/],
    [['inspect', 'x', '--jsno', '--bogus-flag'], 'inspect', /unknown options '--jsno', '--bogus-flag' \(did you mean '--json'\?\)/],
    [['transform', '--dst', 'x'], 'transform', /option '--dst' is ambiguous: it could be --dst-checkpoint-dir, --dst-strategy/],
    [['transform', '--rank', '1', '--ranks', '2-3', '--src-checkpoint', 'a', '--dst-checkpoint-dir', 'b'], 'transform', /'--rank <r>' cannot be used with option '--ranks <list>'/],
    [['transform', '--rank', '1', '--rank_id', '0', '--src-checkpoint', 'a'], 'transform', /'--rank <r>' cannot be used with option '--rank-id <n>'/],
    [['launch', '--config', 'r.yaml', '--shared-disk', '--no-shared-disk', '--', 'true'], 'launch', /--shared-disk and --no-shared-disk contradict each other/],
    [['launch', '--config', 'r.yaml', '--', 'true', '--shared-disk'], 'launch', null],
    [['lora-merge', '--lora-scaling', '2', '--adapter-config', 'a.json'], 'lora-merge', /'--lora-scaling <value>' cannot be used with option '--adapter-config <file>'/],
    [['convert', '--model', 'llama', '--input-path', 'a', '--output-path', 'b.ckpt', '--max-shard-size', '1G'], 'convert', /--max-shard-size applies to --reversed/],
    [['verify', 'd', '--json=yes'], 'verify', /option '--json' takes no value/],
    [['launch', '--config', 'r.yaml', 'python', 'train.py', '--config', '{config}'], 'launch', /put the training command after `--`/],
    [['plan', '--src-strategy', '--dst-strategy', 'x'], 'plan', /option '--src-strategy' needs a value/],
    [['merge-strategy'], 'merge-strategy', /missing required argument 'inputs'/],
    [['inspect', 'a', 'b'], 'inspect', /too many arguments/],
    [['tranfsorm'], undefined, /unknown command 'tranfsorm' \(did you mean 'transform'\?\)/],
    [['--frobnicate'], undefined, /unknown option '--frobnicate'/],
  ] as Array<[string[], string | undefined, RegExp | null]>)('%j', async (args, command, re) => {
    const r = await runMain(args);
    if (re === null) {
      // after `--` everything belongs to the training command
      expect(r.stderr).not.toMatch(/contradict|unknown option/);
      return;
    }
    expect(oneUsageLine(r, command)).toMatch(re);
  });

  it('argparse prefixes of long flags are the flags (all commands)', async () => {
    const r = await runMain(['plan', '--src-check', 'nowhere', '--dst_strat', 'None', '--mem', '1M']);
    // the prefixes were taken: the problem reported is the missing source, not a flag
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/nowhere: no such file or directory/);
    const u = await runMain(['unify', 'a', 'b', '--src-strat', 's', '--part', 'x']);
    expect(oneUsageLine(u, 'unify')).toMatch(/--part-size: cannot read 'x'/);
  });

  it('values out of range name their flag: process counts, ranks, world sizes, choices', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['transform', '--src-checkpoint', 'a', '--dst-checkpoint-dir', 'b', '--process-num', '0'], /--process-num must be an integer from 1 to 256, got '0'/],
      [['transform', '--src-checkpoint', 'a', '--dst-checkpoint-dir', 'b', '--rank', '-1'], /--rank must be an integer from 0 to \d+, got '-1'/],
      [['transform', '--src-checkpoint', 'a', '--dst-checkpoint-dir', 'b', '--world-size', '2.5'], /--world-size must be an integer from 1 to \d+, got '2\.5'/],
      [['transform', '--src_checkpoint', 'a', '--world_size', '1e3'], /--world_size must be an integer from 1 to \d+, got '1e3'/],
      [['transform', '--src-checkpoint', 'a', '--dst-checkpoint-dir', 'b', '--ranks', '3-1'], /--ranks: rank range '3-1' runs backwards/],
      [['transform', '--src-checkpoint', 'a', '--dst-checkpoint-dir', 'b', '--pick', 'first'], /--pick must be 'newest' or 'name', got 'first'/],
      [['ckpt-to-safetensors', 'a', 'b', '--processes', '999'], /--processes must be an integer from 1 to 256, got '999'/],
      [['lora-merge', '--src-ckpt-path-or-dir', 'a', '--dst-ckpt-dir', 'b', '--threads', '0'], /--threads must be an integer from 1 to 64/],
      [['launch', '--config', 'r.yaml', '--local-worker-num', '0', '--', 'true'], /--local-worker-num must be an integer from 1 to 256/],
      [['convert', '--model', 'mixtral', '--input-path', 'a', '--output-path', 'b', '--num-experts', '-4'], /--num-experts must be an integer from 1 to 65536/],
      [['convert', '--model', 'llama', '--input-path', 'a', '--output-path', 'b', '--dtype', 'int8'], /--dtype must be 'fp32' or 'fp16' or 'bf16', got 'int8'/],
    ];
    for (const [args, re] of cases) expect(oneUsageLine(await runMain(args), args[0]), args.join(' ')).toMatch(re);
  });
});

describe('bare msckpt and help', () => {
  it('bare msckpt lists the commands on stderr and exits 2; --help exits 0; usage errors never print the help', async () => {
    const bare = await runCli([]);
    expect(bare.exitCode).toBe(2);
    expect(bare.stdout).toBe('');
    for (const c of ['inspect', 'transform', 'convert', 'lora-merge', 'launch']) expect(bare.stderr).toContain(`  ${c} `);
    const help = await runMain(['transform', '--help']);
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toMatch(/--dst-checkpoint-dir/);
    const bad = await runMain(['transform', '--nope']);
    expect(bad.stderr).not.toMatch(/Options:/);
  });
});

describe('rank-list accepts what plan accepts', () => {
  it('a transform command line (--src-checkpoint, --ranks, --dst-checkpoint-dir, ...) and strategy names reported in the user\'s terms', async () => {
    await withTempDir(async (dir) => {
      const s4 = await saveStrategy(join(dir, 's4.ckpt'), [layout('w1', [2, 2], [0, -1]), layout('w2', [2, 2], [-1, 1])]);
      const s2 = await saveStrategy(join(dir, 's2.ckpt'), [layout('w1', [2], [0, -1]), layout('w2', [2], [-1, -1])]);
      const r = await runMain(['rank-list', '--src-strategy', s4, '--dst-strategy', s2, '--ranks', '0-1', '--dst-checkpoint-dir', 'ignored', '--prefix', 'p_', '--json']);
      expect(r.exitCode, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as { ranks: Array<{ rank: number; sourceRanks: number[] }> };
      expect(out.ranks.map((x) => x.rank)).toEqual([0, 1]);
      const one = await runMain(['rank-list', '--src_strategy', s4, '--dst_strategy', s2, '--rank', '1']);
      expect(one.exitCode, one.stderr).toBe(0);
      expect(one.stdout.trim()).toBe((out.ranks[1] as { sourceRanks: number[] }).sourceRanks.join(' '));
      // twelve layouts whose names are not the source's: said as such, with examples
      const other = await saveStrategy(join(dir, 'other.ckpt'), Array.from({ length: 12 }, (_v, i) => layout(`model.layers.${i}.w`, [2], [0, -1])));
      const mismatch = await runMain(['rank-list', '--src-strategy', s4, '--dst-strategy', other, '--rank', '0']);
      expect(mismatch.exitCode).toBe(2);
      expect(mismatch.stderr).toMatch(/no parameter name of the destination strategy .*other\.ckpt \('model\.layers\.0\.w', 'model\.layers\.1\.w', 'model\.layers\.2\.w', \.\.\. \(12\)\) is in the source strategy .*s4\.ckpt \('w1', 'w2'\)/);
      expect(mismatch.stderr).not.toMatch(/has no parameter layouts/);
      const noRank = await runMain(['rank-list', '--src-strategy', s4]);
      expect(oneUsageLine(noRank, 'rank-list')).toMatch(/give the destination rank/);
    });
  });
});
