/**
 * Values as mindformers reads them: every document of test/launcher/pyyaml/table.json (what
 * PyYAML's safe_load made of it, recorded by generate.py) is read by msckpt the same way, and a
 * YAML derived from it re-reads (ours, and PyYAML's when python3 has it) with the intended meaning.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  deriveYamlText, loadYamlWithPositions, PyDict, PyFloat, PySet, PyTimestamp, PyTuple, pyFloatRepr, quoteYamlString,
  yamlValue, YamlSyntaxError, type PyValue,
} from '../../plugin/launcher/config/index.js';
import { repoRoot } from '../helpers/fixtures.js';
import { pythonWithPyYaml } from '../helpers/python.js';

interface Case {
  name: string;
  yaml: string;
  pyyaml: unknown;
}
const table = JSON.parse(readFileSync(join(repoRoot, 'test/launcher/pyyaml/table.json'), 'utf8')) as { pyyaml: string; cases: Case[] };

/** One canonical JSON-able form for both sides (floats by value, ints exact, key types kept). */
function canonPy(v: PyValue): unknown {
  if (v === null || typeof v === 'boolean' || typeof v === 'string') return v;
  if (typeof v === 'number') return Number.isInteger(v) ? { int: String(v) } : { float: pyFloatRepr(v) };
  if (typeof v === 'bigint') return { int: String(v) };
  if (v instanceof PyFloat) return { float: pyFloatRepr(v.value) };
  if (v instanceof PyTimestamp) return { [v.kind]: v.iso };
  if (v instanceof Uint8Array) return { bytes: Buffer.from(v).toString('base64') };
  if (v instanceof PyTuple) return { tuple: v.items.map(canonPy) };
  if (v instanceof PySet) return { set: v.items.map(canonPy).map((x) => JSON.stringify(x)).sort() };
  if (v instanceof PyDict) return { map: v.entries.map(([k, x]) => [canonPy(k), canonPy(x)]) };
  return v.map(canonPy);
}

function canonTable(v: unknown): unknown {
  if (v === null || typeof v === 'boolean' || typeof v === 'string') return v;
  if (typeof v === 'number') return { int: String(v) };
  if (Array.isArray(v)) return v.map(canonTable);
  const o = v as Record<string, unknown>;
  if ('$int' in o) return { int: o['$int'] };
  if ('$float' in o) return { float: o['$float'] };
  if ('$date' in o) return { date: o['$date'] };
  if ('$datetime' in o) return { datetime: o['$datetime'] };
  if ('$bytes' in o) return { bytes: o['$bytes'] };
  if ('$tuple' in o) return { tuple: (o['$tuple'] as unknown[]).map(canonTable) };
  if ('$set' in o) return { set: (o['$set'] as unknown[]).map(canonTable).map((x) => JSON.stringify(x)).sort() };
  if ('$map' in o) return { map: (o['$map'] as Array<[unknown, unknown]>).map(([k, x]) => [canonTable(k), canonTable(x)]) };
  return { map: Object.entries(o).map(([k, x]) => [k, canonTable(x)]) };
}

function isError(v: unknown): boolean {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && '$error' in (v as object);
}


describe(`PyYAML ${table.pyyaml} table (${table.cases.length} documents)`, () => {
  it('is generated, covers the resolvers, and has refusals', () => {
    expect(table.cases.length).toBeGreaterThan(50);
    expect(table.cases.filter((c) => isError(c.pyyaml)).length).toBeGreaterThan(5);
  });

  for (const c of table.cases) {
    it(`reads '${c.name}' as PyYAML does`, () => {
      if (isError(c.pyyaml)) {
        expect(() => loadYamlWithPositions(c.yaml, 'case.yaml')).toThrow(YamlSyntaxError);
        return;
      }
      const located = loadYamlWithPositions(c.yaml, 'case.yaml');
      expect(canonPy(located.model)).toEqual(canonTable(c.pyyaml));
    });
  }

  it('reports duplicate keys with both positions', () => {
    const l = loadYamlWithPositions('a: 1\nb: 2\na: 3\np:\n  x: 1\n  x: 2\n', 'd.yaml');
    expect(l.duplicates.map((d) => [d.key, d.first.line, d.position.line])).toEqual([
      ['a', 1, 3],
      ['p.x', 5, 6],
    ]);
    expect((l.doc as Record<string, unknown>)['a']).toBe(3);
    expect(l.locate('a')).toEqual({ line: 3, column: 1 });
  });
});

describe('derived YAMLs re-read with the meaning intended', () => {
  // every scalar the table holds, written by our emitter into a run YAML
  const values: unknown[] = [];
  for (const c of table.cases) {
    if (isError(c.pyyaml)) continue;
    const l = loadYamlWithPositions(c.yaml, 'case.yaml');
    if (l.model instanceof PyDict) for (const [, v] of l.model.entries) values.push(v);
  }
  const tricky = ['yes', 'No', '~', '', '1e-5', '0o17', '017', '1:30', '=', '<<', '2001-12-14', ' lead', 'trail ', 'a: b', '#x', '- x',
    'tab\there', 'nl\nline', '\u0080\u009f\u007f', '\u2028\ufeff', '😀', '"q"', "'s'", '\\back', '@at', '`tick', '%pct', '!bang', '&amp', '*star'];

  it('writes every tricky string and every table value so that it reads back identically', () => {
    const doc = ['load_checkpoint: x', 'auto_trans_ckpt: False', ...tricky.map((s, i) => `s${i}: ${quoteYamlString(s)}`), ...values.map((v, i) => `v${i}: ${yamlValue(v)}`)].join('\n');
    const back = loadYamlWithPositions(doc, 'emitted.yaml');
    const m = back.model as PyDict;
    tricky.forEach((s, i) => expect(m.get(`s${i}`)).toBe(s));
    values.forEach((v, i) => expect(canonPy(m.get(`v${i}`) as PyValue)).toEqual(canonPy(v as PyValue)));
  });

  it('patching keeps every other value and reads back as the user\'s document with the overrides', () => {
    for (const c of table.cases) {
      if (isError(c.pyyaml)) continue;
      const l = loadYamlWithPositions(c.yaml, 'case.yaml');
      if (!(l.model instanceof PyDict)) continue;
      const overrides = { load_checkpoint: '/out/transformed_checkpoint/yes', auto_trans_ckpt: false, extra_key: '1e-5' };
      const derived = deriveYamlText({ text: c.yaml, file: `/cfg/${c.name}.yaml` }, overrides);
      const back = loadYamlWithPositions(derived, 'derived.yaml').model as PyDict;
      const expected = new PyDict();
      for (const [k, v] of l.model.entries) expected.set(k, v);
      for (const [k, v] of Object.entries(overrides)) expected.set(k, v);
      expect(canonPy(back), c.name).toEqual(canonPy(expected));
    }
  });

  it('PyYAML itself reads each derived YAML as intended (python3 + PyYAML)', () => {
    const py = pythonWithPyYaml();
    if (py === null) return;
    const docs: Array<{ derived: string; original: string; overrides: Record<string, unknown> }> = [];
    for (const c of table.cases) {
      if (isError(c.pyyaml)) continue;
      const l = loadYamlWithPositions(c.yaml, 'case.yaml');
      if (!(l.model instanceof PyDict)) continue;
      const overrides = { load_checkpoint: tricky[docs.length % tricky.length]!, auto_trans_ckpt: false, only_save_strategy: true };
      docs.push({ derived: deriveYamlText({ text: c.yaml, file: `/cfg/${c.name}.yaml` }, overrides), original: c.yaml, overrides });
    }
    const script = [
      'import json, sys, yaml',
      'docs = json.load(sys.stdin)',
      'bad = []',
      'for i, d in enumerate(docs):',
      '    want = yaml.safe_load(d["original"])',
      '    want.update(d["overrides"])',
      '    got = yaml.safe_load(d["derived"])',
      '    same = repr(got) == repr(want)',
      '    if not same: bad.append([i, repr(got)[:300], repr(want)[:300]])',
      'print(json.dumps({"n": len(docs), "bad": bad}))',
    ].join('\n');
    const out = JSON.parse(execFileSync(py, ['-c', script], { input: JSON.stringify(docs), encoding: 'utf8', timeout: 60_000 })) as { n: number; bad: unknown[] };
    expect(out.n).toBe(docs.length);
    expect(out.bad).toEqual([]);
  });
});
