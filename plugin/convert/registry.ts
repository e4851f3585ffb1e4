/**
 * The model registry: built-in models register themselves when plugin/convert/models/ is
 * imported; a user module given with `--converter ./my-model.js` registers more without touching
 * msckpt.
 */
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { InputError } from '../errors.js';
import { runConversion } from './engine.js';
import type { ConvertFunction, ModelConverter, ModelDefinition } from './types.js';

const models = new Map<string, ModelConverter>();
const aliasOf = new Map<string, string>();

function key(name: string): string {
  return name.trim().toLowerCase();
}

/** Add (or replace) a model under its name and aliases. */
export function registerModel(model: ModelConverter): void {
  if (typeof model.name !== 'string' || model.name.trim() === '') throw new InputError('a model needs a name');
  if (typeof model.convertHfToMs !== 'function' || typeof model.convertMsToHf !== 'function') {
    throw new InputError(`model '${model.name}' must provide convertHfToMs and convertMsToHf functions`);
  }
  models.set(key(model.name), model);
  for (const a of model.aliases ?? []) aliasOf.set(key(a), key(model.name));
}

/** Turn a declarative model into a converter run by the shared engine (and register it). */
export function defineModel(def: ModelDefinition): ModelConverter {
  const convertHfToMs: ConvertFunction = (i, o, d, opts) => runConversion(def, 'hf-to-ms', i, o, d, opts);
  const convertMsToHf: ConvertFunction = (i, o, d, opts) => runConversion(def, 'ms-to-hf', i, o, d, opts);
  const model: ModelConverter = {
    name: def.name,
    ...(def.aliases !== undefined ? { aliases: def.aliases } : {}),
    ...(def.description !== undefined ? { description: def.description } : {}),
    ...(def.options !== undefined ? { options: def.options } : {}),
    convertHfToMs,
    convertMsToHf,
  };
  registerModel(model);
  return model;
}

/** Registered models, sorted by name. */
export function listModels(): ModelConverter[] {
  return [...models.values()].sort((a, b) => a.name.localeCompare(b.name));
}

/** A model by name or alias; InputError listing the known ones otherwise. */
export function getModel(name: string): ModelConverter {
  const k = key(name);
  const m = models.get(k) ?? models.get(aliasOf.get(k) ?? '');
  if (m === undefined) {
    const known = listModels().map((x) => (x.aliases && x.aliases.length > 0 ? `${x.name} (${x.aliases.join(', ')})` : x.name));
    throw new InputError(`model '${name}' is not supported; known models: ${known.join(', ')}`, { key: 'model' });
  }
  return m;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null;
}

/**
 * Load a user converter module. It may call `registerModel` / `defineModel` itself, or export a
 * model: `export const name = ...; export function convertHfToMs ...; export function
 * convertMsToHf ...` (optionally `aliases`, `description`), or a default export of that shape,
 * or `export const model: ModelDefinition` (a declarative layout for the shared engine).
 * Returns the names it added.
 */
export async function loadConverterModule(path: string): Promise<string[]> {
  const abs = isAbsolute(path) ? path : resolve(process.cwd(), path);
  const before = new Set(models.keys());
  let mod: unknown;
  try {
    mod = await import(pathToFileURL(abs).href);
  } catch (err) {
    throw new InputError(`cannot load converter module: ${err instanceof Error ? err.message : String(err)}`, { file: path });
  }
  const candidates: unknown[] = [];
  if (isRecord(mod)) {
    candidates.push(mod);
    if (isRecord(mod['default'])) candidates.push(mod['default']);
    if (isRecord(mod['model'])) candidates.push(mod['model']);
  }
  for (const c of candidates) {
    if (!isRecord(c) || typeof c['name'] !== 'string') continue;
    if (typeof c['convertHfToMs'] === 'function' && typeof c['convertMsToHf'] === 'function') {
      registerModel(c as unknown as ModelConverter);
    } else if (typeof c['layout'] === 'function') {
      defineModel(c as unknown as ModelDefinition);
    }
  }
  const added = [...models.keys()].filter((k) => !before.has(k));
  if (added.length === 0 && models.size === before.size) {
    // it may have replaced an existing model; accept when a candidate named one
    const named = candidates.filter((c) => isRecord(c) && typeof c['name'] === 'string').map((c) => (c as { name: string }).name);
    if (named.length === 0) {
      throw new InputError('converter module registered no model (export name, convertHfToMs and convertMsToHf, or a ModelDefinition as `model`)', { file: path });
    }
    return named;
  }
  return added;
}
