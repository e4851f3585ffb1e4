/**
 * Issue 11, the offline commands: one test per numbered case (1, 3, 4, 5, 6, 7, 9), each on real
 * processes (the msckpt executable) and real files; what must survive is asserted by sha256.
 * (2 and 8 are the launcher's; see test/launcher.)
 */
import { chmod, mkdir, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { indexWeights } from '../../plugin/formats/source-index.js';
import { selfIdentity, type ProcessIdentity } from '../../plugin/processes.js';
import { MSCKPT_BIN, runCli } from '../helpers/cli.js';
import { withTempDir } from './helpers.js';
import { hashTree, leftovers, makeModel, rankFiles, sha256, sliced, startCli, taggedPids, until } from './safety-helpers.js';

const T = (src: string, dst: string, extra: string[] = []): string[] => ['transform', '--src-checkpoint', src, '--dst-checkpoint-dir', dst, ...extra];

describe('issue 11 on the offline commands', () => {
  it('1: a symlinked destination or source is compared after resolving it, both directions, for every command that writes', async () => {
    await withTempDir(async (dir) => {
      const m = await makeModel(dir);
      const src = await sliced(m.complete, m.s2, join(dir, 'src'));
      const before = await hashTree(src);
      const beforeDir = await hashTree(dir);
      await symlink(src, join(dir, 'link-to-src'));
      await symlink(join(src, 'rank_0'), join(dir, 'link-into-src'));
      const refused = async (args: string[], what: RegExp): Promise<void> => {
        const r = await runCli(args);
        expect(r.exitCode, r.stderr).toBe(2);
        expect(r.stderr).toMatch(what);
        expect(r.stderr.trim().split('\n')).toHaveLength(1);
      };
      // the destination is the source through a symlink; one inside the source
      await refused(T(src, join(dir, 'link-to-src'), ['--src-strategy', m.s2, '--dst-strategy', m.s4]), /destination folder .*link-to-src \(.*src\) contains source file .*src\/rank_0\/checkpoint_0\.ckpt/);
      await refused(T(src, join(dir, 'link-into-src'), ['--src-strategy', m.s2, '--dst-strategy', m.s4]), /link-into-src .* (is|contains) source file/);
      await refused(T(src, join(dir, 'link-to-src', 'rank_1', 'new'), ['--src-strategy', m.s2, '--dst-strategy', m.s4]), /link-to-src\/rank_1\/new \(.*src\/rank_1\/new\) lies inside the source .*src:/);
      // the other direction: the source named through a symlink to the destination folder
      const out = join(dir, 'out');
      expect((await runCli(T(m.complete, out, ['--dst-strategy', m.s2]))).exitCode).toBe(0);
      const outBefore = await hashTree(out);
      await symlink(out, join(dir, 'link-to-out'));
      await refused(T(join(dir, 'link-to-out'), out, ['--src-strategy', m.s2, '--dst-strategy', m.s4]), /destination folder .* (is|contains) source file .*link-to-out/);
      expect(await hashTree(out)).toEqual(outBefore);
      // a complete source in the folder the destination link points to
      await symlink(dir, join(dir, 'link-to-top'));
      await refused(T(m.complete, join(dir, 'link-to-top'), ['--dst-strategy', m.s4]), /contains source file/);
      // the other commands that write
      await refused(['unify', src, join(dir, 'link-to-src'), '--src-strategy', m.s2], /output folder .* (is|contains) source file/);
      await refused(['lora-merge', '--src-ckpt-path-or-dir', src, '--src-ckpt-strategy', m.s2, '--dst-ckpt-dir', join(dir, 'link-into-src'), '--lora-scaling', '2'], /output folder .* (is|contains|lies inside) source file/);
      await symlink(m.complete, join(dir, 'alias.safetensors'));
      await refused(['ckpt-to-safetensors', m.complete, join(dir, 'alias.safetensors')], /output file .*alias\.safetensors .* is the input/);
      await mkdir(join(dir, 'stages'));
      await writeFile(join(dir, 'stages', 'a.ckpt'), await readFile(m.s2));
      await symlink(join(dir, 'stages', 'a.ckpt'), join(dir, 'alias.ckpt'));
      await refused(['merge-strategy', join(dir, 'stages', 'a.ckpt'), '-o', join(dir, 'alias.ckpt')], /output file .*alias\.ckpt .* is input/);
      await refused(['convert', '--model', 'llama', '--input-path', src, '--output-path', join(dir, 'link-to-src')], /--output-path .* is --input-path/);
      // nothing read was touched
      expect(await hashTree(src)).toEqual(before);
      for (const [k, h] of Object.entries(beforeDir)) if (!k.startsWith('out/')) expect((await hashTree(dir))[k], k).toBe(h);
    });
  });

  it("3: a second transform of another layout into one folder is refused naming the first; --overwrite replaces exactly its files; someone else's files are never removed", async () => {
    await withTempDir(async (dir) => {
      const m = await makeModel(dir);
      const out = join(dir, 'out');
      expect((await runCli(T(m.complete, out, ['--dst-strategy', m.s4]))).exitCode).toBe(0);
      const first = await hashTree(out);
      const r = await runCli(T(m.complete, out, ['--dst-strategy', m.s2]));
      expect(r.exitCode, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/holds 4 output file\(s\) of the transform of .*complete\.ckpt .*destination strategy .*s4\.ckpt.*--overwrite/);
      expect(await hashTree(out)).toEqual(first);
      // a file of the user's in the folder: refused with --overwrite too, and kept
      await writeFile(join(out, 'rank_0', 'my-notes.txt'), 'mine');
      const mine = sha256(join(out, 'rank_0', 'my-notes.txt'));
      const r2 = await runCli(T(m.complete, out, ['--dst-strategy', m.s2, '--overwrite']));
      expect(r2.exitCode).toBe(2);
      expect(r2.stderr).toMatch(/rank_0\/my-notes\.txt.*someone else's/);
      expect(await hashTree(out)).toEqual({ ...first, 'rank_0/my-notes.txt': mine });
      await rm(join(out, 'rank_0', 'my-notes.txt'));
      // --overwrite: the s4 files are replaced by the s2 layout, nothing mixed
      const r3 = await runCli(T(m.complete, out, ['--dst-strategy', m.s2, '--overwrite']));
      expect(r3.exitCode, r3.stderr).toBe(0);
      const ref = join(dir, 'ref2');
      expect((await runCli(T(m.complete, ref, ['--dst-strategy', m.s2]))).exitCode).toBe(0);
      expect(await rankFiles(out)).toEqual(await rankFiles(ref));
      expect((await readdir(out)).sort()).toEqual(['rank_0', 'rank_1', 'transform_manifest.json']);
      expect((await runCli(['verify', out])).exitCode).toBe(0);
    });
  });

  it('3: a transform writing to the folder now is refused; a dead run whose pid was reused since is not taken for it', async () => {
    await withTempDir(async (dir) => {
      const m = await makeModel(dir);
      const out = join(dir, 'out');
      await mkdir(out);
      // a journal left by a run of this machine: its owner is this test process (alive), then the
      // same pid with another start time (the run died and the pid now belongs to someone else)
      const me = selfIdentity();
      const journal = (owner: ProcessIdentity): string =>
        `${JSON.stringify({ kind: 'transform_journal', version: 1, fingerprintHash: 'another plan', claims: [], host: me.host, pid: me.pid, owner, started: Date.now() })}\n`;
      await writeFile(join(out, 'transform_manifest.journal'), journal(me));
      const live = await runCli(T(m.complete, out, ['--dst-strategy', m.s4]));
      expect(live.exitCode).toBe(2);
      expect(live.stderr).toMatch(new RegExp(`another msckpt transform \\(pid ${me.pid}, .*is writing to this folder now`));
      expect(Object.keys(await rankFiles(out))).toEqual([]);
      await writeFile(join(out, 'transform_manifest.journal'), journal({ ...me, startTime: me.startTime + 1 }));
      const reused = await runCli(T(m.complete, out, ['--dst-strategy', m.s4]));
      expect(reused.stderr).toBe('');
      expect(reused.exitCode).toBe(0);
      expect(Object.keys(await rankFiles(out)).length).toBe(4);
    });
  });

  it('4: a source whose CRC trailer does not match is exit 2 naming file and tensor; no output, none with a valid CRC over bad bytes', async () => {
    await withTempDir(async (dir) => {
      const m = await makeModel(dir, 4);
      // a complete source with a CRC trailer, then one byte of w2 flipped
      const crcDir = join(dir, 'crc');
      expect((await runCli(T(m.complete, crcDir, ['--crc']))).exitCode).toBe(0);
      const good = join(crcDir, 'rank_0', 'checkpoint_0.ckpt');
      const idx = await indexWeights(good);
      expect(idx.storedCrc?.kind).toBe('ckpt-trailer');
      const w2 = idx.entries.find((e) => e.name === 'w2');
      if (w2 === undefined || !('chunks' in w2.at)) throw new Error('no w2 chunks');
      const bad = join(dir, 'bad.ckpt');
      const bytes = await readFile(good);
      const at = (w2.at.chunks[0] as [number, number])[0] + 100;
      bytes[at] = (bytes[at] as number) ^ 0x40;
      await writeFile(bad, bytes);
      const badHash = sha256(bad);
      // the good one converts, and its CRC is found right
      const ok = await runCli(T(good, join(dir, 'ok'), ['--dst-strategy', m.s4, '--json']));
      expect(ok.exitCode, ok.stderr).toBe(0);
      expect((JSON.parse(ok.stdout) as { sourceChecks: { ok: boolean }[] }).sourceChecks).toEqual([expect.objectContaining({ ok: true })]);
      for (const extra of [[], ['--crc'], ['--process-num', '2', '--crc']]) {
        const out = join(dir, `out${extra.length}`);
        const r = await runCli(T(bad, out, ['--dst-strategy', m.s4, ...extra]));
        expect(r.exitCode, r.stderr).toBe(2);
        expect(r.stderr).toMatch(/bad\.ckpt.*CRC-32 0x[0-9a-f]{8} of its bytes differs from the stored 0x[0-9a-f]{8}.*damaged.*tensor '(w1|w2|norm|global_step)'/);
        expect(r.stderr.trim().split('\n')).toHaveLength(1);
        // no rank file at all (so none with a valid CRC over the corrupted bytes), no leftovers
        expect(existsSync(out) ? await rankFiles(out) : {}).toEqual({});
        if (existsSync(out)) expect(leftovers(out)).toEqual([]);
        const v = await runCli(['verify', out]);
        expect(v.exitCode).not.toBe(0);
      }
      expect(sha256(bad)).toBe(badHash);
    });
  });

  it('5: a source strategy of another model is exit 2 listing a few of the names it misses; nothing written', async () => {
    await withTempDir(async (dir) => {
      const m = await makeModel(dir);
      const src = await sliced(m.complete, m.s2, join(dir, 'src'));
      const before = await hashTree(src);
      const { saveStrategy, layout } = await import('./helpers.js');
      const other = await saveStrategy(join(dir, 'other.ckpt'), [layout('model.layers.0.wq', [2], [0, -1]), layout('model.layers.0.wk', [2], [0, -1])]);
      const out = join(dir, 'out');
      const r = await runCli(T(src, out, ['--src-strategy', other, '--dst-strategy', m.s4]));
      expect(r.exitCode, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/other\.ckpt.*names none of the checkpoint's tensors \('w1' \[8,8\], 'w2' \[8,8\]/);
      expect(existsSync(out)).toBe(false);
      // a strategy naming some but not all: the missing ones are listed
      const half = await saveStrategy(join(dir, 'half.ckpt'), [layout('w1', [2], [0, -1])]);
      const r2 = await runCli(T(src, out, ['--src-strategy', half, '--dst-strategy', m.s4]));
      expect(r2.exitCode, r2.stderr).toBe(2);
      expect(r2.stderr).toMatch(/describes 1 tensor\(s\) of the checkpoint but not 2: 'w2' \[8,8\], 'norm' \[8\]/);
      expect(existsSync(out)).toBe(false);
      expect(await hashTree(src)).toEqual(before);
    });
  });

  it('6: a damaged output is rewritten; a killed run resumes with only the missing ranks; temporary files are removed on rerun and reported by verify, as are extra files and rank folders', async () => {
    await withTempDir(async (dir) => {
      const m = await makeModel(dir, 4);
      const ref = join(dir, 'ref');
      expect((await runCli(T(m.complete, ref, ['--dst-strategy', m.s8]))).exitCode).toBe(0);
      const refFiles = await rankFiles(ref);
      const srcHash = sha256(m.complete);
      const out = join(dir, 'out');
      // killed (SIGKILL, no clean-up possible) after 5 of 8 committed files
      const killed = await runCli(T(m.complete, out, ['--dst-strategy', m.s8, '--test-fault', 'at=files,n=5,action=kill']));
      expect(killed.exitCode).not.toBe(0);
      const survived = await rankFiles(out);
      expect(Object.keys(survived)).toHaveLength(5);
      for (const [k, h] of Object.entries(survived)) expect(h, k).toBe(refFiles[k]);
      const tmps = leftovers(out);
      expect(tmps.length).toBeGreaterThan(0); // the other files of the group were being written
      // verify: the leftovers and the unfinished run are reported, exit 1
      const v1 = await runCli(['verify', out, '--json']);
      expect(v1.exitCode).toBe(1);
      const rep1 = JSON.parse(v1.stdout) as { leftovers: string[]; ok: boolean };
      expect(rep1.leftovers).toEqual(expect.arrayContaining(tmps.map((t) => expect.stringContaining(t.split('/').pop() as string))));
      // rerun: only the 3 missing ranks are written, the 5 are re-checked; temporary files removed
      const again = await runCli(T(m.complete, out, ['--dst-strategy', m.s8, '--json']));
      expect(again.exitCode, again.stderr).toBe(0);
      const rep = JSON.parse(again.stdout) as { written: number[]; skipped: number[]; bytesWritten: number; bytesRechecked: number; cleaned: string[] };
      expect(rep.written).toEqual([5, 6, 7]);
      expect(rep.skipped).toEqual([0, 1, 2, 3, 4]);
      const sizes = await Promise.all([5, 6, 7].map(async (r) => (await stat(join(ref, `rank_${r}`, `checkpoint_${r}.ckpt`))).size));
      expect(rep.bytesWritten).toBe(sizes.reduce((a, b) => a + b, 0));
      expect(rep.cleaned.length).toBe(tmps.length);
      expect(leftovers(out)).toEqual([]);
      expect(await rankFiles(out)).toEqual(refFiles);
      expect((await runCli(['verify', out])).exitCode).toBe(0);

      // a damaged output of the same size: the rerun rewrites it (exit 0), the others are kept
      const f3 = join(out, 'rank_3', 'checkpoint_3.ckpt');
      const b = await readFile(f3);
      b[b.length - 10] = (b[b.length - 10] as number) ^ 1;
      await writeFile(f3, b);
      const r3 = await runCli(T(m.complete, out, ['--dst-strategy', m.s8, '--json']));
      expect(r3.exitCode, r3.stderr).toBe(0);
      const rep3 = JSON.parse(r3.stdout) as { written: number[]; redone: number[] };
      expect(rep3.redone).toEqual([3]);
      expect(rep3.written).toEqual([3]);
      expect(await rankFiles(out)).toEqual(refFiles);

      // extra files and another layout's rank folders: verify reports them (exit 1); a rerun refuses them and keeps them
      await mkdir(join(out, 'rank_9'));
      await writeFile(join(out, 'rank_9', 'checkpoint_9.ckpt'), 'other layout');
      await writeFile(join(out, 'rank_0', 'extra.bin'), 'x');
      const v2 = await runCli(['verify', out, '--json']);
      expect(v2.exitCode).toBe(1);
      const rep2 = JSON.parse(v2.stdout) as { unlisted: string[]; unlistedFolders: string[] };
      expect(rep2.unlisted).toEqual(expect.arrayContaining(['rank_0/extra.bin', 'rank_9/checkpoint_9.ckpt']));
      expect(rep2.unlistedFolders).toEqual(['rank_9/']);
      const r4 = await runCli(T(m.complete, out, ['--dst-strategy', m.s8]));
      expect(r4.exitCode).toBe(2);
      expect(sha256(join(out, 'rank_9', 'checkpoint_9.ckpt'))).toBe(sha256(join(out, 'rank_9', 'checkpoint_9.ckpt')));
      expect(await readFile(join(out, 'rank_9', 'checkpoint_9.ckpt'), 'utf8')).toBe('other layout');
      expect(sha256(m.complete)).toBe(srcHash);
    });
  });

  it('7: SIGINT/SIGTERM stop with one line, exit 130/143, temporary files removed; workers die with their parent, SIGKILL included, and commit nothing after it', async () => {
    await withTempDir(async (dir) => {
      const m = await makeModel(dir, 4);
      const ref = join(dir, 'ref');
      expect((await runCli(T(m.complete, ref, ['--dst-strategy', m.s8]))).exitCode).toBe(0);
      const refFiles = await rankFiles(ref);
      const cases: { name: string; extra: string[]; signal: NodeJS.Signals; code: number | null; pausedFile: string }[] = [
        { name: 'int', extra: ['--test-fault', 'at=files,n=1,action=pause'], signal: 'SIGINT', code: 130, pausedFile: 'rank_0/checkpoint_0.ckpt' },
        { name: 'term', extra: ['--process-num', '2', '--test-fault', 'at=files,n=1,worker=1,action=pause'], signal: 'SIGTERM', code: 143, pausedFile: 'rank_4/checkpoint_4.ckpt' },
        { name: 'kill', extra: ['--process-num', '2', '--test-fault', 'at=files,n=1,worker=1,action=pause'], signal: 'SIGKILL', code: null, pausedFile: 'rank_4/checkpoint_4.ckpt' },
      ];
      for (const c of cases) {
        const out = join(dir, c.name);
        const run = startCli(T(m.complete, out, ['--dst-strategy', m.s8, ...c.extra]));
        // paused: the process (or worker 1) committed its first file and holds the rest of its group open
        await until(() => existsSync(join(out, c.pausedFile)) && leftovers(out).some((l) => l.endsWith('.tmp')), `${c.name}: the pause`);
        run.child.kill(c.signal);
        const end = await run.exited;
        expect(end.code, `${c.name}: ${run.stderr}`).toBe(c.code);
        if (c.code !== null) {
          const lines = run.stderr.trim().split('\n').filter((l) => !l.startsWith('msckpt test-fault'));
          expect(lines).toEqual([expect.stringMatching(new RegExp(`transform interrupted \\(${c.signal}\\); stopped, \\d+ temporary file\\(s\\) of this run removed`))]);
        }
        // every process of the run ends (workers included), whatever killed the parent
        await until(() => taggedPids(run.tag).length === 0, `${c.name}: the workers to exit`, 15_000);
        // after SIGKILL nobody can remove the parent's plan folder: the rerun does
        expect(leftovers(out).filter((l) => c.code !== null || l.endsWith('.tmp'))).toEqual([]);
        // nothing wrong was committed; the paused worker's other ranks were not committed after its parent died
        const got = await rankFiles(out);
        for (const [k, h] of Object.entries(got)) expect(h, k).toBe(refFiles[k]);
        if (c.name !== 'int') for (const r of [5, 6, 7]) expect(got[`rank_${r}/checkpoint_${r}.ckpt`]).toBeUndefined();
        const again = await runCli(T(m.complete, out, ['--dst-strategy', m.s8]));
        expect(again.exitCode, again.stderr).toBe(0);
        expect(await rankFiles(out)).toEqual(refFiles);
        expect(leftovers(out)).toEqual([]);
      }
      // a worker whose parent is SIGKILLed under it goes on and is refused every further commit
      const out = join(dir, 'orphan');
      const run = startCli(T(m.complete, out, ['--dst-strategy', m.s8, '--process-num', '2', '--test-fault', 'at=files,n=1,worker=0,action=kill-parent']));
      expect((await run.exited).signal).toBe('SIGKILL');
      await until(() => taggedPids(run.tag).length === 0, 'the orphaned workers to exit', 15_000);
      const got = await rankFiles(out);
      expect(got['rank_0/checkpoint_0.ckpt']).toBe(refFiles['rank_0/checkpoint_0.ckpt']);
      for (const r of [1, 2, 3]) expect(got[`rank_${r}/checkpoint_${r}.ckpt`], `rank ${r} committed by an orphan`).toBeUndefined();
      expect(leftovers(out).filter((l) => l.endsWith('.tmp'))).toEqual([]);
      expect((await runCli(T(m.complete, out, ['--dst-strategy', m.s8]))).exitCode).toBe(0);
      expect(await rankFiles(out)).toEqual(refFiles);
      expect(leftovers(out)).toEqual([]);
    });
  });

  it('9: system errors in plain words with the path and what to do: no space, a read-only or unwritable parent', async () => {
    await withTempDir(async (dir) => {
      const m = await makeModel(dir);
      const nospace = await runCli(T(m.complete, join(dir, 'full'), ['--dst-strategy', m.s4, '--test-fault', 'error=ENOSPC']));
      expect(nospace.exitCode).toBe(1);
      expect(nospace.stderr).toMatch(/full\/\S+: no space left on the device \(ENOSPC\); free space or choose another output folder/);
      expect(nospace.stderr).not.toMatch(/ENOSPC: ENOSPC/);
      expect(leftovers(join(dir, 'full'))).toEqual([]);

      // a parent folder this user cannot write: as root, the CLI runs as nobody
      const locked = join(dir, 'locked');
      await mkdir(locked);
      await chmod(locked, 0o555);
      await chmod(dir, 0o755);
      const asRoot = process.getuid?.() === 0;
      const r = spawnSync(process.execPath, [MSCKPT_BIN, ...T(m.complete, join(locked, 'a', 'b'), ['--dst-strategy', m.s4])], {
        encoding: 'utf8', ...(asRoot ? { uid: 65534, gid: 65534 } : {}),
      });
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/locked\/a.*permission denied \(EACCES\); check the permissions/);

      // a read-only file system (Node's mkdir -p says ENOENT there): in a user + mount namespace when the system allows one
      const ns = spawnSync('unshare', ['-rm', 'true']);
      if (ns.status === 0) {
        const rofs = join(dir, 'rofs');
        await mkdir(rofs);
        const cmd = `mount -t tmpfs -o ro tmpfs '${rofs}' && exec '${process.execPath}' '${MSCKPT_BIN}' ${T(m.complete, join(rofs, 'x', 'y'), ['--dst-strategy', m.s4]).map((a) => `'${a}'`).join(' ')}`;
        const ro = spawnSync('unshare', ['-rm', 'sh', '-c', cmd], { encoding: 'utf8' });
        expect(ro.status, ro.stderr).toBe(2);
        expect(ro.stderr).toMatch(/rofs\/x.*the file system is read-only \(EROFS\); choose a writable location/);
        expect(ro.stderr).not.toMatch(/ENOENT/);
      } else {
        console.log('case 9: no user namespaces here; the read-only file system part was not run');
      }
    });
  });
});
