/**
 * CLI command modules are discovered: every other file in this folder is a command module that
 * exports `register(program: Command): void` and optionally `order` (a number; lower is listed
 * first in `msckpt --help`). Adding a command is adding a file.
 */
import { readdir } from 'node:fs/promises';
import type { Command } from 'commander';

export type RegisterCommand = (program: Command) => void;

interface CommandModule {
  register: RegisterCommand;
  order?: number;
}

/**
 * Load the command modules. With `only` (the command the user typed), just that one module is
 * loaded when a file of that name exists, so `msckpt inspect` does not pay for loading the
 * launcher, the converters and their libraries; `--help` and unknown names load them all.
 */
export async function loadCommands(only?: string): Promise<RegisterCommand[]> {
  const dir = new URL('./', import.meta.url);
  const all = (await readdir(dir)).filter(
    (f) => /\.(ts|js)$/.test(f) && !f.endsWith('.d.ts') && !/^index\.(ts|js)$/.test(f),
  );
  const chosen = only === undefined ? [] : all.filter((f) => f.replace(/\.(ts|js)$/, '') === only);
  const files = chosen.length > 0 ? chosen : all;
  const mods: Array<{ file: string; mod: CommandModule }> = [];
  for (const file of files.sort()) {
    const mod = (await import(new URL(file, dir).href)) as CommandModule;
    if (typeof mod.register === 'function') mods.push({ file, mod });
  }
  mods.sort((a, b) => (a.mod.order ?? 100) - (b.mod.order ?? 100) || a.file.localeCompare(b.file));
  return mods.map((m) => m.mod.register);
}
