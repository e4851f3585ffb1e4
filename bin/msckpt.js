#!/usr/bin/env node
// Entry point. From a source checkout (plugin/ present and tsx installed) it runs the TypeScript
// sources directly; from an installed package it runs the compiled dist/.
import { existsSync } from 'node:fs';

const source = new URL('../plugin/cli/main.ts', import.meta.url);
const dist = new URL('../dist/plugin/cli/main.js', import.meta.url);

let mod;
if (existsSync(source)) {
  const { register } = await import('tsx/esm/api');
  register();
  mod = await import(source.href);
} else if (existsSync(dist)) {
  mod = await import(dist.href);
} else {
  process.stderr.write('msckpt: neither plugin/ sources nor dist/ found; run `npm run build`\n');
  process.exit(1);
}
process.exitCode = await mod.main(process.argv.slice(2));
