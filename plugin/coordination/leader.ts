/**
 * The coordinating rank's side of the protocol (see coordinator.ts): one loop, woken by a timer
 * and file events, that admits tickets, lists arrivals of the waits ranks registered, reads each
 * marker's data once, watches every rank's presence beat and (on this machine) its process,
 * and publishes one small status file that every waiting rank reads.
 *
 * Cost per cycle: a listing of failed/ and want/, one listing per open wait's marker folder, one
 * read per watched converter still awaited (up to 64), and a status write when something changed
 * or a beat interval passed. Every third of a beat interval: one read per rank still taking part.
 * Each ticket and each marker with data is read once.
 */
import { join } from 'node:path';
import { parseRanges } from '../ranges.js';
import { Signal, type Clock } from './clock.js';
import { createOnce, forEachLimit, listDir, parseJson, readJson, readText, writeAtomic, type CoordinationFs } from './fs.js';
import type { ProcessIdentity, ProcessState } from '../processes.js';
import {
  diedText, FAILURES_SHOWN, layout, LEFT_MARKER, machineKeyOf, MISSING_SHOWN, presenceStaleText,
  PROGRESS_SHOWN, rankList, rankOf, READ_CONCURRENCY, secs, sortFailures, taskStaleText,
  type Admission, type CurrentRecord, type FailureRecord, type HeartbeatRecord, type PresenceRecord, type StatusRecord,
  type TaskBeat, type Ticket, type WantRecord, type WantStatus,
} from './protocol.js';
import type { Waker } from './waker.js';

export interface MonitorInit {
  readonly fs: CoordinationFs;
  readonly clock: Clock;
  readonly waker: Waker;
  readonly root: string;
  /** The generation's folder. */
  readonly dir: string;
  readonly generation: string;
  readonly job: string | undefined;
  /** This (coordinating) rank. */
  readonly rank: number;
  readonly group: readonly number[];
  readonly self: ProcessIdentity;
  readonly processState: (who: ProcessIdentity) => ProcessState;
  readonly heartbeatTimeoutMs: number;
  readonly heartbeatIntervalMs: number;
  /** Cycle period when nothing wakes the loop. */
  readonly tickMs: number;
  readonly joinTimeoutMs: number;
  /** When this rank started to open the generation. */
  readonly started: number;
  /** current.json as first written (rewritten with the join count). */
  readonly current: CurrentRecord;
}

export interface WantState {
  readonly key: string;
  readonly name: string;
  readonly ranks: readonly number[];
  readonly heartbeats: ReadonlySet<number>;
  readonly what: string;
  /** When the coordinating rank learnt of it (its clock). */
  readonly since: number;
  arrived: number;
  complete: boolean;
}

interface BeatState {
  raw: string;
  changedAt: number;
  rec?: PresenceRecord;
  taskSeq: number;
  taskChangedAt: number;
}

export class LeaderMonitor {
  /** Fired after every cycle. */
  readonly changed: Signal;
  /** What this rank is doing (carried by the status). */
  stage = 'join';
  /** This rank's task heartbeat, when it runs one. */
  task: TaskBeat | undefined;
  readonly members = new Map<number, ProcessIdentity>();
  joining = true;
  joinFailure: { message: string; missing: number[] } | undefined;
  readonly failures: FailureRecord[] = [];
  readonly wants = new Map<string, WantState>();
  readonly left = new Set<number>();
  /** The last error of a cycle (a disk hiccup), retried at the next one. */
  lastError: unknown;
  private readonly init: MonitorInit;
  private readonly failedRanks = new Set<number>();
  private readonly seenFailureFiles = new Set<string>();
  private readonly seenWantFiles = new Set<string>();
  private readonly markers = new Map<string, Map<number, unknown>>();
  private readonly beats = new Map<number, BeatState>();
  private readonly admittedAt = new Map<number, number>();
  private readonly groupSet: ReadonlySet<number>;
  private nextSweep: number;
  /** Every rank's beat is read this often: a third of the beat interval (beats are written every interval). */
  private readonly sweepMs: number;
  private seq = 0;
  private currentSeq = 0;
  private lastWrite = -Infinity;
  private dirty = true;
  private closing = false;
  private closedMark = false;
  private stopped = false;
  private flushWaiters: Array<() => void> = [];
  private loop: Promise<void> | undefined;

  constructor(init: MonitorInit) {
    this.init = init;
    this.changed = new Signal(init.clock);
    this.groupSet = new Set(init.group);
    this.members.set(init.rank, init.self);
    this.admittedAt.set(init.rank, init.started);
    this.sweepMs = Math.max(20, Math.floor(init.heartbeatIntervalMs / 3));
    this.nextSweep = init.clock.now() + this.sweepMs;
  }

  start(): void {
    this.loop = this.run();
  }

  /** Wake the loop now. */
  kick(): void {
    this.init.waker.notify();
  }

  /** Resolves once a status written after this call is on disk (at once when stopped). */
  flush(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.dirty = true;
    const p = new Promise<void>((res) => this.flushWaiters.push(res));
    this.kick();
    return p;
  }

  private async run(): Promise<void> {
    const { waker, tickMs } = this.init;
    while (!this.stopped) {
      waker.arm();
      try {
        await this.cycle();
        this.lastError = undefined;
      } catch (err) {
        this.lastError = err;
      }
      this.changed.fire();
      if (this.stopped) break;
      await waker.sleep(tickMs, false); // the ranks' waits hold the process, not this loop
    }
    for (const w of this.flushWaiters.splice(0)) w();
    this.changed.fire();
  }

  private async cycle(): Promise<void> {
    const { clock, heartbeatIntervalMs } = this.init;
    const now = clock.now();
    if (this.joining) await this.joinStep(now);
    await this.readFailures();
    await this.readWants();
    if (this.closing) await this.readLeft();
    await this.readMarkers();
    await this.checkProcesses();
    if (now >= this.nextSweep) {
      this.nextSweep = now + this.sweepMs;
      await this.sweep([...this.members.keys()]);
    } else {
      // the few ranks whose task heartbeat is watched right now: at every cycle
      const watched = this.watchedMissing();
      if (watched.length > 0 && watched.length <= PROGRESS_SHOWN) await this.sweep(watched);
    }
    await this.completeWants();
    if (this.dirty || clock.now() - this.lastWrite >= heartbeatIntervalMs) await this.writeStatus();
  }

  // ---- join ------------------------------------------------------------------------------------

  private async joinStep(now: number): Promise<void> {
    const { fs, root, dir, group, job, clock } = this.init;
    const todo: number[] = [];
    for (const f of await listDir(fs, layout.tickets(root))) {
      const r = rankOf(f);
      if (r !== undefined && f.endsWith('.json') && this.groupSet.has(r) && !this.members.has(r)) todo.push(r);
    }
    let admitted = 0;
    await forEachLimit(todo, READ_CONCURRENCY, async (r) => {
      const t = await readJson<Ticket>(fs, layout.ticket(root, r));
      if (t === undefined || t.rank !== r || typeof t.nonce !== 'string') return; // half-written: next cycle
      if (job !== undefined && t.job !== job) return; // another job's rank: it refuses itself
      const adm: Admission = {
        rank: r, nonce: t.nonce, host: t.host, machine: t.machine, pid: t.pid, startTime: t.startTime, machineKey: machineKeyOf(t.machine ?? ''),
      };
      await fs.writeFile(layout.admitted(dir, r), JSON.stringify(adm));
      this.members.set(r, { host: t.host, machine: t.machine, pid: t.pid, startTime: t.startTime });
      this.admittedAt.set(r, clock.now());
      admitted++;
    });
    if (this.members.size === group.length) {
      await this.writeRosters();
      this.joining = false;
      this.dirty = true;
    } else if (this.joinFailure === undefined && now - this.init.started > this.init.joinTimeoutMs) {
      const missing = group.filter((r) => !this.members.has(r));
      this.joinFailure = {
        missing: missing.slice(0, MISSING_SHOWN),
        message:
          `ranks ${rankList(missing.slice(0, MISSING_SHOWN), missing.length)} did not join within the join timeout of ${secs(this.init.joinTimeoutMs)} ` +
          `(${this.members.size} of ${group.length} joined): not started, or died before joining`,
      };
      this.dirty = true;
    }
    if (admitted > 0 || !this.joining) await this.writeCurrent();
  }

  private async writeCurrent(): Promise<void> {
    this.currentSeq += 1;
    const rec: CurrentRecord = { ...this.init.current, joined: this.members.size, seq: this.currentSeq };
    await writeAtomic(this.init.fs, layout.current(this.init.root), JSON.stringify(rec));
  }

  /** Per machine, the ranks on it: a rank reads its machine's list once to check its peers' pids. */
  private async writeRosters(): Promise<void> {
    const byKey = new Map<string, Array<ProcessIdentity & { rank: number }>>();
    for (const [rank, who] of this.members) {
      const key = machineKeyOf(who.machine ?? '');
      if (key === '') continue;
      let list = byKey.get(key);
      if (list === undefined) byKey.set(key, (list = []));
      list.push({ rank, host: who.host, machine: who.machine, pid: who.pid, startTime: who.startTime });
    }
    const keys = [...byKey.keys()].filter((k) => (byKey.get(k) as unknown[]).length > 1);
    await forEachLimit(keys, READ_CONCURRENCY, async (k) => {
      await createOnce(this.init.fs, layout.machine(this.init.dir, k), JSON.stringify(byKey.get(k)));
    });
  }

  // ---- what the ranks wrote ----------------------------------------------------------------------

  private async readFailures(): Promise<void> {
    const { fs, dir } = this.init;
    const fresh = (await listDir(fs, join(dir, 'failed'))).filter((f) => rankOf(f) !== undefined && f.endsWith('.json') && !this.seenFailureFiles.has(f));
    await forEachLimit(fresh, READ_CONCURRENCY, async (f) => {
      const rec = await readJson<FailureRecord>(fs, join(dir, 'failed', f));
      if (rec === undefined || typeof rec.rank !== 'number' || typeof rec.message !== 'string') return;
      this.seenFailureFiles.add(f);
      this.addFailure(rec);
    });
  }

  /** Record a failure (the first per rank counts); true when it is new. */
  addFailure(rec: FailureRecord): boolean {
    if (this.failedRanks.has(rec.rank)) return false;
    this.failedRanks.add(rec.rank);
    this.failures.push(rec);
    sortFailures(this.failures);
    this.dirty = true;
    return true;
  }

  private async readWants(): Promise<void> {
    const { fs, dir } = this.init;
    const fresh = (await listDir(fs, join(dir, 'want'))).filter((f) => f.endsWith('.json') && !this.seenWantFiles.has(f));
    await forEachLimit(fresh, READ_CONCURRENCY, async (f) => {
      const rec = await readJson<WantRecord>(fs, join(dir, 'want', f));
      if (rec === undefined || typeof rec.name !== 'string') return;
      const ranks = parseRanges(rec.ranks ?? '');
      const hb = parseRanges(rec.heartbeats ?? '');
      this.seenWantFiles.add(f);
      if (ranks === undefined || hb === undefined) return;
      this.registerWant(f.slice(0, -'.json'.length), rec.name, ranks.filter((r) => this.groupSet.has(r)), hb, rec.what ?? `'${rec.name}'`);
    });
  }

  registerWant(key: string, name: string, ranks: readonly number[], heartbeats: readonly number[], what: string): WantState {
    const known = this.wants.get(key);
    if (known !== undefined) return known;
    const w: WantState = { key, name, ranks, heartbeats: new Set(heartbeats), what, since: this.init.clock.now(), arrived: 0, complete: false };
    this.wants.set(key, w);
    this.dirty = true;
    return w;
  }

  markerMap(name: string): Map<number, unknown> {
    let m = this.markers.get(name);
    if (m === undefined) this.markers.set(name, (m = new Map()));
    return m;
  }

  /** This rank's own marker (no need to read it back). */
  publishLocal(name: string, data: unknown): void {
    this.markerMap(name).set(this.init.rank, data);
    this.dirty = true;
    this.kick();
  }

  private allArrived(w: WantState): boolean {
    const have = this.markerMap(w.name);
    return w.ranks.every((r) => have.has(r));
  }

  private async readMarkers(): Promise<void> {
    const { fs, dir } = this.init;
    const names = new Set<string>();
    for (const w of this.wants.values()) if (!w.complete && !this.allArrived(w)) names.add(w.name);
    for (const name of names) {
      const have = this.markerMap(name);
      const toRead: number[] = [];
      for (const f of await listDir(fs, layout.markers(dir, name))) {
        const r = rankOf(f);
        if (r === undefined || have.has(r)) continue;
        if (f.endsWith('.json')) toRead.push(r);
        else have.set(r, null);
      }
      await forEachLimit(toRead, READ_CONCURRENCY, async (r) => {
        const rec = await readJson<{ rank: number; data: unknown }>(fs, layout.marker(dir, name, r, true));
        if (rec !== undefined && rec.rank === r) have.set(r, rec.data ?? null);
      });
    }
  }

  private async readLeft(): Promise<void> {
    for (const f of await listDir(this.init.fs, layout.markers(this.init.dir, LEFT_MARKER))) {
      const r = rankOf(f);
      if (r !== undefined) this.left.add(r);
    }
  }

  private async completeWants(): Promise<void> {
    const { fs, dir } = this.init;
    for (const w of this.wants.values()) {
      if (w.complete) continue;
      const have = this.markerMap(w.name);
      let arrived = 0;
      for (const r of w.ranks) if (have.has(r)) arrived++;
      if (arrived !== w.arrived) {
        w.arrived = arrived;
        this.dirty = true;
      }
      if (arrived < w.ranks.length) continue;
      const data: Record<string, unknown> = {};
      for (const r of w.ranks) {
        const v = have.get(r);
        if (v !== null && v !== undefined) data[String(r)] = v;
      }
      await createOnce(fs, layout.done(dir, w.key), JSON.stringify({ key: w.key, data }));
      w.complete = true;
      this.dirty = true;
    }
  }

  // ---- liveness --------------------------------------------------------------------------------

  /** What `rank` was awaited for, for messages. */
  private awaitedText(rank: number): string {
    for (const w of this.wants.values()) {
      if (!w.complete && w.ranks.includes(rank) && !this.markerMap(w.name).has(rank)) return w.what;
    }
    return 'nothing pending';
  }

  private stillWatched(r: number): boolean {
    return r !== this.init.rank && !this.left.has(r) && !this.failedRanks.has(r);
  }

  /** Ranks on this machine: their processes, through /proc, every cycle. */
  private async checkProcesses(): Promise<void> {
    const { fs, dir, processState } = this.init;
    for (const [r, who] of this.members) {
      if (!this.stillWatched(r) || processState(who) !== 'dead') continue;
      // it may have left coordination before ending (its last beat says so)
      const rec = parseJson<PresenceRecord>(await readText(fs, layout.live(dir, r)).catch(() => undefined));
      if (rec?.left === true) {
        this.left.add(r);
        continue;
      }
      await this.report(r, rec?.stage ?? 'join', diedText(who));
    }
  }

  /** Ranks awaited with their task heartbeat watched that have not arrived. */
  private watchedMissing(): number[] {
    const out = new Set<number>();
    for (const w of this.wants.values()) {
      if (w.complete) continue;
      const have = this.markerMap(w.name);
      for (const r of w.heartbeats) if (!have.has(r) && this.stillWatched(r)) out.add(r);
    }
    return [...out];
  }

  /** Presence beats of `ranks` (and, for watched ranks, their task heartbeat): one read each. */
  private async sweep(ranks: readonly number[]): Promise<void> {
    const { fs, dir, clock, heartbeatTimeoutMs: limit } = this.init;
    const list = ranks.filter((r) => this.stillWatched(r));
    await forEachLimit(list, READ_CONCURRENCY, async (r) => {
      let raw: string;
      try {
        raw = (await readText(fs, layout.live(dir, r))) ?? '';
      } catch {
        return; // unreadable this time: judged at the next sweep
      }
      const t = clock.now();
      let b = this.beats.get(r);
      if (b === undefined) {
        const at = this.admittedAt.get(r) ?? t;
        this.beats.set(r, (b = { raw: '', changedAt: at, taskSeq: -1, taskChangedAt: at }));
      }
      if (raw === b.raw) return;
      b.raw = raw;
      b.changedAt = t;
      const rec = parseJson<PresenceRecord>(raw);
      if (rec === undefined) return; // being rewritten: still a sign of life
      b.rec = rec;
      if (rec.task !== undefined && rec.task.seq !== b.taskSeq) {
        b.taskSeq = rec.task.seq;
        b.taskChangedAt = t;
      }
      if (rec.left === true) this.left.add(r);
    });
    const now = clock.now();
    for (const r of list) {
      const b = this.beats.get(r);
      if (b === undefined || !this.stillWatched(r)) continue;
      // an awaited converter is named by its task heartbeat, with its last progress
      let found = false;
      for (const w of this.wants.values()) {
        if (w.complete || !w.heartbeats.has(r) || this.markerMap(w.name).has(r)) continue;
        const since = Math.max(b.taskChangedAt, w.since);
        if (now - since > limit) {
          await this.report(r, b.rec?.task?.stage ?? b.rec?.stage ?? w.name, taskStaleText(now - since, limit, b.rec?.task));
          found = true;
          break;
        }
      }
      const silent = now - b.changedAt;
      if (!found && silent > limit) await this.report(r, b.rec?.stage ?? 'join', presenceStaleText(silent, limit, b.rec !== undefined, this.awaitedText(r)));
    }
  }

  /** Publish a finding about `rank` (its own report wins when it wrote one first). */
  private async report(rank: number, stage: string, message: string): Promise<void> {
    const { fs, dir, clock } = this.init;
    const who = this.members.get(rank);
    const rec: FailureRecord = {
      rank, stage, message, host: who?.host ?? '?', pid: who?.pid ?? -1, time: clock.now(), reportedBy: this.init.rank,
    };
    const file = `rank_${rank}.json`;
    let created = true;
    try {
      created = await createOnce(fs, layout.failed(dir, rank), JSON.stringify(rec));
    } catch {
      created = true; // could not write it: ours stands in memory and in the status
    }
    if (!created) {
      const own = await readJson<FailureRecord>(fs, layout.failed(dir, rank));
      if (own !== undefined && typeof own.message === 'string') {
        this.seenFailureFiles.add(file);
        this.addFailure(own);
        return;
      }
    }
    this.seenFailureFiles.add(file);
    this.addFailure(rec);
  }

  /** Task heartbeats of a wait's watched ranks. */
  progressOf(w: WantState): Map<number, HeartbeatRecord> {
    const out = new Map<number, HeartbeatRecord>();
    for (const r of w.heartbeats) {
      if (r === this.init.rank) {
        if (this.task !== undefined) out.set(r, { ...this.task, rank: r, time: this.init.clock.now() });
        continue;
      }
      const rec = this.beats.get(r)?.rec;
      if (rec?.task !== undefined) out.set(r, { ...rec.task, rank: r, time: rec.time });
    }
    return out;
  }

  // ---- the status --------------------------------------------------------------------------------

  private async writeStatus(): Promise<void> {
    const { fs, dir, clock, generation, rank, group } = this.init;
    this.seq += 1;
    const wants: Record<string, WantStatus> = {};
    for (const w of this.wants.values()) {
      if (w.complete) {
        wants[w.key] = { of: w.ranks.length, arrived: w.ranks.length, complete: true };
        continue;
      }
      const have = this.markerMap(w.name);
      const missing: number[] = [];
      for (const r of w.ranks) {
        if (have.has(r)) continue;
        missing.push(r);
        if (missing.length >= MISSING_SHOWN) break;
      }
      let progress: Record<string, HeartbeatRecord> | undefined;
      if (w.heartbeats.size > 0 && w.heartbeats.size <= PROGRESS_SHOWN) {
        progress = {};
        for (const [r, h] of this.progressOf(w)) progress[String(r)] = h;
      }
      wants[w.key] = { of: w.ranks.length, arrived: w.arrived, missing, ...(progress !== undefined ? { progress } : {}) };
    }
    const rec: StatusRecord = {
      generation,
      seq: this.seq,
      leader: rank,
      stage: this.stage,
      ...(this.task !== undefined ? { task: this.task } : {}),
      joined: this.members.size,
      size: group.length,
      ...(this.closedMark ? { closed: true } : {}),
      ...(this.joinFailure !== undefined ? { joinFailure: this.joinFailure } : {}),
      failures: this.failures.slice(0, FAILURES_SHOWN),
      failureCount: this.failures.length,
      wants,
    };
    await writeAtomic(fs, layout.status(dir), JSON.stringify(rec));
    this.lastWrite = clock.now();
    this.dirty = false;
    for (const w of this.flushWaiters.splice(0)) w();
  }

  // ---- the end -----------------------------------------------------------------------------------

  /** Resolves once every rank has joined; throws the join failure. */
  async awaitJoined(): Promise<void> {
    while (this.joining) {
      if (this.joinFailure !== undefined) return;
      if (this.stopped) return;
      await this.changed.wait(this.init.tickMs);
    }
  }

  /**
   * Stay until every other rank has left (close()) or a failure ends the run (at most
   * `limitMs`), write the final status, stop.
   */
  async close(limitMs: number): Promise<void> {
    if (this.stopped) return;
    this.closing = true;
    this.kick();
    const { clock, group } = this.init;
    const started = clock.now();
    while (!this.stopped) {
      if (this.failures.length > 0 || this.joinFailure !== undefined || this.joining) break;
      if (group.every((r) => r === this.init.rank || this.left.has(r))) break;
      if (clock.now() - started > limitMs) break;
      await this.changed.wait(this.init.tickMs);
    }
    this.closedMark = true;
    await this.flush();
    await this.stop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.kick();
    await this.loop;
  }
}
