/**
 * MindSpore parameter naming shared by every reader: the prefixes of optimizer and accumulator
 * states (clones of a model parameter, saved in checkpoints and listed in strategy files beside
 * the parameter they shadow).
 */

/** Prefixes of optimizer and accumulator states (`adam_m.<name>`, `accu_grads.<name>`, ...). */
export const OPTIMIZER_STATE_PREFIXES: readonly string[] = [
  'adam_m.', 'adam_v.', 'accu_grads.', 'moments.', 'moment1.', 'moment2.', 'optimizer.moment1.', 'optimizer.moment2.',
];

/** The optimizer-state prefix a name starts with, or undefined for a model parameter. */
export function optimizerStatePrefix(name: string): string | undefined {
  for (const p of OPTIMIZER_STATE_PREFIXES) if (name.startsWith(p)) return p;
  return undefined;
}
