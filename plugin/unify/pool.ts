/** Run `jobs` with at most `n` at once; the first failure is thrown after running ones settle. */
export async function runPool<T>(jobs: ReadonlyArray<() => Promise<T>>, n: number): Promise<T[]> {
  const results: T[] = new Array<T>(jobs.length);
  let next = 0;
  let failed: unknown = null;
  const worker = async (): Promise<void> => {
    while (failed === null && next < jobs.length) {
      const i = next++;
      try {
        results[i] = await (jobs[i] as () => Promise<T>)();
      } catch (err) {
        if (failed === null) failed = err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(n, jobs.length)) }, worker));
  if (failed !== null) throw failed;
  return results;
}
