/** Offline work spread over the processes of a cluster job (msrun, slurm, RANK_ID/RANK_SIZE). */
export { clusterPlace, transformOnCluster, type ClusterMode, type ClusterPlace, type ClusterTimeouts } from './transform.js';
