/**
 * The coordination protocol as it was before the leader-aggregated status (msckpt 0.1.0), kept
 * for `bench/coordination.ts` only, to measure old and new in the same run. Every waiting rank
 * lists the markers and the failures at every poll, reads each marker once and reads the
 * presence beat of every missing rank: O(N^2) operations per barrier across the group. Its disk
 * access goes through the same CoordinationFs interface (one operation per call, as counted
 * there), its time through a Clock. Not used by msckpt itself.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { every, type Clock } from '../plugin/coordination/clock.js';
import type { CoordinationFs } from '../plugin/coordination/fs.js';
import type { ProcessIdentity, ProcessState } from '../plugin/processes.js';
import { Waker } from '../plugin/coordination/waker.js';
import { describeError, FailureError, InputError } from '../plugin/errors.js';
import { tempNameFor } from '../plugin/formats/atomic.js';

export const DEFAULT_BARRIER_TIMEOUT_MS = 2 * 60 * 60 * 1000;
export const DEFAULT_HEARTBEAT_TIMEOUT_MS = 60 * 1000;
/** Timer poll on network disks, when no interval is given. */
export const DEFAULT_POLL_INTERVAL_MS = 1000;
/** Safety poll next to file events on local disks (events may be missed). */
export const LOCAL_SAFETY_POLL_MS = 1000;

export interface CoordinatorOptions {
  /** Folder for the coordination files (created; emptied by the leader at open). */
  readonly root: string;
  /** This participant. */
  readonly rank: number;
  /** Every participant of the group (global rank numbers). */
  readonly ranks: readonly number[];
  /** The rank that cleans and opens generations; default the smallest of `ranks`. */
  readonly leader?: number;
  /** Timer poll in ms (network disks: the only wake-up source). */
  readonly pollInterval?: number;
  /**
   * Treat the disk as shared between machines (poll, no file events). Default: detected from the
   * file-system type of `root` (nfs, lustre, ...) or SHARED_PATHS.
   */
  readonly sharedDisk?: boolean;
  /** Deadline of every wait, ms (default 2 h). */
  readonly barrierTimeoutMs?: number;
  /** A heartbeat older than this (ms) means the rank is dead (default 60 s). */
  readonly heartbeatTimeoutMs?: number;
  /**
   * How often a running task writes its heartbeat, and every rank its presence beat, ms
   * (default min(5 s, timeout / 4)).
   */
  readonly heartbeatIntervalMs?: number;
  readonly fs: CoordinationFs;
  readonly clock: Clock;
  readonly self: ProcessIdentity;
  readonly processState: (who: ProcessIdentity) => ProcessState;
}

/** Progress a rank publishes with its heartbeat. */
export interface TaskProgress {
  readonly done?: number;
  readonly total?: number;
  readonly label?: string;
}

export interface HeartbeatRecord extends TaskProgress {
  readonly rank: number;
  readonly seq: number;
  readonly stage: string;
  readonly time: number;
}

/** The presence beat every rank writes while it takes part in coordination. */
export interface PresenceRecord {
  readonly rank: number;
  readonly seq: number;
  /** What the rank says it is doing (see Coordinator.setStage). */
  readonly stage: string;
  readonly time: number;
}

/** Start of the message of a rank found dead by its missing presence beats. */
export const PRESENCE_STALE_TEXT = 'stopped sending heartbeats';

export interface FailureRecord {
  readonly rank: number;
  readonly stage: string;
  readonly message: string;
  readonly host: string;
  readonly pid: number;
  readonly time: number;
  /** Set when a peer reported it (the rank died or went silent). */
  readonly reportedBy?: number;
}

export interface WaitOptions {
  /** Ranks whose marker is awaited (default: all). */
  readonly ranks?: readonly number[];
  /** Deadline in ms (default: the barrier timeout). */
  readonly timeoutMs?: number;
  /**
   * Ranks whose task heartbeat must stay fresh while they are awaited (converters). Every other
   * awaited rank is judged by its presence beat (same timeout).
   */
  readonly heartbeats?: readonly number[];
  /** Called when a watched rank's heartbeat brings new progress. */
  readonly onProgress?: (beats: ReadonlyMap<number, HeartbeatRecord>) => void;
  /** What is being waited for, for messages (default: the marker name). */
  readonly what?: string;
}

export type CoordinationFailureKind = 'failed' | 'died' | 'stale' | 'timeout';

/** A wait ended because another rank failed, died, went silent, or time ran out (exit 1). */
export class LegacyCoordinationError extends FailureError {
  readonly kind: CoordinationFailureKind;
  /** The rank that failed (not set for timeouts). */
  readonly failedRank: number | undefined;
  /** That rank's own error text, when it reported one. */
  readonly reason: string;
  constructor(kind: CoordinationFailureKind, message: string, failedRank?: number, reason = message) {
    super(message);
    this.kind = kind;
    this.failedRank = failedRank;
    this.reason = reason;
  }
}

interface Ticket extends ProcessIdentity {
  readonly rank: number;
  readonly nonce: string;
}

export interface HeartbeatHandle {
  /** Progress to carry in the next beats. */
  update(progress: TaskProgress): void;
  /** Stop beating (the file stays; waiters stop checking once the rank's marker is there). */
  stop(): Promise<void>;
}

const NAME_RE = /^[A-Za-z0-9_.-]+$/;

function rankOf(file: string): number | undefined {
  const m = /^rank_(\d+)\.json$/.exec(file);
  return m === null ? undefined : Number(m[1]);
}

async function readJson<T>(fs: CoordinationFs, path: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fs.readFile(path)) as T;
  } catch {
    return undefined; // absent, or being replaced on a disk without atomic rename semantics
  }
}

async function listDir(fs: CoordinationFs, path: string): Promise<string[]> {
  try {
    return await fs.readdir(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/**
 * Publish `text` at `path` once: written (fsync) under a temporary name, then hard-linked to the
 * final name (counted here as an exclusive create: one operation, as the link was), the
 * temporary name removed: 3 operations.
 */
async function publishOnce(fs: CoordinationFs, path: string, text: string): Promise<boolean> {
  const tmp = tempNameFor(path);
  await fs.writeFile(tmp, text, { exclusive: true, sync: true });
  try {
    await fs.writeFile(path, text, { exclusive: true });
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    await fs.unlink(tmp).catch(() => undefined);
  }
}

/** Temporary name + fsync + rename (2 operations). */
async function writeFileAtomic(fs: CoordinationFs, path: string, text: string): Promise<void> {
  const tmp = tempNameFor(path);
  try {
    await fs.writeFile(tmp, text, { sync: true });
    await fs.rename(tmp, path);
  } catch (err) {
    await fs.unlink(tmp).catch(() => undefined);
    throw err;
  }
}

function newGenerationId(now: number, pid: number): string {
  return `${now.toString(36)}-${pid}-${randomBytes(6).toString('hex')}`;
}

function secs(ms: number): string {
  return ms >= 10_000 ? `${Math.round(ms / 1000)} s` : `${(ms / 1000).toFixed(1)} s`;
}

function rankList(ranks: readonly number[]): string {
  if (ranks.length <= 12) return ranks.join(', ');
  return `${ranks.slice(0, 12).join(', ')}, ... (${ranks.length} ranks)`;
}

export class LegacyCoordinator {
  readonly root: string;
  readonly rank: number;
  readonly ranks: readonly number[];
  readonly leader: number;
  /** True when waits poll only (network disk). */
  readonly polling: boolean;
  readonly generation: string;
  /** The generation's folder. */
  readonly dir: string;
  readonly barrierTimeoutMs: number;
  readonly heartbeatTimeoutMs: number;
  readonly heartbeatIntervalMs: number;
  private readonly tickMs: number;
  private readonly waker: Waker;
  private readonly members = new Map<number, ProcessIdentity>();
  private readonly beats = new Set<HeartbeatHandle>();
  private readonly markerCache = new Map<string, Map<number, unknown>>();
  private closed = false;
  private presenceSeq = 0;
  private presenceStage = 'join';
  private presenceTimer: (() => void) | undefined;
  private readonly fs: CoordinationFs;
  private readonly clock: Clock;
  private readonly self: ProcessIdentity;
  private readonly processState: (who: ProcessIdentity) => ProcessState;
  private presenceWriting: Promise<void> = Promise.resolve();
  private presenceBusy = 0;

  private constructor(init: {
    opts: CoordinatorOptions;
    leader: number;
    polling: boolean;
    generation: string;
    waker: Waker;
  }) {
    const o = init.opts;
    this.root = o.root;
    this.rank = o.rank;
    this.ranks = [...o.ranks];
    this.leader = init.leader;
    this.polling = init.polling;
    this.generation = init.generation;
    this.dir = join(o.root, 'gen', init.generation);
    this.barrierTimeoutMs = o.barrierTimeoutMs ?? DEFAULT_BARRIER_TIMEOUT_MS;
    this.heartbeatTimeoutMs = o.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS;
    this.heartbeatIntervalMs = o.heartbeatIntervalMs ?? Math.max(50, Math.min(5000, Math.floor(this.heartbeatTimeoutMs / 4)));
    this.tickMs = init.polling ? (o.pollInterval ?? DEFAULT_POLL_INTERVAL_MS) : (o.pollInterval ?? LOCAL_SAFETY_POLL_MS);
    this.waker = init.waker;
    this.fs = o.fs;
    this.clock = o.clock;
    this.self = o.self;
    this.processState = o.processState;
    this.startPresence();
  }

  private presencePath(rank: number): string {
    return join(this.dir, 'live', `rank_${rank}.json`);
  }

  /**
   * The light presence beat: a timer rewrites a small file (temporary name + rename, no fsync:
   * only its changing is looked at). Runs from joining the generation until close().
   */
  private startPresence(): void {
    this.presenceTimer = every(this.clock, this.heartbeatIntervalMs, () => {
      // a beat still being written (slow disk): skip this one rather than queue without bound
      if (this.presenceBusy === 0) void this.presenceBeat();
    });
    void this.presenceBeat();
  }

  /** Write one presence beat (after the ones under way); never rejects. */
  private presenceBeat(): Promise<void> {
    if (this.closed) return this.presenceWriting;
    const path = this.presencePath(this.rank);
    this.presenceSeq += 1;
    const rec: PresenceRecord = { rank: this.rank, seq: this.presenceSeq, stage: this.presenceStage, time: this.clock.now() };
    this.presenceBusy += 1;
    this.presenceWriting = this.presenceWriting.then(async () => {
      const tmp = tempNameFor(path);
      try {
        await this.fs.writeFile(tmp, JSON.stringify(rec));
        await this.fs.rename(tmp, path);
      } catch {
        // the folder is gone (a new run cleaned it) or the disk hiccuped: the next beat retries
        await this.fs.unlink(tmp).catch(() => undefined);
      } finally {
        this.presenceBusy -= 1;
      }
    });
    return this.presenceWriting;
  }

  /**
   * What this rank is doing, carried by its presence beats (named if it is found dead). Writes a
   * beat at once; resolves when it is written (never rejects).
   */
  setStage(stage: string): Promise<void> {
    if (stage === this.presenceStage) return this.presenceWriting;
    this.presenceStage = stage;
    return this.presenceBeat();
  }

  /**
   * Join the group's current run. The leader removes what earlier runs left under `root`, opens a
   * new generation and waits until every rank has joined; the others write a ticket and wait
   * until the leader admits it. Resolves once this rank is part of the generation (the leader:
   * once all are).
   */
  static async open(opts: CoordinatorOptions): Promise<LegacyCoordinator> {
    if (!opts.ranks.includes(opts.rank)) {
      throw new InputError(`rank ${opts.rank} is not one of the group's ranks [${rankList(opts.ranks)}]`);
    }
    if (new Set(opts.ranks).size !== opts.ranks.length) throw new InputError('coordination group lists a rank twice');
    const leader = opts.leader ?? Math.min(...opts.ranks);
    if (!opts.ranks.includes(leader)) throw new InputError(`leader ${leader} is not one of the group's ranks`);
    const polling = opts.sharedDisk ?? true;
    const { fs, clock } = opts;
    const timeout = opts.barrierTimeoutMs ?? DEFAULT_BARRIER_TIMEOUT_MS;
    const tick = polling ? (opts.pollInterval ?? DEFAULT_POLL_INTERVAL_MS) : (opts.pollInterval ?? LOCAL_SAFETY_POLL_MS);
    const root = opts.root;
    await fs.mkdir(join(root, 'tickets'));
    await fs.mkdir(join(root, 'gen'));
    const waker = await Waker.create(root, false, clock);
    const me = opts.self;
    const nonce = randomBytes(12).toString('hex');
    const ticket: Ticket = { ...me, rank: opts.rank, nonce };
    const ticketPath = join(root, 'tickets', `rank_${opts.rank}.json`);
    const started = clock.now();
    try {
      if (opts.rank === leader) {
        // Clean what earlier runs left: the pointer first (so nobody trusts it), then tickets
        // and old generations. Only files the coordinator itself writes live here.
        await fs.rm(join(root, 'current.json'));
        // (only finished tickets: a follower may be writing its temporary file right now)
        for (const f of await listDir(fs, join(root, 'tickets'))) {
          if (rankOf(f) !== undefined) await fs.rm(join(root, 'tickets', f));
        }
        for (const g of await listDir(fs, join(root, 'gen'))) await fs.rm(join(root, 'gen', g));
        const generation = newGenerationId(clock.now(), me.pid);
        const dir = join(root, 'gen', generation);
        for (const sub of ['admitted', 'failed', 'hb', 'live', 'm']) await fs.mkdir(join(dir, sub));
        await writeFileAtomic(fs, join(dir, 'open.json'), JSON.stringify({ generation, leader, ranks: opts.ranks, opened: clock.now(), by: me }));
        await writeFileAtomic(fs, join(dir, 'admitted', `rank_${leader}.json`), JSON.stringify(ticket));
        await writeFileAtomic(fs, join(root, 'current.json'), JSON.stringify({ generation }));
        const c = new LegacyCoordinator({ opts, leader, polling, generation, waker });
        c.members.set(leader, me);
        const admitted = new Map<number, string>([[leader, nonce]]);
        for (;;) {
          waker.arm();
          for (const f of await listDir(fs, join(root, 'tickets'))) {
            const r = rankOf(f);
            if (r === undefined || !opts.ranks.includes(r)) continue;
            const t = await readJson<Ticket>(fs, join(root, 'tickets', f));
            if (t === undefined || t.rank !== r || typeof t.nonce !== 'string') continue;
            if (admitted.get(r) === t.nonce) continue;
            await writeFileAtomic(fs, join(dir, 'admitted', `rank_${r}.json`), JSON.stringify(t));
            admitted.set(r, t.nonce);
            c.members.set(r, t);
          }
          if (admitted.size === opts.ranks.length) return c;
          const waited = clock.now() - started;
          if (waited > timeout) {
            const missing = opts.ranks.filter((r) => !admitted.has(r));
            const err = new LegacyCoordinationError('timeout', `timed out after ${secs(waited)} waiting for ranks ${rankList(missing)} to start (${admitted.size} of ${opts.ranks.length} joined)`);
            await c.fail('join', err);
            await c.close();
            throw err;
          }
          await waker.sleep(Math.min(tick, timeout - waited + 1));
        }
      }
      // A follower: ticket, then wait for our nonce to be admitted in the current generation.
      const writeTicket = async (): Promise<void> => {
        await writeFileAtomic(fs, ticketPath, JSON.stringify(ticket)).catch(async (err: unknown) => {
          // the leader's clean may remove the folder or our temporary file: write again next round
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
          await fs.mkdir(join(root, 'tickets'));
        });
      };
      await writeTicket();
      for (;;) {
        waker.arm();
        const mine = await readJson<Ticket>(fs, ticketPath);
        if (mine === undefined || mine.nonce !== nonce) await writeTicket();
        const cur = await readJson<{ generation: string }>(fs, join(root, 'current.json'));
        if (cur !== undefined && typeof cur.generation === 'string' && NAME_RE.test(cur.generation)) {
          const adm = await readJson<Ticket>(fs, join(root, 'gen', cur.generation, 'admitted', `rank_${opts.rank}.json`));
          if (adm !== undefined && adm.nonce === nonce) {
            return new LegacyCoordinator({ opts, leader, polling, generation: cur.generation, waker });
          }
        }
        const waited = clock.now() - started;
        if (waited > timeout) {
          throw new LegacyCoordinationError('timeout', `timed out after ${secs(waited)} waiting for rank ${leader} to open the run's coordination (in ${root})`);
        }
        await waker.sleep(Math.min(tick, timeout - waited + 1));
      }
    } catch (err) {
      await waker.close();
      throw err;
    }
  }

  private markerDir(name: string): string {
    if (!NAME_RE.test(name)) throw new InputError(`marker name '${name}' may hold only letters, digits, '_', '.', '-'`);
    return join(this.dir, 'm', name);
  }

  /** Publish this rank's marker `name` with optional JSON data (once; a second call is ignored). */
  async publish(name: string, data: unknown = null): Promise<void> {
    const dir = this.markerDir(name);
    await this.fs.mkdir(dir);
    await publishOnce(this.fs, join(dir, `rank_${this.rank}.json`), JSON.stringify({ rank: this.rank, data }));
  }

  /**
   * Markers `name` published so far: rank -> data. Markers never change once published, so
   * each is read once (a wait costs one directory listing per wake-up, not one read per rank).
   */
  async published<T = unknown>(name: string): Promise<Map<number, T>> {
    const dir = this.markerDir(name);
    let cache = this.markerCache.get(name);
    if (cache === undefined) {
      cache = new Map<number, unknown>();
      this.markerCache.set(name, cache);
    }
    for (const f of await listDir(this.fs, dir)) {
      const r = rankOf(f);
      if (r === undefined || cache.has(r)) continue;
      const rec = await readJson<{ rank: number; data: T }>(this.fs, join(dir, f));
      if (rec !== undefined) cache.set(r, rec.data);
    }
    return new Map(cache as Map<number, T>);
  }

  /** Failure reports of this generation, the ranks' own reports first, then by time. */
  async failures(): Promise<FailureRecord[]> {
    const dir = join(this.dir, 'failed');
    const out: FailureRecord[] = [];
    for (const f of await listDir(this.fs, dir)) {
      if (rankOf(f) === undefined) continue;
      const rec = await readJson<FailureRecord>(this.fs, join(dir, f));
      if (rec !== undefined) out.push(rec);
    }
    out.sort((a, b) => Number(a.reportedBy !== undefined) - Number(b.reportedBy !== undefined) || a.time - b.time || a.rank - b.rank);
    return out;
  }

  /** Report this rank's failure so every waiting rank stops (best effort; never throws). */
  async fail(stage: string, err: unknown): Promise<void> {
    const me = this.self;
    const rec: FailureRecord = { rank: this.rank, stage, message: describeError(err), host: me.host, pid: me.pid, time: this.clock.now() };
    await publishOnce(this.fs, join(this.dir, 'failed', `rank_${this.rank}.json`), JSON.stringify(rec)).catch(() => undefined);
  }

  private async reportFor(rank: number, awaited: string, message: string, presence?: PresenceRecord): Promise<void> {
    const who = await this.member(rank);
    // name what the rank was doing when it has said so in a heartbeat, else what we awaited
    const hb = presence === undefined ? await readJson<HeartbeatRecord>(this.fs, join(this.dir, 'hb', `rank_${rank}.json`)) : undefined;
    const stage = presence?.stage ?? hb?.stage ?? awaited;
    const rec: FailureRecord = {
      rank, stage, message, host: who?.host ?? '?', pid: who?.pid ?? -1, time: this.clock.now(), reportedBy: this.rank,
    };
    await publishOnce(this.fs, join(this.dir, 'failed', `rank_${rank}.json`), JSON.stringify(rec)).catch(() => undefined);
  }

  private async member(rank: number): Promise<ProcessIdentity | undefined> {
    const known = this.members.get(rank);
    if (known !== undefined) return known;
    const t = await readJson<Ticket>(this.fs, join(this.dir, 'admitted', `rank_${rank}.json`));
    if (t !== undefined) this.members.set(rank, t);
    return t;
  }

  private async throwIfFailed(): Promise<void> {
    const f = await this.failures();
    const first = f[0];
    if (first === undefined) return;
    const where = first.host !== '?' ? ` (host ${first.host}, pid ${first.pid})` : '';
    const others = f.length > 1 ? `; ${f.length - 1} more rank(s) failed: ${f.slice(1).map((x) => x.rank).join(', ')}` : '';
    const kind: CoordinationFailureKind = first.reportedBy === undefined ? 'failed' : /heartbeat/.test(first.message) ? 'stale' : 'died';
    if (first.reportedBy !== undefined && first.message.startsWith(PRESENCE_STALE_TEXT)) {
      // "rank R (host h, pid p) stopped sending heartbeats during 'stage' (...)"
      const rest = first.message.slice(PRESENCE_STALE_TEXT.length);
      throw new LegacyCoordinationError(kind, `rank ${first.rank}${where} ${PRESENCE_STALE_TEXT} during '${first.stage}'${rest}${others}`, first.rank, first.message);
    }
    throw new LegacyCoordinationError(kind, `rank ${first.rank}${where} failed during '${first.stage}': ${first.message}${others}`, first.rank, first.message);
  }

  /**
   * Wait until every rank in `opts.ranks` (default all) has published marker `name`. Throws a
   * LegacyCoordinationError as soon as any rank of the generation reports a failure, an awaited rank's
   * process is gone (same machine), a watched heartbeat goes stale, or the deadline passes.
   */
  async waitAll<T = unknown>(name: string, opts: WaitOptions = {}): Promise<Map<number, T>> {
    const ranks = opts.ranks ?? this.ranks;
    const timeout = opts.timeoutMs ?? this.barrierTimeoutMs;
    const what = opts.what ?? `'${name}'`;
    const watched = new Set(opts.heartbeats ?? []);
    const started = this.clock.now();
    const lastBeat = new Map<number, { seq: number; at: number; rec?: HeartbeatRecord }>();
    for (const r of watched) lastBeat.set(r, { seq: -1, at: started });
    const hbCheck = Math.max(20, Math.floor(this.heartbeatTimeoutMs / 4));
    // presence beats of the other awaited ranks (the watched ones are judged by their task beat)
    const lastPresence = new Map<number, { seq: number; at: number; rec?: PresenceRecord }>();
    for (const r of ranks) if (r !== this.rank && !watched.has(r)) lastPresence.set(r, { seq: -1, at: started });
    let presenceCheckedAt = -Infinity;
    for (;;) {
      if (this.closed) throw new FailureError('coordinator closed while waiting');
      this.waker.arm();
      await this.throwIfFailed();
      const got = await this.published<T>(name);
      const missing = ranks.filter((r) => !got.has(r));
      if (missing.length === 0) {
        const out = new Map<number, T>();
        for (const r of ranks) out.set(r, got.get(r) as T);
        return out;
      }
      const now = this.clock.now();
      // a process we wait for that is gone will never publish
      for (const r of missing) {
        if (r === this.rank) continue;
        const who = await this.member(r);
        if (who !== undefined && this.processState(who) === 'dead') {
          await this.reportFor(r, name, `its process (pid ${who.pid} on ${who.host}) ended without reporting: killed (SIGKILL, out of memory) or crashed`);
          await this.throwIfFailed();
        }
      }
      // heartbeats of the ranks doing the work
      let progressed = false;
      for (const r of watched) {
        if (!missing.includes(r)) continue;
        const rec = await readJson<HeartbeatRecord>(this.fs, join(this.dir, 'hb', `rank_${r}.json`));
        const last = lastBeat.get(r) as { seq: number; at: number; rec?: HeartbeatRecord };
        if (rec !== undefined && rec.seq !== last.seq) {
          lastBeat.set(r, { seq: rec.seq, at: now, rec });
          progressed = true;
        } else if (now - last.at > this.heartbeatTimeoutMs) {
          const lastText = last.rec !== undefined ? describeProgress(last.rec) : 'no heartbeat at all';
          await this.reportFor(r, name, `no heartbeat for ${secs(now - last.at)} (limit ${secs(this.heartbeatTimeoutMs)}; last: ${lastText}): killed (SIGKILL, out of memory), hung, or its node is down`);
          await this.throwIfFailed();
        }
      }
      // presence beats: read at most every quarter timeout (one small file per missing rank)
      if (lastPresence.size > 0 && now - presenceCheckedAt >= hbCheck) {
        presenceCheckedAt = now;
        for (const r of missing) {
          const last = lastPresence.get(r);
          if (last === undefined) continue;
          const rec = await readJson<PresenceRecord>(this.fs, this.presencePath(r));
          if (rec !== undefined && typeof rec.seq === 'number' && rec.seq !== last.seq) {
            lastPresence.set(r, { seq: rec.seq, at: now, rec });
          } else if (now - last.at > this.heartbeatTimeoutMs) {
            const seen = last.rec !== undefined ? `no new beat for ${secs(now - last.at)}` : `none at all for ${secs(now - last.at)}`;
            await this.reportFor(
              r,
              name,
              `${PRESENCE_STALE_TEXT} (${seen}, limit ${secs(this.heartbeatTimeoutMs)}; awaited: ${what}): killed (SIGKILL, out of memory), hung, or its node is down`,
              last.rec ?? { rank: r, seq: -1, stage: name, time: now },
            );
            await this.throwIfFailed();
          }
        }
      }
      if (progressed && opts.onProgress !== undefined) {
        const m = new Map<number, HeartbeatRecord>();
        for (const [r, b] of lastBeat) if (b.rec !== undefined) m.set(r, b.rec);
        opts.onProgress(m);
      }
      const waited = now - started;
      if (waited > timeout) {
        throw new LegacyCoordinationError(
          'timeout',
          `timed out after ${secs(waited)} waiting for ${what}: ranks ${rankList(missing)} did not arrive (${ranks.length - missing.length} of ${ranks.length} did)`,
        );
      }
      await this.waker.sleep(Math.min(this.tickMs, hbCheck, timeout - waited + 1));
    }
  }

  /** Publish marker `name` and wait for every rank's (a barrier). */
  async barrier<T = unknown>(name: string, data: unknown = null, opts: WaitOptions = {}): Promise<Map<number, T>> {
    await this.publish(name, data);
    return this.waitAll<T>(name, opts);
  }

  /** Start writing this rank's heartbeat every `heartbeatIntervalMs` until `stop()`. */
  startHeartbeat(stage: string): HeartbeatHandle {
    const path = join(this.dir, 'hb', `rank_${this.rank}.json`);
    let seq = 0;
    let progress: TaskProgress = {};
    let writing: Promise<void> = Promise.resolve();
    const beat = (): void => {
      seq += 1;
      const rec: HeartbeatRecord = { rank: this.rank, seq, stage, time: this.clock.now(), ...progress };
      writing = writing.then(() => writeFileAtomic(this.fs, path, JSON.stringify(rec))).catch(() => undefined);
    };
    beat();
    const stopTimer = every(this.clock, this.heartbeatIntervalMs, beat);
    const handle: HeartbeatHandle = {
      update: (p) => {
        progress = { ...p };
      },
      stop: async () => {
        stopTimer();
        this.beats.delete(handle);
        await writing;
      },
    };
    this.beats.add(handle);
    return handle;
  }

  /** Stop heartbeats and file watching. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.presenceTimer !== undefined) this.presenceTimer();
    await this.presenceWriting;
    for (const b of [...this.beats]) await b.stop();
    await this.waker.close();
  }
}

function describeProgress(h: HeartbeatRecord): string {
  const parts: string[] = [`'${h.stage}'`];
  if (h.done !== undefined && h.total !== undefined) parts.push(`${h.done}/${h.total}`);
  if (h.label !== undefined) parts.push(h.label);
  return parts.join(' ');
}
