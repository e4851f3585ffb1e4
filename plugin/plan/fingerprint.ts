/**
 * A plan's fingerprint: sha256 of its canonical form (JSON with object keys sorted), where each
 * source's index stands as the sha256 of its own canonical JSON. A plan held in memory and the
 * same plan read back from a plan file (indexes stored apart) have the same fingerprint.
 */
import { createHash } from 'node:crypto';
import type { Plan, PlanEntry, PlanSource } from './types.js';

/** JSON with object keys in sorted order (arrays keep their order; undefined members dropped). */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? 'null' : canonicalJson(v))).join(',')}]`;
  const o = value as Record<string, unknown>;
  const keys = Object.keys(o).filter((k) => o[k] !== undefined).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(',')}}`;
}

export function sha256(text: string | Uint8Array): string {
  return createHash('sha256').update(text).digest('hex');
}

const indexHashes = new WeakMap<readonly PlanEntry[], string>();

/** sha256 of the canonical JSON of a source's entries (memoised per entries array). */
export function indexSha256(entries: readonly PlanEntry[]): string {
  let h = indexHashes.get(entries);
  if (h === undefined) {
    h = sha256(canonicalJson(entries));
    indexHashes.set(entries, h);
  }
  return h;
}

/** A source as it stands in the canonical form: without its index, which its hash represents. */
export function sourceHead(s: PlanSource): PlanSource {
  const { entries: _entries, indexRef: _ref, ...head } = s;
  return head;
}

/** The plan without its sources' indexes and without its fingerprint: what the fingerprint covers. */
export function planCore(plan: Omit<Plan, 'fingerprint'> & { fingerprint?: string }): Omit<Plan, 'fingerprint'> {
  const { fingerprint: _f, ...rest } = plan;
  return { ...rest, source: { ...rest.source, files: rest.source.files.map(sourceHead) } };
}

export function planFingerprint(plan: Omit<Plan, 'fingerprint'> & { fingerprint?: string }): string {
  return sha256(canonicalJson(planCore(plan)));
}
