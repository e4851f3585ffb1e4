/** `msckpt safetensors-to-ckpt SRC DST`: the reverse of ckpt-to-safetensors. */
import type { Command } from 'commander';
import { registerConversion } from './ckpt-to-safetensors.js';

export const order = 41;

export function register(program: Command): void {
  registerConversion(program, 'safetensors-to-ckpt');
}
