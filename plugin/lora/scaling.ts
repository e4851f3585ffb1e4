/**
 * The LoRA scaling factor. There is no silent default: it comes from `--lora-scaling` (a number or
 * `alpha/rank`), or from `lora_alpha` and `r` of a PEFT `adapter_config.json`. rsLoRA uses
 * alpha / sqrt(rank).
 */
import { readFile } from 'node:fs/promises';
import { InputError } from '../errors.js';

export interface LoraScaling {
  /** The factor multiplied into B @ A. */
  readonly value: number;
  /** Where it came from, for reports. */
  readonly source: 'flag' | 'adapter-config';
  readonly alpha?: number;
  readonly rank?: number;
  readonly rslora: boolean;
  /** Adapter config path, when used. */
  readonly adapterConfig?: string;
  /** True when the config has per-module rank_pattern / alpha_pattern overrides (not applied). */
  readonly hasPatterns?: boolean;
}

export interface ScalingOptions {
  /** `--lora-scaling` text: `2`, `0.5`, `16/8`. */
  loraScaling?: string;
  /** `--rslora`: alpha / sqrt(rank). */
  rslora?: boolean;
  /** Path of a PEFT `adapter_config.json`. */
  adapterConfig?: string;
}

const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

function parseNumber(text: string, what: string): number {
  const t = text.trim();
  if (!NUMBER.test(t)) throw new InputError(`${what}: '${text}' is not a number`, { key: 'lora-scaling' });
  const v = Number(t);
  if (!Number.isFinite(v)) throw new InputError(`${what}: '${text}' is not finite`, { key: 'lora-scaling' });
  return v;
}

function fromAlphaRank(alpha: number, rank: number, rslora: boolean, where: { file?: string; key?: string }): number {
  if (!(rank > 0)) throw new InputError(`LoRA rank must be > 0, got ${rank}`, where);
  return rslora ? alpha / Math.sqrt(rank) : alpha / rank;
}

/** Parse `--lora-scaling` text. A fraction is alpha/rank; `rslora` then means alpha/sqrt(rank). */
export function parseLoraScaling(text: string, rslora = false): LoraScaling {
  const slash = text.indexOf('/');
  if (slash >= 0) {
    const alpha = parseNumber(text.slice(0, slash), '--lora-scaling alpha');
    const rank = parseNumber(text.slice(slash + 1), '--lora-scaling rank');
    const value = fromAlphaRank(alpha, rank, rslora, { key: 'lora-scaling' });
    return { value, source: 'flag', alpha, rank, rslora };
  }
  const value = parseNumber(text, '--lora-scaling');
  if (rslora) {
    throw new InputError(
      `--rslora needs the scaling as alpha/rank (e.g. 16/8) to compute alpha/sqrt(rank), got '${text}'`,
      { key: 'lora-scaling' },
    );
  }
  return { value, source: 'flag', rslora: false };
}

/** Read `lora_alpha`, `r` and `use_rslora` from a PEFT adapter config. */
export async function scalingFromAdapterConfig(path: string, forceRslora = false): Promise<LoraScaling> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new InputError(`cannot read adapter config: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { file: path });
  }
  let cfg: unknown;
  try {
    cfg = JSON.parse(text);
  } catch (err) {
    throw new InputError(`adapter config is not valid JSON (${(err as Error).message})`, { file: path });
  }
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) {
    throw new InputError('adapter config must be a JSON object', { file: path });
  }
  const o = cfg as Record<string, unknown>;
  const alpha = o['lora_alpha'];
  const rank = o['r'];
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) {
    throw new InputError(`expected a number for lora_alpha, got ${JSON.stringify(alpha)}`, { file: path, key: 'lora_alpha' });
  }
  if (typeof rank !== 'number' || !Number.isFinite(rank) || rank <= 0) {
    throw new InputError(`expected a positive number for r, got ${JSON.stringify(rank)}`, { file: path, key: 'r' });
  }
  const rslora = forceRslora || o['use_rslora'] === true;
  const patterns = [o['rank_pattern'], o['alpha_pattern']].some(
    (p) => p !== null && typeof p === 'object' && Object.keys(p as object).length > 0,
  );
  return {
    value: fromAlphaRank(alpha, rank, rslora, { file: path, key: 'r' }),
    source: 'adapter-config',
    alpha,
    rank,
    rslora,
    adapterConfig: path,
    hasPatterns: patterns,
  };
}

/**
 * The scaling to use: `--lora-scaling` when given (it wins over the adapter config), else the
 * adapter config, else an InputError (never a silent 1).
 */
export async function resolveLoraScaling(opts: ScalingOptions): Promise<LoraScaling> {
  if (opts.loraScaling !== undefined) return parseLoraScaling(opts.loraScaling, opts.rslora ?? false);
  if (opts.adapterConfig !== undefined) return scalingFromAdapterConfig(opts.adapterConfig, opts.rslora ?? false);
  throw new InputError(
    'no LoRA scaling given: pass --lora-scaling ALPHA/RANK (e.g. 16/8) or --adapter-config adapter_config.json (there is no default of 1)',
    { key: 'lora-scaling' },
  );
}
