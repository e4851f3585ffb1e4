/**
 * Derived run YAMLs: the user's document with a few top-level keys changed, written so that
 * PyYAML (mindformers) reads every other value exactly as in the user's file.
 *
 * The user's text is patched in place (comments and layout survive): the last occurrence of a
 * changed key is replaced, a new key is appended. The result is re-read with the PyYAML reader
 * and compared with the intended document; a document that cannot be patched (flow style,
 * indented top level, document markers in the way) is written out whole instead, every value in
 * a form PyYAML reads back unchanged. Relative `base_config` entries are made absolute, since the
 * derived file lives elsewhere (mindformers resolves them against the YAML's folder).
 */
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { FailureError } from '../../errors.js';
import { loadYamlWithPositions, pyEquals, PyDict, yamlEntry, yamlValue, type LocatedYaml, type PyValue } from './pyyaml.js';

/** The parts of a run configuration a derivation needs. */
export interface DerivationSource {
  /** The YAML text as read. */
  text: string;
  /** Its path (named in the header; base_config entries resolve against its folder). */
  file: string;
}

/** The intended document: the user's top-level dict with `overrides` applied (undefined removes). */
function intended(model: PyDict, overrides: Record<string, unknown>): PyDict {
  const out = new PyDict();
  for (const [k, v] of model.entries) out.set(k, v);
  for (const [k, v] of Object.entries(overrides)) {
    const i = out.indexOf(k);
    if (v === undefined) {
      if (i >= 0) out.entries.splice(i, 1);
    } else out.set(k, v as PyValue);
  }
  return out;
}

function readsAs(text: string, file: string, want: PyDict): boolean {
  try {
    return pyEquals(loadYamlWithPositions(text, file).model, want);
  } catch {
    return false;
  }
}

function patch(text: string, located: LocatedYaml, overrides: Record<string, unknown>): string | null {
  if (located.topLevel.some((t) => t.column0 !== 0)) return null;
  const eol = text.includes('\r\n') ? '\r\n' : '\n';
  const lines = text.split(/\r?\n/);
  const tops = located.topLevel;
  // line range of each top-level entry: [start, end) without trailing blank/comment lines
  const ranges = tops.map((t, i) => {
    const start = t.line0;
    let end = i + 1 < tops.length ? tops[i + 1]!.line0 : lines.length;
    while (end > start + 1 && /^\s*(#.*)?$/.test(lines[end - 1]!)) end--;
    return { key: t.key, start, end };
  });
  const replace = new Map<number, { end: number; text: string | null }>();
  const appended: string[] = [];
  for (const [key, value] of Object.entries(overrides)) {
    const mine = ranges.filter((r) => r.key === key);
    const entry = value === undefined ? null : yamlEntry(key, value);
    if (mine.length === 0) {
      if (entry !== null) appended.push(entry);
      continue;
    }
    // PyYAML keeps the last occurrence: replace it (remove every occurrence when the key goes)
    for (const r of value === undefined ? mine : mine.slice(-1)) replace.set(r.start, { end: r.end, text: entry });
  }
  const out: string[] = [];
  for (let i = 0; i < lines.length; ) {
    const rep = replace.get(i);
    if (rep !== undefined) {
      if (rep.text !== null) out.push(rep.text);
      i = rep.end;
    } else {
      out.push(lines[i]!);
      i++;
    }
  }
  while (out.length > 0 && out[out.length - 1] === '') out.pop();
  out.push(...appended);
  return out.join(eol) + eol;
}

/** The whole intended document, every value in a form PyYAML reads back unchanged. */
function dumpWhole(want: PyDict): string {
  return want.entries.map(([k, v]) => (typeof k === 'string' ? yamlEntry(k, v) : `${yamlValue(k)}: ${yamlValue(v)}`)).join('\n') + '\n';
}

/**
 * YAML text for a derived run: `source`'s document with top-level `overrides` applied
 * (`undefined` removes a key), every other value read by PyYAML as in the source.
 */
export function deriveYamlText(source: DerivationSource, overrides: Record<string, unknown>): string {
  for (const k of Object.keys(overrides)) {
    if (k.includes('.')) throw new TypeError(`derived YAMLs change top-level keys only, got '${k}'`);
  }
  const text = source.text.replace(/^\uFEFF/, '');
  const located = loadYamlWithPositions(text, source.file);
  const model = located.model instanceof PyDict ? located.model : new PyDict();
  const want = intended(model, overrides);
  const changed = Object.keys(overrides);
  const header = `# Derived by msckpt from ${source.file.replace(/[\r\n]/g, ' ')}; changed: ${changed.join(', ') || 'nothing'}. Regenerated at every launch.\n`;
  if (located.model instanceof PyDict) {
    const patched = patch(text, located, overrides);
    if (patched !== null && readsAs(header + patched, source.file, want)) return header + patched;
  }
  const whole = header + dumpWhole(want);
  if (!readsAs(whole, source.file, want)) {
    throw new FailureError(`cannot write a derived copy of ${source.file} that PyYAML reads as intended`);
  }
  return whole;
}

/**
 * `base_config` as mindformers resolves it (`os.path.join(dirname(yaml), entry)`), made absolute
 * for a derived file that lives in another folder; undefined when there is nothing to change.
 */
export function absoluteBaseConfig(raw: Record<string, unknown>, file: string): string | string[] | undefined {
  const base = raw['base_config'];
  const absOf = (b: string): string => (isAbsolute(b) ? b : resolve(join(dirname(file), b)));
  if (typeof base === 'string') return isAbsolute(base) ? undefined : absOf(base);
  if (Array.isArray(base) && base.every((b) => typeof b === 'string')) {
    return base.some((b) => !isAbsolute(b as string)) ? (base as string[]).map(absOf) : undefined;
  }
  return undefined;
}

/**
 * The derived YAML of a run: the user's document with `overrides` (top-level keys), relative
 * base_config entries made absolute. The caller writes it (atomically, next to the outputs);
 * the user's YAML is never modified.
 */
export function deriveRunConfig(cfg: { raw: Record<string, unknown>; text: string; file: string }, overrides: Record<string, unknown>): string {
  const base = absoluteBaseConfig(cfg.raw, cfg.file);
  return deriveYamlText(cfg, base === undefined ? overrides : { ...overrides, base_config: base });
}
