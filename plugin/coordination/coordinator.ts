/**
 * Markers, barriers and heartbeats on a (possibly shared) disk, for a group of ranks. Knows
 * nothing of tensors.
 *
 * One rank of the group (the leader, by default the smallest) coordinates: it alone lists what
 * the others wrote and reads their beats, and it publishes one small status file that every
 * waiting rank reads. So a barrier of N ranks costs O(N) file operations in all (each rank
 * writes its marker once and reads the status once per poll; the leader reads each marker with
 * data once), not O(N^2), and a waiting rank costs one read per poll however large the group.
 *
 * Layout under `root` (a folder only the coordinator writes):
 * ```
 * current.json                 the open generation and its join count (leader; rename)
 * tickets/rank_R.json          a rank's request to join (fresh nonce, host, pid, job id)
 * trash/                       earlier runs' files, moved aside at open and removed in the background
 * gen/<G>/admitted/rank_R.json the leader's answer to rank R's ticket (carries its nonce)
 * gen/<G>/machines/<key>.json  the ranks on one machine, so that they check each other's pids
 * gen/<G>/live/rank_R.json     rank R's presence beat: sequence, stage, task heartbeat, rewritten
 *                              in place every beat interval from joining until it leaves
 * gen/<G>/m/<name>/rank_R[.json] marker `name` of rank R, created once (no data: empty, not read)
 * gen/<G>/want/<key>.json      a wait some rank registered: marker name, awaited and watched ranks
 * gen/<G>/done/<key>.json      the data of the awaited markers once all arrived (leader, once)
 * gen/<G>/failed/rank_R.json   why rank R failed (its own report, or a finding that it died)
 * gen/<G>/status.json          the leader's summary: joined, failures, per wait the arrivals and
 *                              the first missing ranks; rewritten at least every beat interval,
 *                              so it is also the leader's heartbeat
 * ```
 * With a job (see job.ts), the leader first takes the output folder for its job (job.json,
 * job.beat beside `root`); a rank of another job finds it held and stops before writing.
 *
 * Generations: the leader moves everything an earlier run left aside, opens a new generation,
 * and admits a rank only when it sees the ticket that rank wrote (with this job's id); a rank
 * trusts a generation only once it finds its own nonce admitted there. So markers of an earlier
 * run are never mistaken for this run's, with no clock comparisons.
 *
 * Deaths and timeouts (all judged on the judge's own clock, never by comparing machines' clocks):
 * - join deadline: ranks not joined within it are named by the leader to every rank; a rank whose
 *   leader does not admit it within it names the leader;
 * - every wait has a deadline (the barrier timeout);
 * - presence beats: a rank's beat unchanged for the heartbeat timeout = dead (the leader finds it;
 *   every rank learns it from the status), naming what it was doing;
 * - task heartbeats of watched ranks (converters): the same, with their last progress;
 * - /proc: the leader checks the ranks on its machine every cycle, and every waiting rank the
 *   ranks on its own machine, at every poll;
 * - the leader itself: its status must change within the heartbeat timeout (or its pid, on the
 *   same machine, must live), or every waiting rank names it;
 * - a failing rank's own error text is carried to every rank.
 * The leader stays in coordination until every rank has left it (or a failure ended the run).
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describeError, FailureError, InputError } from '../errors.js';
import { formatRanges } from '../ranges.js';
import { every, systemClock, type Clock } from './clock.js';
import { createOnce, errnoOf, listDir, nodeFs, parseJson, readJson, readText, writeAtomic, type CoordinationFs } from './fs.js';
import { HolderWatch, jobConflict, JobLock, type JobEnv, type JobOptions, type JobRecord } from './job.js';
import { LeaderMonitor } from './leader.js';
import { processState as procProcessState, selfIdentity, type ProcessIdentity, type ProcessState } from '../processes.js';
import {
  CoordinationError, diedText, failuresError, layout, LEFT_MARKER, NAME_RE, presenceStaleText,
  MISSING_SHOWN, rankList, rankOf, secs, sortFailures, taskStaleText, wantKey,
  type Admission, type CurrentRecord, type DoneRecord, type FailureRecord, type HeartbeatRecord, type PresenceRecord,
  type StatusRecord, type TaskBeat, type TaskProgress, type Ticket, type WantRecord,
} from './protocol.js';
import { detectSharedDisk } from './shared-disk.js';
import { Waker } from './waker.js';

export {
  CoordinationError, PRESENCE_STALE_TEXT, type CoordinationFailureKind, type FailureRecord, type HeartbeatRecord,
  type PresenceRecord, type TaskProgress,
} from './protocol.js';

export const DEFAULT_BARRIER_TIMEOUT_MS = 2 * 60 * 60 * 1000;
export const DEFAULT_HEARTBEAT_TIMEOUT_MS = 60 * 1000;
/**
 * How long ranks may take to join (default 10 min): msrun's own `--cluster_time_out` default,
 * the time it gives the nodes of a job to start and register.
 */
export const DEFAULT_JOIN_TIMEOUT_MS = 10 * 60 * 1000;
/** Smallest timer poll on network disks. */
export const DEFAULT_POLL_INTERVAL_MS = 1000;
/** Largest default timer poll on network disks. */
export const MAX_DEFAULT_POLL_INTERVAL_MS = 5000;
/** Safety poll next to file events on local disks (events may be missed). */
export const LOCAL_SAFETY_POLL_MS = 1000;
/** A wait of at most this many ranks reads their markers itself when the leader is gone. */
const DIRECT_READ_MAX = 64;
/** Longest default interval between beats. */
export const MAX_HEARTBEAT_INTERVAL_MS = 15_000;

/**
 * Default poll of waiting ranks on a network disk: 1 ms per rank of the group, between 1 s and
 * 5 s, so that the whole group reads the status about 1,000 times a second at most once it is
 * past 1,000 ranks.
 */
export function defaultPollInterval(groupSize: number): number {
  return Math.min(MAX_DEFAULT_POLL_INTERVAL_MS, Math.max(DEFAULT_POLL_INTERVAL_MS, groupSize));
}

/** Default beat interval: a quarter of the heartbeat timeout, between 50 ms and 15 s. */
export function defaultHeartbeatInterval(heartbeatTimeoutMs: number): number {
  return Math.max(50, Math.min(MAX_HEARTBEAT_INTERVAL_MS, Math.floor(heartbeatTimeoutMs / 4)));
}

export interface CoordinatorOptions {
  /** Folder for the coordination files (created; earlier runs' files are moved aside by the leader). */
  readonly root: string;
  /** This participant. */
  readonly rank: number;
  /** Every participant of the group (global rank numbers). */
  readonly ranks: readonly number[];
  /** The rank that coordinates; default the smallest of `ranks`. */
  readonly leader?: number;
  /** Timer poll in ms (network disks: the only wake-up source). Default: defaultPollInterval. */
  readonly pollInterval?: number;
  /**
   * Treat the disk as shared between machines (poll, no file events). Default: detected from the
   * file-system type of `root` (nfs, lustre, ...) or SHARED_PATHS.
   */
  readonly sharedDisk?: boolean;
  /** Deadline of every wait, ms (default 2 h). */
  readonly barrierTimeoutMs?: number;
  /** Deadline for every rank to join, ms (default 10 min). */
  readonly joinTimeoutMs?: number;
  /** A beat unchanged this long (ms) means the rank is dead (default 60 s). */
  readonly heartbeatTimeoutMs?: number;
  /** How often every rank writes its beat and the leader reads them, ms (default: defaultHeartbeatInterval). */
  readonly heartbeatIntervalMs?: number;
  /** The job the group belongs to: ranks of another job on the same folder are refused. */
  readonly job?: JobOptions;
  /** The disk (default: node:fs/promises). */
  readonly fs?: CoordinationFs;
  /** Time (default: the system clock). */
  readonly clock?: Clock;
  /** This process as the others see it (default: host, machine identity, pid from /proc). */
  readonly self?: ProcessIdentity;
  /** Whether a process lives (default: /proc on this machine, 'unknown' elsewhere). */
  readonly processState?: (who: ProcessIdentity) => ProcessState;
}

export interface WaitOptions {
  /** Ranks whose marker is awaited (default: all). */
  readonly ranks?: readonly number[];
  /** Deadline in ms (default: the barrier timeout). */
  readonly timeoutMs?: number;
  /**
   * Ranks whose task heartbeat must stay fresh while they are awaited (converters). Every rank is
   * judged by its presence beat as well.
   */
  readonly heartbeats?: readonly number[];
  /** Called when a watched rank's heartbeat brings new progress. */
  readonly onProgress?: (beats: ReadonlyMap<number, HeartbeatRecord>) => void;
  /** What is being waited for, for messages (default: the marker name). */
  readonly what?: string;
}

export interface HeartbeatHandle {
  /** Progress to carry in the next beats. */
  update(progress: TaskProgress): void;
  /** Stop the task heartbeat (its last progress stays; waiters stop judging it once the rank's marker is there). */
  stop(): Promise<void>;
}

export interface CloseOptions {
  /** Keep holding the output folder for the job (it goes on, e.g. training); release it with releaseJob(). */
  readonly keepJob?: boolean;
}

interface TaskState {
  seq: number;
  stage: string;
  progress: TaskProgress;
  running: boolean;
}

interface RosterEntry extends ProcessIdentity {
  readonly rank: number;
}

/** A new generation id: time, pid and randomness. */
export function newGenerationId(now: number = Date.now(), pid: number = process.pid): string {
  return `${now.toString(36)}-${pid}-${randomBytes(6).toString('hex')}`;
}

interface Env {
  readonly fs: CoordinationFs;
  readonly clock: Clock;
  readonly self: ProcessIdentity;
  readonly processState: (who: ProcessIdentity) => ProcessState;
  readonly polling: boolean;
  readonly tickMs: number;
  readonly heartbeatTimeoutMs: number;
  readonly heartbeatIntervalMs: number;
  readonly joinTimeoutMs: number;
  readonly barrierTimeoutMs: number;
  readonly waker: Waker;
}

export class Coordinator {
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
  readonly joinTimeoutMs: number;
  /** Poll of waits (ms). */
  readonly pollIntervalMs: number;
  private readonly fs: CoordinationFs;
  private readonly clock: Clock;
  private readonly self: ProcessIdentity;
  private readonly procState: (who: ProcessIdentity) => ProcessState;
  private readonly waker: Waker;
  private readonly monitor: LeaderMonitor | undefined;
  private readonly jobLock: JobLock | undefined;
  private readonly leaderWho: ProcessIdentity;
  private readonly machineKey: string;
  private readonly publishedNames = new Set<string>();
  private readonly markerCache = new Map<string, Map<number, unknown>>();
  private closed = false;
  private stage = 'join';
  private task: TaskState | undefined;
  private beatSeq = 0;
  private beatBusy = 0;
  private beatWriting: Promise<void> = Promise.resolve();
  private stopBeats: (() => void) | undefined;
  private cleanup: Promise<void> = Promise.resolve();
  // what a follower knows of the leader's status
  private lastStatus: StatusRecord | undefined;
  private lastStatusSeq = -1;
  private lastStatusChangeAt: number;
  private roster: RosterEntry[] | undefined;
  private readonly peersLeft = new Set<number>();

  private constructor(init: {
    opts: CoordinatorOptions;
    env: Env;
    leader: number;
    generation: string;
    leaderWho: ProcessIdentity;
    machineKey: string;
    monitor?: LeaderMonitor;
    jobLock?: JobLock;
  }) {
    const { opts, env } = init;
    this.root = opts.root;
    this.rank = opts.rank;
    this.ranks = [...opts.ranks];
    this.leader = init.leader;
    this.polling = env.polling;
    this.generation = init.generation;
    this.dir = layout.gen(opts.root, init.generation);
    this.barrierTimeoutMs = env.barrierTimeoutMs;
    this.heartbeatTimeoutMs = env.heartbeatTimeoutMs;
    this.heartbeatIntervalMs = env.heartbeatIntervalMs;
    this.joinTimeoutMs = env.joinTimeoutMs;
    this.pollIntervalMs = env.tickMs;
    this.fs = env.fs;
    this.clock = env.clock;
    this.self = env.self;
    this.procState = env.processState;
    this.waker = env.waker;
    this.monitor = init.monitor;
    this.jobLock = init.jobLock;
    this.leaderWho = init.leaderWho;
    this.machineKey = init.machineKey;
    this.lastStatusChangeAt = env.clock.now();
    this.startBeats();
  }

  /** The job record this group holds its output folder with (the leader's), if any. */
  get job(): JobRecord | undefined {
    return this.jobLock?.record;
  }

  // ---- joining -----------------------------------------------------------------------------------

  /**
   * Join the group's current run. The leader takes the folder for the job (if any), moves what
   * earlier runs left aside, opens a new generation and waits until every rank has joined (or the
   * join deadline names those that did not); the others write a ticket and wait until the leader
   * admits it. Resolves once this rank is part of the generation (the leader: once all are).
   * Throws JobConflictError (exit 2) when another live job holds the folder.
   */
  static async open(opts: CoordinatorOptions): Promise<Coordinator> {
    if (!opts.ranks.includes(opts.rank)) {
      throw new InputError(`rank ${opts.rank} is not one of the group's ranks [${rankList(opts.ranks)}]`);
    }
    if (new Set(opts.ranks).size !== opts.ranks.length) throw new InputError('coordination group lists a rank twice');
    const leader = opts.leader ?? Math.min(...opts.ranks);
    if (!opts.ranks.includes(leader)) throw new InputError(`leader ${leader} is not one of the group's ranks`);
    const fs = opts.fs ?? nodeFs;
    const clock = opts.clock ?? systemClock;
    const polling = opts.sharedDisk ?? detectSharedDisk(opts.root).network;
    const heartbeatTimeoutMs = opts.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS;
    const tickMs = opts.pollInterval ?? (polling ? defaultPollInterval(opts.ranks.length) : LOCAL_SAFETY_POLL_MS);
    // the leader creates the folder; a waiting rank needs it only to watch it for file events
    if (opts.rank === leader || !polling) await fs.mkdir(opts.root);
    const waker = await Waker.create(opts.root, !polling, clock);
    const env: Env = {
      fs,
      clock,
      self: opts.self ?? selfIdentity(),
      processState: opts.processState ?? procProcessState,
      polling,
      tickMs,
      heartbeatTimeoutMs,
      heartbeatIntervalMs: opts.heartbeatIntervalMs ?? defaultHeartbeatInterval(heartbeatTimeoutMs),
      joinTimeoutMs: opts.joinTimeoutMs ?? DEFAULT_JOIN_TIMEOUT_MS,
      barrierTimeoutMs: opts.barrierTimeoutMs ?? DEFAULT_BARRIER_TIMEOUT_MS,
      waker,
    };
    try {
      return opts.rank === leader ? await Coordinator.openAsLeader(opts, env, leader) : await Coordinator.openAsFollower(opts, env, leader);
    } catch (err) {
      await waker.close();
      throw err;
    }
  }

  private static jobEnv(env: Env): JobEnv {
    return {
      fs: env.fs, clock: env.clock, self: env.self, processState: env.processState,
      heartbeatTimeoutMs: env.heartbeatTimeoutMs, heartbeatIntervalMs: env.heartbeatIntervalMs, tickMs: env.tickMs,
    };
  }

  private static async openAsLeader(opts: CoordinatorOptions, env: Env, leader: number): Promise<Coordinator> {
    const { fs, clock, self } = env;
    const root = opts.root;
    const started = clock.now();
    const jobLock = opts.job === undefined
      ? undefined
      : await JobLock.acquire(Coordinator.jobEnv(env), opts.job.lockDir ?? root, opts.job, opts.rank, started + env.joinTimeoutMs);
    let c: Coordinator | undefined;
    try {
      // What earlier runs left is moved aside (two renames, whatever its size) and removed in
      // the background: the pointer first, so that nobody trusts it.
      const generation = newGenerationId(clock.now(), self.pid);
      await fs.unlink(layout.current(root)).catch((err: unknown) => {
        if (errnoOf(err) !== 'ENOENT') throw err;
      });
      await fs.mkdir(layout.trash(root));
      for (const sub of ['tickets', 'gen']) {
        await fs.rename(join(root, sub), join(layout.trash(root), `${generation}-${sub}`)).catch((err: unknown) => {
          if (errnoOf(err) !== 'ENOENT') throw err;
        });
      }
      const dir = layout.gen(root, generation);
      for (const sub of layout.subdirs) await fs.mkdir(join(dir, sub));
      await fs.mkdir(layout.tickets(root));
      const current: CurrentRecord = {
        generation, ...(opts.job !== undefined ? { job: opts.job.id } : {}), leader, by: self, opened: clock.now(), joined: 1, size: opts.ranks.length, seq: 0,
      };
      await writeAtomic(fs, layout.current(root), JSON.stringify(current));
      const monitor = new LeaderMonitor({
        fs, clock, waker: env.waker, root, dir, generation, job: opts.job?.id, rank: opts.rank, group: opts.ranks, self,
        processState: env.processState, heartbeatTimeoutMs: env.heartbeatTimeoutMs, heartbeatIntervalMs: env.heartbeatIntervalMs,
        tickMs: Math.min(env.tickMs, env.heartbeatIntervalMs, 1000), joinTimeoutMs: env.joinTimeoutMs, started, current,
      });
      c = new Coordinator({
        opts, env, leader, generation, leaderWho: self, machineKey: '', monitor, ...(jobLock !== undefined ? { jobLock } : {}),
      });
      c.cleanup = c.removeTrash();
      monitor.start();
      await monitor.awaitJoined();
      if (monitor.joinFailure !== undefined) throw new CoordinationError('timeout', monitor.joinFailure.message);
      return c;
    } catch (err) {
      if (c !== undefined) await c.close();
      else await jobLock?.release();
      throw err;
    }
  }

  private async removeTrash(): Promise<void> {
    const dir = layout.trash(this.root);
    for (const e of await listDir(this.fs, dir).catch(() => [] as string[])) {
      if (this.closed) return;
      await this.fs.rm(join(dir, e)).catch(() => undefined);
    }
  }

  private static async openAsFollower(opts: CoordinatorOptions, env: Env, leader: number): Promise<Coordinator> {
    const { fs, clock, self, waker } = env;
    const root = opts.root;
    const started = clock.now();
    const nonce = randomBytes(12).toString('hex');
    const job = opts.job;
    const ticket: Ticket = { ...self, rank: opts.rank, nonce, ...(job !== undefined ? { job: job.id } : {}) };
    const ticketPath = layout.ticket(root, opts.rank);
    const watch = job !== undefined ? new HolderWatch(Coordinator.jobEnv(env), job.lockDir ?? root) : undefined;
    /** The generation current when the ticket was last written or checked; null: not written. */
    let ticketGen: string | null = null;
    let seenGen: string | undefined;
    let seenJoined = -1;
    let other: Admission | undefined;
    let cur: CurrentRecord | undefined;
    const writeTicket = async (): Promise<boolean> => {
      try {
        await fs.writeFile(ticketPath, JSON.stringify(ticket));
        return true;
      } catch (err) {
        // the leader is moving the folder aside right now: write again next round
        if (errnoOf(err) !== 'ENOENT') throw err;
        await fs.mkdir(layout.tickets(root)).catch(() => undefined);
        return false;
      }
    };
    for (;;) {
      waker.arm();
      cur = await readJson<CurrentRecord>(fs, layout.current(root));
      const valid = cur !== undefined && typeof cur.generation === 'string' && NAME_RE.test(cur.generation);
      const mine = valid && (job === undefined || cur?.job === job.id);
      if (!mine && watch !== undefined && job !== undefined) {
        // not (yet) our job's run: refuse at once if another live job holds the folder
        const l = await watch.look();
        if (l.state === 'alive' && l.rec !== undefined && l.rec.id !== job.id) {
          throw jobConflict(job.lockDir ?? root, l.rec, l.how, job, env.heartbeatTimeoutMs);
        }
      }
      const gen = mine ? (cur as CurrentRecord).generation : undefined;
      if (job === undefined || mine) {
        if (ticketGen === null) {
          if (await writeTicket()) ticketGen = gen ?? '';
        } else if (gen !== undefined && gen !== ticketGen) {
          // a new generation: the leader moved earlier tickets aside, perhaps ours
          const t = await readJson<Ticket>(fs, ticketPath);
          if (t?.nonce === nonce || (await writeTicket())) ticketGen = gen;
        }
      }
      if (mine && cur !== undefined) {
        if (cur.generation !== seenGen) {
          seenGen = cur.generation;
          seenJoined = -1;
        }
        if (cur.joined !== seenJoined) {
          const text = await readText(fs, layout.admitted(layout.gen(root, cur.generation), opts.rank)).catch(() => undefined);
          const adm = parseJson<Admission>(text);
          if (adm !== undefined && adm.nonce === nonce) {
            return new Coordinator({
              opts, env, leader, generation: cur.generation, leaderWho: cur.by, machineKey: adm.machineKey ?? '',
            });
          }
          if (adm !== undefined && adm.nonce !== nonce) {
            other = adm;
            // this rank number is already in this run, held by a live process: a second start
            if (job !== undefined && env.processState(adm) === 'alive') {
              throw new InputError(
                `rank ${opts.rank} of this job is already running (pid ${adm.pid} on host ${adm.host}) in ${root}: ` +
                  'is a second copy of the same job (same YAML and msrun scheduler) starting? Nothing was changed.',
              );
            }
          }
          if (text === undefined || adm !== undefined) seenJoined = cur.joined; // else half-written: read again
        }
      }
      const waited = clock.now() - started;
      if (waited > env.joinTimeoutMs) {
        const where = `(in ${root}; join timeout ${secs(env.joinTimeoutMs)})`;
        if (!mine) {
          throw new CoordinationError(
            'timeout',
            `timed out after ${secs(waited)} waiting for rank ${leader} to open the run's coordination ${where}: it has not started, or died before joining`,
            leader,
          );
        }
        const held = other !== undefined ? `; rank ${opts.rank} is admitted to another process (pid ${other.pid} on host ${other.host}): is a second copy of this job running?` : '';
        throw new CoordinationError(
          'timeout',
          `timed out after ${secs(waited)} waiting for rank ${leader} to admit this rank ${where}, ${cur?.joined ?? '?'} of ${cur?.size ?? '?'} joined${held}`,
          leader,
        );
      }
      await waker.sleep(Math.min(env.tickMs, env.joinTimeoutMs - waited + 1));
    }
  }

  // ---- beats -------------------------------------------------------------------------------------

  /** The presence beat (and the task heartbeat in it), every beat interval until close(). */
  private startBeats(): void {
    this.stopBeats = every(this.clock, this.heartbeatIntervalMs, () => {
      void this.beat();
    });
    void this.beat();
  }

  /**
   * One beat: a small file rewritten in place (one write); the leader's beat is its status. The
   * timer's beats are skipped while one is still being written (slow disk); `force` (a stage
   * change, leaving) queues behind it.
   */
  private beat(force = false, left = false): Promise<void> {
    if (this.task?.running === true) this.task.seq += 1;
    const m = this.monitor;
    if (m !== undefined) {
      m.stage = this.stage;
      m.task = this.taskBeat();
      return Promise.resolve();
    }
    if (this.beatBusy > 0 && !force) return this.beatWriting;
    this.beatBusy += 1;
    this.beatWriting = this.beatWriting
      .then(() => {
        // built when its turn comes, so that it carries the latest stage and progress
        this.beatSeq += 1;
        const t = this.taskBeat();
        const rec: PresenceRecord = {
          rank: this.rank, seq: this.beatSeq, stage: this.stage, time: this.clock.now(),
          ...(t !== undefined ? { task: t } : {}), ...(left ? { left: true } : {}),
        };
        return this.fs.writeFile(layout.live(this.dir, this.rank), JSON.stringify(rec));
      })
      .catch(() => undefined) // the disk hiccuped: the next beat retries
      .finally(() => {
        this.beatBusy -= 1;
      });
    return this.beatWriting;
  }

  private taskBeat(): TaskBeat | undefined {
    const t = this.task;
    return t === undefined ? undefined : { seq: t.seq, stage: t.stage, ...t.progress };
  }

  /**
   * What this rank is doing, carried by its beats (named if it is found dead). Writes a beat at
   * once; resolves when it is written (never rejects).
   */
  async setStage(stage: string): Promise<void> {
    if (stage === this.stage || this.closed) return;
    this.stage = stage;
    if (this.monitor !== undefined) {
      this.monitor.stage = stage;
      await this.monitor.flush();
      return;
    }
    await this.beat(true);
  }

  /** Start this rank's task heartbeat (carried by its beats) until `stop()`. */
  startHeartbeat(stage: string): HeartbeatHandle {
    const task: TaskState = { seq: 0, stage, progress: {}, running: true };
    this.task = task;
    void this.beat(true);
    return {
      update: (p) => {
        task.progress = { ...p };
      },
      stop: async () => {
        task.running = false;
        await this.beatWriting;
      },
    };
  }

  // ---- markers -----------------------------------------------------------------------------------

  private checkName(name: string): void {
    if (!NAME_RE.test(name) || name === LEFT_MARKER) {
      throw new InputError(`marker name '${name}' may hold only letters, digits, '_', '.', '-' (and is not '${LEFT_MARKER}')`);
    }
  }

  /** Publish this rank's marker `name` with optional JSON data (once; a second call is ignored). */
  async publish(name: string, data: unknown = null): Promise<void> {
    this.checkName(name);
    if (this.publishedNames.has(name)) return;
    this.publishedNames.add(name);
    const hasData = data !== null && data !== undefined;
    const path = layout.marker(this.dir, name, this.rank, hasData);
    const text = hasData ? JSON.stringify({ rank: this.rank, data }) : '';
    try {
      await createOnce(this.fs, path, text);
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw err;
      await this.fs.mkdir(layout.markers(this.dir, name));
      await createOnce(this.fs, path, text);
    }
    if (this.monitor !== undefined) {
      this.monitor.publishLocal(name, hasData ? data : null);
      await this.monitor.flush(); // the waits it completes are on disk before this rank goes on
    }
  }

  /** Markers `name` published so far: rank -> data (a listing, and each marker with data read once). */
  async published<T = unknown>(name: string): Promise<Map<number, T>> {
    this.checkName(name);
    let cache = this.markerCache.get(name);
    if (cache === undefined) this.markerCache.set(name, (cache = new Map<number, unknown>()));
    for (const f of await listDir(this.fs, layout.markers(this.dir, name))) {
      const r = rankOf(f);
      if (r === undefined || cache.has(r)) continue;
      if (!f.endsWith('.json')) {
        cache.set(r, null);
        continue;
      }
      const rec = await readJson<{ rank: number; data: T }>(this.fs, layout.marker(this.dir, name, r, true));
      if (rec !== undefined) cache.set(r, rec.data);
    }
    return new Map(cache as Map<number, T>);
  }

  /** Ranks whose marker `name` exists (one listing). */
  private async arrivedRanks(name: string): Promise<Set<number>> {
    const out = new Set<number>();
    for (const f of await listDir(this.fs, layout.markers(this.dir, name)).catch(() => [] as string[])) {
      const r = rankOf(f);
      if (r !== undefined) out.add(r);
    }
    return out;
  }

  // ---- failures ----------------------------------------------------------------------------------

  /** Failure reports of this generation, the ranks' own reports first, then by time. */
  async failures(): Promise<FailureRecord[]> {
    const dir = join(this.dir, 'failed');
    const out: FailureRecord[] = [];
    for (const f of await listDir(this.fs, dir)) {
      if (rankOf(f) === undefined) continue;
      const rec = await readJson<FailureRecord>(this.fs, join(dir, f));
      if (rec !== undefined) out.push(rec);
    }
    sortFailures(out);
    return out;
  }

  /** Report this rank's failure so every waiting rank stops (best effort; never throws). */
  async fail(stage: string, err: unknown): Promise<void> {
    const rec: FailureRecord = {
      rank: this.rank, stage, message: describeError(err), host: this.self.host, pid: this.self.pid, time: this.clock.now(),
    };
    const written = await createOnce(this.fs, layout.failed(this.dir, this.rank), JSON.stringify(rec)).catch(() => false);
    const m = this.monitor;
    if (m !== undefined) {
      let own = rec;
      if (!written) own = (await readJson<FailureRecord>(this.fs, layout.failed(this.dir, this.rank)).catch(() => undefined)) ?? rec;
      m.addFailure(own);
      await m.flush();
    }
  }

  // ---- waiting -----------------------------------------------------------------------------------

  /**
   * Wait until every rank in `opts.ranks` (default all) has published marker `name`. Throws a
   * CoordinationError as soon as any rank of the generation has failed, an awaited rank's process
   * is gone, a beat goes stale (the leader's included), ranks did not join in time, or the
   * deadline passes.
   */
  async waitAll<T = unknown>(name: string, opts: WaitOptions = {}): Promise<Map<number, T>> {
    this.checkName(name);
    const group = new Set(this.ranks);
    const ranks = opts.ranks ?? this.ranks;
    for (const r of [...ranks, ...(opts.heartbeats ?? [])]) {
      if (!group.has(r)) throw new InputError(`rank ${r} is not one of the group's ranks [${rankList(this.ranks)}]`);
    }
    const timeout = opts.timeoutMs ?? this.barrierTimeoutMs;
    const what = opts.what ?? `'${name}'`;
    const key = wantKey(name, ranks, this.ranks);
    const heartbeats = opts.heartbeats ?? [];
    const started = this.clock.now();
    if (this.monitor !== undefined) return this.waitAsLeader<T>(this.monitor, key, name, ranks, heartbeats, what, timeout, started, opts);
    let registered = false;
    let lastProgress = '';
    const leaderWatched = heartbeats.includes(this.leader) && ranks.includes(this.leader);
    for (;;) {
      if (this.closed) throw new FailureError('coordinator closed while waiting');
      this.waker.arm();
      const st = await this.readStatus();
      const w = st?.wants[key];
      if (st !== undefined) {
        if (st.failureCount > 0 && st.failures.length > 0) throw failuresError(st.failures, st.failureCount);
        if (st.joinFailure !== undefined) throw new CoordinationError('timeout', st.joinFailure.message);
        if (w?.complete === true) {
          const done = await readJson<DoneRecord>(this.fs, layout.done(this.dir, key));
          if (done !== undefined && done.key === key) {
            const out = new Map<number, T>();
            for (const r of ranks) out.set(r, (done.data[String(r)] ?? null) as T);
            return out;
          }
        } else if (st.closed === true) {
          throw new CoordinationError('failed', `rank ${this.leader}, which coordinates the run, left coordination before ${what} completed`, this.leader);
        }
        if (w !== undefined) registered = true;
        if (w?.progress !== undefined && opts.onProgress !== undefined) {
          const text = JSON.stringify(w.progress);
          if (text !== lastProgress) {
            lastProgress = text;
            opts.onProgress(new Map(Object.entries(w.progress).map(([r, h]) => [Number(r), h])));
          }
        }
      }
      if (!registered) {
        const rec: WantRecord = { name, ranks: formatRanges(ranks), heartbeats: formatRanges(heartbeats), what, by: this.rank };
        await createOnce(this.fs, layout.want(this.dir, key), JSON.stringify(rec));
        registered = true;
      }
      // the leader's own task heartbeat counts while its marker is missing (the status shows the
      // first missing ranks in order; a leader beyond them is missing too)
      const shown = w?.missing ?? [];
      const leaderMissing = w === undefined || shown.includes(this.leader) || (shown.length >= MISSING_SHOWN && this.leader > (shown[shown.length - 1] as number));
      const problem = this.leaderProblem(st, what, leaderWatched && leaderMissing);
      if (problem !== undefined) {
        const direct = await this.markersIfAll<T>(name, ranks);
        if (direct !== undefined) return direct;
        throw problem;
      }
      await this.checkPeers(st);
      const waited = this.clock.now() - started;
      if (waited > timeout) throw await this.timeoutError(name, ranks, what, waited);
      await this.waker.sleep(Math.min(this.pollIntervalMs, timeout - waited + 1));
    }
  }

  private async waitAsLeader<T>(
    m: LeaderMonitor, key: string, name: string, ranks: readonly number[], heartbeats: readonly number[], what: string,
    timeout: number, started: number, opts: WaitOptions,
  ): Promise<Map<number, T>> {
    const w = m.registerWant(key, name, ranks, heartbeats, what);
    m.kick();
    let lastProgress = '';
    for (;;) {
      if (this.closed) throw new FailureError('coordinator closed while waiting');
      if (m.failures.length > 0) throw failuresError(m.failures.slice(0, 8), m.failures.length);
      if (m.joinFailure !== undefined) throw new CoordinationError('timeout', m.joinFailure.message);
      const have = m.markerMap(name);
      if (ranks.every((r) => have.has(r))) {
        const out = new Map<number, T>();
        for (const r of ranks) out.set(r, (have.get(r) ?? null) as T);
        return out;
      }
      if (opts.onProgress !== undefined && w.heartbeats.size > 0) {
        const p = m.progressOf(w);
        const text = JSON.stringify([...p.values()].map((h) => [h.rank, h.seq]));
        if (p.size > 0 && text !== lastProgress) {
          lastProgress = text;
          opts.onProgress(p);
        }
      }
      const waited = this.clock.now() - started;
      if (waited > timeout) throw await this.timeoutError(name, ranks, what, waited);
      await m.changed.wait(Math.min(this.pollIntervalMs, timeout - waited + 1));
    }
  }

  private async timeoutError(name: string, ranks: readonly number[], what: string, waited: number): Promise<CoordinationError> {
    const arrived = await this.arrivedRanks(name);
    const missing = ranks.filter((r) => !arrived.has(r));
    return new CoordinationError(
      'timeout',
      `timed out after ${secs(waited)} waiting for ${what}: ranks ${rankList(missing)} did not arrive (${ranks.length - missing.length} of ${ranks.length} did)`,
    );
  }

  /** The leader's status (one read); its sequence changing is the leader's heartbeat. */
  private async readStatus(): Promise<StatusRecord | undefined> {
    let raw: string | undefined;
    try {
      raw = await readText(this.fs, layout.status(this.dir));
    } catch {
      return this.lastStatus; // a disk hiccup: judged again at the next poll
    }
    const st = parseJson<StatusRecord>(raw);
    if (st === undefined || st.generation !== this.generation) return this.lastStatus;
    if (st.seq !== this.lastStatusSeq) {
      this.lastStatusSeq = st.seq;
      this.lastStatusChangeAt = this.clock.now();
    }
    this.lastStatus = st;
    return st;
  }

  /** The leader: its process (same machine) and its status changing within the heartbeat timeout. */
  private leaderProblem(st: StatusRecord | undefined, what: string, watched: boolean): CoordinationError | undefined {
    if (st?.closed === true) return undefined;
    const who = this.leaderWho;
    const stage = st?.stage ?? 'join';
    const base = { rank: this.leader, host: who.host ?? '?', pid: who.pid ?? -1, time: this.clock.now(), reportedBy: this.rank };
    if (this.procState(who) === 'dead') return failuresError([{ ...base, stage, message: diedText(who) }]);
    const silent = this.clock.now() - this.lastStatusChangeAt;
    if (silent <= this.heartbeatTimeoutMs) return undefined;
    const message = watched
      ? taskStaleText(silent, this.heartbeatTimeoutMs, st?.task)
      : presenceStaleText(silent, this.heartbeatTimeoutMs, st !== undefined, `${what}; it coordinates the run`);
    return failuresError([{ ...base, stage: watched ? (st?.task?.stage ?? stage) : stage, message }]);
  }

  /**
   * The awaited markers read directly, when there are few of them and all are there (the leader
   * died after they were published: this wait is complete; the next one reports the leader).
   */
  private async markersIfAll<T>(name: string, ranks: readonly number[]): Promise<Map<number, T> | undefined> {
    if (ranks.length > DIRECT_READ_MAX) return undefined;
    const arrived = await this.published<T>(name).catch(() => undefined);
    if (arrived === undefined || !ranks.every((r) => arrived.has(r))) return undefined;
    return new Map(ranks.map((r) => [r, arrived.get(r) as T]));
  }

  /** Ranks on this machine: their processes, through /proc (the machine's list is read once). */
  private async checkPeers(st: StatusRecord | undefined): Promise<void> {
    if (this.machineKey === '') return;
    if (this.roster === undefined) {
      if (st === undefined || st.joined < st.size) return; // the lists are written once all joined
      const list = await readJson<RosterEntry[]>(this.fs, layout.machine(this.dir, this.machineKey));
      this.roster = (list ?? []).filter((e) => e.rank !== this.rank && e.rank !== this.leader);
    }
    for (const p of this.roster) {
      if (this.peersLeft.has(p.rank) || this.procState(p) !== 'dead') continue;
      const beat = parseJson<PresenceRecord>(await readText(this.fs, layout.live(this.dir, p.rank)).catch(() => undefined));
      if (beat?.left === true) {
        this.peersLeft.add(p.rank);
        continue;
      }
      const rec: FailureRecord = {
        rank: p.rank, stage: beat?.stage ?? 'join', message: diedText(p), host: p.host, pid: p.pid, time: this.clock.now(), reportedBy: this.rank,
      };
      const created = await createOnce(this.fs, layout.failed(this.dir, p.rank), JSON.stringify(rec)).catch(() => true);
      const own = created ? undefined : await readJson<FailureRecord>(this.fs, layout.failed(this.dir, p.rank));
      throw failuresError([own ?? rec]);
    }
  }

  /** Publish marker `name` and wait for every rank's (a barrier). */
  async barrier<T = unknown>(name: string, data: unknown = null, opts: WaitOptions = {}): Promise<Map<number, T>> {
    await this.publish(name, data);
    return this.waitAll<T>(name, opts);
  }

  // ---- leaving -----------------------------------------------------------------------------------

  /**
   * Leave coordination: stop beating and say so. The leader first stays until every rank has
   * left (or a failure ended the run). The job's hold on the output folder is released unless
   * `keepJob` (then releaseJob() ends it).
   */
  async close(opts: CloseOptions = {}): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.stopBeats?.();
      if (this.task !== undefined) this.task.running = false;
      await this.beatWriting;
      if (this.monitor !== undefined) {
        await this.monitor.close(this.barrierTimeoutMs);
      } else {
        await createOnce(this.fs, layout.marker(this.dir, LEFT_MARKER, this.rank, false), '').catch(() => false);
        await this.beat(true, true);
      }
      await this.cleanup;
      await this.waker.close();
    }
    if (opts.keepJob !== true) await this.releaseJob();
  }

  /** Give up the output folder (after the job's work, e.g. training, ended). */
  async releaseJob(): Promise<void> {
    await this.jobLock?.release();
  }
}
