/**
 * Reading and judging a run YAML: the file as PyYAML reads it, base_config merged and the
 * training command's overrides applied as mindformers does, the release's rules chosen, typed,
 * and every rule applied. `checkRunConfig` never throws for problems in the file (they are in
 * the report); `loadRunConfig` throws them together as one RunConfigError.
 */
import { readFileSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { InputError } from '../../errors.js';
import { jobPaths } from '../paths.js';
import { loadYamlWithPositions, PyDict, YamlSyntaxError, type LocatedYaml, type PyValue } from './pyyaml.js';
import { chooseRelease, releaseOf } from './releases.js';
import { applyRules, hasSafetensors, launchMode, ProblemLog, settledLoadCheckpoint } from './rules.js';
import { MAX_YAML_BYTES, readRunConfig, schemaFindings, versionText } from './schema.js';
import { RunConfigError, type ConfigProblem, type LoadRunConfigOptions, type RunConfig, type RunConfigReport } from './types.js';

/** Deepest mapping nesting of a document (mindformers' check_yaml_depth_before_loading: only mappings count). */
function mappingDepth(v: PyValue, depth = 0): number {
  if (v instanceof PyDict) return Math.max(depth + 1, ...v.entries.map(([, x]) => mappingDepth(x, depth + 1)));
  return depth;
}

/** mindformers' _merge_a_into_b: dicts merge recursively, every other value replaces. */
function mergeInto(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...b };
  for (const [k, v] of Object.entries(a)) {
    const bv = out[k];
    const isMap = (x: unknown): x is Record<string, unknown> => x !== null && typeof x === 'object' && Object.getPrototypeOf(x) === Object.prototype;
    out[k] = isMap(v) && k in out && isMap(bv) ? mergeInto(v, bv) : v;
  }
  return out;
}

/** The document with its base_config files merged under it, as MindFormerConfig._file2dict does. */
function withBaseConfigs(doc: Record<string, unknown>, file: string, seen: Set<string>): Record<string, unknown> {
  const base = doc['base_config'];
  if (base === undefined) return doc;
  const rest = { ...doc };
  delete rest['base_config'];
  const names = Array.isArray(base) ? base : [base];
  let merged: Record<string, unknown> = {};
  for (const name of names) {
    if (typeof name !== 'string') throw new Error(`base_config entries must be file names, got ${String(name)}`);
    const path = resolve(join(dirname(file), name));
    if (seen.has(path)) throw new Error(`base_config ${name} includes itself`);
    const text = readFileSync(path, 'utf8');
    const model = loadYamlWithPositions(text, path);
    if (!(model.doc !== null && typeof model.doc === 'object' && !Array.isArray(model.doc))) throw new Error(`base_config ${name} is not a mapping`);
    merged = { ...merged, ...withBaseConfigs(model.doc as Record<string, unknown>, path, new Set([...seen, path])) };
  }
  return mergeInto(rest, merged);
}

/** Set a dotted key of a plain document (a copy of each mapping on the way). */
function setDotted(doc: Record<string, unknown>, key: string, value: unknown): Record<string, unknown> {
  const [head, ...tail] = key.split('.');
  const out = { ...doc };
  if (tail.length === 0) out[head!] = value;
  else {
    const cur = out[head!];
    const obj = cur !== null && typeof cur === 'object' && !Array.isArray(cur) ? (cur as Record<string, unknown>) : {};
    out[head!] = setDotted(obj, tail.join('.'), value);
  }
  return out;
}

function sortProblems(ps: ConfigProblem[]): ConfigProblem[] {
  return ps.sort((a, b) => a.line - b.line || a.column - b.column);
}

async function readText(file: string, path: string): Promise<string> {
  try {
    const st = await stat(file);
    if (st.size > MAX_YAML_BYTES) {
      throw new InputError(`is ${st.size} bytes; a run YAML over ${MAX_YAML_BYTES} bytes is not accepted`, { file: path });
    }
    return await readFile(file, 'utf8');
  } catch (err) {
    if (err instanceof InputError) throw err;
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new InputError(`cannot read the run YAML (${code})`, { file: path });
  }
}

/** Load, judge and type a run YAML; never throws for problems in it (they are in the report). */
export async function checkRunConfig(path: string, options: LoadRunConfigOptions = {}): Promise<RunConfigReport> {
  const file = resolve(path);
  const text = await readText(file, path);
  return checkRunConfigText(file, text, options);
}

/** checkRunConfig on a text already read (`file` names it and anchors base_config). */
export async function checkRunConfigText(file: string, text: string, options: LoadRunConfigOptions = {}): Promise<RunConfigReport> {
  const fail = (p: ConfigProblem): RunConfigReport => ({ file, ok: false, errors: [p], warnings: [], config: null });
  let located: LocatedYaml;
  try {
    located = loadYamlWithPositions(text, file);
  } catch (err) {
    if (err instanceof YamlSyntaxError) return fail({ key: '', ...err.position, message: `YAML syntax error (PyYAML cannot read it): ${err.reason}` });
    throw err;
  }
  const model = located.model;
  if (!(model instanceof PyDict)) {
    const got = model === null ? 'an empty document' : Array.isArray(model) ? 'a list' : 'a single value';
    return fail({ key: '', line: 1, column: 1, message: `the run YAML must be a mapping of keys, got ${got}` });
  }
  const keyTypes = new Set(model.entries.map(([k]) => (typeof k === 'string' ? 'str' : typeof k === 'boolean' ? 'bool' : k === null ? 'None' : 'other')));
  if (keyTypes.size > 1 && keyTypes.has('str')) {
    const odd = model.entries.find(([k]) => typeof k !== 'string')!;
    return fail({
      key: String(odd[0]), ...located.locate(String(odd[0])),
      message: `top-level key ${String(odd[0])} is read by PyYAML as ${odd[0] === null ? 'None' : typeof odd[0] === 'boolean' ? 'a boolean' : 'a number'}, not a string: mindformers cannot sort the keys and stops (quote it)`,
    });
  }
  const raw = located.doc as Record<string, unknown>;

  // release: flag / detected version, else the YAML's msckpt.mindformers_version
  const msRaw = raw['msckpt'];
  const yamlVersion = msRaw !== null && typeof msRaw === 'object' && !Array.isArray(msRaw) ? versionText((msRaw as Record<string, unknown>)['mindformers_version']) : undefined;
  const release = chooseRelease({
    flag: options.mindformersVersion?.from === 'flag' ? options.mindformersVersion.version : undefined,
    yaml: yamlVersion !== undefined && releaseOf(yamlVersion) !== undefined ? yamlVersion : undefined,
    detected: options.mindformersVersion?.from === 'detected' ? { version: options.mindformersVersion.version, detail: options.mindformersVersion.detail } : undefined,
  });
  const log = new ProblemLog((k) => located.locate(k), release);
  if (yamlVersion !== undefined && releaseOf(yamlVersion) === undefined) {
    log.warn('msckpt.mindformers_version', `'${yamlVersion}' is not a version such as 1.5.0; ignored`);
  }
  if (release.caveat !== undefined) log.warn(release.from === 'yaml' ? 'msckpt.mindformers_version' : '', release.caveat);

  // the document mindformers works on
  let effective = raw;
  try {
    effective = withBaseConfigs(raw, file, new Set([file]));
  } catch (err) {
    log.err('base_config', `cannot be read: ${(err as Error).message}`);
  }
  for (const [k, v] of Object.entries(options.commandOverrides ?? {})) effective = setDotted(effective, k, v);

  for (const d of located.duplicates) {
    log.warn(d.key, `is given twice in one mapping (first at line ${d.first.line}); PyYAML keeps this last one`);
  }
  const depth = mappingDepth(model);
  log.refusal('', (r) => (r.maxYamlDepth !== undefined && depth > r.maxYamlDepth ? `mappings nest ${depth} deep; at most ${r.maxYamlDepth} are read` : undefined), false);

  // typed view
  const rules = release.rules;
  const typed = readRunConfig(effective, rules);
  const baseDir = resolve(options.cwd ?? process.cwd());
  const settled = settledLoadCheckpoint(effective, rules, (options.checkFiles ?? true) ? (d) => hasSafetensors(resolve(baseDir, d)) : undefined);
  const decided = launchMode(typed, rules);
  const worldSize = options.worldSize;
  const product = typed.parallelConfig.dataParallel * typed.parallelConfig.modelParallel * typed.parallelConfig.contextParallel * typed.parallelConfig.pipelineStage;
  let deviceCount: number | undefined;
  let deviceCountFrom: RunConfig['deviceCountFrom'];
  if (worldSize !== undefined) {
    deviceCount = worldSize;
    deviceCountFrom = 'world-size';
  } else if (typed.useParallel && typed.parallel.effectiveMode === 'semi_auto_parallel') {
    deviceCount = product;
    deviceCountFrom = 'layout';
  } else if (!typed.useParallel) {
    deviceCount = 1;
    deviceCountFrom = 'layout';
  }
  const cfg: RunConfig = {
    ...typed,
    file,
    baseDir,
    raw,
    effective,
    text,
    loadCheckpoint: settled.value,
    loadCheckpointFrom: settled.from,
    release,
    mode: decided.mode,
    modeReason: decided.reason,
    deviceCount,
    deviceCountFrom,
    source: undefined,
    srcStrategy: undefined,
    paths: jobPaths({ outputDir: typed.outputDir, baseDir, strategySaveFile: typed.parallel.strategySaveFile }),
    warnings: log.warnings,
    locate: (k) => located.locate(k),
  };

  // msckpt's own section (schema): errors when the hook has work to do
  const working = cfg.mode === 'convert' || cfg.mode === 'strategy-only';
  const rulesLog = new ProblemLog((k) => located.locate(k), release);
  await applyRules(cfg, effective, rulesLog, {
    worldSize, checkFiles: options.checkFiles ?? true, env: options.env ?? process.env, commandKeys: Object.keys(options.commandOverrides ?? {}),
  });
  const ruled = new Set([...rulesLog.errors, ...rulesLog.warnings].map((p) => p.key));
  for (const f of schemaFindings(raw)) {
    if (f.key === 'msckpt' || f.key.startsWith('msckpt.')) {
      if (working) log.err(f.key, f.message);
      else log.warn(f.key, `${f.message} (unused: ${cfg.mode === 'passthrough' ? 'nothing for msckpt to do' : 'handed over to mindformers'})`);
    } else if (!ruled.has(f.key) && !f.key.startsWith('parallel_config.') && f.key !== 'parallel.parallel_mode') {
      log.warn(f.key, f.message);
    }
  }
  log.errors.push(...rulesLog.errors);
  log.warnings.push(...rulesLog.warnings);
  const errors = sortProblems(log.errors);
  sortProblems(log.warnings);
  return { file, ok: errors.length === 0, errors, warnings: log.warnings, config: cfg };
}

/** Load a run YAML and check it; throws RunConfigError (InputError, exit 2) listing every problem. */
export async function loadRunConfig(path: string, options: LoadRunConfigOptions = {}): Promise<RunConfig> {
  const report = await checkRunConfig(path, options);
  if (!report.ok || report.config === null) throw new RunConfigError(report.file, report.errors);
  return report.config;
}
