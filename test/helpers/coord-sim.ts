/**
 * Many ranks of a coordination group in one process, for tests and `bench/coordination.ts`:
 * - VirtualClock: time advances only when every simulated rank is waiting on a timer, so
 *   timeouts of minutes pass in milliseconds and no test sleeps;
 * - MemoryFs: a file system in memory with the semantics the protocol relies on (exclusive
 *   create, atomic rename, ENOENT/EEXIST);
 * - SimDisk: the shared disk every rank sees, through a per-rank view that counts operations,
 *   adds a fixed latency per operation (as NFS would) and can be "killed" (every later operation
 *   of that rank hangs for ever, as for a SIGKILLed process);
 * - SimCluster: identities on simulated machines and a /proc stand-in that knows who was killed.
 */
import { createHash } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import type { Clock } from '../../plugin/coordination/clock.js';
import type { CoordinationFs, WriteOptions } from '../../plugin/coordination/fs.js';
import type { ProcessIdentity, ProcessState } from '../../plugin/coordination/index.js';

// ---- the clock ---------------------------------------------------------------------------------

interface Timer {
  at: number;
  seq: number;
  fn: () => void;
  live: boolean;
}

export class VirtualClock implements Clock {
  private t = 0;
  private seq = 0;
  private heap: Timer[] = [];

  constructor(start = 1_700_000_000_000) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  setTimer(ms: number, fn: () => void): () => void {
    const e: Timer = { at: this.t + Math.max(0, ms), seq: this.seq++, fn, live: true };
    this.push(e);
    return () => {
      e.live = false;
    };
  }

  /** Resolve after `ms` of virtual time. */
  sleep(ms: number): Promise<void> {
    return new Promise<void>((res) => {
      this.setTimer(ms, res);
    });
  }

  /**
   * Run the simulation until `p` settles (its value, or its error thrown): let every pending
   * promise run, then jump to the next timer and fire every timer due then; repeat. Throws when
   * nothing is left to run and `p` has not settled, or after `limitMs` of virtual time.
   */
  async run<T>(p: Promise<T>, limitMs = 24 * 3600_000): Promise<T> {
    let settled = false;
    let value: T | undefined;
    let error: unknown;
    let failed = false;
    p.then(
      (v) => {
        settled = true;
        value = v;
      },
      (e: unknown) => {
        settled = true;
        failed = true;
        error = e;
      },
    );
    const end = this.t + limitMs;
    for (;;) {
      await flushPending();
      if (settled) break;
      const first = this.pop();
      if (first === undefined) throw new Error('simulation stalled: nothing is scheduled and the awaited promise has not settled');
      if (first.at > end) throw new Error(`simulation ran past its limit of ${limitMs} ms of virtual time`);
      this.t = first.at;
      first.fn();
      for (;;) {
        const top = this.peek();
        if (top === undefined || top.at !== this.t) break;
        (this.pop() as Timer).fn();
      }
    }
    if (failed) throw error;
    return value as T;
  }

  private less(a: Timer, b: Timer): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }

  private push(e: Timer): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(h[i] as Timer, h[p] as Timer)) break;
      [h[i], h[p]] = [h[p] as Timer, h[i] as Timer];
      i = p;
    }
  }

  private peek(): Timer | undefined {
    while (this.heap.length > 0 && !(this.heap[0] as Timer).live) this.popRaw();
    return this.heap[0];
  }

  private pop(): Timer | undefined {
    const top = this.peek();
    if (top === undefined) return undefined;
    return this.popRaw();
  }

  private popRaw(): Timer {
    const h = this.heap;
    const top = h[0] as Timer;
    const last = h.pop() as Timer;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.less(h[l] as Timer, h[m] as Timer)) m = l;
        if (r < h.length && this.less(h[r] as Timer, h[m] as Timer)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m] as Timer, h[i] as Timer];
        i = m;
      }
    }
    return top;
  }
}

/** Let every pending promise chain run (in-memory operations settle in microtasks). */
async function flushPending(): Promise<void> {
  await new Promise<void>((res) => setImmediate(res));
  await new Promise<void>((res) => setImmediate(res));
}

// ---- the file system -----------------------------------------------------------------------------

function fsError(code: string, op: string, path: string): Error {
  return Object.assign(new Error(`${code}: ${op} '${path}'`), { code, path });
}

export class MemoryFs implements CoordinationFs {
  private readonly files = new Map<string, string>();
  private readonly dirs = new Map<string, Set<string>>([['/', new Set()]]);

  private parentOf(p: string): { dir: string; name: string } {
    const dir = dirname(p);
    return { dir, name: p.slice(dir === '/' ? 1 : dir.length + 1) };
  }

  async readFile(path: string): Promise<string> {
    const p = resolve(path);
    const f = this.files.get(p);
    if (f !== undefined) return f;
    if (this.dirs.has(p)) throw fsError('EISDIR', 'read', p);
    throw fsError('ENOENT', 'open', p);
  }

  async writeFile(path: string, data: string, opts: WriteOptions = {}): Promise<void> {
    const p = resolve(path);
    const { dir, name } = this.parentOf(p);
    const children = this.dirs.get(dir);
    if (children === undefined) throw fsError('ENOENT', 'open', p);
    if (this.dirs.has(p)) throw fsError('EISDIR', 'open', p);
    if (opts.exclusive === true && this.files.has(p)) throw fsError('EEXIST', 'open', p);
    this.files.set(p, data);
    children.add(name);
  }

  async rename(from: string, to: string): Promise<void> {
    const a = resolve(from);
    const b = resolve(to);
    const dst = this.parentOf(b);
    const dstChildren = this.dirs.get(dst.dir);
    const src = this.parentOf(a);
    if (dstChildren === undefined) throw fsError('ENOENT', 'rename', b);
    if (this.files.has(a)) {
      if (this.dirs.has(b)) throw fsError('EISDIR', 'rename', b);
      this.files.set(b, this.files.get(a) as string);
      this.files.delete(a);
      this.dirs.get(src.dir)?.delete(src.name);
      dstChildren.add(dst.name);
      return;
    }
    if (!this.dirs.has(a)) throw fsError('ENOENT', 'rename', a);
    if (this.files.has(b) || ((this.dirs.get(b)?.size ?? 0) > 0)) throw fsError('ENOTEMPTY', 'rename', b);
    const prefix = `${a}/`;
    for (const k of [...this.files.keys()]) {
      if (k.startsWith(prefix)) {
        this.files.set(b + k.slice(a.length), this.files.get(k) as string);
        this.files.delete(k);
      }
    }
    for (const k of [...this.dirs.keys()]) {
      if (k === a || k.startsWith(prefix)) {
        this.dirs.set(b + k.slice(a.length), this.dirs.get(k) as Set<string>);
        this.dirs.delete(k);
      }
    }
    this.dirs.get(src.dir)?.delete(src.name);
    dstChildren.add(dst.name);
  }

  async unlink(path: string): Promise<void> {
    const p = resolve(path);
    if (!this.files.has(p)) throw fsError(this.dirs.has(p) ? 'EISDIR' : 'ENOENT', 'unlink', p);
    this.files.delete(p);
    const { dir, name } = this.parentOf(p);
    this.dirs.get(dir)?.delete(name);
  }

  async readdir(path: string): Promise<string[]> {
    const p = resolve(path);
    const d = this.dirs.get(p);
    if (d === undefined) throw fsError(this.files.has(p) ? 'ENOTDIR' : 'ENOENT', 'scandir', p);
    return [...d];
  }

  async mkdir(path: string): Promise<void> {
    const p = resolve(path);
    if (this.dirs.has(p)) return;
    if (this.files.has(p)) throw fsError('EEXIST', 'mkdir', p);
    const { dir, name } = this.parentOf(p);
    await this.mkdir(dir);
    this.dirs.set(p, new Set());
    (this.dirs.get(dir) as Set<string>).add(name);
  }

  async rm(path: string): Promise<void> {
    const p = resolve(path);
    const { dir, name } = this.parentOf(p);
    if (this.files.delete(p)) {
      this.dirs.get(dir)?.delete(name);
      return;
    }
    if (!this.dirs.has(p)) return;
    const prefix = `${p}/`;
    for (const k of [...this.files.keys()]) if (k.startsWith(prefix)) this.files.delete(k);
    for (const k of [...this.dirs.keys()]) if (k === p || k.startsWith(prefix)) this.dirs.delete(k);
    this.dirs.get(dir)?.delete(name);
  }

  /** sha256 of every file under `prefix` whose path `keep` accepts, by path (for "untouched" checks). */
  hashes(prefix: string, keep: (path: string) => boolean = () => true): Map<string, string> {
    const out = new Map<string, string>();
    const root = resolve(prefix);
    for (const [k, v] of this.files) {
      if ((k === root || k.startsWith(`${root}/`)) && keep(k)) out.set(k, createHash('sha256').update(v).digest('hex'));
    }
    return new Map([...out.entries()].sort(([a], [b]) => (a < b ? -1 : 1)));
  }

  exists(path: string): boolean {
    const p = resolve(path);
    return this.files.has(p) || this.dirs.has(p);
  }

  read(path: string): string | undefined {
    return this.files.get(resolve(path));
  }
}

// ---- the shared disk with counting, latency and kills ---------------------------------------------

export type OpKind = keyof CoordinationFs;
const OP_KINDS: readonly OpKind[] = ['readFile', 'writeFile', 'rename', 'unlink', 'readdir', 'mkdir', 'rm'];

/** Background traffic (a rank writing its beats) vs the protocol's own operations (reading beats included). */
export function opCategory(kind: OpKind, path: string): 'beat' | 'protocol' {
  return kind !== 'readFile' && kind !== 'readdir' && /\/live\/|\/hb\/|job\.beat$/.test(path) ? 'beat' : 'protocol';
}

export interface OpCounts {
  total: number;
  beat: number;
  protocol: number;
  byKind: Record<string, number>;
}

function emptyCounts(): OpCounts {
  return { total: 0, beat: 0, protocol: 0, byKind: {} };
}

export class SimDisk {
  readonly mem = new MemoryFs();
  readonly counts = emptyCounts();
  readonly byTag = new Map<string, OpCounts>();
  private readonly killed = new Set<string>();
  /** Every operation (rank tag, kind, path) while set: for assertions on who read what. */
  log: Array<{ tag: string; kind: OpKind; path: string }> | undefined;

  constructor(
    readonly clock: VirtualClock,
    /** Latency of every operation, ms of virtual time (0: settles at once). */
    readonly latencyMs = 0,
  ) {}

  /** The disk as one rank (`tag`) sees it. */
  view(tag: string): CoordinationFs {
    const out: Partial<Record<OpKind, unknown>> = {};
    for (const kind of OP_KINDS) {
      out[kind] = async (...args: unknown[]): Promise<unknown> => {
        const path = String(args[0]);
        if (this.killed.has(tag)) return new Promise<never>(() => undefined);
        this.count(tag, kind, path);
        this.log?.push({ tag, kind, path });
        if (this.latencyMs > 0) await this.clock.sleep(this.latencyMs);
        const fn = this.mem[kind] as (...a: unknown[]) => Promise<unknown>;
        const r = await fn.apply(this.mem, args);
        if (this.killed.has(tag)) return new Promise<never>(() => undefined);
        return r;
      };
    }
    return out as unknown as CoordinationFs;
  }

  /** From now on every operation of `tag` hangs for ever (a SIGKILLed process does nothing more). */
  kill(tag: string): void {
    this.killed.add(tag);
  }

  private count(tag: string, kind: OpKind, path: string): void {
    let t = this.byTag.get(tag);
    if (t === undefined) this.byTag.set(tag, (t = emptyCounts()));
    const cat = opCategory(kind, path);
    for (const c of [this.counts, t]) {
      c.total += 1;
      c[cat] += 1;
      c.byKind[kind] = (c.byKind[kind] ?? 0) + 1;
    }
  }

  /** A copy of the counters (to subtract later). */
  snapshot(): { all: OpCounts; byTag: Map<string, OpCounts> } {
    const copy = (c: OpCounts): OpCounts => ({ ...c, byKind: { ...c.byKind } });
    return { all: copy(this.counts), byTag: new Map([...this.byTag].map(([k, v]) => [k, copy(v)])) };
  }
}

// ---- simulated processes on simulated machines --------------------------------------------------

export interface SimRank {
  readonly rank: number;
  readonly machine: number;
  readonly tag: string;
  readonly self: ProcessIdentity;
}

/** What a simulated rank passes to Coordinator.open. */
export interface SimOptions {
  readonly fs: CoordinationFs;
  readonly clock: Clock;
  readonly self: ProcessIdentity;
  readonly processState: (who: ProcessIdentity) => ProcessState;
  readonly sharedDisk: true;
}

export class SimCluster {
  readonly clock: VirtualClock;
  readonly disk: SimDisk;
  private readonly dead = new Set<string>();
  private incarnation = 0;

  constructor(opts: { latencyMs?: number } = {}) {
    this.clock = new VirtualClock();
    this.disk = new SimDisk(this.clock, opts.latencyMs ?? 0);
  }

  /** A new process for `rank` on simulated machine `machine` (a new incarnation each call). */
  process(rank: number, machine: number): SimRank {
    this.incarnation += 1;
    const pid = 100_000 + this.incarnation;
    const self: ProcessIdentity = { host: `node${machine}`, machine: `sim-machine-${machine}`, pid, startTime: this.incarnation };
    return { rank, machine, tag: `r${rank}#${this.incarnation}`, self };
  }

  /** What /proc tells a process on `machine` about `who`. */
  processState(machine: number): (who: ProcessIdentity) => ProcessState {
    return (who) => {
      if (who.machine !== `sim-machine-${machine}`) return 'unknown';
      return this.dead.has(`${who.machine}/${who.pid}`) ? 'dead' : 'alive';
    };
  }

  /** The environment part of Coordinator.open's options for `p` (shared disk: polling). */
  options(p: SimRank): SimOptions {
    return { fs: this.disk.view(p.tag), clock: this.clock, self: p.self, processState: this.processState(p.machine), sharedDisk: true };
  }

  /** SIGKILL: the process stops doing anything; its pid is gone for /proc on its machine. */
  kill(p: SimRank): void {
    this.disk.kill(p.tag);
    this.dead.add(`${p.self.machine}/${p.self.pid}`);
  }
}
