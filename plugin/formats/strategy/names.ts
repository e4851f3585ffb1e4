/**
 * `{stage}-{name}` prefixes of merged pipeline strategies (spec §2.3) and building the model.
 */
import type { ParamLayout, Strategy, StrategyItem } from './model.js';

const STAGE_PREFIX = /^(\d+)-/;

/**
 * Split a layout name into its pipeline stage and parameter name. Only a prefix of digits followed
 * by the FIRST '-' counts (`1-a-b` is stage 1, name `a-b`); anything else is stage 0, unprefixed.
 */
export function splitStageName(full: string): { stage: number; name: string; prefixed: boolean } {
  const m = STAGE_PREFIX.exec(full);
  if (m === null) return { stage: 0, name: full, prefixed: false };
  const stage = Number(m[1]);
  if (!Number.isSafeInteger(stage)) return { stage: 0, name: full, prefixed: false };
  return { stage, name: full.slice(m[0].length), prefixed: true };
}

/** `{stage}-{name}`. */
export function stagedName(stage: number, name: string): string {
  return `${stage}-${name}`;
}

/** Build a Strategy, deriving `stages` and `merged` from the layouts' (prefixed) names. */
export function makeStrategy(parts: {
  currentStage: number;
  layouts: readonly ParamLayout[];
  items: readonly StrategyItem[];
  path?: string;
  merged?: boolean;
}): Strategy {
  const stages = [...new Set(parts.layouts.map((l) => l.stage))].sort((a, b) => a - b);
  const out: Strategy = {
    currentStage: parts.currentStage,
    merged: parts.merged ?? false,
    stages,
    layouts: parts.layouts,
    items: parts.items,
    ...(parts.path !== undefined ? { path: parts.path } : {}),
  };
  return out;
}
