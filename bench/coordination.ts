/**
 * Coordination figures.
 *
 * 1. Scale (simulated): 64, 512 and 4,096 ranks in this process over a shared disk in memory
 *    that counts file operations and adds a fixed latency to each (1 ms, as a network file
 *    system would), with virtual time (a minute of waiting passes in milliseconds; the latency
 *    is served with unlimited parallelism, so times are a lower bound for a loaded server). For
 *    the protocol before this change (bench/_legacy-coordinator.ts) and the current one, with
 *    their default settings (heartbeat timeout 60 s):
 *    - a barrier the ranks reach spread over 1 s: operations from the first arrival until the
 *      last rank is through (protocol and beats), and the time from the last arrival until the
 *      last rank is through;
 *    - idle: every rank waiting a minute for 8 converters (task heartbeats watched), operations
 *      per second;
 *    - a node going down during that wait (its 8 ranks, one converter among them): time until
 *      every waiting rank failed.
 *    The old protocol at 4,096 ranks is too heavy to simulate in full (each waiting rank reads
 *    every marker: 16 M reads per barrier); there all ranks publish and beat but only 64 wait,
 *    and the waiting ranks' operations are scaled to the whole group (marked "sampled").
 * 2. Real processes: CPU an idle waiting rank uses (file events vs polling), and how long after a
 *    converter is SIGKILLed a waiting rank on the same machine fails.
 */
import { execa } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  Coordinator, CoordinationError, defaultHeartbeatInterval, defaultPollInterval, DEFAULT_HEARTBEAT_TIMEOUT_MS,
} from '../plugin/coordination/index.js';
import { SimCluster, type OpCounts, type SimRank } from '../test/helpers/coord-sim.js';
import { LegacyCoordinator } from './_legacy-coordinator.js';

const CHILD = fileURLToPath(new URL('./_coord-child.ts', import.meta.url));

// ---- simulated scale ---------------------------------------------------------------------------

interface Rank {
  publish(name: string, data?: unknown): Promise<void>;
  waitAll(name: string, opts?: { ranks?: readonly number[]; heartbeats?: readonly number[]; timeoutMs?: number }): Promise<unknown>;
  startHeartbeat(stage: string): unknown;
  close(): Promise<void>;
}

type Proto = 'old' | 'new';

const LATENCY_MS = 1;
const RANKS_PER_MACHINE = 8;
const SAMPLE = 64;
const IDLE_MS = 60_000;
const CONVERTERS = 8;
/** Group sizes (MSCKPT_BENCH_COORD_RANKS=64,512 for a quicker run). */
const SIZES = (process.env['MSCKPT_BENCH_COORD_RANKS'] ?? '64,512,4096').split(',').map(Number);

interface ScaleResult {
  n: number;
  proto: Proto;
  sampled: boolean;
  joinOps: number;
  joinMs: number;
  barrierProtocol: number;
  barrierBeats: number;
  passMs: number;
  idleOpsPerS: number;
  idleBeatsPerS: number;
  detectMs: number;
  failedRanks: number;
}

function opsOf(before: Map<string, OpCounts>, after: Map<string, OpCounts>, tags: readonly string[]): { protocol: number; beat: number } {
  let protocol = 0;
  let beat = 0;
  for (const t of tags) {
    const a = after.get(t);
    const b = before.get(t);
    protocol += (a?.protocol ?? 0) - (b?.protocol ?? 0);
    beat += (a?.beat ?? 0) - (b?.beat ?? 0);
  }
  return { protocol, beat };
}

/** Total over the group: measured ranks as they are, the unsampled followers as the sampled ones' mean. */
function scaled(
  before: Map<string, OpCounts>, after: Map<string, OpCounts>, procs: readonly SimRank[], waiting: ReadonlySet<number>, n: number,
): { protocol: number; beat: number } {
  const leader = opsOf(before, after, [(procs[0] as SimRank).tag]);
  const followers = procs.filter((p) => p.rank !== 0 && waiting.has(p.rank)).map((p) => p.tag);
  const f = opsOf(before, after, followers);
  const k = (n - 1) / Math.max(1, followers.length);
  return { protocol: leader.protocol + f.protocol * k, beat: leader.beat + f.beat * k };
}

async function scaleRun(n: number, proto: Proto): Promise<ScaleResult> {
  const sim = new SimCluster({ latencyMs: LATENCY_MS });
  const clock = sim.clock;
  const ranks = Array.from({ length: n }, (_v, i) => i);
  const procs = ranks.map((r) => sim.process(r, Math.floor(r / RANKS_PER_MACHINE)));
  const sampled = proto === 'old' && n > 512;
  // the ranks that wait (all of them, except in a sampled run)
  const waiting = new Set<number>(sampled ? [0, ...Array.from({ length: SAMPLE }, (_v, i) => 1 + Math.floor((i * (n - 1)) / SAMPLE))] : ranks);
  const root = '/job/output/msckpt/coord';
  const open = (p: SimRank): Promise<Rank> => {
    const env = sim.options(p);
    if (proto === 'new') return Coordinator.open({ root, rank: p.rank, ranks, ...env });
    return LegacyCoordinator.open({ root, rank: p.rank, ranks, ...env });
  };
  const s0 = sim.disk.snapshot();
  const t0 = clock.now();
  const cs = await clock.run(Promise.all(procs.map(open)));
  const s1 = sim.disk.snapshot();
  const joinMs = clock.now() - t0;

  // a barrier reached over 1 s
  const arrive = (r: number): number => Math.floor(((r * 7919) % n) * (1000 / n));
  let lastArrival = 0;
  let lastPass = 0;
  const tb = clock.now();
  await clock.run(
    Promise.all(
      cs.map(async (c, r) => {
        await clock.sleep(arrive(r));
        lastArrival = Math.max(lastArrival, clock.now());
        await c.publish('b');
        if (!waiting.has(r)) return;
        await c.waitAll('b');
        lastPass = Math.max(lastPass, clock.now());
      }),
    ),
  );
  const s2 = sim.disk.snapshot();
  void tb;
  const barrier = scaled(s1.byTag, s2.byTag, procs, waiting, n);

  // idle: waiting for the converters (task heartbeats watched)
  const converters = Array.from({ length: CONVERTERS }, (_v, i) => Math.floor((i * n) / CONVERTERS));
  const conv = new Set(converters);
  for (const r of converters) cs[r]?.startHeartbeat('convert');
  const outcomes = new Map<number, number>(); // rank -> when its wait failed
  for (const [r, c] of cs.entries()) {
    if (!waiting.has(r) || conv.has(r)) continue;
    c.waitAll('converted', { ranks: converters, heartbeats: converters }).then(
      () => undefined,
      () => outcomes.set(r, clock.now()),
    );
  }
  const s3 = sim.disk.snapshot();
  await clock.run(clock.sleep(IDLE_MS));
  const s4 = sim.disk.snapshot();
  const idle = scaled(s3.byTag, s4.byTag, procs, waiting, n);

  // a node goes down: its ranks, one converter among them, die at once (no rank is left on that
  // machine to see it through /proc)
  const downMachine = (procs[converters[1] as number] as SimRank).machine;
  const down = procs.filter((p) => p.machine === downMachine);
  const killedAt = clock.now();
  for (const p of down) sim.kill(p);
  const gone = new Set(down.map((p) => p.rank));
  const expect = [...waiting].filter((r) => !gone.has(r) && !conv.has(r));
  await clock.run(
    (async () => {
      while (expect.some((r) => !outcomes.has(r))) await clock.sleep(250);
    })(),
    30 * 60_000,
  );
  const detectMs = Math.max(...expect.map((r) => (outcomes.get(r) as number) - killedAt));
  await clock.run(Promise.all(cs.map((c, r) => (gone.has(r) ? Promise.resolve() : c.close()))));
  return {
    n, proto, sampled,
    joinOps: s1.all.total - s0.all.total,
    joinMs,
    barrierProtocol: barrier.protocol,
    barrierBeats: barrier.beat,
    passMs: lastPass - lastArrival,
    idleOpsPerS: (idle.protocol + idle.beat) / (IDLE_MS / 1000),
    idleBeatsPerS: idle.beat / (IDLE_MS / 1000),
    detectMs,
    failedRanks: expect.length,
  };
}

/**
 * The new protocol only, every rank waiting: how long until every other rank failed when one
 * rank's process is killed (ranks on its machine see it through /proc), a node goes down (beats
 * only), or the leader is killed.
 */
async function detectRun(n: number, who: 'process' | 'node' | 'leader'): Promise<number> {
  const sim = new SimCluster({ latencyMs: LATENCY_MS });
  const clock = sim.clock;
  const ranks = Array.from({ length: n }, (_v, i) => i);
  const procs = ranks.map((r) => sim.process(r, Math.floor(r / RANKS_PER_MACHINE)));
  const cs = await clock.run(Promise.all(procs.map((p) => Coordinator.open({ root: '/job/coord', rank: p.rank, ranks, ...sim.options(p) }))));
  const victims = new Set(
    who === 'leader' ? [0] : who === 'process' ? [RANKS_PER_MACHINE + 3] : procs.filter((p) => p.machine === 2).map((p) => p.rank),
  );
  const outcomes = new Map<number, number>();
  for (const [r, c] of cs.entries()) {
    if (victims.has(r)) continue;
    c.waitAll('never').then(
      () => undefined,
      (err: unknown) => {
        if (err instanceof CoordinationError) outcomes.set(r, clock.now());
      },
    );
  }
  await clock.run(clock.sleep(30_000));
  const at = clock.now();
  for (const r of victims) sim.kill(procs[r] as SimRank);
  await clock.run(
    (async () => {
      while (outcomes.size < n - victims.size) await clock.sleep(100);
    })(),
    30 * 60_000,
  );
  const worst = Math.max(...outcomes.values()) - at;
  await clock.run(Promise.all(cs.map((c, r) => (victims.has(r) ? Promise.resolve() : c.close()))));
  return worst;
}

function s(ms: number): string {
  return ms >= 10_000 ? `${(ms / 1000).toFixed(0)} s` : `${(ms / 1000).toFixed(2)} s`;
}

async function scale(): Promise<void> {
  const T = DEFAULT_HEARTBEAT_TIMEOUT_MS;
  process.stdout.write(
    `simulated shared disk: ${LATENCY_MS} ms per operation, ${RANKS_PER_MACHINE} ranks per machine, heartbeat timeout ${s(T)}; ` +
      `old: poll 1 s, beats every 5 s; new: poll ${defaultPollInterval(64) / 1000}-${defaultPollInterval(4096) / 1000} s (1 ms per rank, 1-5 s), ` +
      `beats every ${s(defaultHeartbeatInterval(T))}\n`,
  );
  const header = [
    'ranks', 'protocol', 'barrier ops', 'per rank', '(+ beats)', 'time to pass', 'idle ops/s', 'per rank', '(beats)', 'dead rank found', 'join ops',
  ];
  const rows: string[][] = [header];
  const results: ScaleResult[] = [];
  for (const n of SIZES) {
    for (const proto of ['old', 'new'] as const) {
      const r = await scaleRun(n, proto);
      results.push(r);
      rows.push([
        String(n), `${proto}${r.sampled ? ' (sampled)' : ''}`, Math.round(r.barrierProtocol).toLocaleString('en-US'),
        (r.barrierProtocol / n).toFixed(1), `+${Math.round(r.barrierBeats)}`, s(r.passMs), Math.round(r.idleOpsPerS).toLocaleString('en-US'),
        (r.idleOpsPerS / n).toFixed(2), `${Math.round(r.idleBeatsPerS)}`, s(r.detectMs), r.joinOps.toLocaleString('en-US'),
      ]);
    }
  }
  const widths = header.map((_h, i) => Math.max(...rows.map((row) => (row[i] as string).length)));
  for (const row of rows) process.stdout.write(`${row.map((c, i) => c.padStart(widths[i] as number)).join('  ')}\n`);
  for (const n of SIZES) {
    const o = results.find((r) => r.n === n && r.proto === 'old') as ScaleResult;
    const w = results.find((r) => r.n === n && r.proto === 'new') as ScaleResult;
    process.stdout.write(
      `${n} ranks: barrier operations new/old = ${(w.barrierProtocol / o.barrierProtocol).toFixed(3)}, idle operations new/old = ${(w.idleOpsPerS / o.idleOpsPerS).toFixed(3)}\n`,
    );
  }
  const n = Math.min(512, Math.max(...SIZES));
  const proc = await detectRun(n, 'process');
  const node = await detectRun(n, 'node');
  const leader = await detectRun(n, 'leader');
  process.stdout.write(
    `new protocol, ${n} ranks waiting, time until every other rank failed: one rank SIGKILLed ${s(proc)} (its machine's ranks see it ` +
      `through /proc), a node down ${s(node)} (beats only), the leader SIGKILLed ${s(leader)}\n`,
  );
}

// ---- real processes ------------------------------------------------------------------------------

async function withRoot<T>(fn: (root: string) => Promise<T>): Promise<T> {
  const root = await mkdtemp(join(tmpdir(), 'msckpt-bench-coord-'));
  try {
    return await fn(root);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

async function idle(mode: string, ms: number): Promise<void> {
  await withRoot(async (root) => {
    const polling = mode !== 'events';
    const lead = Coordinator.open({ root, rank: 0, ranks: [0, 1], sharedDisk: polling, ...(polling ? { pollInterval: Number(mode) } : {}) });
    const child = execa(process.execPath, ['--import', 'tsx', CHILD, root, '1', 'idle', String(ms), mode], { reject: false });
    const c = await lead;
    const r = await child;
    await c.close();
    const f = JSON.parse(String(r.stdout).trim()) as { wallMs: number; userMs: number; systemMs: number };
    const pct = (100 * (f.userMs + f.systemMs)) / f.wallMs;
    process.stdout.write(
      `idle wait, ${polling ? `polling every ${mode} ms` : 'file events + 1 s safety poll'}: ${(f.wallMs / 1000).toFixed(1)} s waited, ` +
        `CPU ${f.userMs.toFixed(0)} ms user + ${f.systemMs.toFixed(0)} ms system = ${pct.toFixed(2)}% of one core\n`,
    );
  });
}

async function detect(mode: string): Promise<void> {
  await withRoot(async (root) => {
    const polling = mode !== 'events';
    const lead = Coordinator.open({ root, rank: 0, ranks: [0, 1], sharedDisk: polling, ...(polling ? { pollInterval: Number(mode) } : {}) });
    const child = execa(process.execPath, ['--import', 'tsx', CHILD, root, '1', 'die', '0', mode], { reject: false });
    const c = await lead;
    let failedAt = 0;
    try {
      await c.waitAll('converted', { ranks: [1], heartbeats: [1] });
    } catch (err) {
      if (!(err instanceof CoordinationError)) throw err;
      failedAt = Date.now();
    }
    const killedAt = Number(String((await child).stdout).trim());
    await c.close();
    process.stdout.write(
      `converter SIGKILLed, ${polling ? `polling every ${mode} ms` : 'file events'}: the waiting rank failed ${failedAt - killedAt} ms later (same machine: /proc check)\n`,
    );
  });
}

export async function run(): Promise<void> {
  await scale();
  await idle('events', 5000);
  await idle('1000', 5000);
  await detect('events');
  await detect('1000');
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) await run();
