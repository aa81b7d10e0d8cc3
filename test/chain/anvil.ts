/**
 * Local chain for tests (shared/spec/billing.md, "Local chain for tests"): a real anvil node on a free
 * loopback port, and pixeld's own InferenceServing contract (test/chain/InferenceServing.sol), compiled
 * in-process with solc-js and deployed on it. Nothing here mocks the chain: the daemon's chain code talks
 * JSON-RPC to anvil exactly as it would to 0G.
 *
 * Typical use, one node per test file:
 *
 *   let chain: Anvil;
 *   beforeAll(async () => { chain = await startAnvil(); });
 *   afterAll(async () => { await chain?.stop(); });
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  Contract,
  ContractFactory,
  HDNodeWallet,
  JsonRpcProvider,
  Wallet,
  hexlify,
  parseEther,
  randomBytes,
  toQuantity,
  type BaseContractMethod,
  type ContractTransactionResponse,
  type InterfaceAbi,
  type TransactionReceipt,
  type TypedDataDomain,
  type TypedDataField,
} from 'ethers';
import daemonAbi from '../../contracts-abi/InferenceServing.json' with { type: 'json' };
import { gasLimitFor } from '../../src/chain/gas.js';

const require = createRequire(import.meta.url);
const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, '..', '..');

/** anvil's default dev mnemonic; its accounts are funded at genesis. */
export const ANVIL_MNEMONIC = 'test test test test test test test test test test test junk';
export const ANVIL_CHAIN_ID = 31337;
/** What 0G's contract (and ours) requires on first registration. */
export const MIN_PROVIDER_STAKE_WEI = parseEther('100');

// ------------------------------------------------------------------------------------------- anvil

export interface StartAnvilOptions {
  /** @default 31337 */
  chainId?: number;
  /** Mine a block every this many seconds instead of one per transaction. @default undefined (automine) */
  blockTimeSeconds?: number;
  /** Start with all mining off: transactions stay pending until `mine()` or `setAutomine(true)`. @default false */
  noMining?: boolean;
  /** Dev accounts derived from the mnemonic (index 0 is a good contract owner). @default 10 */
  accounts?: number;
  /** Genesis balance of each dev account, in ether. @default 10_000 */
  balanceEther?: number;
  /** Base fee of the genesis block, in wei. @default anvil's (1 gwei) */
  baseFeeWei?: bigint;
  /** How long to wait for anvil to answer `eth_chainId`. @default 15_000 */
  startupTimeoutMs?: number;
  /** Passed to anvil after the harness's own arguments. @default [] */
  extraArgs?: string[];
}

export interface Anvil {
  rpcUrl: string;
  chainId: number;
  /** Not cached, polls every 20 ms: reads right after a transaction see its effects. */
  provider: JsonRpcProvider;
  /** The funded dev accounts of ANVIL_MNEMONIC, connected to `provider`. */
  wallets: Wallet[];
  /** Process id of the anvil node itself. */
  pid: number;
  /** Any JSON-RPC call, e.g. `rpc('anvil_setCode', [address, code])`. */
  rpc<T = unknown>(method: string, params?: unknown[]): Promise<T>;
  /** Mines `blocks` blocks now (works with mining off). @default 1 */
  mine(blocks?: number): Promise<void>;
  /** Turns automine (one block per transaction) on or off. */
  setAutomine(enabled: boolean): Promise<void>;
  /** Mines every `seconds` seconds; 0 turns interval mining off. */
  setIntervalMining(seconds: number): Promise<void>;
  /** Base fee of the next block, e.g. to make a pending transaction underpriced. */
  setNextBlockBaseFee(wei: bigint): Promise<void>;
  /** Timestamp (seconds) of the next block. */
  setNextBlockTimestamp(seconds: number): Promise<void>;
  /** Moves chain time forward by `seconds` and mines a block so views see it. */
  increaseTime(seconds: number): Promise<void>;
  /** `evm_snapshot`: returns an id for `revert`. */
  snapshot(): Promise<string>;
  /** `evm_revert` to a snapshot; the snapshot is used up (take a new one to revert again). */
  revert(snapshotId: string): Promise<void>;
  /** Removes a pending transaction from the pool. */
  dropTransaction(hash: string): Promise<void>;
  setBalance(address: string, wei: bigint): Promise<void>;
  /** `count` fresh random wallets, each given `balanceWei` with `anvil_setBalance`. @default 1000 ether each */
  fundWallets(count: number, balanceWei?: bigint): Promise<Wallet[]>;
  /** Stops the node and waits until the process is gone. Safe to call twice. */
  stop(): Promise<void>;
}

/**
 * Starts anvil on 127.0.0.1 on a free port and waits until it answers.
 *
 * Orphans are prevented even if the test process is SIGKILLed: anvil runs under a tiny `sh` guard that
 * watches a pipe from this process and kills anvil when the pipe closes — which the kernel does when
 * this process dies, however it dies.
 */
export async function startAnvil(options: StartAnvilOptions = {}): Promise<Anvil> {
  // The port is free when we look but anvil binds it a moment later: retry if someone took it.
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startAnvilOnce(await freeLoopbackPort(), options);
    } catch (error) {
      lastError = error;
      if (!(error instanceof AnvilExitedError)) throw error;
    }
  }
  throw lastError;
}

class AnvilExitedError extends Error {}

/** Whether process `pid` holds a listening TCP socket on `port` (Linux: its fds against /proc/net/tcp). */
export function listensOn(pid: number, port: number): boolean {
  const inodes = new Set<string>();
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  for (const fd of fds) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      // Closed meanwhile.
    }
  }
  const portHex = port.toString(16).toUpperCase().padStart(4, '0');
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      // local_address is cols[1] (ADDR:PORT in hex), st is cols[3] (0A = LISTEN), inode is cols[9].
      if (cols.length > 9 && cols[1]!.endsWith(`:${portHex}`) && cols[3] === '0A' && inodes.has(cols[9]!)) return true;
    }
  }
  return false;
}

/**
 * Runs "$@" (anvil) and prints its pid; a watcher kills it when our end of stdin closes (stop(), or this
 * process dying) and the guard itself exits when anvil does, so a failed start is seen at once.
 * Background jobs get /dev/null as stdin, hence the pipe is handed to the watcher as fd 3.
 */
const GUARD_SCRIPT = [
  'exec 3<&0',
  '"$@" 3<&- &',
  'child=$!',
  'echo "$child"',
  `trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP`,
  '( read -r _ <&3; kill -TERM "$child" 2>/dev/null ) &',
  'watcher=$!',
  'exec 3<&-',
  // A trapped signal interrupts the first wait; the second one lets anvil finish shutting down.
  'wait "$child"; wait "$child"',
  'kill "$watcher" 2>/dev/null',
].join('\n');

async function startAnvilOnce(port: number, options: StartAnvilOptions): Promise<Anvil> {
  const chainId = options.chainId ?? ANVIL_CHAIN_ID;
  const accounts = options.accounts ?? 10;
  const args = [
    '--host', '127.0.0.1',
    '--port', String(port),
    '--silent',
    '--chain-id', String(chainId),
    '--mnemonic', ANVIL_MNEMONIC,
    '--accounts', String(accounts),
    '--balance', String(options.balanceEther ?? 10_000),
  ];
  if (options.noMining) args.push('--no-mining');
  else if (options.blockTimeSeconds !== undefined) args.push('--block-time', String(options.blockTimeSeconds));
  if (options.baseFeeWei !== undefined) args.push('--block-base-fee-per-gas', options.baseFeeWei.toString());
  args.push(...(options.extraArgs ?? []));

  const guard = spawn('/bin/sh', ['-c', GUARD_SCRIPT, 'anvil-guard', anvilBinary(), ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let output = '';
  const keepTail = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-4000);
  };
  guard.stderr!.on('data', keepTail);
  const exited = new Promise<void>((resolve) => {
    guard.once('exit', () => resolve());
    guard.once('error', () => resolve()); // spawn failed: there will be no 'exit'
  });
  let hasExited = false;
  void exited.then(() => {
    hasExited = true;
  });

  const anvilPid = await readPid(guard);
  guard.stdout!.on('data', keepTail);
  const rpcUrl = `http://127.0.0.1:${port}`;

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      guard.stdin!.end(); // EOF: the guard kills anvil and waits for it
      const gone = await Promise.race([exited.then(() => true), sleep(5_000, true).then(() => false)]);
      if (!gone) {
        killQuietly(anvilPid, 'SIGKILL');
        killQuietly(guard.pid, 'SIGKILL');
        await exited;
      }
    })();
    return stopped;
  };

  try {
    await waitForChainId(rpcUrl, chainId, options.startupTimeoutMs ?? 15_000, () => hasExited, () => listensOn(anvilPid, port));
  } catch (error) {
    await stop();
    if (hasExited && !(error instanceof AnvilTimeoutError)) {
      throw new AnvilExitedError(`anvil exited during start-up on port ${port}: ${output.trim()}`, { cause: error });
    }
    throw error;
  }

  const provider = new JsonRpcProvider(rpcUrl, chainId, {
    staticNetwork: true,
    pollingInterval: 20,
    // ethers caches identical reads for 250 ms by default: a balance read right after a mined
    // transaction would return the old value.
    cacheTimeout: -1,
    batchMaxCount: 1,
  });
  const wallets = Array.from({ length: accounts }, (_, i) => devWallet(i, provider));
  const rpc = <T = unknown>(method: string, params: unknown[] = []) => provider.send(method, params) as Promise<T>;

  return {
    rpcUrl,
    chainId,
    provider,
    wallets,
    pid: anvilPid,
    rpc,
    async mine(blocks = 1) {
      await rpc('anvil_mine', [toQuantity(blocks)]);
    },
    async setAutomine(enabled) {
      await rpc('evm_setAutomine', [enabled]);
    },
    async setIntervalMining(seconds) {
      await rpc('evm_setIntervalMining', [seconds]);
    },
    async setNextBlockBaseFee(wei) {
      await rpc('anvil_setNextBlockBaseFeePerGas', [toQuantity(wei)]);
    },
    async setNextBlockTimestamp(seconds) {
      await rpc('evm_setNextBlockTimestamp', [seconds]);
    },
    async increaseTime(seconds) {
      await rpc('evm_increaseTime', [seconds]);
      await rpc('anvil_mine', ['0x1']);
    },
    async snapshot() {
      return rpc<string>('evm_snapshot');
    },
    async revert(snapshotId) {
      const ok = await rpc<boolean>('evm_revert', [snapshotId]);
      if (!ok) throw new Error(`evm_revert: unknown snapshot ${snapshotId}`);
    },
    async dropTransaction(hash) {
      await rpc('anvil_dropTransaction', [hash]);
    },
    async setBalance(address, wei) {
      await rpc('anvil_setBalance', [address, toQuantity(wei)]);
    },
    async fundWallets(count, balanceWei = parseEther('1000')) {
      const fresh = Array.from({ length: count }, () => new Wallet(hexlify(randomBytes(32)), provider));
      await Promise.all(fresh.map((w) => rpc('anvil_setBalance', [w.address, toQuantity(balanceWei)])));
      return fresh;
    },
    async stop() {
      provider.destroy();
      await stop();
    },
  };
}

let devRoot: HDNodeWallet | undefined;

/** The i-th account of ANVIL_MNEMONIC (m/44'/60'/0'/0/i), as a plain Wallet. */
export function devWallet(index: number, provider?: JsonRpcProvider): Wallet {
  devRoot ??= HDNodeWallet.fromPhrase(ANVIL_MNEMONIC, undefined, "m/44'/60'/0'/0");
  return new Wallet(devRoot.deriveChild(index).privateKey, provider ?? null);
}

function anvilBinary(): string {
  if (process.env.ANVIL_BIN) return process.env.ANVIL_BIN;
  const arch = ({ x64: 'amd64', arm64: 'arm64' } as Record<string, string>)[process.arch] ?? process.arch;
  const pkg = `@foundry-rs/anvil-${process.platform}-${arch}`;
  const bin = path.join(path.dirname(require.resolve(`${pkg}/package.json`)), 'bin', 'anvil');
  if (!existsSync(bin)) throw new Error(`anvil binary not found at ${bin} (set ANVIL_BIN to override)`);
  return bin;
}

async function freeLoopbackPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** The guard prints anvil's pid as its first line. */
function readPid(guard: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    let text = '';
    const onData = (chunk: Buffer) => {
      text += chunk.toString();
      const newline = text.indexOf('\n');
      if (newline < 0) return;
      guard.stdout!.off('data', onData);
      guard.off('exit', onExit);
      const pid = Number(text.slice(0, newline).trim());
      if (Number.isInteger(pid) && pid > 0) resolve(pid);
      else reject(new Error(`anvil guard printed no pid: ${JSON.stringify(text)}`));
    };
    const onExit = () => reject(new AnvilExitedError('anvil guard exited before starting anvil'));
    guard.stdout!.on('data', onData);
    guard.once('exit', onExit);
    guard.once('error', reject); // /bin/sh could not be spawned
  });
}

class AnvilTimeoutError extends Error {}

/**
 * Waits until the port answers eth_chainId with `chainId` and is held by our anvil. Test files start
 * anvils in parallel, all on chain 31337: when another file's anvil took the port between our look and
 * our bind, it answers too, and a test would run against someone else's chain (sporadic reverts); our own
 * anvil exits on the failed bind, and startAnvil retries on another port.
 */
async function waitForChainId(rpcUrl: string, chainId: number, timeoutMs: number, hasExited: () => boolean, isOurs: () => boolean) {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    if (hasExited()) throw new AnvilExitedError('anvil exited');
    try {
      const response = await fetch(rpcUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'eth_chainId', params: [] }),
        signal: AbortSignal.timeout(1_000),
      });
      const body = (await response.json()) as { result?: string };
      if (body.result !== undefined) {
        if (Number(body.result) !== chainId) throw new Error(`anvil reports chain id ${body.result}, expected ${chainId}`);
        if (isOurs()) return;
        lastError = new Error(`${rpcUrl} answers, but not from our anvil (yet)`);
      }
    } catch (error) {
      if (error instanceof Error && error.message.startsWith('anvil reports')) throw error;
      lastError = error;
    }
    await sleep(50);
  }
  throw new AnvilTimeoutError(`anvil did not answer at ${rpcUrl} within ${timeoutMs} ms`, { cause: lastError });
}

function killQuietly(pid: number | undefined, signal: NodeJS.Signals) {
  if (pid === undefined) return;
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** `unref`: the timer alone does not keep the process alive (for timeouts raced against other events). */
function sleep(ms: number, unref = false) {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (unref) timer.unref();
  });
}

// ------------------------------------------------------------------------------------ compilation

export interface CompiledContract {
  contractName: string;
  abi: InterfaceAbi;
  /** Creation bytecode, 0x-prefixed. */
  bytecode: string;
  solcVersion: string;
  /** Compiler warnings (the test suite expects none). */
  warnings: string[];
}

export const INFERENCE_SERVING_SOURCE = path.join(HERE, 'InferenceServing.sol');
const CACHE_DIR = path.join(REPO_ROOT, 'node_modules', '.cache', 'pixeld');
const SOLC_SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'cancun',
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
} as const;

interface Solc {
  version(): string;
  compile(input: string): string;
}
interface SolcOutput {
  errors?: Array<{ severity: 'error' | 'warning' | 'info'; formattedMessage: string }>;
  contracts?: Record<string, Record<string, { abi: InterfaceAbi; evm: { bytecode: { object: string } } }>>;
}

let compiled: Promise<CompiledContract> | undefined;

/**
 * Compiles test/chain/InferenceServing.sol with solc-js (standard JSON), caching the artifact in
 * node_modules/.cache/pixeld/InferenceServing-<sha256 of source, solc version, settings>.json so only the
 * first test file after a change pays the ~2 s compile.
 */
export function compileInferenceServing(): Promise<CompiledContract> {
  compiled ??= Promise.resolve().then(compileOrLoad);
  return compiled;
}

function compileOrLoad(): CompiledContract {
  const source = readFileSync(INFERENCE_SERVING_SOURCE, 'utf8');
  const solcVersion = solcPackageVersion();
  const key = createHash('sha256')
    .update(source)
    .update('\0')
    .update(solcVersion)
    .update('\0')
    .update(JSON.stringify(SOLC_SETTINGS))
    .digest('hex');
  const cacheFile = path.join(CACHE_DIR, `InferenceServing-${key}.json`);
  if (existsSync(cacheFile)) {
    try {
      return JSON.parse(readFileSync(cacheFile, 'utf8')) as CompiledContract;
    } catch {
      // a torn or foreign file: recompile and overwrite it
    }
  }

  const solc = require('solc') as Solc; // solc-js ships no types; loading it costs ~0.5 s, so only on a miss
  const input = {
    language: 'Solidity',
    sources: { 'InferenceServing.sol': { content: source } },
    settings: SOLC_SETTINGS,
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input))) as SolcOutput;
  const problems = output.errors ?? [];
  const errors = problems.filter((p) => p.severity === 'error');
  if (errors.length > 0) throw new Error(`solc failed:\n${errors.map((e) => e.formattedMessage).join('\n')}`);
  const contract = output.contracts?.['InferenceServing.sol']?.['InferenceServing'];
  if (!contract) throw new Error('solc produced no InferenceServing contract');
  const artifact: CompiledContract = {
    contractName: 'InferenceServing',
    abi: contract.abi,
    bytecode: `0x${contract.evm.bytecode.object}`,
    solcVersion: solc.version(),
    warnings: problems.filter((p) => p.severity === 'warning').map((p) => p.formattedMessage),
  };
  // Test files run in parallel processes: write to a private temp file, then rename atomically.
  mkdirSync(CACHE_DIR, { recursive: true });
  const tmp = `${cacheFile}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(artifact));
  renameSync(tmp, cacheFile);
  return artifact;
}

/** The installed solc-js version, read without loading the 8 MB compiler. */
function solcPackageVersion(): string {
  const pkg = JSON.parse(readFileSync(require.resolve('solc/package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

// ------------------------------------------------------------------------------------- deployment

/** Every function of test/chain/InferenceServing.sol (a test checks the list against the compiled ABI). */
export const INFERENCE_SERVING_FUNCTIONS = [
  'owner',
  'lockTime',
  'providerStake',
  'DOMAIN_SEPARATOR',
  'MIN_LOCKTIME',
  'MAX_LOCKTIME',
  'MIN_PROVIDER_STAKE',
  'MAX_ADDITIONAL_INFO_LENGTH',
  'MAX_SETTLEMENTS_PER_BATCH',
  'MAX_PAGE_SIZE',
  'MAX_BATCH_USERS',
  'MAX_REFUNDS_PER_ACCOUNT',
  'addOrUpdateService',
  'removeService',
  'getService',
  'serviceExists',
  'acknowledgeTEESignerByOwner',
  'revokeTEESignerAcknowledgement',
  'revokeTEESignerAcknowledgementByOwner',
  'addAccount',
  'depositFund',
  'acknowledgeTEESigner',
  'requestRefund',
  'processRefunds',
  'revokeToken',
  'revokeTokens',
  'revokeAllTokens',
  'getAccount',
  'accountExists',
  'getBatchAccountsByUsers',
  'getAccountsByProvider',
  'settleFeesWithTEE',
  'previewSettlementResults',
] as const;

/**
 * The deployed contract. Methods are named (so `contract.getAccount(...)` type-checks under
 * noUncheckedIndexedAccess) but their arguments and results are untyped, as with any ethers Contract.
 */
export type InferenceServingContract = Contract &
  Record<(typeof INFERENCE_SERVING_FUNCTIONS)[number], BaseContractMethod>;

export interface Deployment {
  address: string;
  /** Connected to the deployer, who is also the contract owner. Use `as(contract, wallet)` to switch. */
  contract: InferenceServingContract;
  deployer: Wallet;
}

/** Deploys InferenceServing with `lockTimeSeconds` (0G allows 1 h .. 7 d). Needs mining on. */
export async function deployInferenceServing(deployer: Wallet, lockTimeSeconds = 3600): Promise<Deployment> {
  const { abi, bytecode } = await compileInferenceServing();
  const deployed = await new ContractFactory(abi, bytecode, deployer).deploy(lockTimeSeconds);
  await deployed.waitForDeployment();
  const address = await deployed.getAddress();
  return { address, contract: new Contract(address, abi, deployer) as InferenceServingContract, deployer };
}

/** `contract` with `wallet` as sender (ethers' `connect` returns an untyped BaseContract). */
export function as(contract: InferenceServingContract, wallet: Wallet): InferenceServingContract {
  return contract.connect(wallet) as InferenceServingContract;
}

/** Sends, waits for the receipt and throws if it is missing or failed. */
export async function mined(tx: Promise<ContractTransactionResponse>): Promise<TransactionReceipt> {
  const receipt = await (await tx).wait();
  if (!receipt) throw new Error('transaction receipt missing');
  return receipt;
}

// ------------------------------------------------------------------------------------------ helpers

/** ServiceParams as the contract takes it (§4). */
export interface ServiceParamsInput {
  serviceType: string;
  url: string;
  model: string;
  verifiability: string;
  inputPrice: bigint;
  outputPrice: bigint;
  additionalInfo: string;
  teeSignerAddress: string;
}

/** A plausible image service signed by `teeSignerAddress`, with `overrides` applied. */
export function serviceParams(teeSignerAddress: string, overrides: Partial<ServiceParamsInput> = {}): ServiceParamsInput {
  return {
    serviceType: 'text-to-image',
    url: 'http://127.0.0.1:8080',
    model: 'test/image-model',
    verifiability: 'TeeML',
    inputPrice: 0n,
    outputPrice: parseEther('0.001'),
    additionalInfo: '{"TargetSeparated":false}',
    teeSignerAddress,
    ...overrides,
  };
}

/** addOrUpdateService from `provider`. Sends the stake only when the service does not exist yet. */
export async function registerService(
  contract: InferenceServingContract,
  provider: Wallet,
  params: ServiceParamsInput,
  stakeWei?: bigint,
): Promise<TransactionReceipt> {
  const exists = (await contract.serviceExists(provider.address)) as boolean;
  const value = stakeWei ?? (exists ? 0n : MIN_PROVIDER_STAKE_WEI);
  // With the daemon's margin: the estimate is exact for its block only (see src/chain/gas.ts).
  const estimate = await as(contract, provider).addOrUpdateService.estimateGas(params, { value });
  return mined(as(contract, provider).addOrUpdateService(params, { value, gasLimit: gasLimitFor(estimate) }));
}

/** The owner's acknowledgement of the provider's TEE signer (reset by §4's field changes). */
export async function acknowledgeService(contract: InferenceServingContract, owner: Wallet, provider: string): Promise<TransactionReceipt> {
  return mined(as(contract, owner).acknowledgeTEESignerByOwner(provider));
}

export async function revokeServiceAcknowledgement(
  contract: InferenceServingContract,
  owner: Wallet,
  provider: string,
): Promise<TransactionReceipt> {
  return mined(as(contract, owner).revokeTEESignerAcknowledgement(provider));
}

/**
 * Registers `provider`'s service with `teeSignerAddress` and has the owner acknowledge it: the state a
 * provider must be in before any settlement can succeed.
 */
export async function registerAcknowledgedService(
  contract: InferenceServingContract,
  owner: Wallet,
  provider: Wallet,
  teeSignerAddress: string,
  overrides: Partial<ServiceParamsInput> = {},
): Promise<void> {
  await registerService(contract, provider, serviceParams(teeSignerAddress, overrides));
  await acknowledgeService(contract, owner, provider.address);
}

/** Creates `user`'s account with `provider`, funded with `amountWei` (acknowledged, as in 0G). */
export async function createFundedAccount(
  contract: InferenceServingContract,
  user: Wallet,
  provider: string,
  amountWei: bigint,
  additionalInfo = '',
): Promise<TransactionReceipt> {
  return mined(as(contract, user).addAccount(provider, additionalInfo, { value: amountWei }));
}

/** The user's own (un)acknowledgement; withdrawing it needs a zero balance. */
export async function setAccountAcknowledged(
  contract: InferenceServingContract,
  user: Wallet,
  provider: string,
  acknowledged: boolean,
): Promise<TransactionReceipt> {
  return mined(as(contract, user).acknowledgeTEESigner(provider, acknowledged));
}

// ------------------------------------------------------------------------------- settlement signing

/** The EIP-712 type the daemon signs with, from contracts-abi/InferenceServing.json. */
export const TEE_SETTLEMENT_TYPES: Record<string, TypedDataField[]> = daemonAbi.eip712.types;

/** §5's domain for a deployment: name and version from contracts-abi, chain id and address from the chain. */
export function settlementDomain(chainId: number | bigint, verifyingContract: string): TypedDataDomain {
  return { ...daemonAbi.eip712.domain, chainId, verifyingContract };
}

export interface SettlementItem {
  user: string;
  provider: string;
  totalFee: bigint;
  requestsHash: string;
  nonce: bigint;
  signature: string;
}

/** One TEESettlementData item signed by `teeKey` (EIP-712, no personal_sign prefix). */
export async function signSettlement(
  teeKey: Wallet,
  domain: TypedDataDomain,
  item: Omit<SettlementItem, 'signature'>,
): Promise<SettlementItem> {
  const signature = await teeKey.signTypedData(domain, TEE_SETTLEMENT_TYPES, {
    requestsHash: item.requestsHash,
    nonce: item.nonce,
    provider: item.provider,
    user: item.user,
    totalFee: item.totalFee,
  });
  return { ...item, signature };
}
