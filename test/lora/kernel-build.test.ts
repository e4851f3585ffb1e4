/** The committed kernel binary (plugin/lora/kernel/wasm.ts) is what lora.wat assembles to today. */
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { KERNEL_MODULE_PATH, assembleKernel, kernelModuleSource } from '../../scripts/build-kernel.js';

describe('kernel build', () => {
  it('wasm.ts is up to date with lora.wat (else: npm run build:kernel)', async () => {
    const want = kernelModuleSource(await assembleKernel());
    const have = await readFile(KERNEL_MODULE_PATH, 'utf8');
    expect(have === want, 'plugin/lora/kernel/wasm.ts is stale: run npm run build:kernel').toBe(true);
  });
});
