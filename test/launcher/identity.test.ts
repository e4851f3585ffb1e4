import { describe, expect, it } from 'vitest';
import { InputError } from '../../plugin/errors.js';
import { rankIdentity } from '../../plugin/launcher/identity.js';

/** The environment msrun gives worker i (spec mindspore-formats §6). */
function msrunEnv(workerNum: number, localWorkerNum: number, nodeRank: number, i: number): Record<string, string> {
  const env: Record<string, string> = {
    MS_WORKER_NUM: String(workerNum),
    RANK_SIZE: String(workerNum),
    MS_NODE_RANK: String(nodeRank),
    DEVICE_ID: String(i),
    MS_ROLE: 'MS_WORKER',
    MS_SCHED_HOST: '127.0.0.1',
    MS_SCHED_PORT: '8118',
  };
  let rank: number | undefined;
  if (localWorkerNum === workerNum) rank = i;
  else if (nodeRank >= 0) rank = nodeRank * localWorkerNum + i;
  if (rank !== undefined) {
    env['RANK_ID'] = String(rank);
    env['MS_NODE_ID'] = String(rank);
  }
  return env;
}

describe('rankIdentity from msrun environments', () => {
  it('single node, 8 workers, no --node_rank', () => {
    for (let i = 0; i < 8; i++) {
      const id = rankIdentity(msrunEnv(8, 8, -1, i));
      expect(id).toMatchObject({ rank: i, worldSize: 8, localRank: i, nodeRank: 0, localWorkerNum: 8, deviceId: i, scheduler: false, standalone: false });
      expect(id.localWorkerNumFrom).toBe('single-node');
    }
  });

  it('2 nodes x 8 with --node_rank: node 1 derives its local worker count from the rank', () => {
    for (let i = 0; i < 8; i++) {
      const id = rankIdentity(msrunEnv(16, 8, 1, i));
      expect(id).toMatchObject({ rank: 8 + i, worldSize: 16, localRank: i, nodeRank: 1, localWorkerNum: 8, deviceId: i });
      expect(id.localWorkerNumFrom).toBe('node-rank');
    }
  });

  it('node 0 of a multi-node job: local count from npu_num_per_node, else DEVICE_NUM_PER_NODE, else 8', () => {
    const env = msrunEnv(8, 4, 0, 3);
    expect(rankIdentity(env, { npuNumPerNode: 4 })).toMatchObject({ rank: 3, nodeRank: 0, localWorkerNum: 4, localWorkerNumFrom: 'npu_num_per_node' });
    expect(rankIdentity({ ...env, DEVICE_NUM_PER_NODE: '4' })).toMatchObject({ localWorkerNum: 4, localWorkerNumFrom: 'DEVICE_NUM_PER_NODE' });
    expect(rankIdentity(env)).toMatchObject({ rank: 3, localWorkerNum: 8, localWorkerNumFrom: 'default' });
    expect(rankIdentity(env, { localWorkerNum: 4 })).toMatchObject({ localWorkerNum: 4, localWorkerNumFrom: 'option' });
  });

  it('4 nodes x 2: every worker gets a distinct rank and the right node', () => {
    const seen = new Set<number>();
    for (let node = 0; node < 4; node++) {
      for (let i = 0; i < 2; i++) {
        const id = rankIdentity(msrunEnv(8, 2, node, i), { npuNumPerNode: 2 });
        expect(id.nodeRank).toBe(node);
        expect(id.localWorkerNum).toBe(2);
        seen.add(id.rank);
      }
    }
    expect([...seen].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  it('no RANK_ID (no --node_rank, local != worker): decided only with the local worker count and a node rank', () => {
    const env = msrunEnv(16, 8, -1, 5);
    expect(env['RANK_ID']).toBeUndefined();
    expect(() => rankIdentity(env)).toThrow(InputError);
    expect(() => rankIdentity(env)).toThrow(/cannot decide this process's rank: RANK_ID is not set and MS_NODE_RANK=-1.*--node_rank/);
    // with a node rank but no RANK_ID (e.g. another launcher), the rank is computed
    const env2 = { ...env, MS_NODE_RANK: '1' };
    expect(rankIdentity(env2, { localWorkerNum: 8 })).toMatchObject({ rank: 13, nodeRank: 1, localRank: 5 });
  });

  it('RANK_ID only (no DEVICE_ID) on a single node', () => {
    expect(rankIdentity({ RANK_ID: '3', RANK_SIZE: '4' })).toMatchObject({ rank: 3, localRank: 3, localWorkerNum: 4, nodeRank: 0, deviceId: 3 });
  });

  it('the scheduler process is recognised and takes no part', () => {
    const id = rankIdentity({ MS_ROLE: 'MS_SCHED', RANK_ID: '0', MS_WORKER_NUM: '8', RANK_SIZE: '8', MS_NODE_RANK: '-1' });
    expect(id.scheduler).toBe(true);
    expect(id.worldSize).toBe(8);
  });

  it('no msrun variables: a single stand-alone process', () => {
    expect(rankIdentity({ PATH: '/usr/bin' })).toMatchObject({ rank: 0, worldSize: 1, localRank: 0, localWorkerNum: 1, standalone: true });
  });

  it('clear errors for inconsistent or malformed environments', () => {
    expect(() => rankIdentity({ RANK_ID: '0' })).toThrow('cannot decide the world size: neither RANK_SIZE nor MS_WORKER_NUM is set');
    expect(() => rankIdentity({ RANK_SIZE: '8', MS_WORKER_NUM: '16', RANK_ID: '0', DEVICE_ID: '0' })).toThrow('RANK_SIZE=8 and MS_WORKER_NUM=16 disagree');
    expect(() => rankIdentity({ RANK_SIZE: '8', RANK_ID: 'x' })).toThrow("environment variable RANK_ID='x' is not an integer");
    expect(() => rankIdentity({ RANK_SIZE: '8', RANK_ID: '8', DEVICE_ID: '0' })).toThrow('RANK_ID=8 is not below the world size 8');
    expect(() => rankIdentity({ RANK_SIZE: '0' })).toThrow('RANK_SIZE=0 is out of range');
    expect(() => rankIdentity({ RANK_SIZE: '16', RANK_ID: '2', MS_NODE_RANK: '1', DEVICE_ID: '3' })).toThrow(/do not fit msrun's rank/);
    expect(() => rankIdentity(msrunEnv(16, 8, 1, 2), { localWorkerNum: 4 })).toThrow(/RANK_ID=10 does not equal MS_NODE_RANK\*local_workers\+DEVICE_ID/);
    expect(() => rankIdentity(msrunEnv(8, 8, -1, 2), { localWorkerNum: 0 })).toThrow('local worker count must be a positive integer');
    expect(() => rankIdentity({ RANK_SIZE: '16', MS_NODE_RANK: '-1', DEVICE_ID: '9', RANK_ID: '9' }, { localWorkerNum: 8 })).toThrow(
      'DEVICE_ID=9 is not below the local worker count 8',
    );
  });
});
