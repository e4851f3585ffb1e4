import { execa, type ResultPromise } from 'execa';
import { mkdtemp, readdir, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  Coordinator,
  CoordinationError,
  detectSharedDisk,
  mountFor,
  parseMounts,
  processState,
  selfIdentity,
} from '../../plugin/coordination/index.js';

const CHILD = join(import.meta.dirname, 'child-rank.ts');

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'msckpt-coord-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function openAll(ranks: number[], extra: Partial<Parameters<typeof Coordinator.open>[0]> = {}): Promise<Coordinator[]> {
  return Promise.all(ranks.map((rank) => Coordinator.open({ root: dir, rank, ranks, ...extra })));
}

function child(rank: number, ranks: number[], action: string): ResultPromise {
  return execa(process.execPath, ['--import', 'tsx', CHILD, dir, String(rank), ranks.join(','), action], { reject: false });
}

async function caught(p: Promise<unknown>): Promise<CoordinationError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(CoordinationError);
    return err as CoordinationError;
  }
  throw new Error('expected the wait to fail');
}

describe('coordination: barriers and markers', () => {
  it('passes a barrier once every rank arrives and returns their data', async () => {
    const cs = await openAll([0, 1, 2, 3]);
    expect(new Set(cs.map((c) => c.generation)).size).toBe(1);
    const results = await Promise.all(cs.map((c) => c.barrier('strategy', { file: `s${c.rank}` })));
    for (const r of results) expect([...r.entries()]).toEqual([0, 1, 2, 3].map((k) => [k, { file: `s${k}` }]));
    await Promise.all(cs.map((c) => c.close()));
  });

  it('works in polling mode (shared disk, no file events)', async () => {
    const cs = await openAll([0, 1, 2], { sharedDisk: true, pollInterval: 20 });
    expect(cs.every((c) => c.polling)).toBe(true);
    await Promise.all(cs.map((c) => c.barrier('b')));
    await Promise.all(cs.map((c) => c.close()));
  });

  it('times out naming the ranks that did not arrive', async () => {
    const cs = await openAll([0, 1, 2]);
    await cs[0]!.publish('done');
    const err = await caught(cs[1]!.waitAll('done', { timeoutMs: 150 }));
    expect(err.kind).toBe('timeout');
    expect(err.message).toMatch(/ranks 1, 2 did not arrive \(1 of 3 did\)/);
    expect(err.exitCode).toBe(1);
    await Promise.all(cs.map((c) => c.close()));
  });

  it('propagates a failure to every waiting rank with its text', async () => {
    const cs = await openAll([0, 1, 2, 3]);
    const waits = cs.slice(0, 3).map((c) => caught(c.waitAll('converted', { ranks: [3] })));
    await cs[3]!.fail('convert', new Error('no space left on device'));
    for (const err of await Promise.all(waits)) {
      expect(err.kind).toBe('failed');
      expect(err.failedRank).toBe(3);
      expect(err.message).toMatch(/rank 3 .*failed during 'convert': no space left on device/);
    }
    await Promise.all(cs.map((c) => c.close()));
  });

  it('detects a stale heartbeat', async () => {
    const cs = await openAll([0, 1], { heartbeatTimeoutMs: 200, heartbeatIntervalMs: 20 });
    const hb = cs[1]!.startHeartbeat('convert');
    hb.update({ done: 2, total: 8, label: 'rank_1' });
    await hb.stop(); // the converter freezes: no more beats, no marker
    const err = await caught(cs[0]!.waitAll('converted', { ranks: [1], heartbeats: [1] }));
    expect(err.kind).toBe('stale');
    expect(err.failedRank).toBe(1);
    expect(err.message).toMatch(/rank 1 .*no heartbeat for/);
    // the finding is published: another rank waiting elsewhere stops too
    const err2 = await caught(cs[0]!.waitAll('other', { ranks: [0] }));
    expect(err2.failedRank).toBe(1);
    await Promise.all(cs.map((c) => c.close()));
  });

  it('waits for a rank whose heartbeat is alive until it publishes', async () => {
    const cs = await openAll([0, 1], { heartbeatTimeoutMs: 400, heartbeatIntervalMs: 20 });
    const hb = cs[1]!.startHeartbeat('convert');
    const wait = cs[0]!.waitAll('converted', { ranks: [1], heartbeats: [1] });
    for (let i = 1; i <= 3; i++) {
      hb.update({ done: i, total: 3 });
      await new Promise<void>((res) => setImmediate(res));
    }
    await cs[1]!.publish('converted', { files: 3 });
    await hb.stop();
    const got = await wait;
    expect(got.get(1)).toEqual({ files: 3 });
    await Promise.all(cs.map((c) => c.close()));
  });

  it('fails promptly when an awaited process is killed (SIGKILL)', async () => {
    const ranks = [0, 1];
    const lead = Coordinator.open({ root: dir, rank: 0, ranks, heartbeatTimeoutMs: 3_600_000 });
    const proc = child(1, ranks, 'die');
    const c0 = await lead;
    await c0.waitAll('joined', { ranks: [1] }).catch(() => undefined);
    const err = await caught(c0.waitAll('converted', { ranks: [1], heartbeats: [1] }));
    expect(err.kind).toBe('died');
    expect(err.failedRank).toBe(1);
    expect(err.message).toMatch(/rank 1 .*ended without reporting: killed \(SIGKILL/);
    const r = await proc;
    expect(r.signal).toBe('SIGKILL');
    await c0.close();
  });

  it('every waiting rank finds a non-converter rank killed on another machine by its presence beat', async () => {
    const ranks = [0, 1, 2];
    const opts = { root: dir, ranks, heartbeatTimeoutMs: 1000, heartbeatIntervalMs: 50 };
    const lead = Coordinator.open({ ...opts, rank: 0 });
    const other = Coordinator.open({ ...opts, rank: 2 });
    // rank 1 runs on another "machine": its pid cannot be looked at from here
    const proc = execa(process.execPath, ['--import', 'tsx', CHILD, dir, '1', ranks.join(','), 'vanish', '1000'], {
      reject: false,
      env: { MSCKPT_MACHINE_ID: 'hb-test-other-node' },
    });
    const [c0, c2] = await Promise.all([lead, other]);
    expect(processState({ host: 'x', machine: 'forced:hb-test-other-node', pid: process.pid, startTime: -1 })).toBe('unknown');
    await c0.waitAll('joined', { ranks: [1] });
    // rank 1 is a plain rank (no task heartbeat watched): the barrier relies on presence beats
    const errs = await Promise.all([caught(c0.barrier('b')), caught(c2.barrier('b'))]);
    for (const err of errs) {
      expect(err.kind).toBe('stale');
      expect(err.failedRank).toBe(1);
      expect(err.exitCode).toBe(1);
      expect(err.message).toMatch(/^rank 1 \(host .*, pid \d+\) stopped sending heartbeats during 'waiting' \(no new beat for [\d.]+ s, limit 1\.0 s; awaited: 'b'\): killed \(SIGKILL/);
    }
    expect((await proc).signal).toBe('SIGKILL');
    await Promise.all([c0.close(), c2.close()]);
  });

  it("carries another process's own error text", async () => {
    const ranks = [0, 1];
    const lead = Coordinator.open({ root: dir, rank: 0, ranks });
    const proc = child(1, ranks, 'throw');
    const c0 = await lead;
    const err = await caught(c0.waitAll('converted', { ranks: [1] }));
    expect(err.failedRank).toBe(1);
    expect(err.reason).toBe('out of disk space writing rank_3/checkpoint_3.ckpt');
    expect((await proc).exitCode).toBe(1);
    await c0.close();
  });

  it('passes a barrier across processes', async () => {
    const ranks = [0, 1, 2];
    const lead = Coordinator.open({ root: dir, rank: 0, ranks });
    const procs = [child(1, ranks, 'barrier'), child(2, ranks, 'barrier')];
    const c0 = await lead;
    await c0.barrier('b');
    for (const p of procs) expect((await p).exitCode).toBe(0);
    await c0.close();
  });
});

describe('coordination: generations', () => {
  it('never mistakes an earlier run\'s markers for this run\'s', async () => {
    const ranks = [0, 1];
    const old = await openAll(ranks);
    await Promise.all(old.map((c) => c.barrier('converted', { run: 1 })));
    await old[1]!.fail('convert', new Error('old failure'));
    await Promise.all(old.map((c) => c.close()));
    // earlier run's leftovers are all there; the new run's follower starts first
    const follower = Coordinator.open({ root: dir, rank: 1, ranks });
    const leader = Coordinator.open({ root: dir, rank: 0, ranks });
    const [f, l] = await Promise.all([follower, leader]);
    expect(f.generation).toBe(l.generation);
    expect(f.generation).not.toBe(old[0]!.generation);
    expect((await f.published('converted')).size).toBe(0);
    expect(await f.failures()).toEqual([]);
    const err = await caught(f.waitAll('converted', { ranks: [0], timeoutMs: 100 }));
    expect(err.kind).toBe('timeout');
    // only the new generation remains
    expect(await readdir(join(dir, 'gen'))).toEqual([l.generation]);
    await Promise.all([f.close(), l.close()]);
  });

  it('a follower ignores a forged current pointer whose admission lacks its nonce', async () => {
    const ranks = [0, 1];
    const stale = join(dir, 'gen', 'stale-1-abc');
    await mkdir(join(stale, 'admitted'), { recursive: true });
    await mkdir(join(dir, 'tickets'), { recursive: true });
    await writeFile(join(stale, 'admitted', 'rank_1.json'), JSON.stringify({ rank: 1, nonce: 'old' }));
    await writeFile(join(dir, 'current.json'), JSON.stringify({ generation: 'stale-1-abc' }));
    const err = await Coordinator.open({ root: dir, rank: 1, ranks, joinTimeoutMs: 100 }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CoordinationError);
    expect(String((err as Error).message)).toMatch(/waiting for rank 0 to admit this rank .*join timeout 0\.1 s/);
  });
});

describe('coordination: shared disk detection', () => {
  const mounts = [
    'sysfs /sys sysfs rw 0 0',
    '/dev/sda1 / ext4 rw 0 0',
    'server:/export /mnt/shared nfs4 rw 0 0',
    'mds@tcp:/lfs /mnt/lustre lustre rw 0 0',
    '/dev/sdb1 /mnt/shared/local\\040disk xfs rw 0 0',
  ].join('\n');

  it('uses the longest mount prefix and its fs type', () => {
    const m = parseMounts(mounts);
    expect(mountFor('/mnt/shared/job/output', m)?.fsType).toBe('nfs4');
    expect(mountFor('/mnt/shared/local disk/x', m)?.fsType).toBe('xfs');
    expect(mountFor('/mnt/sharedx', m)?.fsType).toBe('ext4');
    expect(detectSharedDisk('/mnt/lustre/a/b', {}, mounts).network).toBe(true);
    expect(detectSharedDisk('/mnt/shared/local disk/out', {}, mounts)).toMatchObject({ network: false, fsType: 'xfs' });
    expect(detectSharedDisk('/home/u/out', {}, mounts)).toMatchObject({ network: false, reason: 'local' });
  });

  it('honours SHARED_PATHS', () => {
    expect(detectSharedDisk('/data/team/out', { SHARED_PATHS: '/x, /data/team' }, mounts)).toMatchObject({
      network: true,
      reason: 'SHARED_PATHS',
    });
  });

  it('knows its own process is alive', () => {
    expect(processState(selfIdentity())).toBe('alive');
  });
});
