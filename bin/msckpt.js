#!/usr/bin/env node
// Entry point. From a source checkout (plugin/ present and tsx installed) it runs the TypeScript
// sources directly; from an installed package it runs the compiled dist/. `npm test` compiles
// once and sets MSCKPT_DIST so the many CLI processes the tests start skip the TypeScript
// transpiler.
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const root = new URL('../', import.meta.url);
const source = new URL('plugin/cli/main.ts', root);
const dist = new URL('dist/plugin/cli/main.js', root);
const testDist = process.env.MSCKPT_DIST
  ? pathToFileURL(resolve(new URL('.', root).pathname, process.env.MSCKPT_DIST, 'plugin/cli/main.js'))
  : null;

let mod;
if (testDist !== null && existsSync(testDist)) {
  mod = await import(testDist.href);
} else if (existsSync(source)) {
  const { register } = await import('tsx/esm/api');
  register();
  mod = await import(source.href);
} else if (existsSync(dist)) {
  mod = await import(dist.href);
} else {
  process.stderr.write('msckpt: neither plugin/ sources nor dist/ found; run `npm run build`\n');
  process.exit(1);
}
process.exitCode = await mod.main(process.argv.slice(2), { handleSignals: true });
