/**
 * What the coordinator's files hold and where they are, shared by the ranks' side
 * (coordinator.ts) and the coordinating rank's side (leader.ts). See coordinator.ts for the
 * protocol.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { FailureError } from '../errors.js';
import { formatRanges } from '../ranges.js';
import type { ProcessIdentity } from '../processes.js';

export type CoordinationFailureKind = 'failed' | 'died' | 'stale' | 'timeout';

/** A wait ended because another rank failed, died, went silent, or time ran out (exit 1). */
export class CoordinationError extends FailureError {
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

/** Progress a rank publishes with its task heartbeat. */
export interface TaskProgress {
  readonly done?: number;
  readonly total?: number;
  readonly label?: string;
}

/** A task heartbeat as waiters see it (onProgress). */
export interface HeartbeatRecord extends TaskProgress {
  readonly rank: number;
  readonly seq: number;
  readonly stage: string;
  readonly time: number;
}

/** The task part of a presence beat: changes only while the task heartbeat runs. */
export interface TaskBeat extends TaskProgress {
  readonly seq: number;
  readonly stage: string;
}

/** The presence beat every rank writes while it takes part in coordination. */
export interface PresenceRecord {
  readonly rank: number;
  readonly seq: number;
  /** What the rank says it is doing (see Coordinator.setStage). */
  readonly stage: string;
  readonly time: number;
  /** Its task heartbeat (converters), frozen once stopped. */
  readonly task?: TaskBeat;
  /** Set by the last beat: the rank has left coordination (close()). */
  readonly left?: boolean;
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

/** A rank's request to join (tickets/rank_R.json). */
export interface Ticket extends ProcessIdentity {
  readonly rank: number;
  readonly nonce: string;
  /** The job id, when the group has one. */
  readonly job?: string;
}

/** The leader's answer to a ticket (gen/G/admitted/rank_R.json). */
export interface Admission extends ProcessIdentity {
  readonly rank: number;
  readonly nonce: string;
  /** Key of the rank's machine ('' when unknown): ranks with the same key check each other's pids. */
  readonly machineKey: string;
}

/** current.json: the open generation and how far its join has come. */
export interface CurrentRecord {
  readonly generation: string;
  readonly job?: string;
  readonly leader: number;
  readonly by: ProcessIdentity;
  readonly opened: number;
  readonly joined: number;
  readonly size: number;
  readonly seq: number;
}

/** want/<key>.json: what a waiter waits for. */
export interface WantRecord {
  readonly name: string;
  /** Awaited ranks as ranges ("0-7,9"). */
  readonly ranks: string;
  /** Ranks whose task heartbeat must stay fresh while awaited. */
  readonly heartbeats: string;
  readonly what: string;
  readonly by: number;
}

/** done/<key>.json: the data of a completed wait (ranks with null data left out). */
export interface DoneRecord {
  readonly key: string;
  readonly data: Record<string, unknown>;
}

export interface WantStatus {
  readonly of: number;
  readonly arrived: number;
  /** The first missing ranks (at most MISSING_SHOWN). */
  readonly missing?: readonly number[];
  readonly complete?: boolean;
  /** Task heartbeats of the watched ranks (when at most PROGRESS_SHOWN are watched). */
  readonly progress?: Readonly<Record<string, HeartbeatRecord>>;
}

/** status.json: the coordinating rank's summary, rewritten when something changes and every beat interval. */
export interface StatusRecord {
  readonly generation: string;
  /** Changes at every write: the coordinating rank's own heartbeat. */
  readonly seq: number;
  readonly leader: number;
  /** What the coordinating rank is doing. */
  readonly stage: string;
  /** Its task heartbeat, when it runs one. */
  readonly task?: TaskBeat;
  readonly joined: number;
  readonly size: number;
  /** The coordinating rank has left (every rank had left, or a failure ended the run). */
  readonly closed?: boolean;
  /** Ranks that did not join within the join deadline. */
  readonly joinFailure?: { readonly message: string; readonly missing: readonly number[] };
  /** The first failures (own reports first, then by time). */
  readonly failures: readonly FailureRecord[];
  readonly failureCount: number;
  readonly wants: Readonly<Record<string, WantStatus>>;
}

export const MISSING_SHOWN = 12;
export const FAILURES_SHOWN = 8;
export const PROGRESS_SHOWN = 64;
/** Parallel reads of the coordinating rank (beats, markers, tickets). */
export const READ_CONCURRENCY = 64;
/** Marker name every rank publishes when it leaves coordination. */
export const LEFT_MARKER = '_left';

export const NAME_RE = /^[A-Za-z0-9_.-]+$/;

/** Paths under the coordination root and a generation folder. */
export const layout = {
  current: (root: string): string => join(root, 'current.json'),
  tickets: (root: string): string => join(root, 'tickets'),
  ticket: (root: string, rank: number): string => join(root, 'tickets', `rank_${rank}.json`),
  trash: (root: string): string => join(root, 'trash'),
  gens: (root: string): string => join(root, 'gen'),
  gen: (root: string, generation: string): string => join(root, 'gen', generation),
  admitted: (dir: string, rank: number): string => join(dir, 'admitted', `rank_${rank}.json`),
  machine: (dir: string, key: string): string => join(dir, 'machines', `${key}.json`),
  live: (dir: string, rank: number): string => join(dir, 'live', `rank_${rank}.json`),
  markers: (dir: string, name: string): string => join(dir, 'm', name),
  /** Null data: `rank_R` (no need to read it); data: `rank_R.json`. */
  marker: (dir: string, name: string, rank: number, hasData: boolean): string => join(dir, 'm', name, `rank_${rank}${hasData ? '.json' : ''}`),
  want: (dir: string, key: string): string => join(dir, 'want', `${key}.json`),
  done: (dir: string, key: string): string => join(dir, 'done', `${key}.json`),
  failed: (dir: string, rank: number): string => join(dir, 'failed', `rank_${rank}.json`),
  status: (dir: string): string => join(dir, 'status.json'),
  /** Sub-folders the coordinating rank creates in a new generation. */
  subdirs: ['admitted', 'machines', 'live', 'm', join('m', LEFT_MARKER), 'want', 'done', 'failed'] as const,
};

/** The rank of `rank_R.json` or `rank_R`, else undefined. */
export function rankOf(file: string): number | undefined {
  const m = /^rank_(\d+)(\.json)?$/.exec(file);
  return m === null ? undefined : Number(m[1]);
}


/**
 * The key of a wait: the marker name and the awaited ranks ("b~all" for the whole group). Every
 * rank that waits for the same thing computes the same key.
 */
export function wantKey(name: string, ranks: readonly number[], group: readonly number[]): string {
  const r = formatRanges(ranks);
  if (r === formatRanges(group)) return `${name}~all`;
  return `${name}~${createHash('sha1').update(r).digest('hex').slice(0, 12)}`;
}

/** Key of a machine identity ('' stays ''). */
export function machineKeyOf(machine: string): string {
  return machine === '' ? '' : createHash('sha1').update(machine).digest('hex').slice(0, 16);
}

export function secs(ms: number): string {
  return ms >= 10_000 ? `${Math.round(ms / 1000)} s` : `${(ms / 1000).toFixed(1)} s`;
}

export function rankList(ranks: readonly number[], total = ranks.length): string {
  if (ranks.length <= MISSING_SHOWN && total === ranks.length) return ranks.join(', ');
  return `${ranks.slice(0, MISSING_SHOWN).join(', ')}, ... (${total} ranks)`;
}

/** Own reports first, then by time, then by rank. */
export function sortFailures(list: FailureRecord[]): void {
  list.sort((a, b) => Number(a.reportedBy !== undefined) - Number(b.reportedBy !== undefined) || a.time - b.time || a.rank - b.rank);
}

export function describeProgress(h: { stage: string } & TaskProgress): string {
  const parts: string[] = [`'${h.stage}'`];
  if (h.done !== undefined && h.total !== undefined) parts.push(`${h.done}/${h.total}`);
  if (h.label !== undefined) parts.push(h.label);
  return parts.join(' ');
}

/** Message of a rank found dead on its machine (/proc). */
export function diedText(who: { pid: number; host: string }): string {
  return `its process (pid ${who.pid} on ${who.host}) ended without reporting: killed (SIGKILL, out of memory) or crashed`;
}

/** Message of a watched task heartbeat that stopped. */
export function taskStaleText(silentMs: number, limitMs: number, last: TaskBeat | undefined): string {
  const lastText = last !== undefined ? describeProgress(last) : 'no heartbeat at all';
  return `no heartbeat for ${secs(silentMs)} (limit ${secs(limitMs)}; last: ${lastText}): killed (SIGKILL, out of memory), hung, or its node is down`;
}

/** Message of a presence beat that stopped. */
export function presenceStaleText(silentMs: number, limitMs: number, seen: boolean, awaited: string): string {
  const what = seen ? `no new beat for ${secs(silentMs)}` : `none at all for ${secs(silentMs)}`;
  return `${PRESENCE_STALE_TEXT} (${what}, limit ${secs(limitMs)}; awaited: ${awaited}): killed (SIGKILL, out of memory), hung, or its node is down`;
}

/** The error every rank throws for the failures of a generation (the first one named). */
export function failuresError(failures: readonly FailureRecord[], total = failures.length): CoordinationError {
  const first = failures[0] as FailureRecord;
  const where = first.host !== '?' ? ` (host ${first.host}, pid ${first.pid})` : '';
  const rest = failures.slice(1).map((x) => x.rank);
  const others = total > 1 ? `; ${total - 1} more rank(s) failed: ${rest.join(', ')}${total - 1 > rest.length ? ', ...' : ''}` : '';
  const kind: CoordinationFailureKind = first.reportedBy === undefined ? 'failed' : /heartbeat/.test(first.message) ? 'stale' : 'died';
  if (first.reportedBy !== undefined && first.message.startsWith(PRESENCE_STALE_TEXT)) {
    // "rank R (host h, pid p) stopped sending heartbeats during 'stage' (...)"
    const tail = first.message.slice(PRESENCE_STALE_TEXT.length);
    return new CoordinationError(kind, `rank ${first.rank}${where} ${PRESENCE_STALE_TEXT} during '${first.stage}'${tail}${others}`, first.rank, first.message);
  }
  return new CoordinationError(kind, `rank ${first.rank}${where} failed during '${first.stage}': ${first.message}${others}`, first.rank, first.message);
}
