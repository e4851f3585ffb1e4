/**
 * YAML loading that remembers where every key is: js-yaml's parse listener reports each node's
 * start; a mapping's children arrive as key, value, key, value, ... so a walk over that tree
 * alongside the parsed value gives `key.path -> line:column` (1-based).
 */
import yaml from 'js-yaml';

export interface SourcePosition {
  /** 1-based line. */
  line: number;
  /** 1-based column. */
  column: number;
}

interface PNode {
  pos: number;
  line: number;
  lineStart: number;
  children: PNode[];
  kind: string | null;
  result: unknown;
}

export interface LocatedYaml {
  /** The parsed document. */
  doc: unknown;
  /** Position of a key path (`a.b[2].c`); the nearest located ancestor, else 1:1. */
  locate(keyPath: string): SourcePosition;
  /** Whether the key path itself has a recorded position. */
  has(keyPath: string): boolean;
  /** Top-level keys in document order with 0-based line and column (for text patching). */
  topLevel: Array<{ key: string; line0: number; column0: number }>;
}

/** A YAML syntax error with its position. */
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

/** Parse YAML text (one document, js-yaml default schema), recording key positions. */
export function loadYamlWithPositions(text: string, filename: string): LocatedYaml {
  const stack: PNode[] = [];
  const roots: PNode[] = [];
  let doc: unknown;
  try {
    doc = yaml.load(text, {
      filename,
      listener(event, state) {
        if (event === 'open') {
          stack.push({ pos: state.position, line: state.line, lineStart: state.lineStart, children: [], kind: null, result: undefined });
        } else {
          const n = stack.pop();
          if (n === undefined) return;
          n.kind = (state.kind as string | null) ?? null;
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
    throw err;
  }

  const positions = new Map<string, SourcePosition>();
  const at = (n: PNode): SourcePosition => ({ line: n.line + 1, column: n.pos - n.lineStart + 1 });
  const walk = (n: PNode, path: string): void => {
    if (n.kind === 'mapping') {
      for (let i = 0; i + 1 < n.children.length; i += 2) {
        const k = n.children[i]!;
        const v = n.children[i + 1]!;
        const key = String(k.result);
        const p = joinKeyPath(path, key);
        if (!positions.has(p)) positions.set(p, at(k));
        walk(v, p);
      }
    } else if (n.kind === 'sequence') {
      n.children.forEach((c, i) => {
        const p = joinKeyPath(path, i);
        positions.set(p, at(c));
        walk(c, p);
      });
    }
  };
  const root = roots.find((r) => r.kind !== null);
  const topLevel: LocatedYaml['topLevel'] = [];
  if (root !== undefined) {
    positions.set('', at(root));
    walk(root, '');
    if (root.kind === 'mapping') {
      for (let i = 0; i + 1 < root.children.length; i += 2) {
        const k = root.children[i]!;
        topLevel.push({ key: String(k.result), line0: k.line, column0: k.pos - k.lineStart });
      }
    }
  }

  return {
    doc,
    topLevel,
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
