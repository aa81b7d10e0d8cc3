import { formatEther } from 'ethers';
import type { ChainConfig } from '../chain/serving-contract.js';
import { ConfigError, loadConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { PixeldError } from '../errors.js';
import { TeeError } from '../tee/key-provider.js';

/** What every command (register, service, settle, accounts, earnings) shares: its io, exit codes and errors. */

/** What a command may touch of the outside world; tests pass their own. */
export interface CommandIo {
  stdout: (line: string) => void;
  stderr: (line: string) => void;
  /** Where a confirmation is read from; without it nothing is ever confirmed. */
  stdin?: NodeJS.ReadableStream;
  /** true when a person can answer a prompt on stdin. */
  isTTY: boolean;
  /** Config overrides, the provider wallet key, PIXELD_IMAGE_NAME / PIXELD_IMAGE_DIGEST. */
  env: NodeJS.ProcessEnv;
}

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

/** A failure the command reports as one line, with its exit status. */
export class CommandError extends Error {
  override readonly name = 'CommandError';
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

export function loadCommandConfig(configPath: string | undefined, env: NodeJS.ProcessEnv): Readonly<Config> {
  return loadConfig({ configPath, env }).config;
}

/** The chain settings, or an error naming every missing key. */
export function requireChainConfig(config: Readonly<Config>, command: string): ChainConfig {
  const { rpcUrl, chainId, servingAddress, rpcTimeoutMs } = config.chain;
  const missing = (['rpcUrl', 'chainId', 'servingAddress'] as const).filter((k) => config.chain[k] === undefined).map((k) => `chain.${k}`);
  if (rpcUrl === undefined || chainId === undefined || servingAddress === undefined) {
    throw new CommandError(
      `config: ${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} required for pixeld ${command} ` +
        '(the JSON-RPC endpoint, chain id and InferenceServing address of the 0G chain)',
      EXIT_USAGE,
    );
  }
  return { rpcUrl, chainId, servingAddress, rpcTimeoutMs };
}

/** How a command reports, from its `--json` and `--quiet` flags. */
export interface OutputOptions {
  /** stdout holds exactly one JSON object, printed at the end, instead of the human report. */
  json?: boolean | undefined;
  /** No progress lines. */
  quiet?: boolean | undefined;
}

/** The flags every command with a report takes (spread into parseArgs options), and their usage lines. */
export const OUTPUT_FLAGS = { json: { type: 'boolean' }, quiet: { type: 'boolean', short: 'q' } } as const;
export const OUTPUT_USAGE = `  --json              Print one JSON object on stdout at the end (amounts in wei as decimal strings)
  -q, --quiet         No progress lines on stderr`;

export interface CommandOutput {
  /** A line of the human report, on stdout; nothing under --json. */
  line(text: string): void;
  /**
   * A step of the command as it happens, on stderr, so a script's stdout stays the report alone and a
   * person sees what a slow step waits for; nothing under --quiet.
   */
  progress(text: string): void;
  /** The --json result: one JSON object on stdout; nothing without --json. */
  result(value: unknown): void;
}

export function commandOutput(io: Pick<CommandIo, 'stdout' | 'stderr'>, options: OutputOptions): CommandOutput {
  return {
    line: (text) => {
      if (!options.json) io.stdout(text);
    },
    progress: (text) => {
      if (!options.quiet) io.stderr(`… ${text}`);
    },
    result: (value) => {
      if (options.json) io.stdout(toJson(value));
    },
  };
}

/** JSON with bigints (wei, nonces) as decimal strings: a JSON number would lose wei above 2^53. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
}

export function formatWei(wei: bigint): string {
  return `${wei} wei (${formatEther(wei)} 0G)`;
}

/** Prints what went wrong as readable lines and returns the exit status; unknown errors are bugs and rethrown. */
export function reportCommandError(command: string, err: unknown, io: CommandIo): number {
  if (err instanceof CommandError) {
    io.stderr(`pixeld ${command}: ${err.message}`);
    return err.exitCode;
  }
  if (err instanceof ConfigError || err instanceof TeeError) {
    io.stderr(`pixeld ${command}: ${err.message}`);
    return EXIT_USAGE;
  }
  if (err instanceof PixeldError) {
    io.stderr(`pixeld ${command}: ${err.message}`);
    for (const line of err.details) io.stderr(`  ${line}`);
    return EXIT_FAILED;
  }
  throw err;
}

// ------------------------------------------------------------------------------ command line

export const processIo = (): CommandIo => ({
  stdout: (line) => process.stdout.write(`${line}\n`),
  stderr: (line) => process.stderr.write(`${line}\n`),
  stdin: process.stdin,
  isTTY: Boolean(process.stdin.isTTY),
  env: process.env,
});

