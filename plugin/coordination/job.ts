/**
 * A job's hold on its output folder: `job.json` (who holds it: the job id, the coordinating
 * rank's host, pid and start, the YAML) and `job.beat` (rewritten every beat interval, from the
 * job's start to its end, training included). The ranks of one job carry the same id; a rank of
 * another job that finds the folder held by a live job stops at once with an InputError naming
 * it, before writing anything there. A holder that is gone (its pid ended on this machine, or
 * its beat unchanged for the heartbeat timeout) is replaced.
 *
 * Whether a holder lives: on this machine, /proc (at once). Elsewhere: its beat changing while
 * watched (within one beat interval) = alive; unchanged for the heartbeat timeout = dead. Every
 * rank of a job judges by the same evidence, so they all refuse, or all wait for their
 * coordinating rank to take over; clocks of different machines are never compared.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { every, sleep, type Clock } from './clock.js';
import { createOnce, errnoOf, parseJson, readText, type CoordinationFs } from './fs.js';
import type { ProcessIdentity, ProcessState } from '../processes.js';
import { CoordinationError, secs } from './protocol.js';

export interface JobOptions {
  /** The same on every rank of one job and different between jobs (see launcher/identity.ts). */
  readonly id: string;
  /** The run YAML (real path), for messages. */
  readonly yaml?: string;
  /** What the id was derived from (scheduler address, worker count, ...), for messages. */
  readonly details?: Readonly<Record<string, string>>;
  /** Folder of job.json and job.beat (default: the coordination root). */
  readonly lockDir?: string;
}

export interface JobRecord extends ProcessIdentity {
  readonly id: string;
  readonly yaml?: string;
  readonly details?: Readonly<Record<string, string>>;
  /** The rank that holds the folder for its job. */
  readonly rank: number;
  /** When it took the folder (its clock, ms since the epoch). */
  readonly started: number;
  readonly nonce: string;
}

interface JobBeat {
  readonly nonce: string;
  readonly seq: number;
  readonly time: number;
}

export interface JobEnv {
  readonly fs: CoordinationFs;
  readonly clock: Clock;
  readonly self: ProcessIdentity;
  readonly processState: (who: ProcessIdentity) => ProcessState;
  readonly heartbeatTimeoutMs: number;
  readonly heartbeatIntervalMs: number;
  readonly tickMs: number;
}

/** Another live job holds the output folder (exit 2: nothing was changed; wait, or use another output_dir). */
export class JobConflictError extends InputError {
  readonly other: JobRecord;
  constructor(other: JobRecord, message: string) {
    super(message);
    this.other = other;
  }
}

export const JOB_FILE = 'job.json';
export const JOB_BEAT_FILE = 'job.beat';

/** "job 3f2a… (rank 0, pid 123 on host n1, started 2025-…, YAML /x/run.yaml)". */
export function describeJob(rec: JobRecord): string {
  const started = Number.isFinite(rec.started) ? new Date(rec.started).toISOString() : '?';
  return `job ${String(rec.id).slice(0, 12)} (rank ${rec.rank}, pid ${rec.pid} on host ${rec.host}, started ${started}${rec.yaml !== undefined ? `, YAML ${rec.yaml}` : ''})`;
}

/** The refusal every rank of a second job gives. */
export function jobConflict(dir: string, other: JobRecord, how: string, mine: JobOptions, limitMs: number): JobConflictError {
  const sameJob = other.id === mine.id;
  const lead = sameJob
    ? `${dir} is held by another start of this same job (same YAML and msrun scheduler)`
    : `${dir} is in use by another job`;
  const d = other.details ?? {};
  const m = mine.details ?? {};
  const sameLauncher = !sameJob && d['scheduler'] !== undefined && d['scheduler'] === m['scheduler'] && d['workers'] === m['workers'];
  const hint = sameLauncher && other.yaml !== mine.yaml
    ? ` (it has this job's msrun scheduler and worker count but YAML ${other.yaml ?? '?'}; if it is this job, start every node with the YAML at the same path)`
    : '';
  return new JobConflictError(
    other,
    `${lead}: ${describeJob(other)} is alive (${how})${hint}. Nothing was changed. Wait for it to end, or give this job another output_dir ` +
      `(a job that died is replaced at once on its machine, elsewhere ${secs(limitMs)} after its last heartbeat).`,
  );
}

export interface HolderLook {
  /** free: nobody holds it; alive/dead: the holder; unknown: not yet decided (another machine). */
  readonly state: 'free' | 'alive' | 'dead' | 'unknown';
  readonly rec?: JobRecord;
  /** job.json as read. */
  readonly raw?: string;
  /** Why alive or dead, for messages. */
  readonly how: string;
}

/** Looks at the holder of a folder over time (its beat changing means alive). */
export class HolderWatch {
  private lastKey: string | undefined;
  private since = 0;
  constructor(
    private readonly env: JobEnv,
    private readonly dir: string,
  ) {}

  async look(): Promise<HolderLook> {
    const { fs, clock, heartbeatTimeoutMs: limit } = this.env;
    const raw = await readText(fs, join(this.dir, JOB_FILE));
    if (raw === undefined) {
      this.lastKey = undefined;
      return { state: 'free', how: 'nobody holds it' };
    }
    const beatRaw = (await readText(fs, join(this.dir, JOB_BEAT_FILE))) ?? '';
    const now = clock.now();
    const key = `${raw}\n${beatRaw}`;
    const changed = this.lastKey !== undefined && key !== this.lastKey;
    if (this.lastKey === undefined || changed) this.since = now;
    this.lastKey = key;
    const rec = parseJson<JobRecord>(raw);
    if (rec === undefined || typeof rec.id !== 'string' || typeof rec.nonce !== 'string') {
      // being written, or the remains of a holder that died writing it
      return now - this.since > limit ? { state: 'dead', raw, how: 'an unreadable job.json' } : { state: 'unknown', raw, how: '' };
    }
    const ps = this.env.processState(rec);
    if (ps === 'dead') return { state: 'dead', rec, raw, how: 'its process has ended' };
    if (ps === 'alive') return { state: 'alive', rec, raw, how: 'its process is running on this machine' };
    if (changed) return { state: 'alive', rec, raw, how: 'its heartbeat is advancing' };
    if (now - this.since > limit) return { state: 'dead', rec, raw, how: `no heartbeat for ${secs(now - this.since)}` };
    return { state: 'unknown', rec, raw, how: '' };
  }
}

/** A folder held for a job (or, `holder` false, held by another group of the same job). */
export class JobLock {
  readonly record: JobRecord;
  readonly holder: boolean;
  readonly dir: string;
  private readonly env: JobEnv;
  private seq = 0;
  private busy = false;
  private writing: Promise<void> = Promise.resolve();
  private stopBeats: (() => void) | undefined;
  private released = false;

  private constructor(env: JobEnv, dir: string, record: JobRecord, holder: boolean) {
    this.env = env;
    this.dir = dir;
    this.record = record;
    this.holder = holder;
  }

  /**
   * Take `dir` for `job` (the coordinating rank of a group does this before touching anything):
   * refuse at once when another live job holds it, replace a dead holder, wait (at most until
   * `deadline`) while a holder on another machine is neither seen alive nor known dead.
   */
  static async acquire(env: JobEnv, dir: string, job: JobOptions, rank: number, deadline: number): Promise<JobLock> {
    const { fs, clock } = env;
    const me: JobRecord = {
      ...env.self,
      id: job.id,
      ...(job.yaml !== undefined ? { yaml: job.yaml } : {}),
      ...(job.details !== undefined ? { details: job.details } : {}),
      rank,
      started: clock.now(),
      nonce: randomBytes(8).toString('hex'),
    };
    await fs.mkdir(dir);
    const watch = new HolderWatch(env, dir);
    for (;;) {
      const l = await watch.look();
      if (l.state === 'free') {
        if (await createOnce(fs, join(dir, JOB_FILE), JSON.stringify(me))) {
          const lock = new JobLock(env, dir, me, true);
          await lock.beat();
          lock.stopBeats = every(clock, env.heartbeatIntervalMs, () => void lock.beat());
          return lock;
        }
        continue; // someone created it just now: look at them
      }
      if (l.state === 'alive' && l.rec !== undefined) {
        if (l.rec.id !== job.id || l.rec.rank === rank) throw jobConflict(dir, l.rec, l.how, job, env.heartbeatTimeoutMs);
        return new JobLock(env, dir, me, false); // this job's other group (no shared disk) holds it
      }
      if (l.state === 'dead' && l.raw !== undefined) {
        await takeOver(fs, dir, l.raw);
        continue;
      }
      if (clock.now() > deadline) {
        throw new CoordinationError(
          'timeout',
          `cannot tell whether ${l.rec !== undefined ? describeJob(l.rec) : 'the job'} that holds ${dir} still runs (its heartbeat neither changes nor is old enough)`,
        );
      }
      await sleep(clock, env.tickMs);
    }
  }

  private beat(): Promise<void> {
    if (this.busy || this.released) return this.writing;
    this.busy = true;
    this.seq += 1;
    const rec: JobBeat = { nonce: this.record.nonce, seq: this.seq, time: this.env.clock.now() };
    this.writing = this.env.fs
      .writeFile(join(this.dir, JOB_BEAT_FILE), JSON.stringify(rec))
      .catch(() => undefined)
      .finally(() => {
        this.busy = false;
      });
    return this.writing;
  }

  /** Give the folder up (the job ended): job.json and job.beat are removed if still ours. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.stopBeats?.();
    await this.writing;
    if (!this.holder) return;
    const { fs } = this.env;
    const cur = parseJson<JobRecord>(await readText(fs, join(this.dir, JOB_FILE)).catch(() => undefined));
    if (cur?.nonce !== this.record.nonce) return;
    await fs.unlink(join(this.dir, JOB_FILE)).catch(() => undefined);
    await fs.unlink(join(this.dir, JOB_BEAT_FILE)).catch(() => undefined);
  }
}

/**
 * Remove a dead holder's job.json: moved aside under a unique name first, so that of two
 * ranks replacing it only one succeeds; if what was moved is not what was judged dead (a new
 * holder came in between), it is put back.
 */
async function takeOver(fs: CoordinationFs, dir: string, judged: string): Promise<void> {
  const path = join(dir, JOB_FILE);
  const aside = join(dir, `.${JOB_FILE}.${randomBytes(6).toString('hex')}.stale`);
  try {
    await fs.rename(path, aside);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return;
    throw err;
  }
  const moved = await readText(fs, aside);
  if (moved !== undefined && moved !== judged) await createOnce(fs, path, moved).catch(() => false);
  await fs.unlink(aside).catch(() => undefined);
}
