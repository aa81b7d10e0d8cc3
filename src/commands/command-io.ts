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

