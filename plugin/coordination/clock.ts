/**
 * Time as coordination sees it: the current time and one-shot timers. The system clock is the
 * default; a test or a bench substitutes a virtual clock to drive hundreds of simulated ranks
 * through timeouts without sleeping.
 */

export interface Clock {
  /** Milliseconds, monotonic enough for deadlines on this process. */
  now(): number;
  /**
   * Call `fn` once after `ms`. `keepAlive: false`: the timer does not hold the process open.
   * Returns a function that cancels the timer.
   */
  setTimer(ms: number, fn: () => void, keepAlive?: boolean): () => void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimer(ms, fn, keepAlive = true) {
    const t = setTimeout(fn, Math.max(0, ms));
    if (!keepAlive) t.unref();
    return () => clearTimeout(t);
  },
};

/** Resolve after `ms` on `clock`. */
export function sleep(clock: Clock, ms: number): Promise<void> {
  return new Promise<void>((res) => {
    clock.setTimer(ms, res);
  });
}

/**
 * Call `fn` every `ms` (the next call is scheduled when the previous one returns), without
 * holding the process open. Returns a function that stops it.
 */
export function every(clock: Clock, ms: number, fn: () => void): () => void {
  let stopped = false;
  let cancel: () => void = () => undefined;
  const tick = (): void => {
    if (stopped) return;
    fn();
    if (!stopped) cancel = clock.setTimer(ms, tick, false);
  };
  cancel = clock.setTimer(ms, tick, false);
  return () => {
    stopped = true;
    cancel();
  };
}

/**
 * Something waiters can sleep on until it is fired or a timeout passes (several waiters at
 * once, unlike a Waker which serves one loop).
 */
export class Signal {
  private waiters = new Set<() => void>();
  constructor(private readonly clock: Clock) {}

  /** Resolve at the next fire() or after `ms`, whichever comes first. */
  wait(ms: number): Promise<void> {
    return new Promise<void>((res) => {
      let cancel: () => void = () => undefined;
      const done = (): void => {
        cancel();
        this.waiters.delete(done);
        res();
      };
      this.waiters.add(done);
      cancel = this.clock.setTimer(Math.max(1, ms), done);
    });
  }

  fire(): void {
    for (const w of [...this.waiters]) w();
  }
}
