/**
 * Run YAMLs read as mindformers reads them: `yaml.safe_load` of PyYAML (YAML 1.1 resolvers), and
 * written back so that PyYAML reads what we meant.
 *
 * js-yaml does the scanning and parsing; a schema of our own reproduces PyYAML's implicit
 * resolvers and SafeConstructor (`yes/no/on/off` booleans, `1e-5` a string but `1.0e-5` a float,
 * `017` octal but `0o17` a string, sexagesimal `1:30`, timestamps, merge keys `<<`, `=`), and the
 * document is rebuilt from js-yaml's parse events with Python's dict semantics (typed keys,
 * the last duplicate key wins, merge keys flattened as PyYAML does). Every key path remembers
 * its position, and duplicate keys are reported.
 *
 * Values: str -> string, int -> number (bigint beyond 2^53), float -> number when it has a
 * fraction, else a PyFloat box (so `2.0` is never taken for the int `2`), timestamps ->
 * PyTimestamp, `!!binary` -> Uint8Array, `!!set` -> PySet, `!!omap`/`!!pairs` -> PyTuple lists,
 * mappings -> plain objects keyed by Python's `str()` of each key (`model` is the typed tree).
 *
 * The table test/launcher/pyyaml/table.json (made with PyYAML by generate.py) pins all of it.
 */
import yaml from 'js-yaml';

// ---------------------------------------------------------------------------------------------
// Python values that JavaScript has no exact counterpart for

/** A Python float whose value is integral (`2.0`, `-0.0`, `1.0e+5`): kept apart from ints. */
export class PyFloat {
  constructor(readonly value: number) {}
  valueOf(): number {
    return this.value;
  }
  toString(): string {
    return pyFloatRepr(this.value);
  }
}

/** A `datetime.date` (`iso` = YYYY-MM-DD) or `datetime.datetime` (`iso` = Python's isoformat()). */
export class PyTimestamp {
  constructor(
    readonly kind: 'date' | 'datetime',
    readonly iso: string,
  ) {}
  toString(): string {
    return this.kind === 'date' ? this.iso : this.iso.replace('T', ' ');
  }
}

/** A Python tuple (PyYAML's `!!omap` and `!!pairs` give lists of them). */
export class PyTuple {
  constructor(readonly items: PyValue[]) {}
}

/** A Python set (`!!set`). */
export class PySet {
  constructor(readonly items: PyValue[]) {}
}

/** A Python dict: entries in insertion order, keys compared as Python compares them. */
export class PyDict {
  readonly entries: Array<[PyValue, PyValue]> = [];
  get(key: PyValue): PyValue | undefined {
    const i = this.indexOf(key);
    return i < 0 ? undefined : this.entries[i]![1];
  }
  indexOf(key: PyValue): number {
    return this.entries.findIndex(([k]) => pyKeyEquals(k, key));
  }
  /** dict[key] = value: a key already present keeps its place and takes the new value. */
  set(key: PyValue, value: PyValue): void {
    const i = this.indexOf(key);
    if (i < 0) this.entries.push([key, value]);
    else this.entries[i] = [this.entries[i]![0], value];
  }
}

export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | PyFloat
  | PyTimestamp
  | Uint8Array
  | PyTuple
  | PySet
  | PyDict
  | PyValue[];

/** Python's repr() of a float (`1e-05`, `100000.0`, `inf`, `nan`, `-0.0`). */
export function pyFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'nan';
  if (x === Infinity) return 'inf';
  if (x === -Infinity) return '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mant, expText] = x.toExponential().split('e') as [string, string];
  const exp = Number(expText);
  const neg = mant.startsWith('-');
  const digits = mant.replace('-', '').replace('.', '');
  let body: string;
  if (exp >= -4 && exp < 16) {
    if (exp >= digits.length - 1) body = `${digits}${'0'.repeat(exp - digits.length + 1)}.0`;
    else if (exp >= 0) body = `${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
    else body = `0.${'0'.repeat(-exp - 1)}${digits}`;
  } else {
    const m = digits.length === 1 ? digits : `${digits[0]}.${digits.slice(1)}`;
    body = `${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  return neg ? `-${body}` : body;
}

/** Numeric value of a Python number (bool, int, float), else undefined. */
function pyNumeric(v: PyValue): number | bigint | undefined {
  if (typeof v === 'boolean') return v ? 1 : 0;
  if (typeof v === 'number' || typeof v === 'bigint') return v;
  if (v instanceof PyFloat) return v.value;
  return undefined;
}

/** Python's `a == b` for hashable dict keys (1 == 1.0 == True). */
export function pyKeyEquals(a: PyValue, b: PyValue): boolean {
  const na = pyNumeric(a);
  const nb = pyNumeric(b);
  if (na !== undefined || nb !== undefined) {
    if (na === undefined || nb === undefined) return false;
    if (typeof na === 'bigint' || typeof nb === 'bigint') {
      const ia = typeof na === 'bigint' ? na : Number.isInteger(na) ? BigInt(na) : undefined;
      const ib = typeof nb === 'bigint' ? nb : Number.isInteger(nb) ? BigInt(nb) : undefined;
      return ia !== undefined && ib !== undefined && ia === ib;
    }
    return na === nb;
  }
  if (a instanceof PyTimestamp && b instanceof PyTimestamp) return a.kind === b.kind && a.iso === b.iso;
  if (a instanceof PyTuple && b instanceof PyTuple) {
    return a.items.length === b.items.length && a.items.every((x, i) => pyKeyEquals(x, b.items[i]!));
  }
  return a === b;
}

/** Python's str() of a dict key, used as the key of the plain document. */
export function pyStr(v: PyValue): string {
  if (v === null) return 'None';
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : pyFloatRepr(v);
  if (typeof v === 'bigint' || typeof v === 'string') return String(v);
  if (v instanceof PyFloat || v instanceof PyTimestamp) return v.toString();
  if (v instanceof PyTuple) return `(${v.items.map(pyStr).join(', ')}${v.items.length === 1 ? ',' : ''})`;
  return String(v);
}

// ---------------------------------------------------------------------------------------------
// PyYAML's resolvers and constructors as a js-yaml schema

/** Raised where PyYAML raises (ConstructorError, ValueError): the document cannot be read. */
export class PyYamlValueError extends Error {}

const BOOL_RE = /^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$/;
const FLOAT_RE =
  /^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$/;
const INT_RE = /^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$/;
const NULL_RE = /^(?:~|null|Null|NULL|)$/;
const TIMESTAMP_RE =
  /^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$/;
const TIMESTAMP_PARTS =
  /^([0-9]{4})-([0-9][0-9]?)-([0-9][0-9]?)(?:(?:[Tt]|[ \t]+)([0-9][0-9]?):([0-9][0-9]):([0-9][0-9])(?:\.([0-9]*))?(?:[ \t]*(Z|([-+])([0-9][0-9]?)(?::([0-9][0-9]))?))?)?$/;

/** Python's int(text, base) for the digits PyYAML hands it; throws like Python on bad digits. */
function parseIntBase(text: string, base: 2 | 8 | 10 | 16): number | bigint {
  const valid = { 2: /^[01]+$/, 8: /^[0-7]+$/, 10: /^[0-9]+$/, 16: /^[0-9a-fA-F]+$/ }[base];
  if (!valid.test(text)) throw new PyYamlValueError(`invalid literal for int() with base ${base}: '${text}'`);
  const prefix = { 2: '0b', 8: '0o', 10: '', 16: '0x' }[base];
  const big = BigInt(prefix + text);
  return bigOrNumber(big);
}

function bigOrNumber(v: bigint): number | bigint {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v;
}

function negate(v: number | bigint, sign: number): number | bigint {
  if (sign > 0) return v;
  return typeof v === 'bigint' ? bigOrNumber(-v) : v === 0 ? 0 : -v;
}

/** SafeConstructor.construct_yaml_int. */
export function constructInt(text: string): number | bigint {
  let value = text.replace(/_/g, '');
  let sign = 1;
  if (value[0] === '-') sign = -1;
  if (value[0] === '+' || value[0] === '-') value = value.slice(1);
  if (value === '') throw new PyYamlValueError(`invalid literal for int(): '${text}'`);
  if (value === '0') return 0;
  if (value.startsWith('0b')) return negate(parseIntBase(value.slice(2), 2), sign);
  if (value.startsWith('0x')) return negate(parseIntBase(value.slice(2), 16), sign);
  if (value[0] === '0') return negate(parseIntBase(value, 8), sign);
  if (value.includes(':')) {
    let total = 0n;
    let base = 1n;
    for (const part of value.split(':').reverse()) {
      total += BigInt(parseIntBase(part, 10)) * base;
      base *= 60n;
    }
    return negate(bigOrNumber(total), sign);
  }
  return negate(parseIntBase(value, 10), sign);
}

/** Python's float(text) for the forms PyYAML hands it. */
function pythonFloat(text: string): number {
  const t = text.trim().toLowerCase();
  if (/^[-+]?(inf|infinity)$/.test(t)) return t.startsWith('-') ? -Infinity : Infinity;
  if (/^[-+]?nan$/.test(t)) return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/.test(t)) throw new PyYamlValueError(`could not convert string to float: '${text}'`);
  return Number(t);
}

/** SafeConstructor.construct_yaml_float, boxed when integral. */
export function constructFloat(text: string): number | PyFloat {
  let value = text.replace(/_/g, '').toLowerCase();
  let sign = 1;
  if (value[0] === '-') sign = -1;
  if (value[0] === '+' || value[0] === '-') value = value.slice(1);
  let x: number;
  if (value === '.inf') x = sign * Infinity;
  else if (value === '.nan') x = NaN;
  else if (value.includes(':')) {
    let total = 0;
    let base = 1;
    for (const part of value.split(':').reverse()) {
      total += pythonFloat(part) * base;
      base *= 60;
    }
    x = sign * total;
  } else x = sign * pythonFloat(value);
  return Number.isInteger(x) || Object.is(x, -0) ? new PyFloat(x) : x;
}

const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/** SafeConstructor.construct_yaml_timestamp (datetime.date / datetime.datetime, checked as Python checks). */
export function constructTimestamp(text: string): PyTimestamp {
  const m = TIMESTAMP_PARTS.exec(text);
  if (m === null) throw new PyYamlValueError(`not a timestamp: '${text}'`);
  const year = Number(m[1]);
  const month = Number(m[2]);
  const day = Number(m[3]);
  const leap = (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
  if (year < 1) throw new PyYamlValueError(`year ${year} is out of range`);
  if (month < 1 || month > 12) throw new PyYamlValueError('month must be in 1..12');
  const dim = month === 2 && leap ? 29 : DAYS_IN_MONTH[month - 1]!;
  if (day < 1 || day > dim) throw new PyYamlValueError('day is out of range for month');
  const p2 = (n: number): string => String(n).padStart(2, '0');
  const date = `${String(year).padStart(4, '0')}-${p2(month)}-${p2(day)}`;
  if (m[4] === undefined) return new PyTimestamp('date', date);
  const hour = Number(m[4]);
  const minute = Number(m[5]);
  const second = Number(m[6]);
  if (hour > 23) throw new PyYamlValueError('hour must be in 0..23');
  if (minute > 59) throw new PyYamlValueError('minute must be in 0..59');
  if (second > 59) throw new PyYamlValueError('second must be in 0..59');
  let iso = `${date}T${p2(hour)}:${p2(minute)}:${p2(second)}`;
  const fraction = m[7] !== undefined && m[7] !== '' ? Number(m[7].slice(0, 6).padEnd(6, '0')) : 0;
  if (fraction !== 0) iso += `.${String(fraction).padStart(6, '0')}`;
  if (m[9] !== undefined) {
    const tzHour = Number(m[10]);
    const tzMinute = Number(m[11] ?? 0);
    let total = tzHour * 60 + tzMinute;
    if (total >= 24 * 60) throw new PyYamlValueError('offset must be a timedelta strictly between -timedelta(hours=24) and timedelta(hours=24)');
    if (m[9] === '-' && total !== 0) total = -total;
    const a = Math.abs(total);
    iso += `${total < 0 ? '-' : '+'}${p2(Math.floor(a / 60))}:${p2(a % 60)}`;
  } else if (m[8] === 'Z') iso += '+00:00';
  return new PyTimestamp('datetime', iso);
}

/** `=` (tag:yaml.org,2002:value): PyYAML turns it into the string '=' as a key and refuses it as a value. */
const VALUE_SENTINEL = Object.freeze({ pyyamlValueTag: true });

/** Implicit for plain scalars (regex), explicit for `!!tag` (whatever the constructor takes). */
function scalarType(tag: string, re: RegExp, construct: (s: string) => unknown): yaml.Type {
  return new yaml.Type(tag, {
    kind: 'scalar',
    resolve: (data: unknown, explicitTag?: string): boolean => {
      if (typeof data !== 'string' && data !== null) return false;
      const s = data ?? '';
      if (explicitTag === undefined) return re.test(s);
      try {
        construct(s);
        return true;
      } catch {
        return false;
      }
    },
    construct: (data: unknown) => construct((data as string | null) ?? ''),
  });
}

const T = 'tag:yaml.org,2002:';
const PY_NULL = scalarType(`${T}null`, NULL_RE, () => null);
const PY_BOOL = scalarType(`${T}bool`, BOOL_RE, (s) => {
  const v = { yes: true, no: false, true: true, false: false, on: true, off: false }[s.toLowerCase()];
  if (v === undefined) throw new PyYamlValueError(`not a boolean: '${s}'`);
  return v;
});
const PY_INT = scalarType(`${T}int`, INT_RE, constructInt);
const PY_FLOAT = scalarType(`${T}float`, FLOAT_RE, constructFloat);
const PY_TIMESTAMP = scalarType(`${T}timestamp`, TIMESTAMP_RE, constructTimestamp);
const PY_MERGE = new yaml.Type(`${T}merge`, { kind: 'scalar', resolve: (d: unknown) => d === '<<' });
const PY_VALUE = new yaml.Type(`${T}value`, { kind: 'scalar', resolve: (d: unknown) => d === '=', construct: () => VALUE_SENTINEL });
const PY_OMAP = new yaml.Type(`${T}omap`, { kind: 'sequence' });
const PY_PAIRS = new yaml.Type(`${T}pairs`, { kind: 'sequence' });
const PY_SET = new yaml.Type(`${T}set`, { kind: 'mapping' });
const PY_BINARY = new yaml.Type(`${T}binary`, {
  kind: 'scalar',
  resolve: (d: unknown) => d === null || (typeof d === 'string' && /^[\x00-\x7f]*$/.test(d)),
  // base64.decodebytes: characters outside the alphabet are skipped
  construct: (d: unknown) => new Uint8Array(Buffer.from(((d as string | null) ?? '').replace(/[^A-Za-z0-9+/=]/g, ''), 'base64')),
});

/**
 * PyYAML SafeLoader's resolvers in its order of trial (bool, float, int, merge, null, timestamp,
 * value; the first that matches wins), on js-yaml's failsafe str/seq/map.
 */
export const PYYAML_SCHEMA = yaml.FAILSAFE_SCHEMA.extend({
  implicit: [PY_BOOL, PY_FLOAT, PY_INT, PY_MERGE, PY_NULL, PY_TIMESTAMP, PY_VALUE],
  explicit: [PY_BINARY, PY_OMAP, PY_PAIRS, PY_SET],
});

// ---------------------------------------------------------------------------------------------
// Loading with positions

export interface SourcePosition {
  /** 1-based line. */
  line: number;
  /** 1-based column. */
  column: number;
}

/** A key that appears more than once in one mapping (PyYAML keeps the last). */
export interface DuplicateKey {
  /** Key path of the mapping entry. */
  key: string;
  /** Where the later occurrence is. */
  position: SourcePosition;
  /** Where the first occurrence is. */
  first: SourcePosition;
}

export interface LocatedYaml {
  /** The document as plain JavaScript (keys: Python's str() of each key). */
  doc: unknown;
  /** The document as Python sees it (typed keys). */
  model: PyValue;
  /** Position of a key path (`a.b[2].c`); the nearest located ancestor, else 1:1. */
  locate(keyPath: string): SourcePosition;
  /** Whether the key path itself has a recorded position. */
  has(keyPath: string): boolean;
  /** Top-level keys in document order (duplicates included) with 0-based line and column. */
  topLevel: Array<{ key: string; line0: number; column0: number }>;
  /** Keys given more than once in a mapping. */
  duplicates: DuplicateKey[];
}

/** A document PyYAML cannot read, with the position of the problem. */
export class YamlSyntaxError extends Error {
  readonly position: SourcePosition;
  readonly reason: string;
  constructor(reason: string, position: SourcePosition) {
    super(reason);
    this.reason = reason;
    this.position = position;
  }
}

export function joinKeyPath(parent: string, key: string | number): string {
  if (typeof key === 'number') return `${parent}[${key}]`;
  return parent === '' ? key : `${parent}.${key}`;
}

interface PNode {
  pos: number;
  line: number;
  lineStart: number;
  children: PNode[];
  kind: string | null;
  tag: string | null;
  result: unknown;
}

const MERGE_TAG = `${T}merge`;

/** Parse YAML text as PyYAML's safe_load would, recording key positions and duplicate keys. */
export function loadYamlWithPositions(text: string, filename: string): LocatedYaml {
  // PyYAML's Reader refuses these anywhere in the stream, quoted or not
  const bad = /[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/u.exec(text);
  if (bad !== null) {
    const before = text.slice(0, bad.index);
    const line = before.split('\n').length;
    const column = bad.index - before.lastIndexOf('\n');
    throw new YamlSyntaxError(`unacceptable character #x${bad[0].codePointAt(0)!.toString(16).padStart(4, '0')}: special characters are not allowed`, { line, column });
  }
  const stack: PNode[] = [];
  const roots: PNode[] = [];
  try {
    yaml.load(text, {
      filename,
      schema: PYYAML_SCHEMA,
      json: true, // duplicate keys: the last one stands, as in PyYAML
      listener(event, state) {
        if (event === 'open') {
          stack.push({ pos: state.position, line: state.line, lineStart: state.lineStart, children: [], kind: null, tag: null, result: undefined });
        } else {
          const n = stack.pop();
          if (n === undefined) return;
          n.kind = (state.kind as string | null) ?? null;
          n.tag = ((state as unknown as { tag?: string | null }).tag as string | null) ?? null;
          n.result = state.result as unknown;
          const parent = stack[stack.length - 1];
          if (parent !== undefined) parent.children.push(n);
          else roots.push(n);
        }
      },
    });
  } catch (err) {
    if (err instanceof yaml.YAMLException) {
      const m = err.mark as yaml.Mark | undefined;
      throw new YamlSyntaxError(err.reason || err.message, { line: (m?.line ?? 0) + 1, column: (m?.column ?? 0) + 1 });
    }
    if (err instanceof PyYamlValueError) throw new YamlSyntaxError(err.message, { line: 1, column: 1 });
    throw err;
  }

  const at = (n: PNode): SourcePosition => ({ line: n.line + 1, column: n.pos - n.lineStart + 1 });
  const positions = new Map<string, SourcePosition>();
  const duplicates: DuplicateKey[] = [];
  // js-yaml hands an alias the anchored value itself; its Python model is looked up here
  const modelOf = new WeakMap<object, PyValue>();
  const fail = (n: PNode, why: string): never => {
    throw new YamlSyntaxError(why, at(n));
  };

  // js-yaml reads some nodes twice, as a would-be mapping key first (a plain scalar in a block
  // sequence, a flow mapping): the outer node then wraps one inner node with the same result, and
  // the inner one holds the tag it resolved and the children
  const unwrap = (n0: PNode): PNode => {
    let n = n0;
    while (n.children.length === 1 && n.children[0]!.result === n.result && n.children[0]!.kind === n.kind) {
      const inner = n.children[0]!;
      n = n.tag !== null && inner.tag === null ? { ...inner, tag: n.tag } : inner;
    }
    return n;
  };

  const build = (n0: PNode, path: string): PyValue => {
    const n = unwrap(n0);
    let model: PyValue;
    if (n.kind === 'mapping' && n.tag === `${T}set`) {
      model = new PySet(pairsOf(n, path).map(([k]) => k));
    } else if (n.kind === 'mapping') {
      model = buildMapping(n, path);
    } else if (n.kind === 'sequence' && (n.tag === `${T}omap` || n.tag === `${T}pairs`)) {
      model = n.children.map((c, i) => {
        const item = build(c, joinKeyPath(path, i));
        if (!(item instanceof PyDict) || item.entries.length !== 1) fail(c, `expected a single mapping item, but found ${describeNode(c)}`);
        const [k, v] = (item as PyDict).entries[0]!;
        return new PyTuple([k, v]);
      });
    } else if (n.kind === 'sequence') {
      model = n.children.map((c, i) => {
        const p = joinKeyPath(path, i);
        positions.set(p, at(c));
        return build(c, p);
      });
    } else {
      model = scalarModel(n);
    }
    if (model !== null && typeof model === 'object' && n.result !== null && typeof n.result === 'object') {
      modelOf.set(n.result as object, model);
    }
    return model;
  };

  const scalarModel = (n0: PNode): PyValue => {
    const n = unwrap(n0);
    const r = n.result;
    if (r === VALUE_SENTINEL) fail(n, "could not determine a constructor for the tag 'tag:yaml.org,2002:value' (a bare '=')");
    if (n.tag === MERGE_TAG) fail(n, "could not determine a constructor for the tag 'tag:yaml.org,2002:merge' (a '<<' that is not a key)");
    if (r !== null && typeof r === 'object') {
      const known = modelOf.get(r);
      if (known !== undefined) return known;
      if (r instanceof PyFloat || r instanceof PyTimestamp || r instanceof Uint8Array) return r;
      fail(n, 'unexpected value');
    }
    if (r === undefined) return null;
    // PyYAML resolves a scalar tagged with the non-specific `!` as if it were plain
    if (n.tag === '!' && typeof r === 'string') return resolvePlain(r, n);
    return r as PyValue;
  };

  const resolvePlain = (s: string, n: PNode): PyValue => {
    for (const t of [PY_BOOL, PY_FLOAT, PY_INT, PY_MERGE, PY_NULL, PY_TIMESTAMP, PY_VALUE]) {
      if (t.resolve(s)) {
        const v = t.construct(s) as PyValue | typeof VALUE_SENTINEL;
        if (v === VALUE_SENTINEL || t === PY_MERGE) fail(n, `could not determine a constructor for the tag '${(t as unknown as { tag: string }).tag}'`);
        return v as PyValue;
      }
    }
    return s;
  };

  const describeNode = (n: PNode): string => (n.kind === null ? 'a scalar' : `a ${n.kind}`);

  // the (key, value) pairs of a mapping node, merge keys flattened as PyYAML's flatten_mapping does
  const pairsOf = (n: PNode, path: string): Array<[PyValue, PyValue, PNode | null]> => {
    const merged: Array<[PyValue, PyValue, PNode | null]> = [];
    const own: Array<[PyValue, PyValue, PNode | null]> = [];
    for (let i = 0; i + 1 < n.children.length; i += 2) {
      const kn = n.children[i]!;
      const vn = n.children[i + 1]!;
      if (kn.tag === MERGE_TAG) {
        const v = build(vn, path);
        if (v instanceof PyDict) merged.push(...v.entries.map(([a, b]): [PyValue, PyValue, null] => [a, b, null]));
        else if (Array.isArray(v)) {
          const subs: Array<Array<[PyValue, PyValue]>> = [];
          for (const item of v) {
            if (!(item instanceof PyDict)) fail(vn, 'expected a mapping for merging, but found a non-mapping');
            subs.push((item as PyDict).entries);
          }
          for (const s of subs.reverse()) merged.push(...s.map(([a, b]): [PyValue, PyValue, null] => [a, b, null]));
        } else fail(vn, `expected a mapping or list of mappings for merging, but found ${describeNode(vn)}`);
        continue;
      }
      const k = kn.result === VALUE_SENTINEL ? '=' : build(kn, path);
      if (Array.isArray(k) || k instanceof PyDict || k instanceof PySet) fail(kn, 'found unhashable key');
      const p = joinKeyPath(path, pyStr(k));
      const v = build(vn, p);
      own.push([k, v, kn]);
    }
    return [...merged, ...own];
  };

  const buildMapping = (n: PNode, path: string): PyDict => {
    const dict = new PyDict();
    // where each entry was first given explicitly (merged entries have no position)
    const givenAt = new Map<number, SourcePosition>();
    for (const [k, v, kn] of pairsOf(n, path)) {
      const before = dict.indexOf(k);
      dict.set(k, v);
      if (kn === null) continue;
      const i = before >= 0 ? before : dict.entries.length - 1;
      const p = joinKeyPath(path, pyStr(k));
      const first = givenAt.get(i);
      if (first !== undefined) duplicates.push({ key: p, position: at(kn), first });
      else givenAt.set(i, at(kn));
      // the position of the entry that stands (the last one given)
      positions.set(p, at(kn));
    }
    return dict;
  };

  const root = roots[0];
  const topLevel: LocatedYaml['topLevel'] = [];
  let model: PyValue = null;
  if (root !== undefined) {
    positions.set('', at(root));
    try {
      model = build(root, '');
    } catch (err) {
      if (err instanceof PyYamlValueError) throw new YamlSyntaxError(err.message, at(root));
      throw err;
    }
    const top = unwrap(root);
    if (top.kind === 'mapping') {
      for (let i = 0; i + 1 < top.children.length; i += 2) {
        const k = top.children[i]!;
        if (k.tag === MERGE_TAG) continue;
        topLevel.push({ key: k.result === VALUE_SENTINEL ? '=' : pyStr(scalarModel(k)), line0: k.line, column0: k.pos - k.lineStart });
      }
    }
  }
  duplicates.sort((a, b) => a.position.line - b.position.line || a.position.column - b.position.column);

  return {
    doc: toPlain(model),
    model,
    topLevel,
    duplicates,
    has: (p) => positions.has(p),
    locate(keyPath) {
      let p = keyPath;
      for (;;) {
        const hit = positions.get(p);
        if (hit !== undefined) return hit;
        if (p === '') return { line: 1, column: 1 };
        const dot = Math.max(p.lastIndexOf('.'), p.lastIndexOf('['));
        p = dot < 0 ? '' : p.slice(0, dot);
      }
    },
  };
}

/** PyYAML's reading of a YAML text (no positions); throws YamlSyntaxError where PyYAML raises. */
export function loadPyYaml(text: string, filename = '<yaml>'): unknown {
  return loadYamlWithPositions(text, filename).doc;
}

/** The plain JavaScript form of a Python value: dicts become objects keyed by str(key). */
export function toPlain(v: PyValue): unknown {
  if (Array.isArray(v)) return v.map(toPlain);
  if (v instanceof PyDict) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of v.entries) Object.defineProperty(out, pyStr(k), { value: toPlain(x), enumerable: true, writable: true, configurable: true });
    return out;
  }
  if (v instanceof PyTuple) return v.items.map(toPlain);
  return v;
}

/** The value at a dotted key path of a Python model (dict keys compared as strings, by str()). */
export function modelAt(model: PyValue, keyPath: string): PyValue | undefined {
  if (keyPath === '') return model;
  let cur: PyValue | undefined = model;
  for (const seg of keyPath.split('.')) {
    if (!(cur instanceof PyDict)) return undefined;
    cur = cur.entries.find(([k]) => pyStr(k) === seg)?.[1];
  }
  return cur;
}

// ---------------------------------------------------------------------------------------------
// Writing values PyYAML reads back as meant

// PyYAML's reader refuses these characters in a stream; inside double quotes they are escaped
const NEEDS_ESCAPE = /[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]|[\\"\x09\x0A\x0D\x85\u2028\u2029\uFEFF]/gu;

/** A double-quoted YAML string: PyYAML reads exactly `s`, whatever it contains. */
export function quoteYamlString(s: string): string {
  return `"${s.replace(NEEDS_ESCAPE, (c) => {
    switch (c) {
      case '\\':
        return '\\\\';
      case '"':
        return '\\"';
      case '\t':
        return '\\t';
      case '\n':
        return '\\n';
      case '\r':
        return '\\r';
      default: {
        const cp = c.codePointAt(0)!;
        if (cp <= 0xff) return `\\x${cp.toString(16).padStart(2, '0')}`;
        if (cp <= 0xffff) return `\\u${cp.toString(16).padStart(4, '0')}`;
        return `\\U${cp.toString(16).padStart(8, '0')}`;
      }
    }
  })}"`;
}

/** A float as PyYAML's float resolver reads it: always a dot, a signed exponent (`1.0e-05`). */
export function yamlFloat(x: number): string {
  if (Number.isNaN(x)) return '.nan';
  if (x === Infinity) return '.inf';
  if (x === -Infinity) return '-.inf';
  const r = pyFloatRepr(x);
  const m = /^(-?)(\d+)(?:\.(\d+))?e([-+]\d+)$/.exec(r);
  if (m !== null) return `${m[1]}${m[2]}.${m[3] ?? '0'}e${m[4]}`;
  return r;
}

/**
 * A value in YAML flow form that PyYAML reads back as the same Python value: strings always
 * double-quoted, floats with a dot and signed exponent, dicts/lists in flow style.
 */
export function yamlValue(v: unknown): string {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (typeof v === 'bigint') return String(v);
  if (typeof v === 'number') return Number.isInteger(v) && !Object.is(v, -0) ? String(v) : yamlFloat(v);
  if (typeof v === 'string') return quoteYamlString(v);
  if (v instanceof PyFloat) return yamlFloat(v.value);
  if (v instanceof PyTimestamp) return v.iso;
  if (v instanceof Uint8Array) return `!!binary ${quoteYamlString(Buffer.from(v).toString('base64'))}`;
  if (v instanceof PyTuple) throw new TypeError('a tuple outside !!pairs cannot be written as YAML');
  if (v instanceof PySet) return `!!set {${v.items.map((k) => `${yamlValue(k)}: null`).join(', ')}}`;
  if (v instanceof PyDict) return `{${v.entries.map(([k, x]) => `${yamlValue(k)}: ${yamlValue(x)}`).join(', ')}}`;
  if (Array.isArray(v) && v.length > 0 && v.every((x) => x instanceof PyTuple && x.items.length === 2)) {
    // PyYAML's !!omap and !!pairs give lists of (key, value) tuples; !!pairs reads back as such
    return `!!pairs [${(v as PyTuple[]).map((t) => `{${yamlValue(t.items[0])}: ${yamlValue(t.items[1])}}`).join(', ')}]`;
  }
  if (Array.isArray(v)) return `[${v.map(yamlValue).join(', ')}]`;
  if (typeof v === 'object') {
    return `{${Object.entries(v as Record<string, unknown>).map(([k, x]) => `${quoteYamlString(k)}: ${yamlValue(x)}`).join(', ')}}`;
  }
  throw new TypeError(`cannot write ${typeof v} as YAML`);
}

/** A top-level `key: value` line. */
export function yamlEntry(key: string, value: unknown): string {
  const plainKey = /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) && !BOOL_RE.test(key) && !NULL_RE.test(key) ? key : quoteYamlString(key);
  return `${plainKey}: ${yamlValue(value)}`;
}

// ---------------------------------------------------------------------------------------------
// Equality of meaning

/** True when two Python values mean the same (same types, equal values; NaN equals NaN; dicts unordered). */
export function pyEquals(a: PyValue, b: PyValue): boolean {
  const kind = (v: PyValue): string => {
    if (v === null) return 'none';
    if (typeof v === 'number') return Number.isInteger(v) ? 'int' : 'float';
    if (typeof v === 'bigint') return 'int';
    if (v instanceof PyFloat) return 'float';
    if (Array.isArray(v)) return 'list';
    return typeof v === 'object' ? v.constructor.name : typeof v;
  };
  const ka = kind(a);
  if (ka !== kind(b)) return false;
  switch (ka) {
    case 'int':
      return BigInt(a as number | bigint) === BigInt(b as number | bigint);
    case 'float': {
      const x = typeof a === 'number' ? a : (a as PyFloat).value;
      const y = typeof b === 'number' ? b : (b as PyFloat).value;
      return Object.is(x, y) || x === y;
    }
    case 'list':
      return (a as PyValue[]).length === (b as PyValue[]).length && (a as PyValue[]).every((x, i) => pyEquals(x, (b as PyValue[])[i]!));
    case 'PyTuple':
    case 'PySet': {
      const xa = (a as PyTuple).items;
      const xb = (b as PyTuple).items;
      return xa.length === xb.length && xa.every((x, i) => pyEquals(x, xb[i]!));
    }
    case 'PyDict': {
      const da = a as PyDict;
      const db = b as PyDict;
      if (da.entries.length !== db.entries.length) return false;
      return da.entries.every(([k, v]) => {
        const i = db.indexOf(k);
        return i >= 0 && pyEquals(db.entries[i]![0], k) && pyEquals(db.entries[i]![1], v);
      });
    }
    case 'PyTimestamp':
      return (a as PyTimestamp).kind === (b as PyTimestamp).kind && (a as PyTimestamp).iso === (b as PyTimestamp).iso;
    case 'Uint8Array':
      return Buffer.from(a as Uint8Array).equals(Buffer.from(b as Uint8Array));
    default:
      return a === b;
  }
}
