/**
 * LoRA tensor names: which entries are LoRA branches, which base weight each pair updates, and
 * which entries are dropped from the merged output.
 *
 * Recognised schemes (hf-mappings.md §6):
 * - mindformers / mindpet: `X.mindpet_delta_lora_a` [r, in] and `X.mindpet_delta_lora_b` [out, r],
 *   base `X.weight`.
 * - PEFT / mcore: `X.lora_A.weight` and `X.lora_B.weight`, base `X.weight` (PEFT checkpoints that
 *   still carry the wrapper use `X.base_layer.weight`, accepted as well).
 *
 * The `base_model.model.` prefix PEFT puts on adapter keys: the base is looked up first with the
 * same prefix state as the LoRA key (`base_model.model.X.weight` for `base_model.model.X.lora_A.weight`),
 * then with the prefix removed or added. When both spellings exist the one with the LoRA key's own
 * prefix state wins, so the lookup is deterministic.
 *
 * Optimizer states of LoRA tensors (`adam_m.<lora name>`, `adam_v.<lora name>`, and the other
 * MindSpore optimizer prefixes below) are dropped with the LoRA tensors. Any other entry whose name
 * looks like a LoRA branch but follows neither scheme is reported as a problem rather than being
 * silently kept or dropped.
 */

import { OPTIMIZER_STATE_PREFIXES, optimizerStatePrefix } from '../formats/param-names.js';

export type LoraScheme = 'mindpet' | 'peft';

/** A LoRA pair and the base weight it merges into. */
export interface LoraPair {
  /** Module path `X` (as it appears in the A key, prefix included). */
  readonly module: string;
  readonly scheme: LoraScheme;
  readonly aName: string;
  readonly bName: string;
  readonly baseName: string;
}

export interface LoraNamePlan {
  /** Pairs in the order their base weights appear. */
  readonly pairs: readonly LoraPair[];
  /** Names of LoRA tensors and their optimizer states: not written to the output. */
  readonly dropped: ReadonlySet<string>;
  /** Every naming problem found (a LoRA tensor with no partner, no base, ...). */
  readonly problems: readonly string[];
}

export const PEFT_PREFIX = 'base_model.model.';

/** Optimizer-state prefixes whose LoRA entries are dropped together with the LoRA tensors. */
export const LORA_OPTIMIZER_PREFIXES: readonly string[] = OPTIMIZER_STATE_PREFIXES;

interface Parsed {
  module: string;
  scheme: LoraScheme;
  side: 'a' | 'b';
}

const MINDPET = /^(.+)\.mindpet_delta_lora_([ab])$/;
const PEFT = /^(.+)\.lora_([AB])\.weight$/;
/** Something that looks like a LoRA branch in any spelling. */
const LORA_LIKE = /(^|[._])lora_[abAB](\.|$)|mindpet_delta_lora|tk_delta_lora/;

function parseLoraName(name: string): Parsed | null {
  let m = MINDPET.exec(name);
  if (m !== null) return { module: m[1] as string, scheme: 'mindpet', side: m[2] as 'a' | 'b' };
  m = PEFT.exec(name);
  if (m !== null) return { module: m[1] as string, scheme: 'peft', side: (m[2] as string).toLowerCase() as 'a' | 'b' };
  return null;
}

/** True when a name is a LoRA branch in some spelling (recognised or not). */
export function isLoraLikeName(name: string): boolean {
  return LORA_LIKE.test(name);
}

const optimizerPrefixOf = optimizerStatePrefix;

/** Candidate base names for a module, in lookup order (see the file comment). */
export function baseCandidates(module: string, scheme: LoraScheme): string[] {
  const stems = [module];
  if (module.startsWith(PEFT_PREFIX)) stems.push(module.slice(PEFT_PREFIX.length));
  else stems.push(PEFT_PREFIX + module);
  const out: string[] = [];
  for (const s of stems) {
    out.push(`${s}.weight`);
    if (scheme === 'peft') out.push(`${s}.base_layer.weight`);
  }
  return out;
}

/**
 * Classify names (in file order): LoRA pairs with their bases, entries to drop, and problems.
 * `has(name)` tells whether a tensor exists in the model.
 */
export function planLoraNames(names: readonly string[]): LoraNamePlan {
  const present = new Set(names);
  const dropped = new Set<string>();
  const problems: string[] = [];
  const halves = new Map<string, { scheme: LoraScheme; a?: string; b?: string }>();

  for (const name of names) {
    const opt = optimizerPrefixOf(name);
    if (opt !== undefined && isLoraLikeName(name.slice(opt.length))) {
      dropped.add(name);
      continue;
    }
    const p = parseLoraName(name);
    if (p === null) {
      if (isLoraLikeName(name)) {
        problems.push(
          `'${name}' looks like a LoRA tensor but follows neither X.mindpet_delta_lora_a/b nor X.lora_A/B.weight`,
        );
      }
      continue;
    }
    dropped.add(name);
    const key = `${p.scheme}\u0000${p.module}`;
    const h = halves.get(key) ?? { scheme: p.scheme };
    if (p.side === 'a') h.a = name;
    else h.b = name;
    halves.set(key, h);
  }

  const byBase = new Map<string, LoraPair>();
  for (const [key, h] of halves) {
    const module = key.slice(key.indexOf('\u0000') + 1);
    if (h.a === undefined || h.b === undefined) {
      const have = (h.a ?? h.b) as string;
      const want = h.a === undefined ? 'A' : 'B';
      problems.push(`'${have}' has no LoRA ${want} partner in the checkpoint`);
      continue;
    }
    const candidates = baseCandidates(module, h.scheme);
    const base = candidates.find((c) => present.has(c));
    if (base === undefined) {
      problems.push(`LoRA pair '${h.a}' has no base weight (looked for ${candidates.map((c) => `'${c}'`).join(', ')})`);
      continue;
    }
    const other = byBase.get(base);
    if (other !== undefined) {
      problems.push(`base weight '${base}' is targeted by two LoRA pairs ('${other.aName}' and '${h.a}')`);
      continue;
    }
    byBase.set(base, { module, scheme: h.scheme, aName: h.a, bName: h.b, baseName: base });
  }
  const order = new Map(names.map((n, i) => [n, i]));
  const pairs = [...byBase.values()].sort((x, y) => (order.get(x.baseName) ?? 0) - (order.get(y.baseName) ?? 0));
  return { pairs, dropped, problems };
}
