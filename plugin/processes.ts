/**
 * Who is this process, and is another one still alive? A process is identified by its machine
 * (host name + boot id + pid namespace, so containers and machines sharing a host name are not
 * confused) and its pid + start time (so a reused pid is not mistaken for the original).
 * Liveness can only be checked for processes in the same machine identity; other ranks are
 * judged by their heartbeats.
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';

export interface ProcessIdentity {
  /** Host name, for messages. */
  readonly host: string;
  /** Machine identity (host, boot id, pid namespace); empty when it cannot be determined. */
  readonly machine: string;
  readonly pid: number;
  /** Start time of the process in clock ticks since boot (from /proc), or -1. */
  readonly startTime: number;
}

function readOr(path: string, fallback: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return fallback;
  }
}

let cachedMachine: string | undefined;

/**
 * Machine identity string, or '' when /proc does not tell enough to compare pids safely.
 * `MSCKPT_MACHINE_ID` replaces it (processes with different values never check each other's
 * pids; the test stand-in for msrun uses it to make one host look like several nodes).
 */
export function machineIdentity(): string {
  if (cachedMachine !== undefined) return cachedMachine;
  const forced = process.env['MSCKPT_MACHINE_ID'];
  if (forced !== undefined && forced !== '') return (cachedMachine = `forced:${forced}`);
  const boot = readOr('/proc/sys/kernel/random/boot_id', '');
  let ns = '';
  try {
    ns = readlinkSync('/proc/self/ns/pid');
  } catch {
    ns = '';
  }
  cachedMachine = boot !== '' && ns !== '' ? `${hostname()}/${boot}/${ns}` : '';
  return cachedMachine;
}

/** State letter and start time of a process from /proc/<pid>/stat; undefined when gone. */
function procStat(pid: number): { state: string; startTime: number } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // the command name (field 2) is in parentheses and may contain spaces
  const close = text.lastIndexOf(')');
  if (close < 0) return undefined;
  const rest = text.slice(close + 2).split(' ');
  // rest[0] is field 3 (state); starttime is field 22 -> rest[19]
  return { state: rest[0] ?? '?', startTime: Number(rest[19] ?? -1) };
}

export function selfIdentity(): ProcessIdentity {
  const st = procStat(process.pid);
  return { host: hostname(), machine: machineIdentity(), pid: process.pid, startTime: st?.startTime ?? -1 };
}

/**
 * 'alive', 'dead' (gone, a zombie, or the pid now belongs to another process) or 'unknown'
 * (another machine, or no /proc to tell).
 */
export type ProcessState = 'alive' | 'dead' | 'unknown';

export function processState(who: ProcessIdentity): ProcessState {
  const me = machineIdentity();
  if (me === '' || typeof who.machine !== 'string' || who.machine !== me || !Number.isSafeInteger(who.pid)) return 'unknown';
  const st = procStat(who.pid);
  if (st === undefined) return 'dead';
  if (st.state === 'Z' || st.state === 'X') return 'dead';
  if (who.startTime >= 0 && st.startTime !== who.startTime) return 'dead';
  return 'alive';
}
