/**
 * Child of bench/coordination.ts: `_coord-child.ts ROOT RANK MODE ARG`.
 * MODE idle: join as rank 1 and wait ARG ms for a marker nobody publishes; print CPU used.
 * MODE die: join as rank 1, start a heartbeat, print the time, then SIGKILL itself.
 */
import { Coordinator } from '../plugin/coordination/index.js';

const [root, rankText, mode, arg, polling] = process.argv.slice(2) as [string, string, string, string, string];
const c = await Coordinator.open({
  root, rank: Number(rankText), ranks: [0, 1], sharedDisk: polling !== 'events',
  ...(polling !== 'events' ? { pollInterval: Number(polling) } : {}),
});
if (mode === 'idle') {
  await c.publish('ready');
  const cpu0 = process.cpuUsage();
  const t0 = Date.now();
  await c.waitAll('never', { ranks: [0], timeoutMs: Number(arg) }).catch(() => undefined);
  const cpu = process.cpuUsage(cpu0);
  process.stdout.write(`${JSON.stringify({ wallMs: Date.now() - t0, userMs: cpu.user / 1000, systemMs: cpu.system / 1000 })}\n`);
  await c.close();
} else {
  c.startHeartbeat('convert');
  await c.publish('ready');
  process.stdout.write(`${Date.now()}\n`);
  process.kill(process.pid, 'SIGKILL');
}
