/**
 * Sleeping until something may have changed on disk: file events from chokidar (local disks)
 * and a timer (always; the only source on network disks, where other machines' writes raise no
 * events). Never a busy loop: between wake-ups the process is idle. Serves one loop at a time.
 */
import { watch, type FSWatcher } from 'chokidar';
import { systemClock, type Clock } from './clock.js';

export class Waker {
  private pending = false;
  private wake: (() => void) | null = null;
  private watcher: FSWatcher | null = null;

  private constructor(private readonly clock: Clock) {}

  /**
   * `dir`: folder to watch (recursively, to `depth`); `events`: false = timer only (polling mode).
   */
  static async create(dir: string, events: boolean, clock: Clock = systemClock, depth = 4): Promise<Waker> {
    const w = new Waker(clock);
    if (events) {
      const watcher = watch(dir, { ignoreInitial: true, depth, persistent: false, atomic: false });
      w.watcher = watcher;
      watcher.on('all', () => w.notify());
      watcher.on('error', () => w.notify());
      await new Promise<void>((res) => {
        watcher.once('ready', () => res());
      });
    }
    return w;
  }

  /** Something changed: wake a sleeper now, or the next one to sleep. */
  notify(): void {
    this.pending = true;
    const f = this.wake;
    if (f !== null) f();
  }

  /** Forget earlier notifications; call before checking the condition. */
  arm(): void {
    this.pending = false;
  }

  /**
   * Sleep until notified (since the last `arm`) or `ms` passed. `keepAlive: false`: the timer does
   * not hold the process open (a background loop).
   */
  async sleep(ms: number, keepAlive = true): Promise<void> {
    if (this.pending) {
      this.pending = false;
      return;
    }
    await new Promise<void>((res) => {
      let cancel: () => void = () => undefined;
      const done = (): void => {
        cancel();
        this.wake = null;
        res();
      };
      this.wake = done;
      cancel = this.clock.setTimer(Math.max(1, ms), done, keepAlive);
    });
    this.pending = false;
  }

  async close(): Promise<void> {
    const w = this.watcher;
    this.watcher = null;
    const f = this.wake;
    if (f !== null) f();
    if (w !== null) await w.close();
  }
}
