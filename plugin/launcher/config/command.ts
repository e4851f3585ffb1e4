/**
 * run_mindformer.py's command line overrides the YAML (`--load_checkpoint`, `--auto_trans_ckpt`,
 * `--use_parallel`, trailing `--a.b value` pairs, ...). The hook reads those flags from the
 * training command so that it judges the configuration mindformers will run, and rewrites them
 * where a derived YAML changes the same key (else the flag would undo the change).
 */

/** run_mindformer.py's flags that set a key msckpt reads, with how argparse converts them. */
const FLAGS: Readonly<Record<string, { key: string; kind: 'str' | 'bool' | 'bool-or-str' | 'int' }>> = {
  load_checkpoint: { key: 'load_checkpoint', kind: 'str' },
  src_strategy_path_or_dir: { key: 'src_strategy_path_or_dir', kind: 'str' },
  auto_trans_ckpt: { key: 'auto_trans_ckpt', kind: 'bool' },
  transform_process_num: { key: 'transform_process_num', kind: 'int' },
  only_save_strategy: { key: 'only_save_strategy', kind: 'bool' },
  resume_training: { key: 'resume_training', kind: 'bool-or-str' },
  remote_save_url: { key: 'remote_save_url', kind: 'str' },
  use_parallel: { key: 'use_parallel', kind: 'bool' },
  output_dir: { key: 'output_dir', kind: 'str' },
  run_mode: { key: 'run_mode', kind: 'str' },
};

/** Every long flag of run_mindformer.py (for argparse's unique-prefix abbreviations). */
const ALL_FLAGS = [
  'config', 'mode', 'device_id', 'device_target', 'run_mode', 'do_eval', 'train_dataset_dir', 'eval_dataset_dir', 'predict_data',
  'modal_type', 'predict_batch_size', 'adapter_id', 'load_checkpoint', 'src_strategy_path_or_dir', 'auto_trans_ckpt',
  'transform_process_num', 'only_save_strategy', 'resume_training', 'strategy_load_checkpoint', 'remote_save_url', 'seed',
  'use_parallel', 'profile', 'options', 'epochs', 'batch_size', 'gradient_accumulation_steps', 'sink_mode', 'num_samples',
  'output_dir', 'register_path', 'do_sample', 'trust_remote_code',
];
const MULTI_VALUE = new Set(['predict_data', 'modal_type', 'adapter_id', 'options']);

export interface CommandOverrides {
  /** Index of run_mindformer.py in the command, or -1 when the command is something else. */
  script: number;
  /** Keys the command sets, as mindformers will read them (dotted paths for nested keys). */
  overrides: Record<string, unknown>;
  /** Where each key was set: [index of the flag, index of its value] in the command. */
  at: Record<string, [number, number]>;
  /** What could not be read (told to the user as warnings). */
  notes: string[];
}

function str2bool(v: string): boolean | undefined {
  const l = v.toLowerCase();
  return l === 'true' ? true : l === 'false' ? false : undefined;
}

/** mindformers' parse_value for trailing `--a.b value` pairs: int, float, True/False, JSON, else the string. */
function parseValue(v: string): unknown {
  if (/^[-+]?\d+$/.test(v)) return Number(v);
  if (/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(v) || /^[-+]?(inf|nan)$/i.test(v)) return Number(v);
  if (v === 'True') return true;
  if (v === 'False') return false;
  try {
    return JSON.parse(v) as unknown;
  } catch {
    return v;
  }
}

/** The flag a command-line word names, with argparse's unique-prefix rule; undefined if none or ambiguous. */
function flagName(word: string): string | undefined {
  if (ALL_FLAGS.includes(word)) return word;
  const hits = ALL_FLAGS.filter((f) => f.startsWith(word));
  return hits.length === 1 ? hits[0] : undefined;
}

/** The keys run_mindformer.py's command line sets (empty when the command does not run run_mindformer.py). */
export function commandOverrides(command: readonly string[]): CommandOverrides {
  const out: CommandOverrides = { script: -1, overrides: {}, at: {}, notes: [] };
  out.script = command.findIndex((a) => /(^|[\\/])run_mindformer\.py$/.test(a));
  if (out.script < 0) return out;
  const args = command.slice(out.script + 1);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith('--') || a === '--') continue;
    const eq = a.indexOf('=');
    const word = a.slice(2, eq < 0 ? undefined : eq);
    const name = flagName(word);
    const valueIndex = eq < 0 ? i + 1 : i;
    const value = eq < 0 ? args[i + 1] : a.slice(eq + 1);
    const base = out.script + 1;
    if (name === undefined) {
      // parse_known_args leftovers: `--a.b.c value` pairs applied to the config
      if (word.includes('.') || /^[a-z_]+$/.test(word)) {
        if (value !== undefined && !value.startsWith('--')) {
          out.overrides[word] = parseValue(value);
          out.at[word] = [base + i, base + valueIndex];
          if (eq < 0) i++;
        }
      }
      continue;
    }
    if (MULTI_VALUE.has(name)) {
      let j = eq < 0 ? i + 1 : i;
      if (eq < 0) while (j < args.length && !args[j]!.startsWith('--')) j++;
      if (name === 'options') out.notes.push('--options is not read by msckpt; set those keys in the YAML if msckpt needs them');
      i = eq < 0 ? j - 1 : i;
      continue;
    }
    if (value === undefined) continue;
    if (eq < 0) i++;
    const spec = FLAGS[name];
    if (spec === undefined) continue;
    let v: unknown;
    switch (spec.kind) {
      case 'str':
        v = value;
        break;
      case 'int':
        v = /^[-+]?\d+$/.test(value.trim()) ? Number(value) : undefined;
        break;
      case 'bool':
        v = str2bool(value);
        break;
      case 'bool-or-str':
        v = str2bool(value) ?? value;
        break;
    }
    if (v === undefined) {
      out.notes.push(`--${name} ${value}: run_mindformer.py refuses this value`);
      continue;
    }
    out.overrides[spec.key] = v;
    out.at[spec.key] = [base + i - (eq < 0 ? 1 : 0), base + valueIndex];
  }
  return out;
}

/**
 * The command with run_mindformer.py's flags for `values`' keys set to those values (a derived
 * YAML changes them; a flag left as it was would change them back). Other words are kept.
 */
export function rewriteCommand(command: readonly string[], values: Readonly<Record<string, unknown>>): string[] {
  const parsed = commandOverrides(command);
  const out = [...command];
  for (const [key, v] of Object.entries(values)) {
    const at = parsed.at[key];
    if (at === undefined) continue;
    const text = typeof v === 'boolean' ? (v ? 'True' : 'False') : String(v);
    const [flagAt, valueAt] = at;
    if (flagAt === valueAt) out[flagAt] = `${out[flagAt]!.slice(0, out[flagAt]!.indexOf('=') + 1)}${text}`;
    else out[valueAt] = text;
  }
  return out;
}
