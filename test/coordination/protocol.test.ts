/**
 * The coordination protocol at a few hundred ranks, simulated in this process (see
 * test/helpers/coord-sim.ts): a shared disk in memory, 8 ranks per simulated machine, virtual
 * time (timeouts pass without sleeping), SIGKILL = the process does nothing more and its pid is
 * gone for /proc on its machine. Correctness only; speed is in bench/coordination.ts.
 */
import { describe, expect, it } from 'vitest';
import {
  Coordinator, CoordinationError, JobConflictError, type CoordinatorOptions,
} from '../../plugin/coordination/index.js';
import { SimCluster, type SimRank } from '../helpers/coord-sim.js';

const ROOT = '/job/output/msckpt/coord';
const N = 256;
const PER_MACHINE = 8;
const T = 20_000;

interface Setup {
  sim: SimCluster;
  ranks: number[];
  procs: SimRank[];
  open: (p: SimRank, extra?: Partial<CoordinatorOptions>) => Promise<Coordinator>;
}

function setup(n = N, extra: Partial<CoordinatorOptions> = {}): Setup {
  const sim = new SimCluster();
  const ranks = Array.from({ length: n }, (_v, i) => i);
  const procs = ranks.map((r) => sim.process(r, Math.floor(r / PER_MACHINE)));
  const open = (p: SimRank, more: Partial<CoordinatorOptions> = {}): Promise<Coordinator> =>
    Coordinator.open({
      root: ROOT, ranks, rank: p.rank, heartbeatTimeoutMs: T, joinTimeoutMs: 120_000, barrierTimeoutMs: 7_200_000, ...sim.options(p), ...extra, ...more,
    });
  return { sim, ranks, procs, open };
}

async function openAll(s: Setup, procs: readonly SimRank[] = s.procs): Promise<Coordinator[]> {
  return s.sim.clock.run(Promise.all(procs.map((p) => s.open(p))));
}

type Outcome<T> = { ok: true; value: T } | { ok: false; error: unknown };

function settle<T>(p: Promise<T>): Promise<Outcome<T>> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  );
}

/** The CoordinationError of every outcome (fails the test when one passed or threw something else). */
function errors(outs: ReadonlyArray<Outcome<unknown>>): CoordinationError[] {
  return outs.map((o) => {
    expect(o.ok, 'expected the wait to fail').toBe(false);
    const e = (o as { error: unknown }).error;
    expect(e).toBeInstanceOf(CoordinationError);
    return e as CoordinationError;
  });
}

async function closeAll(s: Setup, cs: ReadonlyArray<Coordinator | undefined>, dead: ReadonlySet<number> = new Set()): Promise<void> {
  await s.sim.clock.run(Promise.all(cs.map((c) => (c === undefined || dead.has(c.rank) ? Promise.resolve() : c.close()))));
}

describe('coordination protocol at 256 ranks: barriers', () => {
  it('passes barriers with every rank\'s data, each marker read once, a constant number of operations per rank', async () => {
    const s = setup();
    const cs = await openAll(s);
    expect(new Set(cs.map((c) => c.generation)).size).toBe(1);
    s.sim.disk.log = [];
    const before = s.sim.disk.snapshot();
    const got = await s.sim.clock.run(Promise.all(cs.map((c) => c.barrier('strategy', { file: `s${c.rank}` }))));
    for (const m of got) {
      expect(m.size).toBe(N);
      expect(m.get(0)).toEqual({ file: 's0' });
      expect(m.get(255)).toEqual({ file: 's255' });
    }
    const after = s.sim.disk.snapshot();
    const log = s.sim.disk.log;
    // the leader alone reads markers, each at most once; nobody reads another rank's beat but the leader
    const markerReads = log.filter((o) => o.kind === 'readFile' && o.path.includes('/m/strategy/'));
    expect(new Set(markerReads.map((o) => o.tag))).toEqual(new Set([s.procs[0]?.tag]));
    expect(new Set(markerReads.map((o) => o.path)).size).toBe(markerReads.length);
    expect(log.filter((o) => o.kind === 'readFile' && o.path.includes('/live/') && o.tag !== s.procs[0]?.tag)).toEqual([]);
    // every other rank: its marker, its registration, a few status polls, the data once
    for (const p of s.procs.slice(1)) {
      const ops = (after.byTag.get(p.tag)?.protocol ?? 0) - (before.byTag.get(p.tag)?.protocol ?? 0);
      expect(ops).toBeLessThanOrEqual(10);
    }
    // data from one rank (the leader) to all, a barrier without data, a subset
    s.sim.disk.log = undefined;
    const checked = await s.sim.clock.run(
      Promise.all(cs.map(async (c) => (c.rank === 0 ? (await c.publish('checked', { plan: 'p1' }), 'published') : (await c.waitAll('checked', { ranks: [0] })).get(0)))),
    );
    expect(checked.slice(1)).toEqual(Array(N - 1).fill({ plan: 'p1' }));
    await s.sim.clock.run(Promise.all(cs.map((c) => c.barrier('b'))));
    const converters = [0, 64, 128, 192];
    const conv = await s.sim.clock.run(
      Promise.all(cs.map(async (c) => {
        if (converters.includes(c.rank)) await c.publish('converted', { slices: [c.rank, c.rank + 63] });
        return c.waitAll('converted', { ranks: converters, heartbeats: converters });
      })),
    );
    for (const m of conv) expect([...m.keys()]).toEqual(converters);
    expect(conv[7]?.get(128)).toEqual({ slices: [128, 191] });
    await closeAll(s, cs);
  });

  it('never mistakes an earlier run\'s markers, data or failures for this run\'s', async () => {
    const s = setup();
    const old = await openAll(s);
    await s.sim.clock.run(Promise.all(old.map((c) => c.barrier('converted', { run: 1 }))));
    await s.sim.clock.run(old[5]!.fail('convert', new Error('old failure')));
    await closeAll(s, old);
    // run 2: new processes; the followers start first and find run 1's files and pointer
    const procs = s.ranks.map((r) => s.sim.process(r, Math.floor(r / PER_MACHINE)));
    const followers = procs.slice(1).map((p) => s.open(p));
    await s.sim.clock.run(s.sim.clock.sleep(5_000));
    const all = await s.sim.clock.run(Promise.all([s.open(procs[0]!), ...followers]));
    expect(new Set(all.map((c) => c.generation))).toEqual(new Set([all[0]!.generation]));
    expect(all[0]!.generation).not.toBe(old[0]!.generation);
    expect((await s.sim.clock.run(all[9]!.published('converted'))).size).toBe(0);
    expect(await s.sim.clock.run(all[9]!.failures())).toEqual([]);
    const got = await s.sim.clock.run(Promise.all(all.map((c) => c.barrier('converted', { run: 2, rank: c.rank }))));
    for (const m of got) expect(m.get(5)).toEqual({ run: 2, rank: 5 });
    await closeAll(s, all);
    // run 1's files were moved aside and removed
    expect(s.sim.disk.mem.exists(`${ROOT}/gen/${old[0]!.generation}`)).toBe(false);
    expect(s.sim.disk.mem.exists(`${ROOT}/trash`)).toBe(true);
    expect([...s.sim.disk.mem.hashes(`${ROOT}/trash`).keys()]).toEqual([]);
  });
});

describe('coordination protocol at 256 ranks: a rank dying at each step', () => {
  it('before joining: every rank names it once the join deadline passes, long before the barrier timeout', async () => {
    const s = setup();
    const missing = 77;
    const started = s.sim.clock.now();
    const outs = s.procs
      .filter((p) => p.rank !== missing)
      .map((p) => settle(s.open(p, { joinTimeoutMs: 120_000 }).then(async (c) => {
        try {
          return await c.barrier('cleaned');
        } finally {
          await c.close();
        }
      })));
    const errs = errors(await s.sim.clock.run(Promise.all(outs)));
    expect(errs).toHaveLength(N - 1);
    for (const e of errs) {
      expect(e.kind).toBe('timeout');
      expect(e.message).toMatch(/^ranks 77 did not join within the join timeout of 120 s \(255 of 256 joined\): not started, or died before joining$/);
    }
    expect(s.sim.clock.now() - started).toBeLessThan(180_000);
  });

  it('the leader never starts: every rank names it at its join deadline', async () => {
    const s = setup(64);
    const outs = s.procs.slice(1).map((p) => settle(s.open(p, { joinTimeoutMs: 300_000 })));
    for (const e of errors(await s.sim.clock.run(Promise.all(outs)))) {
      expect(e.failedRank).toBe(0);
      expect(e.message).toMatch(/^timed out after 300 s waiting for rank 0 to open the run's coordination \(in .*; join timeout 300 s\): it has not started, or died before joining$/);
    }
  });

  it('killed while the others wait at a barrier: its machine\'s ranks see it through /proc, every rank names it', async () => {
    const s = setup();
    const cs = await openAll(s);
    const victim = 100; // machine 12, not the leader's
    await s.sim.clock.run(cs[victim]!.setStage('waiting'));
    const outs = cs.filter((c) => c.rank !== victim).map((c) => settle(c.barrier('b')));
    await s.sim.clock.run(s.sim.clock.sleep(3_000));
    s.sim.kill(s.procs[victim]!);
    for (const e of errors(await s.sim.clock.run(Promise.all(outs)))) {
      expect(e.kind).toBe('died');
      expect(e.failedRank).toBe(victim);
      expect(e.message).toMatch(/^rank 100 \(host node12, pid \d+\) failed during 'waiting': its process \(pid \d+ on node12\) ended without reporting: killed \(SIGKILL, out of memory\) or crashed$/);
    }
    await closeAll(s, cs, new Set([victim]));
  });

  it('a node goes down while the others wait: found by its beats, named by every rank with what it was doing', async () => {
    const s = setup();
    const cs = await openAll(s);
    const down = s.procs.filter((p) => p.machine === 12).map((p) => p.rank); // 96..103
    await s.sim.clock.run(Promise.all(down.map((r) => cs[r]!.setStage('strategy'))));
    const outs = cs.filter((c) => !down.includes(c.rank)).map((c) => settle(c.barrier('b', null, { what: "every rank's strategy file" })));
    await s.sim.clock.run(s.sim.clock.sleep(3_000));
    for (const r of down) s.sim.kill(s.procs[r]!);
    for (const e of errors(await s.sim.clock.run(Promise.all(outs)))) {
      expect(e.kind).toBe('stale');
      expect(e.failedRank).toBe(96);
      expect(e.message).toMatch(
        /^rank 96 \(host node12, pid \d+\) stopped sending heartbeats during 'strategy' \(no new beat for [\d.]+ s, limit 20 s; awaited: every rank's strategy file\): killed \(SIGKILL, out of memory\), hung, or its node is down; 7 more rank\(s\) failed: 97, 98, 99, 100, 101, 102, 103$/,
      );
    }
    await closeAll(s, cs, new Set(down));
  });

  it('a converter dies mid-task (its node down): every rank names it with its last progress', async () => {
    const s = setup();
    const cs = await openAll(s);
    const converters = [0, 64, 128, 192];
    for (const r of converters) {
      const hb = cs[r]!.startHeartbeat('convert');
      hb.update({ done: 3, total: 8, label: `rank_${r + 2}` });
    }
    const waiting = cs.filter((c) => !converters.includes(c.rank) || c.rank === 0);
    const outs = waiting.map((c) => settle(c.waitAll('converted', { ranks: converters, heartbeats: converters, what: 'the converters' })));
    await s.sim.clock.run(s.sim.clock.sleep(30_000));
    const down = s.procs.filter((p) => p.machine === 16).map((p) => p.rank); // 128..135
    for (const r of down) s.sim.kill(s.procs[r]!);
    const errs = errors(await s.sim.clock.run(Promise.all(outs.filter((_o, i) => !down.includes(waiting[i]!.rank)))));
    for (const e of errs) {
      expect(e.kind).toBe('stale');
      expect(e.failedRank).toBe(128);
      expect(e.message).toMatch(/^rank 128 \(host node16, pid \d+\) failed during 'convert': no heartbeat for [\d.]+ s \(limit 20 s; last: 'convert' 3\/8 rank_130\): killed \(SIGKILL, out of memory\), hung, or its node is down/);
    }
    await closeAll(s, cs, new Set(down));
  });

  it("a failing rank's own error text reaches every rank", async () => {
    const s = setup();
    const cs = await openAll(s);
    const outs = cs.filter((c) => c.rank !== 200).map((c) => settle(c.waitAll('converted', { ranks: [0, 200] })));
    await s.sim.clock.run(s.sim.clock.sleep(2_000));
    await s.sim.clock.run(cs[200]!.fail('convert', new Error('no space left on the device writing rank_200/checkpoint_200.ckpt')));
    for (const e of errors(await s.sim.clock.run(Promise.all(outs)))) {
      expect(e.kind).toBe('failed');
      expect(e.failedRank).toBe(200);
      expect(e.reason).toBe('no space left on the device writing rank_200/checkpoint_200.ckpt');
      expect(e.message).toMatch(/^rank 200 \(host node25, pid \d+\) failed during 'convert': no space left/);
    }
    await closeAll(s, cs);
  });
});

describe('coordination protocol at 256 ranks: the leader dying at each step', () => {
  /** Ranks on the leader's machine see its pid gone; the others its status frozen. */
  function expectLeaderNamed(e: CoordinationError, rank: number, stage: string): void {
    expect(e.failedRank).toBe(0);
    if (rank < PER_MACHINE) {
      expect(e.kind).toBe('died');
      expect(e.message).toMatch(new RegExp(`^rank 0 \\(host node0, pid \\d+\\) failed during '${stage}': its process \\(pid \\d+ on node0\\) ended without reporting`));
    } else {
      expect(e.kind).toBe('stale');
      expect(e.message).toMatch(new RegExp(`^rank 0 \\(host node0, pid \\d+\\) stopped sending heartbeats during '${stage}' \\(no new beat for [\\d.]+ s, limit 20 s; awaited: .*; it coordinates the run\\)`));
    }
  }

  it('while admitting: admitted ranks name it; ranks that come later name it at their join deadline', async () => {
    const s = setup();
    const leader = settle(s.open(s.procs[0]!));
    const early = await s.sim.clock.run(Promise.all(s.procs.slice(1, 128).map((p) => s.open(p))));
    s.sim.kill(s.procs[0]!);
    const waits = early.map((c) => settle(c.barrier('cleaned')));
    const late = s.procs.slice(128).map((p) => settle(s.open(p, { joinTimeoutMs: 200_000 })));
    const errs = errors(await s.sim.clock.run(Promise.all(waits)));
    errs.forEach((e, i) => expectLeaderNamed(e, i + 1, 'join'));
    for (const e of errors(await s.sim.clock.run(Promise.all(late)))) {
      expect(e.failedRank).toBe(0);
      expect(e.message).toMatch(/^timed out after 200 s waiting for rank 0 to admit this rank \(in .*\), 128 of 256 joined$/);
    }
    void leader;
    await closeAll(s, early);
  });

  it('before reaching a barrier the others wait at', async () => {
    const s = setup();
    const cs = await openAll(s);
    await s.sim.clock.run(cs[0]!.setStage('strategy'));
    const outs = cs.slice(1).map((c) => settle(c.barrier('strategy')));
    await s.sim.clock.run(s.sim.clock.sleep(5_000));
    s.sim.kill(s.procs[0]!);
    errors(await s.sim.clock.run(Promise.all(outs))).forEach((e, i) => expectLeaderNamed(e, i + 1, 'strategy'));
    await closeAll(s, cs, new Set([0]));
  });

  it('mid-task, as a converter: named by its task heartbeat', async () => {
    const s = setup();
    const cs = await openAll(s);
    await s.sim.clock.run(cs[0]!.setStage('convert'));
    cs[0]!.startHeartbeat('convert').update({ done: 1, total: 4, label: 'model/rank_0' });
    const converters = [0, 128];
    cs[128]!.startHeartbeat('convert');
    const outs = cs.filter((c) => !converters.includes(c.rank)).map((c) => settle(c.waitAll('converted', { ranks: converters, heartbeats: converters })));
    await s.sim.clock.run(s.sim.clock.sleep(20_000));
    s.sim.kill(s.procs[0]!);
    const errs = errors(await s.sim.clock.run(Promise.all(outs)));
    for (const e of errs.slice(PER_MACHINE - 1)) {
      expect(e.kind).toBe('stale');
      expect(e.message).toMatch(/^rank 0 \(host node0, pid \d+\) failed during 'convert': no heartbeat for [\d.]+ s \(limit 20 s; last: 'convert' 1\/4 model\/rank_0\)/);
    }
    errs.slice(0, PER_MACHINE - 1).forEach((e, i) => expectLeaderNamed(e, i + 1, 'convert'));
    await closeAll(s, cs, new Set([0]));
  });

  it('after arriving at a barrier, while waiting for the last rank', async () => {
    const s = setup();
    const cs = await openAll(s);
    await s.sim.clock.run(cs[0]!.setStage('check'));
    const outs = cs.slice(0, 255).map((c) => settle(c.barrier('checked')));
    await s.sim.clock.run(s.sim.clock.sleep(5_000));
    s.sim.kill(s.procs[0]!);
    const late = settle(cs[255]!.barrier('checked'));
    const errs = errors(await s.sim.clock.run(Promise.all([...outs.slice(1), late])));
    errs.forEach((e, i) => expectLeaderNamed(e, i + 1, 'check'));
    await closeAll(s, cs, new Set([0]));
  });
});

describe('coordination protocol: job identity on a shared output folder', () => {
  const LOCK = '/job/output/msckpt';
  const jobA = { id: 'job-a', yaml: '/work/a/run.yaml', lockDir: LOCK, details: { scheduler: '10.0.0.1:8118', workers: '64' } };
  const jobB = { id: 'job-b', yaml: '/work/b/run.yaml', lockDir: LOCK, details: { scheduler: '10.0.0.2:8118', workers: '64' } };

  it('refuses a second job at once on every rank, naming the first; the first job\'s files stay as they were; a rerun after it was killed takes over', async () => {
    const s = setup(64);
    const a = await s.sim.clock.run(Promise.all(s.procs.map((p) => s.open(p, { job: jobA }))));
    await s.sim.clock.run(Promise.all(a.map((c) => c.barrier('converted', { run: 'a' }))));
    // job A trains: coordination closed, the folder still held
    await s.sim.clock.run(Promise.all(a.map((c) => c.close({ keepJob: true }))));
    const keep = (p: string): boolean => !p.endsWith('/job.beat');
    const before = s.sim.disk.mem.hashes('/job', keep);
    expect([...before.keys()]).toContain(`${LOCK}/job.json`);
    // job B: its ranks on every machine (A's leader's machine: /proc; the others: A's heartbeat advancing)
    const b = s.ranks.map((r) => s.sim.process(r, Math.floor(r / PER_MACHINE)));
    const started = s.sim.clock.now();
    const outs = await s.sim.clock.run(Promise.all(b.map((p) => settle(s.open(p, { job: jobB })))));
    expect(s.sim.clock.now() - started).toBeLessThan(T);
    for (const o of outs) {
      expect(o.ok).toBe(false);
      const e = (o as { error: unknown }).error;
      expect(e).toBeInstanceOf(JobConflictError);
      expect((e as JobConflictError).exitCode).toBe(2);
      expect((e as Error).message).toMatch(
        /^\/job\/output\/msckpt is in use by another job: job job-a \(rank 0, pid \d+ on host node0, started \d{4}-\d\d-\d\dT[\d:.]+Z, YAML \/work\/a\/run\.yaml\) is alive \((its process is running on this machine|its heartbeat is advancing)\)\. Nothing was changed\./,
      );
    }
    expect(s.sim.disk.mem.hashes('/job', keep)).toEqual(before);
    // job A is SIGKILLed; B is started again and takes the folder (its leader shares A's machine)
    for (const p of s.procs) s.sim.kill(p);
    const b2 = s.ranks.map((r) => s.sim.process(r, Math.floor(r / PER_MACHINE)));
    const cs = await s.sim.clock.run(Promise.all(b2.map((p) => s.open(p, { job: jobB }))));
    expect(cs[0]!.job?.id).toBe('job-b');
    const got = await s.sim.clock.run(Promise.all(cs.map((c) => c.barrier('converted', { run: 'b' }))));
    for (const m of got) expect(m.get(63)).toEqual({ run: 'b' });
    await s.sim.clock.run(Promise.all(cs.map((c) => c.close())));
    expect(s.sim.disk.mem.exists(`${LOCK}/job.json`)).toBe(false);
  });

  it('a rerun whose earlier job died on another machine waits for its heartbeat to go stale, then takes over', async () => {
    const s = setup(16);
    const a = await s.sim.clock.run(Promise.all(s.procs.map((p) => s.open(p, { job: jobA }))));
    await s.sim.clock.run(Promise.all(a.map((c) => c.close({ keepJob: true }))));
    for (const p of s.procs) s.sim.kill(p);
    // B's leader runs on another machine than A's: it cannot look at A's pid
    const b = s.ranks.map((r) => s.sim.process(r, 5 + Math.floor(r / PER_MACHINE)));
    const outs = await s.sim.clock.run(Promise.all(b.map((p) => settle(s.open(p, { job: jobB })))));
    expect(outs.every((o) => o.ok)).toBe(true);
    const cs = outs.map((o) => (o as { value: Coordinator }).value);
    expect(cs[0]!.job?.id).toBe('job-b');
    await s.sim.clock.run(Promise.all(cs.map((c) => c.close())));
  });

  it('a second start of the same job refuses its leader while the first one runs', async () => {
    const s = setup(16);
    const a = await s.sim.clock.run(Promise.all(s.procs.map((p) => s.open(p, { job: jobA }))));
    const again = s.sim.process(0, 0);
    const o = await s.sim.clock.run(settle(s.open(again, { job: jobA })));
    expect(o.ok).toBe(false);
    expect(String((o as { error: Error }).error.message)).toMatch(/is held by another start of this same job .*: job job-a \(rank 0, pid \d+ on host node0/);
    await closeAll(s, a);
  });
});
