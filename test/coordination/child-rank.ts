/**
 * A rank in its own process, for coordination tests: `node --import tsx child-rank.ts ROOT RANK
 * RANKS ACTION [HEARTBEAT_TIMEOUT_MS]`. Actions: `die` (join, publish 'joined', start a heartbeat,
 * then SIGKILL itself), `vanish` (join, say it is 'waiting', publish 'joined', then SIGKILL itself
 * with no task heartbeat: a non-converter rank dying), `throw` (join, then report a failure and
 * exit 1), `barrier` (join and pass barrier 'b').
 */
import { Coordinator } from '../../plugin/coordination/index.js';

const [root, rankText, ranksText, action, hbText] = process.argv.slice(2) as [string, string, string, string, string | undefined];
const rank = Number(rankText);
const ranks = ranksText.split(',').map(Number);
const c = await Coordinator.open({
  root,
  rank,
  ranks,
  barrierTimeoutMs: 60_000,
  ...(hbText !== undefined ? { heartbeatTimeoutMs: Number(hbText) } : {}),
});
if (action === 'die') {
  c.startHeartbeat('convert');
  await c.publish('joined');
  process.kill(process.pid, 'SIGKILL');
} else if (action === 'vanish') {
  await c.setStage('waiting');
  await c.publish('joined');
  process.kill(process.pid, 'SIGKILL');
} else if (action === 'throw') {
  await c.publish('joined');
  await c.fail('convert', new Error('out of disk space writing rank_3/checkpoint_3.ckpt'));
  await c.close();
  process.exitCode = 1;
} else {
  await c.barrier('b');
  await c.close();
}
