/**
 * `msckpt launch --config RUN.yaml [--dst-strategy P] [--barrier-timeout D] [--heartbeat-timeout D] [--join-timeout D]
 * [--poll-interval D] [--shared-disk | --no-shared-disk] [--local-worker-num N] [--memory SIZE]
 * [--safetensors-slicing convert|load-time] [--mindformers-version V]
 * -- <training command ...>`:
 * the hook every rank msrun starts runs; `{config}` in the command becomes the YAML to read.
 * Durations: a bare number is seconds (`500ms`, `2s`, `10m`, `1h`); sizes: K/M/G binary.
 */
import { Option, type Command } from 'commander';
import { releaseOf } from '../../launcher/config.js';
import { launch, type LaunchFaults } from '../../launcher/launch.js';
import { InputError, UsageError } from '../../errors.js';
import { invocation } from '../args.js';
import { choiceFlag, durationFlag, intFlag, MAX_PROCESSES, sizeFlag } from '../flags.js';

export const order = 90;

interface LaunchFlags {
  config: string;
  dstStrategy?: string;
  barrierTimeout?: string;
  heartbeatTimeout?: string;
  joinTimeout?: string;
  pollInterval?: string;
  sharedDisk?: boolean;
  localWorkerNum?: string;
  memory?: string;
  safetensorsSlicing?: string;
  mindformersVersion?: string;
  testFault?: string;
}

/**
 * `--test-fault RANK:POINT:ACTION` (hidden, for tests): that rank fails at POINT: `N` (after N
 * converted files are committed), `N+` (in the middle of writing the next one), `clean`,
 * `planned` or `train`; ACTION: throw, kill (SIGKILL), enospc (a full disk) or hold (wait there
 * until stopped by a signal).
 */
function testFault(v: string | undefined): LaunchFaults | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+):(\d+\+?|clean|planned|train):(throw|kill|enospc|hold)$/.exec(v.trim());
  if (m === null) throw new InputError(`--test-fault must be RANK:POINT:ACTION (POINT: N, N+, clean, planned, train; ACTION: throw, kill, enospc, hold), got '${v}'`);
  const point = m[2] as string;
  const at: LaunchFaults['at'] = /^\d/.test(point) ? { files: Number.parseInt(point, 10), mid: point.endsWith('+') } : (point as 'clean' | 'planned' | 'train');
  return { rank: Number(m[1]), at, action: m[3] as LaunchFaults['action'] };
}

export function register(program: Command): void {
  program
    .command('launch')
    .description('launcher hook for msrun: convert the weights at load_checkpoint to this job\'s layout once, then start training')
    .requiredOption('--config <run-yaml>', 'the run YAML (never modified)')
    .option('--dst-strategy <path>', "the job's strategy file or folder (skips the strategy-only pass)")
    .option('--barrier-timeout <duration>', 'longest wait at any barrier; a bare number is seconds, or 500ms, 2s, 10m, 1h (default 7200 s)')
    .option('--heartbeat-timeout <duration>', 'a converter silent this long is dead; a bare number is seconds (default 60 s)')
    .option('--join-timeout <duration>', "ranks not started within this are named and every rank stops; a bare number is seconds, e.g. 600, 90s, 10m (default: msrun's cluster_time_out, else 10 min)")
    .option('--poll-interval <duration>', 'poll the shared disk this often; a bare number is seconds, e.g. 0.5 or 500ms (default: automatic)')
    .option('--shared-disk', 'output_dir is on a disk all nodes share (polling, one converter set for the job)')
    .option('--no-shared-disk', 'each node converts its own ranks into its local output_dir')
    .option('--local-worker-num <n>', "workers per node, when msrun's environment cannot tell")
    .option('--memory <size>', 'buffer budget of a converter rank, e.g. 512M, 2G (K/M/G: powers of 1024; default 512M)')
    .option('--safetensors-slicing <mode>', 'load_ckpt_format safetensors with complete weights: convert (slice per rank now) or load-time (leave unified for mindformers)')
    .option('--mindformers-version <version>', "the installed mindformers release whose rules apply, e.g. 1.5.0 (default: the YAML's msckpt.mindformers_version, else found from the training command's Python)")
    .addOption(new Option('--test-fault <rank:point:action>', 'tests only: that rank fails at that point of the launch').hideHelp())
    .argument('<command...>', 'the training command, after `--`; {config} is replaced by the YAML to read')
    .action(async (command: string[], flags: LaunchFlags) => {
      if (!invocation().doubleDash) {
        throw new UsageError(`put the training command after \`--\` (msckpt launch --config RUN.yaml -- python run_mindformer.py --config {config}), got '${command.join(' ')}'`);
      }
      const slicing = choiceFlag('--safetensors-slicing', flags.safetensorsSlicing, ['convert', 'load-time'] as const);
      const barrier = durationFlag('--barrier-timeout', flags.barrierTimeout);
      const heartbeat = durationFlag('--heartbeat-timeout', flags.heartbeatTimeout);
      const join = durationFlag('--join-timeout', flags.joinTimeout);
      const poll = durationFlag('--poll-interval', flags.pollInterval);
      const memory = sizeFlag('--memory', flags.memory);
      const localWorkerNum = intFlag('--local-worker-num', flags.localWorkerNum, { min: 1, max: MAX_PROCESSES });
      const version = flags.mindformersVersion;
      if (version !== undefined && releaseOf(version) === undefined) {
        throw new InputError(`--mindformers-version must be a version such as 1.5.0, got '${version}'`);
      }
      const faults = testFault(flags.testFault);
      const code = await launch({
        ...(version !== undefined ? { mindformersVersion: version } : {}),
        config: flags.config,
        command,
        ...(faults !== undefined ? { faults } : {}),
        ...(flags.dstStrategy !== undefined ? { dstStrategy: flags.dstStrategy } : {}),
        ...(barrier !== undefined ? { barrierTimeoutMs: barrier } : {}),
        ...(heartbeat !== undefined ? { heartbeatTimeoutMs: heartbeat } : {}),
        ...(poll !== undefined ? { pollIntervalMs: poll } : {}),
        ...(join !== undefined ? { joinTimeoutMs: join } : {}),
        ...(flags.sharedDisk !== undefined ? { sharedDisk: flags.sharedDisk } : {}),
        ...(memory !== undefined ? { memory } : {}),
        ...(slicing !== undefined ? { safetensorsSlicing: slicing } : {}),
        ...(localWorkerNum !== undefined ? { localWorkerNum } : {}),
      });
      process.exitCode = code;
    });
}
