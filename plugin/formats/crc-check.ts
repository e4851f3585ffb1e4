/**
 * Checking a source's stored CRC-32 (a `.ckpt`'s `crc_num` trailer, a safetensors file's
 * `crc_num` metadata) from the bytes a conversion reads anyway, without reading them twice.
 *
 * A `CrcCoverage` is told every byte range read from the file together with the very buffer the
 * read filled (`note`); it keeps, per covered region, disjoint runs with the CRC-32 of each, and
 * joins adjacent runs with `crc32Combine`. `complete()` walks the covered regions in CRC order,
 * reads only the bytes nobody read (record headers, tensors no destination needs, slices another
 * process reads) and combines everything into the file's CRC. Reads overlapping what is already
 * covered count once.
 *
 * What the stored CRCs cover (spec mindspore-formats §1.6):
 * - `.ckpt`: the protobuf body, bytes [0, body);
 * - safetensors: for every tensor stored in the data section, in sorted name order, the UTF-8
 *   bytes of its name then its bytes (entries held in the metadata are not covered).
 */
import { open } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { InputError } from '../errors.js';
import { crc32Combine } from './atomic.js';

/** The CRC-32 a source file stores about itself. */
export interface StoredCrc {
  /** `ckpt-trailer`: of the body; `safetensors-crc_num`: of name + bytes of each stored tensor, sorted by name. */
  readonly kind: 'ckpt-trailer' | 'safetensors-crc_num';
  readonly value: number;
}

/** A byte range of the file covered by the CRC, in CRC order, preceded (safetensors) by a name's bytes. */
export interface CrcRegion {
  readonly start: number;
  readonly end: number;
  /** Bytes that enter the CRC before the region (a safetensors tensor's name). */
  readonly prefix?: Uint8Array;
}

/** What a completed check found. */
export interface CrcCheckResult {
  readonly file: string;
  readonly kind: StoredCrc['kind'];
  readonly ok: boolean;
  readonly stored: number;
  readonly computed: number;
  /** Bytes covered by the reads the conversion made. */
  readonly coveredBytes: number;
  /** Bytes read only to complete the check. */
  readonly extraBytes: number;
  /** The tensor whose read was noted last before the check completed (null: none was read). */
  readonly lastTensor: string | null;
}

/** Called by a source for every positioned read: the file offset and the bytes it delivered. */
export type ReadObserver = (position: number, bytes: Uint8Array, tensor: string) => void;

interface Run {
  start: number;
  len: number;
  crc: number;
}

/** Most runs kept per file; past it the check reads the whole file at the end (still correct). */
const MAX_RUNS = 1 << 20;
const GAP_PIECE = 8 * 1024 * 1024;

export class CrcCoverage {
  /** Runs per region (sorted by start, disjoint, never crossing a region's ends). */
  private readonly runs: Run[][];
  /** Region indexes sorted by start, and their starts. */
  private readonly order: number[];
  private readonly starts: number[];
  private runCount = 0;
  private overflow = false;
  private covered = 0;
  private last: string | null = null;

  constructor(
    readonly file: string,
    readonly stored: StoredCrc,
    private readonly regions: readonly CrcRegion[],
  ) {
    this.runs = regions.map(() => []);
    // regions are disjoint; searchable by start
    this.order = regions.map((_, i) => i).sort((a, b) => (regions[a] as CrcRegion).start - (regions[b] as CrcRegion).start);
    this.starts = this.order.map((i) => (regions[i] as CrcRegion).start);
  }

  /** Bytes covered by reads so far. */
  get coveredBytes(): number {
    return this.covered;
  }

  /** The observer to hand to the source (a bound `note`). */
  readonly observer: ReadObserver = (position, bytes, tensor) => this.note(position, bytes, tensor);

  /** A read of `bytes` at file offset `position` (the buffer the read filled, before anyone changes it). */
  note(position: number, bytes: Uint8Array, tensor: string): void {
    if (bytes.byteLength === 0) return;
    this.last = tensor;
    if (this.overflow) return;
    let p = position;
    let off = 0;
    const end = position + bytes.byteLength;
    while (p < end) {
      const ri = this.regionAt(p);
      if (ri < 0) {
        // outside every region (not covered by the CRC): skip to the next region start
        const next = this.nextRegionStart(p);
        if (next === null || next >= end) return;
        off += next - p;
        p = next;
        continue;
      }
      const r = this.regions[ri] as CrcRegion;
      const stop = Math.min(end, r.end);
      this.insert(ri, p, bytes.subarray(off, off + (stop - p)));
      off += stop - p;
      p = stop;
    }
  }

  /** Position in `order` of the last region starting at or before p (-1: none). */
  private lastStartingBy(p: number): number {
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.starts[mid] as number) <= p) lo = mid + 1;
      else hi = mid;
    }
    return lo - 1;
  }

  private regionAt(p: number): number {
    // zero-length regions share their start with the next one: look back over them
    for (let k = this.lastStartingBy(p); k >= 0; k--) {
      const i = this.order[k] as number;
      const r = this.regions[i] as CrcRegion;
      if (p < r.end) return i;
      if (r.end > r.start) break;
    }
    return -1;
  }

  private nextRegionStart(p: number): number | null {
    const k = this.lastStartingBy(p) + 1;
    return k < this.starts.length ? (this.starts[k] as number) : null;
  }

  /** Add the bytes of [p, p + data.length) not yet covered, as runs of region `ri`. */
  private insert(ri: number, p: number, data: Uint8Array): void {
    const runs = this.runs[ri] as Run[];
    const end = p + data.byteLength;
    // first run that ends after p
    let lo = 0;
    let hi = runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const m = runs[mid] as Run;
      if (m.start + m.len <= p) lo = mid + 1;
      else hi = mid;
    }
    let i = lo;
    let at = p;
    while (at < end) {
      const next = runs[i];
      if (next !== undefined && next.start <= at) {
        // covered already: skip past this run
        at = Math.min(end, next.start + next.len);
        i++;
        continue;
      }
      const gapEnd = next === undefined ? end : Math.min(end, next.start);
      const piece = data.subarray(at - p, gapEnd - p);
      const crc = crc32(piece, 0) >>> 0;
      this.covered += piece.byteLength;
      const prev = i > 0 ? (runs[i - 1] as Run) : undefined;
      if (prev !== undefined && prev.start + prev.len === at) {
        prev.crc = crc32Combine(prev.crc, crc, piece.byteLength);
        prev.len += piece.byteLength;
      } else {
        runs.splice(i, 0, { start: at, len: piece.byteLength, crc });
        this.runCount++;
        i++;
      }
      // join with the following run when they now touch
      const cur = runs[i - 1] as Run;
      const after = runs[i];
      if (after !== undefined && cur.start + cur.len === after.start) {
        cur.crc = crc32Combine(cur.crc, after.crc, after.len);
        cur.len += after.len;
        runs.splice(i, 1);
        this.runCount--;
        at = gapEnd;
        continue;
      }
      at = gapEnd;
    }
    if (this.runCount > MAX_RUNS) {
      this.overflow = true;
      for (const list of this.runs) list.length = 0;
      this.covered = 0;
    }
  }

  /**
   * Read what no read covered and compute the file's CRC. The file is opened by path (the
   * caller's handles may be closed by now).
   */
  async complete(): Promise<CrcCheckResult> {
    const fh = await open(this.file, 'r');
    let extra = 0;
    let crc = 0;
    const buf = Buffer.allocUnsafe(GAP_PIECE);
    const readGap = async (from: number, to: number): Promise<void> => {
      for (let pos = from; pos < to; ) {
        const n = Math.min(buf.byteLength, to - pos);
        let done = 0;
        while (done < n) {
          const { bytesRead } = await fh.read(buf, done, n - done, pos + done);
          if (bytesRead === 0) throw new Error(`${this.file}: file ended at byte ${pos + done} while checking its CRC`);
          done += bytesRead;
        }
        crc = crc32(buf.subarray(0, n), crc) >>> 0;
        extra += n;
        pos += n;
      }
    };
    try {
      for (let ri = 0; ri < this.regions.length; ri++) {
        const r = this.regions[ri] as CrcRegion;
        if (r.prefix !== undefined && r.prefix.byteLength > 0) crc = crc32(r.prefix, crc) >>> 0;
        let at = r.start;
        for (const run of this.runs[ri] as Run[]) {
          if (run.start > at) await readGap(at, run.start);
          crc = crc32Combine(crc, run.crc, run.len);
          at = run.start + run.len;
        }
        if (at < r.end) await readGap(at, r.end);
      }
    } finally {
      await fh.close();
    }
    return {
      file: this.file, kind: this.stored.kind, ok: crc === this.stored.value >>> 0, stored: this.stored.value >>> 0, computed: crc >>> 0,
      coveredBytes: this.covered, extraBytes: extra, lastTensor: this.last,
    };
  }
}

/** Code-unit order of names (MindSpore sorts keys as Python strings; the writer uses the same order). */
function byCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The regions a stored CRC covers, from what an index knows: the body of a `.ckpt`; the stored
 * tensors of a single safetensors file (name then bytes, sorted by name).
 */
export function crcRegionsOf(
  stored: StoredCrc,
  body: number,
  tensors: ReadonlyArray<{ readonly name: string; readonly offset: number; readonly byteLength: number }>,
): CrcRegion[] {
  if (stored.kind === 'ckpt-trailer') return [{ start: 0, end: body }];
  return [...tensors]
    .sort((a, b) => byCodeUnits(a.name, b.name))
    .map((t) => ({ start: t.offset, end: t.offset + t.byteLength, prefix: Buffer.from(t.name, 'utf8') }));
}

/** A source whose bytes do not match the CRC it stores: bad input (exit 2). */
export class SourceCrcMismatch extends InputError {
  constructor(
    readonly result: CrcCheckResult,
    /** The plan's source rank of the file, when known. */
    readonly sourceRank?: number,
  ) {
    super(
      `checked against ${describeStored(result)}: CRC-32 ${hex(result.computed)} of its bytes differs from the stored ${hex(result.stored)}; the file is damaged` +
        (result.lastTensor !== null ? ` (found once tensor '${result.lastTensor}' was read)` : ''),
      { file: result.file },
    );
  }
}

function hex(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

function describeStored(r: CrcCheckResult): string {
  return r.kind === 'safetensors-crc_num' ? 'the crc_num in its metadata' : 'its crc_num trailer';
}
