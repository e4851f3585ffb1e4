/**
 * Offline conversion spread over a cluster: `msckpt transform --cluster` run by every process of
 * an msrun job (or any launcher setting RANK_ID/RANK_SIZE, or slurm) on a disk all of them share.
 *
 * - The destination ranks are cut into one contiguous block per process (as transform_process_num
 *   does on one machine); each process writes its own block (with `--process-num` workers if
 *   asked) and keeps its own journal of committed files.
 * - One plan: process 0 plans (reading every source header once), prepares the destination folder
 *   (the same refusals and clean-up as a single run) and writes the plan file with its
 *   fingerprint into `<dst>/.msckpt-cluster/plan/`; the others wait for it and load it (no header
 *   read, no strategy merged).
 * - The processes coordinate through plugin/coordination (markers, join deadline, heartbeats on
 *   the shared disk, under `<dst>/.msckpt-cluster/coord/`): a process that dies or fails is named
 *   to the others, which stop at their next wait (the plan, or the end). What every process
 *   committed stays recorded in its journal, so rerunning the same command redoes only the
 *   missing files.
 * - When all are done, process 0 writes the one manifest (it is the last to finish: it waits for
 *   everyone's report) and removes the coordination folder.
 */
import { rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { InputError } from '../errors.js';
import { CoordinationError, Coordinator } from '../coordination/index.js';
import { rankIdentity } from '../launcher/identity.js';
import {
  checkTransformPaths, CLUSTER_DIR_NAME, transformCheckpoints,
  type ClusterReport, type SharedTransformPlan, type TransformCluster, type TransformOptions, type TransformReport,
} from '../transform/index.js';

export type ClusterMode = 'auto' | 'msrun' | 'slurm';

/** This process's place among the processes sharing a transform. */
export interface ClusterPlace {
  readonly index: number;
  readonly count: number;
  /** Where it was read from, for messages: `slurm (SLURM_PROCID=1, SLURM_NTASKS=4)`. */
  readonly from: string;
  /** msrun's scheduler process: it takes no part. */
  readonly scheduler: boolean;
}

type Env = Record<string, string | undefined>;

function slurmPlace(env: Env): ClusterPlace | null {
  const id = env['SLURM_PROCID'];
  const n = env['SLURM_NTASKS'];
  if (id === undefined || n === undefined) return null;
  const index = Number(id);
  const count = Number(n);
  if (!/^\d+$/.test(id.trim()) || !/^\d+$/.test(n.trim()) || count < 1 || index >= count) {
    throw new InputError(`SLURM_PROCID=${id} and SLURM_NTASKS=${n} do not give a process index below the task count`);
  }
  return { index, count, from: `slurm (SLURM_PROCID=${index}, SLURM_NTASKS=${count})`, scheduler: false };
}

function msrunPlace(env: Env): ClusterPlace | null {
  const id = rankIdentity(env);
  if (id.standalone) return null;
  return {
    index: id.rank, count: id.worldSize, scheduler: id.scheduler,
    from: `${env['MS_WORKER_NUM'] !== undefined ? 'msrun' : 'the environment'} (RANK_ID=${id.rank}, RANK_SIZE=${id.worldSize})`,
  };
}

/**
 * Where this process stands, from the launcher's environment: `slurm` (SLURM_PROCID,
 * SLURM_NTASKS), `msrun` (RANK_ID/RANK_SIZE, MS_WORKER_NUM/MS_NODE_RANK/DEVICE_ID, read as the
 * launcher reads them), `auto` msrun's when set, else slurm's (msrun started inside a slurm step
 * sets RANK_ID per worker, while SLURM_NTASKS then counts the msrun commands, not the workers).
 */
export function clusterPlace(mode: ClusterMode, env: Env = process.env): ClusterPlace {
  if (mode === 'slurm') {
    const p = slurmPlace(env);
    if (p === null) throw new InputError('--cluster slurm: SLURM_PROCID and SLURM_NTASKS are not set (run it with srun)');
    return p;
  }
  const m = msrunPlace(env);
  if (m !== null) return m;
  if (mode === 'msrun') throw new InputError('--cluster msrun: no RANK_ID/RANK_SIZE (or MS_WORKER_NUM) in the environment (run it with msrun)');
  const s = slurmPlace(env);
  if (s !== null) return s;
  throw new InputError('--cluster: no RANK_ID/RANK_SIZE, msrun (MS_WORKER_NUM, MS_NODE_RANK) or slurm (SLURM_PROCID, SLURM_NTASKS) variables in the environment; start one process per node with msrun, srun or your launcher');
}

/** Timeouts of the coordination (ms); defaults are those of plugin/coordination. */
export interface ClusterTimeouts {
  readonly joinTimeoutMs?: number;
  readonly heartbeatTimeoutMs?: number;
  readonly barrierTimeoutMs?: number;
}

/** `transformCheckpoints` as process `place.index` of `place.count` (see the module comment). */
export async function transformOnCluster(opts: TransformOptions, place: ClusterPlace, timeouts: ClusterTimeouts = {}): Promise<TransformReport> {
  if (place.scheduler) throw new InputError("this is msrun's scheduler process; it converts nothing");
  // nothing is created (not even the coordination folder) before the paths are known apart
  await checkTransformPaths(opts);
  const dstDir = resolve(opts.dstDir);
  const ranks = Array.from({ length: place.count }, (_, i) => i);
  const coord = await Coordinator.open({
    root: join(dstDir, CLUSTER_DIR_NAME, 'coord'), rank: place.index, ranks, leader: 0,
    ...(timeouts.joinTimeoutMs !== undefined ? { joinTimeoutMs: timeouts.joinTimeoutMs } : {}),
    ...(timeouts.heartbeatTimeoutMs !== undefined ? { heartbeatTimeoutMs: timeouts.heartbeatTimeoutMs } : {}),
    ...(timeouts.barrierTimeoutMs !== undefined ? { barrierTimeoutMs: timeouts.barrierTimeoutMs } : {}),
  });
  const cluster: TransformCluster = {
    index: place.index,
    count: place.count,
    async sharePlan(plan) {
      if (plan !== null) {
        await coord.setStage('plan');
        await coord.publish('plan', plan);
        await coord.setStage('convert');
        return plan;
      }
      await coord.setStage('wait-plan');
      const got = await coord.waitAll<SharedTransformPlan>('plan', { ranks: [0], what: 'the plan of process 0' });
      await coord.setStage('convert');
      return got.get(0) as SharedTransformPlan;
    },
    async finish(mine) {
      await coord.setStage('done');
      const all = await coord.barrier<ClusterReport>('converted', mine, { what: "every process's files" });
      return [...all.values()];
    },
    async manifestWritten(path) {
      if (path !== null) {
        await coord.publish('manifest', { path });
        return path;
      }
      const got = await coord.waitAll<{ path: string }>('manifest', { ranks: [0], what: 'the manifest of process 0' });
      return got.get(0)?.path ?? null;
    },
    async fail(err) {
      // a failure learnt from another process is that process's to report
      if (err instanceof CoordinationError && err.failedRank !== undefined) return;
      await coord.fail('transform', err);
    },
  };
  let ok = false;
  try {
    const report = await transformCheckpoints({ ...opts, cluster });
    ok = true;
    return report;
  } finally {
    await coord.close();
    // process 0 leaves last after a success (every process has reported): the coordination folder
    // goes with it. After a failure others may still be reading it: the next run removes it.
    if (place.index === 0 && ok) await rm(join(dstDir, CLUSTER_DIR_NAME), { recursive: true, force: true }).catch(() => undefined);
  }
}
