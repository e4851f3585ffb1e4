/**
 * `msckpt launch --config RUN.yaml [--dst-strategy P] [--barrier-timeout S] [--heartbeat-timeout S]
 * [--poll-interval MS] [--shared-disk | --no-shared-disk] [--local-worker-num N] [--memory SIZE]
 * [--safetensors-slicing convert|load-time]
 * -- <training command ...>`:
 * the hook every rank msrun starts runs; `{config}` in the command becomes the YAML to read.
 */
import { Option, type Command } from 'commander';
import { InputError } from '../../errors.js';
import { launch, type LaunchFaults } from '../../launcher/launch.js';
import { parseMemorySize } from '../../transform/transform.js';

export const order = 90;

interface LaunchFlags {
  config: string;
  dstStrategy?: string;
  barrierTimeout?: string;
  heartbeatTimeout?: string;
  pollInterval?: string;
  sharedDisk?: boolean;
  localWorkerNum?: string;
  memory?: string;
  safetensorsSlicing?: string;
  testFault?: string;
}

/** `--test-fault RANK:FILES:throw|kill` (hidden, for tests): that converter rank fails after FILES files. */
function testFault(v: string | undefined): LaunchFaults | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+):(\d+):(throw|kill)$/.exec(v.trim());
  if (m === null) throw new InputError(`--test-fault must be RANK:FILES:throw|kill, got '${v}'`);
  return { rank: Number(m[1]), afterFiles: Number(m[2]), action: m[3] as 'throw' | 'kill' };
}

function positive(v: string | undefined, flag: string, integer: boolean): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
    throw new InputError(`${flag} must be a positive ${integer ? 'integer' : 'number'}, got '${v}'`);
  }
  return n;
}

export function register(program: Command): void {
  program
    .command('launch')
    .description('launcher hook for msrun: convert the weights at load_checkpoint to this job\'s layout once, then start training')
    .requiredOption('--config <run-yaml>', 'the run YAML (never modified)')
    .option('--dst-strategy <path>', "the job's strategy file or folder (skips the strategy-only pass)")
    .option('--barrier-timeout <seconds>', 'longest wait at any barrier (default 7200)')
    .option('--heartbeat-timeout <seconds>', "a converter silent this long is dead (default 60)")
    .option('--poll-interval <ms>', 'poll the shared disk this often (default: automatic)')
    .option('--shared-disk', 'output_dir is on a disk all nodes share (polling, one converter set for the job)')
    .option('--no-shared-disk', 'each node converts its own ranks into its local output_dir')
    .option('--local-worker-num <n>', "workers per node, when msrun's environment cannot tell")
    .option('--memory <size>', 'buffer budget of a converter rank, e.g. 512M, 2G (default 512M)')
    .option('--safetensors-slicing <mode>', 'load_ckpt_format safetensors with complete weights: convert (slice per rank now) or load-time (leave unified for mindformers)')
    .addOption(new Option('--test-fault <rank:files:action>', 'tests only: that converter rank throws or is killed after that many files').hideHelp())
    .argument('<command...>', 'the training command, after `--`; {config} is replaced by the YAML to read')
    .action(async (command: string[], flags: LaunchFlags) => {
      const slicing = flags.safetensorsSlicing;
      if (slicing !== undefined && slicing !== 'convert' && slicing !== 'load-time') {
        throw new InputError(`--safetensors-slicing must be 'convert' or 'load-time', got '${slicing}'`);
      }
      const faults = testFault(flags.testFault);
      const code = await launch({
        config: flags.config,
        command,
        ...(faults !== undefined ? { faults } : {}),
        ...(flags.dstStrategy !== undefined ? { dstStrategy: flags.dstStrategy } : {}),
        ...(flags.barrierTimeout !== undefined ? { barrierTimeout: positive(flags.barrierTimeout, '--barrier-timeout', false) } : {}),
        ...(flags.heartbeatTimeout !== undefined ? { heartbeatTimeout: positive(flags.heartbeatTimeout, '--heartbeat-timeout', false) } : {}),
        ...(flags.pollInterval !== undefined ? { pollInterval: positive(flags.pollInterval, '--poll-interval', true) } : {}),
        ...(flags.sharedDisk !== undefined ? { sharedDisk: flags.sharedDisk } : {}),
        ...(flags.memory !== undefined ? { memory: parseMemorySize(flags.memory) } : {}),
        ...(slicing !== undefined ? { safetensorsSlicing: slicing } : {}),
        ...(flags.localWorkerNum !== undefined ? { localWorkerNum: positive(flags.localWorkerNum, '--local-worker-num', true) } : {}),
      });
      process.exitCode = code;
    });
}
