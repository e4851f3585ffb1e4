/**
 * Who this process is in an msrun job, from msrun's environment (spec mindspore-formats §6).
 *
 * msrun exports per worker i (0..local_worker_num-1): MS_WORKER_NUM = RANK_SIZE = worker_num,
 * DEVICE_ID = i, MS_NODE_RANK = --node_rank (always, may be -1), MS_ROLE = MS_WORKER, and
 * RANK_ID only when the rank can be decided: i when local_worker_num == worker_num, else
 * node_rank*local_worker_num + i when node_rank >= 0. MS_LOCAL_WORKER is never set, so the local
 * worker count has to be derived. The scheduler process runs the same command with
 * MS_ROLE=MS_SCHED and RANK_ID=0.
 */
import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { InputError } from '../errors.js';

export interface RankIdentity {
  /** Global rank, 0..worldSize-1. */
  rank: number;
  /** Number of workers in the job (RANK_SIZE / MS_WORKER_NUM). */
  worldSize: number;
  /** Index of this worker on its node (msrun's i, exported as DEVICE_ID). */
  localRank: number;
  /** Index of this node. */
  nodeRank: number;
  /** Workers on this node (msrun's --local_worker_num). */
  localWorkerNum: number;
  /** DEVICE_ID (the NPU this worker uses). */
  deviceId: number;
  /** True for msrun's scheduler process (MS_ROLE=MS_SCHED): it takes no part in the job's work. */
  scheduler: boolean;
  /** True when no msrun variable is set at all: a single process, rank 0 of 1. */
  standalone: boolean;
  /** Where localWorkerNum came from. */
  localWorkerNumFrom: 'option' | 'single-node' | 'node-rank' | 'npu_num_per_node' | 'DEVICE_NUM_PER_NODE' | 'default';
}

export interface RankIdentityOptions {
  /** Workers per node when known (e.g. from a flag). Wins over everything else. */
  localWorkerNum?: number | undefined;
  /** `npu_num_per_node` from the run YAML, used when the environment cannot tell. */
  npuNumPerNode?: number | undefined;
}

type Env = Record<string, string | undefined>;

/** The variables msrun exports to every worker; none set = not started by msrun. */
export const MSRUN_VARS = ['RANK_ID', 'RANK_SIZE', 'MS_WORKER_NUM', 'MS_NODE_RANK', 'DEVICE_ID', 'MS_ROLE'] as const;

function readInt(env: Env, name: string, min: number): number | undefined {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return undefined;
  const s = raw.trim();
  if (!/^-?\d+$/.test(s)) throw new InputError(`environment variable ${name}='${raw}' is not an integer`);
  const v = Number(s);
  if (!Number.isSafeInteger(v) || v < min) {
    throw new InputError(`environment variable ${name}=${raw} is out of range (expected an integer >= ${min})`);
  }
  return v;
}

function checkPositive(what: string, v: number | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!Number.isSafeInteger(v) || v < 1) throw new InputError(`${what} must be a positive integer, got ${v}`);
  return v;
}

/**
 * This process's place in the job. Throws InputError (naming the variables) when msrun's
 * environment is inconsistent or does not decide the rank.
 */
export function rankIdentity(env: Env = process.env, options: RankIdentityOptions = {}): RankIdentity {
  const optLocal = checkPositive('local worker count', options.localWorkerNum);
  const npn = checkPositive('npu_num_per_node', options.npuNumPerNode);

  if (MSRUN_VARS.every((k) => env[k] === undefined || env[k] === '')) {
    return {
      rank: 0,
      worldSize: 1,
      localRank: 0,
      nodeRank: 0,
      localWorkerNum: 1,
      deviceId: 0,
      scheduler: false,
      standalone: true,
      localWorkerNumFrom: 'single-node',
    };
  }

  const rankSize = readInt(env, 'RANK_SIZE', 1);
  const workerNum = readInt(env, 'MS_WORKER_NUM', 1);
  if (rankSize !== undefined && workerNum !== undefined && rankSize !== workerNum) {
    throw new InputError(`RANK_SIZE=${rankSize} and MS_WORKER_NUM=${workerNum} disagree; msrun sets both to --worker_num`);
  }
  const worldSize = rankSize ?? workerNum;
  if (worldSize === undefined) {
    throw new InputError('cannot decide the world size: neither RANK_SIZE nor MS_WORKER_NUM is set (start the job with msrun)');
  }
  const scheduler = env['MS_ROLE'] === 'MS_SCHED';
  const rankEnv = readInt(env, 'RANK_ID', 0);
  const deviceIdEnv = readInt(env, 'DEVICE_ID', 0);
  const nodeRankEnv = readInt(env, 'MS_NODE_RANK', -1);
  const nodeRankKnown = nodeRankEnv !== undefined && nodeRankEnv >= 0 ? nodeRankEnv : undefined;

  if (scheduler) {
    return {
      rank: rankEnv ?? 0,
      worldSize,
      localRank: 0,
      nodeRank: nodeRankKnown ?? 0,
      localWorkerNum: optLocal ?? 0,
      deviceId: deviceIdEnv ?? 0,
      scheduler: true,
      standalone: false,
      localWorkerNumFrom: optLocal !== undefined ? 'option' : 'default',
    };
  }

  if (rankEnv !== undefined && rankEnv >= worldSize) {
    throw new InputError(`RANK_ID=${rankEnv} is not below the world size ${worldSize} (RANK_SIZE/MS_WORKER_NUM)`);
  }

  // --- the local worker count
  let localWorkerNum: number | undefined;
  let from: RankIdentity['localWorkerNumFrom'] = 'default';
  if (optLocal !== undefined) {
    localWorkerNum = optLocal;
    from = 'option';
  } else if (rankEnv !== undefined && deviceIdEnv !== undefined && nodeRankKnown !== undefined && nodeRankKnown > 0) {
    // msrun: rank = node_rank * local_worker_num + i
    const diff = rankEnv - deviceIdEnv;
    if (diff <= 0 || diff % nodeRankKnown !== 0 || diff / nodeRankKnown <= deviceIdEnv) {
      throw new InputError(
        `RANK_ID=${rankEnv}, MS_NODE_RANK=${nodeRankKnown} and DEVICE_ID=${deviceIdEnv} do not fit msrun's rank = node_rank * local_worker_num + DEVICE_ID`,
      );
    }
    localWorkerNum = diff / nodeRankKnown;
    from = 'node-rank';
  } else if (rankEnv !== undefined && nodeRankKnown === undefined) {
    // without --node_rank msrun exports RANK_ID only when local_worker_num == worker_num
    localWorkerNum = worldSize;
    from = 'single-node';
  } else if (worldSize === 1) {
    localWorkerNum = 1;
    from = 'single-node';
  } else if (npn !== undefined) {
    localWorkerNum = Math.min(npn, worldSize);
    from = 'npu_num_per_node';
  } else {
    const dnpn = readInt(env, 'DEVICE_NUM_PER_NODE', 1);
    if (dnpn !== undefined) {
      localWorkerNum = Math.min(dnpn, worldSize);
      from = 'DEVICE_NUM_PER_NODE';
    } else if (rankEnv !== undefined) {
      // node_rank 0 with RANK_ID set: mindformers' own assumption, 8 devices per node
      localWorkerNum = Math.min(8, worldSize);
      from = 'default';
    }
  }

  // --- the local rank
  const localRank = deviceIdEnv ?? (rankEnv !== undefined && localWorkerNum !== undefined ? rankEnv % localWorkerNum : undefined);
  if (localRank === undefined) {
    throw new InputError('cannot decide the local rank: DEVICE_ID is not set (msrun sets it to the worker index on its node)');
  }

  // --- the global rank
  let rank = rankEnv;
  if (rank === undefined) {
    if (localWorkerNum !== undefined && localWorkerNum === worldSize) rank = localRank;
    else if (localWorkerNum !== undefined && nodeRankKnown !== undefined) rank = nodeRankKnown * localWorkerNum + localRank;
    else {
      throw new InputError(
        `cannot decide this process's rank: RANK_ID is not set and MS_NODE_RANK=${env['MS_NODE_RANK'] ?? '(unset)'}; ` +
          'msrun exports RANK_ID only when --local_worker_num equals --worker_num or --node_rank is given. ' +
          "Start msrun with --node_rank=<this node's index> (or pass the local worker count)",
      );
    }
    if (rank >= worldSize) {
      throw new InputError(`computed rank ${rank} (MS_NODE_RANK * local workers + DEVICE_ID) is not below the world size ${worldSize}`);
    }
  }
  if (localWorkerNum === undefined) localWorkerNum = Math.min(8, worldSize);
  if (localRank >= localWorkerNum) {
    throw new InputError(`DEVICE_ID=${localRank} is not below the local worker count ${localWorkerNum} (from ${from})`);
  }
  if (from === 'option' && rankEnv !== undefined && nodeRankKnown !== undefined && rankEnv !== nodeRankKnown * localWorkerNum + localRank) {
    throw new InputError(
      `RANK_ID=${rankEnv} does not equal MS_NODE_RANK*local_workers+DEVICE_ID = ${nodeRankKnown}*${localWorkerNum}+${localRank}; check the local worker count`,
    );
  }
  const nodeRank = nodeRankKnown ?? Math.floor((rank - localRank) / localWorkerNum);
  return {
    rank,
    worldSize,
    localRank,
    nodeRank,
    localWorkerNum,
    deviceId: deviceIdEnv ?? localRank,
    scheduler: false,
    standalone: false,
    localWorkerNumFrom: from,
  };
}

/**
 * What names one job, the same on every rank of it and different between jobs on one output
 * folder: msrun gives every worker of a job the scheduler's address and port (MS_SCHED_HOST,
 * MS_SCHED_PORT) and the worker count; with the YAML's real path they make the job id. A
 * loopback scheduler address (a one-node job) is the same on every machine, so the host name is
 * added. Without msrun's variables (a standalone run, another launcher) the id is the YAML and
 * the world size only: two such jobs with the same YAML cannot be told apart by their id, and
 * the coordinator's handshake (a live holder of the same rank refuses the newcomer) is what
 * keeps the second out.
 */
export interface JobIdentity {
  /** Hex digest of what the job is known by. */
  readonly id: string;
  /** What the id was derived from (for messages): yaml, workers, scheduler, rankTable. */
  readonly details: Readonly<Record<string, string>>;
  /** msrun: from the scheduler address and port; fallback: the YAML and the world size only. */
  readonly from: 'msrun' | 'fallback';
}

function isLoopback(host: string): boolean {
  return /^(localhost|127(\.\d{1,3}){3}|::1|0\.0\.0\.0|::)$/i.test(host);
}

export function jobIdentity(env: Env, yamlRealPath: string, worldSize: number, host: string = hostname()): JobIdentity {
  const schedHost = (env['MS_SCHED_HOST'] ?? '').trim();
  const schedPort = (env['MS_SCHED_PORT'] ?? '').trim();
  const details: Record<string, string> = { yaml: yamlRealPath, workers: String(worldSize) };
  const from = schedHost !== '' && schedPort !== '' ? 'msrun' : 'fallback';
  if (from === 'msrun') details['scheduler'] = `${schedHost}:${schedPort}${isLoopback(schedHost) ? ` on ${host}` : ''}`;
  const table = (env['RANK_TABLE_FILE'] ?? '').trim();
  if (table !== '') details['rankTable'] = table;
  const key = JSON.stringify([from, details['scheduler'] ?? '', details['workers'], details['yaml'], details['rankTable'] ?? '']);
  return { id: createHash('sha256').update(key).digest('hex').slice(0, 16), details, from };
}

/** msrun's --cluster_time_out (MS_TOPO_TIMEOUT, seconds) in ms when positive, else undefined. */
export function msrunClusterTimeoutMs(env: Env): number | undefined {
  const raw = (env['MS_TOPO_TIMEOUT'] ?? '').trim();
  if (!/^\d+(\.\d+)?$/.test(raw)) return undefined;
  const s = Number(raw);
  return s > 0 ? Math.round(s * 1000) : undefined;
}
