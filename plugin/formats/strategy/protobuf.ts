/**
 * Protobuf encoding of a parallel strategy (`mindspore.straspb.ParallelStrategyMap`, spec §2.1).
 *
 * The schema is `schemas/strategy.proto`, loaded by protobufjs at run time; field numbers and
 * types are taken from its reflection (and checked against what this codec expects). Decoding and
 * encoding are done by a small schema-specific codec rather than protobufjs messages: a merged
 * strategy of a large pipeline job has hundreds of thousands of layout items, and building
 * protobufjs message objects for them costs ~20x more time and memory than reading the fields
 * straight into the model.
 *
 * Decoding checks every wire type and every length against the end of its message (InputError
 * with a byte offset); unknown fields are skipped; required fields that old files lack read as 0.
 * Encoding writes what MindSpore's C++ writer writes: fields in number order, repeated scalars
 * unpacked, negative int32 as 10-byte varints, required fields always present.
 */
import protobuf from 'protobufjs';
import { InputError } from '../../errors.js';
import { packageFile } from '../../package-files.js';
import type { ParamLayout, Strategy, StrategyItem, TensorMapEntry } from './model.js';
import { makeStrategy, splitStageName, stagedName } from './names.js';

const PACKAGE = 'mindspore.straspb';

/** Path of `schemas/strategy.proto` (found from source and from a compiled dist/ alike). */
export function strategySchemaPath(): string {
  return packageFile('schemas/strategy.proto');
}

let rootCache: protobuf.Root | null = null;

/** The strategy schema as a protobufjs Root (`mindspore.straspb.*`). */
export function loadStrategySchema(): protobuf.Root {
  rootCache ??= protobuf.loadSync(strategySchemaPath());
  return rootCache;
}

/** Field numbers, from the .proto. */
interface Ids {
  psDim: number;
  pssStage: number;
  pssStrategy: number;
  itemName: number;
  itemStrategys: number;
  devDim: number;
  mapDim: number;
  splitDim: number;
  offsetDim: number;
  lDev: number;
  lMap: number;
  lSplit: number;
  lOffset: number;
  lField: number;
  lStep: number;
  lSize: number;
  layoutName: number;
  layoutLayouts: number;
  current: number;
  items: number;
  layouts: number;
}

let idsCache: Ids | null = null;

function ids(): Ids {
  if (idsCache !== null) return idsCache;
  const root = loadStrategySchema();
  const f = (typeName: string, field: string, type: string, repeated: boolean): number => {
    const t = root.lookupType(`${PACKAGE}.${typeName}`);
    const fd = t.fields[field];
    const ok = fd !== undefined && (fd.type === type || fd.type.endsWith(`.${type}`) || fd.type === type.split('.').pop()) && fd.repeated === repeated;
    if (!ok || fd.id >= 16) throw new Error(`schemas/strategy.proto: ${typeName}.${field} is not the expected ${repeated ? 'repeated ' : ''}${type} with a field number below 16`);
    return fd.id;
  };
  idsCache = {
    psDim: f('ParallelStrategy', 'dim', 'uint32', true),
    pssStage: f('ParallelStrategys', 'stage', 'uint32', false),
    pssStrategy: f('ParallelStrategys', 'parallelStrategy', 'ParallelStrategy', true),
    itemName: f('ParallelStrategyItem', 'nodeName', 'string', false),
    itemStrategys: f('ParallelStrategyItem', 'parallelStrategys', 'ParallelStrategys', false),
    devDim: f('DevMatrix', 'dim', 'uint32', true),
    mapDim: f('TensorMap', 'dim', 'int32', true),
    splitDim: f('ParamSplitShape', 'dim', 'int64', true),
    offsetDim: f('IndicesOffset', 'dim', 'int64', true),
    lDev: f('ParallelLayouts', 'devMatrix', 'DevMatrix', true),
    lMap: f('ParallelLayouts', 'tensorMap', 'TensorMap', true),
    lSplit: f('ParallelLayouts', 'paramSplitShape', 'ParamSplitShape', true),
    lOffset: f('ParallelLayouts', 'indicesOffset', 'IndicesOffset', true),
    lField: f('ParallelLayouts', 'field', 'int32', false),
    lStep: f('ParallelLayouts', 'optWeightShardStep', 'int32', false),
    lSize: f('ParallelLayouts', 'optWeightShardSize', 'int32', false),
    layoutName: f('ParallelLayoutItem', 'paramName', 'string', false),
    layoutLayouts: f('ParallelLayoutItem', 'parallelLayouts', 'ParallelLayouts', false),
    current: f('ParallelStrategyMap', 'currentStage', 'uint32', false),
    items: f('ParallelStrategyMap', 'parallelStrategyItem', 'ParallelStrategyItem', true),
    layouts: f('ParallelStrategyMap', 'parallelLayoutItem', 'ParallelLayoutItem', true),
  };
  return idsCache;
}

// ------------------------------------------------------------------------------------------------
// Decoding

const TWO32 = 4294967296;

type Kind = 'uint32' | 'int32' | 'int64';

class Decoder {
  pos = 0;
  /** Low and high 32 bits of the last varint. */
  lo = 0;
  hi = 0;
  /** The same bytes as a Buffer, for fast UTF-8 decoding. */
  readonly text: Buffer;
  constructor(
    readonly bytes: Uint8Array,
    readonly file: string,
  ) {
    this.text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  fail(message: string, offset: number): never {
    throw new InputError(message, { file: this.file, offset });
  }

  varint(end: number): void {
    const b = this.bytes;
    const start = this.pos;
    let lo = 0;
    let hi = 0;
    let p = this.pos;
    for (let i = 0; ; i++) {
      if (p >= end) this.fail('truncated varint', p);
      if (i === 10) this.fail('varint longer than 10 bytes', start);
      const byte = b[p++] as number;
      if (i < 4) lo |= (byte & 0x7f) << (7 * i);
      else if (i === 4) {
        lo |= (byte & 0x0f) << 28;
        hi |= (byte & 0x7f) >>> 4;
      } else hi |= (byte & 0x7f) << (7 * i - 32);
      if ((byte & 0x80) === 0) {
        if (i === 9 && byte > 1) this.fail('varint overflows 64 bits', start);
        break;
      }
    }
    this.pos = p;
    this.lo = lo >>> 0;
    this.hi = hi >>> 0;
  }

  /** A length or tag: a non-negative value below 2^31. */
  small(end: number, what: string): number {
    const at = this.pos;
    this.varint(end);
    if (this.hi !== 0 || this.lo >= 0x80000000) this.fail(`${what} ${this.hi * TWO32 + this.lo} is too large`, at);
    return this.lo;
  }

  value(kind: Kind, at: number): number {
    if (kind === 'uint32') return this.lo;
    if (kind === 'int32') return this.lo | 0;
    // int64
    if ((this.hi & 0x80000000) !== 0) {
      const v = -((~this.hi >>> 0) * TWO32 + (~this.lo >>> 0) + 1);
      if (!Number.isSafeInteger(v)) this.fail('int64 value below -2^53', at);
      return v;
    }
    const v = this.hi * TWO32 + this.lo;
    if (!Number.isSafeInteger(v)) this.fail('int64 value above 2^53', at);
    return v;
  }

  /** Skip a field of an unknown number. */
  skip(wire: number, end: number, tagAt: number, fieldNo: number): void {
    switch (wire) {
      case 0:
        this.varint(end);
        return;
      case 1:
        this.pos += 8;
        break;
      case 5:
        this.pos += 4;
        break;
      case 2:
        this.pos += this.small(end, 'length');
        break;
      default:
        this.fail(`unsupported wire type ${wire} (field ${fieldNo})`, tagAt);
    }
    if (this.pos > end) this.fail(`field ${fieldNo} runs past the end of its message`, tagAt);
  }

  /** Position of the last tag read. */
  tagAt = 0;

  /** Read a field tag; returns [fieldNo << 3 | wire] (a non-zero field number is checked). */
  tag(end: number): number {
    this.tagAt = this.pos;
    const t = this.small(end, 'tag');
    if (t >>> 3 === 0) this.fail('field number 0', this.tagAt);
    return t;
  }

  /** Start of a length-delimited field: returns its end. */
  sub(end: number, tagAt: number, what: string, wire: number): number {
    if (wire !== 2) this.fail(`${what} has wire type ${wire}, expected 2; not a strategy file?`, tagAt);
    const len = this.small(end, 'length');
    if (len > end - this.pos) this.fail(`length ${len} of ${what} runs past the end of its message (${end - this.pos} bytes left)`, tagAt);
    return this.pos + len;
  }

  scalar(end: number, tagAt: number, what: string, wire: number, kind: Kind): number {
    if (wire !== 0) this.fail(`${what} has wire type ${wire}, expected 0; not a strategy file?`, tagAt);
    const at = this.pos;
    this.varint(end);
    return this.value(kind, at);
  }

  /** One element (unpacked) or a packed run of a repeated scalar, appended to `out`. */
  repeated(end: number, tagAt: number, what: string, wire: number, kind: Kind, out: number[]): void {
    if (wire === 0) {
      const at = this.pos;
      this.varint(end);
      out.push(this.value(kind, at));
      return;
    }
    if (wire !== 2) this.fail(`${what} has wire type ${wire}, expected 0 or 2; not a strategy file?`, tagAt);
    const stop = this.sub(end, tagAt, what, wire);
    while (this.pos < stop) {
      const at = this.pos;
      this.varint(stop);
      out.push(this.value(kind, at));
    }
  }

  string(end: number, tagAt: number, what: string, wire: number): string {
    const stop = this.sub(end, tagAt, what, wire);
    const s = this.text.toString('utf8', this.pos, stop);
    this.pos = stop;
    return s;
  }

  /** A message whose only field is `repeated <kind> dim`. */
  dims(end: number, tagAt: number, what: string, wire: number, fieldId: number, kind: Kind): number[] {
    const stop = this.sub(end, tagAt, what, wire);
    const out: number[] = [];
    while (this.pos < stop) {
      const t = this.tag(stop);
      if (t >>> 3 === fieldId) this.repeated(stop, this.tagAt, what, t & 7, kind, out);
      else this.skip(t & 7, stop, this.tagAt, t >>> 3);
    }
    return out;
  }
}

/** Decode protobuf strategy bytes into the model. */
export function decodeStrategyProtobuf(bytes: Uint8Array, file: string): Strategy {
  const id = ids();
  const d = new Decoder(bytes, file);
  const total = bytes.byteLength;
  let currentStage = 0;
  let merged = false;
  const items: StrategyItem[] = [];
  const layouts: ParamLayout[] = [];

  const readItem = (end: number): StrategyItem => {
    let nodeName = '';
    let stage = 0;
    const strategies: number[][] = [];
    while (d.pos < end) {
      const t = d.tag(end);
      const no = t >>> 3;
      const w = t & 7;
      if (no === id.itemName) nodeName = d.string(end, d.tagAt, 'ParallelStrategyItem.node_name', w);
      else if (no === id.itemStrategys) {
        const stop = d.sub(end, d.tagAt, 'ParallelStrategyItem.parallel_strategys', w);
        while (d.pos < stop) {
          const t2 = d.tag(stop);
          const n2 = t2 >>> 3;
          const w2 = t2 & 7;
          if (n2 === id.pssStage) stage = d.scalar(stop, d.tagAt, 'ParallelStrategys.stage', w2, 'uint32');
          else if (n2 === id.pssStrategy) strategies.push(d.dims(stop, d.tagAt, 'ParallelStrategys.parallel_strategy', w2, id.psDim, 'uint32'));
          else d.skip(w2, stop, d.tagAt, n2);
        }
      } else d.skip(w, end, d.tagAt, no);
    }
    return { nodeName, stage, strategies };
  };

  const readLayout = (end: number): ParamLayout => {
    let full = '';
    let devMatrix: number[] | null = null;
    const maps: number[][] = [];
    let paramSplitShape: number[] | null = null;
    let indicesOffset: number[] | null = null;
    let field = 0;
    let optShardStep = 0;
    let optShardSize = 0;
    while (d.pos < end) {
      const t = d.tag(end);
      const no = t >>> 3;
      const w = t & 7;
      if (no === id.layoutName) {
        full = d.string(end, d.tagAt, 'ParallelLayoutItem.param_name', w);
        continue;
      }
      if (no !== id.layoutLayouts) {
        d.skip(w, end, d.tagAt, no);
        continue;
      }
      const stop = d.sub(end, d.tagAt, 'ParallelLayoutItem.parallel_layouts', w);
      while (d.pos < stop) {
        const t2 = d.tag(stop);
        const n2 = t2 >>> 3;
        const w2 = t2 & 7;
        const at = d.tagAt;
        if (n2 === id.lDev) {
          const v = d.dims(stop, at, 'ParallelLayouts.dev_matrix', w2, id.devDim, 'uint32');
          devMatrix ??= v; // MindSpore writes exactly one; the reader uses the first
        } else if (n2 === id.lMap) {
          maps.push(d.dims(stop, at, 'ParallelLayouts.tensor_map', w2, id.mapDim, 'int32'));
        } else if (n2 === id.lSplit) {
          const v = d.dims(stop, at, 'ParallelLayouts.param_split_shape', w2, id.splitDim, 'int64');
          paramSplitShape ??= v;
        } else if (n2 === id.lOffset) {
          const v = d.dims(stop, at, 'ParallelLayouts.indices_offset', w2, id.offsetDim, 'int64');
          indicesOffset ??= v;
        } else if (n2 === id.lField) {
          field = d.scalar(stop, at, 'ParallelLayouts.field', w2, 'int32');
        } else if (n2 === id.lStep) {
          optShardStep = d.scalar(stop, at, 'ParallelLayouts.opt_weight_shard_step', w2, 'int32');
        } else if (n2 === id.lSize) {
          optShardSize = d.scalar(stop, at, 'ParallelLayouts.opt_weight_shard_size', w2, 'int32');
        } else {
          d.skip(w2, stop, at, n2);
        }
      }
    }
    const { stage, name, prefixed } = splitStageName(full);
    if (prefixed) merged = true;
    let tensorMap: TensorMapEntry[];
    if (maps.length <= 1) {
      tensorMap = maps[0] ?? [];
    } else {
      // Layout API: one TensorMap per tensor dim; a 1-dim tensor gets an extra empty one.
      if ((maps[maps.length - 1] as number[]).length === 0) maps.pop();
      tensorMap = maps;
    }
    return {
      name,
      stage,
      devMatrix: devMatrix ?? [],
      tensorMap,
      paramSplitShape: paramSplitShape ?? [],
      indicesOffset: indicesOffset ?? [],
      field,
      optShardStep,
      optShardSize,
    };
  };

  while (d.pos < total) {
    const t = d.tag(total);
    const no = t >>> 3;
    const w = t & 7;
    if (no === id.current) currentStage = d.scalar(total, d.tagAt, 'ParallelStrategyMap.current_stage', w, 'uint32');
    else if (no === id.items) items.push(readItem(d.sub(total, d.tagAt, 'ParallelStrategyMap.parallel_strategy_item', w)));
    else if (no === id.layouts) layouts.push(readLayout(d.sub(total, d.tagAt, 'ParallelStrategyMap.parallel_layout_item', w)));
    else d.skip(w, total, d.tagAt, no);
  }
  return makeStrategy({ currentStage, layouts, items, path: file, merged });
}

// ------------------------------------------------------------------------------------------------
// Encoding

/** Bytes of a varint; negative values (int32/int64 two's complement) take 10. */
function vsize(v: number): number {
  if (v < 0) return 10;
  let n = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

class Encoder {
  buf: Buffer;
  pos = 0;
  constructor(size: number) {
    this.buf = Buffer.alloc(size);
  }
  text(s: string, byteLength: number): void {
    this.buf.write(s, this.pos, byteLength, 'utf8');
    this.pos += byteLength;
  }
  byte(b: number): void {
    this.buf[this.pos++] = b;
  }
  varint(v: number): void {
    const b = this.buf;
    if (v < 0) {
      // 64-bit two's complement, 10 bytes
      const h = Math.floor(v / TWO32);
      let lo = (v - h * TWO32) >>> 0;
      let hi = h >>> 0;
      for (let i = 0; i < 9; i++) {
        b[this.pos++] = (lo & 0x7f) | 0x80;
        lo = (lo >>> 7) | ((hi & 0x7f) << 25);
        hi >>>= 7;
      }
      b[this.pos++] = lo & 0x01;
      return;
    }
    while (v >= 128) {
      b[this.pos++] = (v % 128) | 0x80;
      v = Math.floor(v / 128);
    }
    b[this.pos++] = v;
  }
}


function dimsBody(dims: readonly number[]): number {
  let n = 0;
  for (const x of dims) n += 1 + vsize(x);
  return n;
}

function tensorMapLists(map: readonly TensorMapEntry[]): number[][] {
  if (!map.some((e) => Array.isArray(e))) return [map as number[]];
  const out = map.map((e) => (typeof e === 'number' ? [e] : [...e]));
  if (out.length === 1) out.push([]);
  return out;
}

function intOk(v: number, kind: Kind): boolean {
  if (kind === 'uint32') return (v >>> 0) === v;
  if (kind === 'int32') return (v | 0) === v;
  return Number.isSafeInteger(v);
}

/** Throw unless every value fits `kind`; `what` builds the message only on failure. */
function checkInts(values: readonly number[], kind: Kind, what: () => string): void {
  for (const v of values) if (!intOk(v, kind)) throw new InputError(`${what()}: ${v} is not a valid ${kind}`);
}

function checkInt(v: number, kind: Kind, what: () => string): void {
  if (!intOk(v, kind)) throw new InputError(`${what()}: ${v} is not a valid ${kind}`);
}

/** Encode the model as MindSpore's protobuf bytes (field order as MindSpore writes it). */
export function encodeStrategyProtobuf(strategy: Strategy): Uint8Array {
  const id = ids();
  const tag = (no: number, wire: number): number => (no << 3) | wire;
  const prefix = strategy.merged || strategy.layouts.some((l) => l.stage !== 0);

  // pass 1: sizes
  const itemPlans = strategy.items.map((it) => {
    checkInt(it.stage, 'uint32', () => `stage of '${it.nodeName}'`);
    const name = Buffer.byteLength(it.nodeName, 'utf8');
    const ps = it.strategies.map((s) => {
      checkInts(s, 'uint32', () => `strategy of '${it.nodeName}'`);
      return dimsBody(s);
    });
    let pss = 1 + vsize(it.stage);
    for (const b of ps) pss += 1 + vsize(b) + b;
    const body = 1 + vsize(name) + name + 1 + vsize(pss) + pss;
    return { name, ps, pss, body };
  });
  const layoutPlans = strategy.layouts.map((l) => {
    const nameText = prefix ? stagedName(l.stage, l.name) : l.name;
    checkInts(l.devMatrix, 'uint32', () => `dev_matrix of '${nameText}'`);
    const maps = tensorMapLists(l.tensorMap);
    for (const m of maps) checkInts(m, 'int32', () => `tensor_map of '${nameText}'`);
    checkInts(l.paramSplitShape, 'int64', () => `param_split_shape of '${nameText}'`);
    checkInts(l.indicesOffset, 'int64', () => `indices_offset of '${nameText}'`);
    checkInts([l.field, l.optShardStep, l.optShardSize], 'int32', () => `field / opt_weight_shard_step / opt_weight_shard_size of '${nameText}'`);
    const name = Buffer.byteLength(nameText, 'utf8');
    const dev = dimsBody(l.devMatrix);
    const mapBodies = maps.map(dimsBody);
    const split = dimsBody(l.paramSplitShape);
    const off = dimsBody(l.indicesOffset);
    let lay = 1 + vsize(dev) + dev;
    for (const b of mapBodies) lay += 1 + vsize(b) + b;
    lay += 1 + vsize(split) + split + 1 + vsize(off) + off;
    lay += 1 + vsize(l.field) + 1 + vsize(l.optShardStep) + 1 + vsize(l.optShardSize);
    const body = 1 + vsize(name) + name + 1 + vsize(lay) + lay;
    return { l, nameText, name, maps, dev, mapBodies, split, off, lay, body };
  });
  checkInt(strategy.currentStage, 'uint32', () => 'current_stage');
  let total = 1 + vsize(strategy.currentStage);
  for (const p of itemPlans) total += 1 + vsize(p.body) + p.body;
  for (const p of layoutPlans) total += 1 + vsize(p.body) + p.body;

  // pass 2: bytes
  const e = new Encoder(total);
  const dims = (no: number, body: number, values: readonly number[], dimId: number): void => {
    e.byte(tag(no, 2));
    e.varint(body);
    for (const x of values) {
      e.byte(tag(dimId, 0));
      e.varint(x);
    }
  };
  e.byte(tag(id.current, 0));
  e.varint(strategy.currentStage);
  strategy.items.forEach((it, i) => {
    const p = itemPlans[i] as (typeof itemPlans)[number];
    e.byte(tag(id.items, 2));
    e.varint(p.body);
    e.byte(tag(id.itemName, 2));
    e.varint(p.name);
    e.text(it.nodeName, p.name);
    e.byte(tag(id.itemStrategys, 2));
    e.varint(p.pss);
    e.byte(tag(id.pssStage, 0));
    e.varint(it.stage);
    it.strategies.forEach((s, k) => dims(id.pssStrategy, p.ps[k] as number, s, id.psDim));
  });
  for (const p of layoutPlans) {
    const l = p.l;
    e.byte(tag(id.layouts, 2));
    e.varint(p.body);
    e.byte(tag(id.layoutName, 2));
    e.varint(p.name);
    e.text(p.nameText, p.name);
    e.byte(tag(id.layoutLayouts, 2));
    e.varint(p.lay);
    dims(id.lDev, p.dev, l.devMatrix, id.devDim);
    p.maps.forEach((m, k) => dims(id.lMap, p.mapBodies[k] as number, m, id.mapDim));
    dims(id.lSplit, p.split, l.paramSplitShape, id.splitDim);
    dims(id.lOffset, p.off, l.indicesOffset, id.offsetDim);
    e.byte(tag(id.lField, 0));
    e.varint(l.field);
    e.byte(tag(id.lStep, 0));
    e.varint(l.optShardStep);
    e.byte(tag(id.lSize, 0));
    e.varint(l.optShardSize);
  }
  if (e.pos !== total) throw new Error(`strategy encoder: wrote ${e.pos} bytes, planned ${total}`);
  return new Uint8Array(e.buf.buffer, e.buf.byteOffset, e.buf.byteLength);
}
