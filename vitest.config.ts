import { availableParallelism } from 'node:os';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Many test files spend their time waiting on the rank processes they start, so two files run
    // at once even on 2 cores (vitest's default there is one: 266 s instead of 315-362 s).
    maxWorkers: Math.max(2, availableParallelism() - 1),
  },
});
