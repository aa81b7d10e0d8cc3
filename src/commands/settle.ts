import { Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import { Settler } from '../billing/settlement/settler.js';
import type { RoundResult, UserSettlement } from '../billing/settlement/types.js';
import { loadProviderWallet, resolveProviderAddress } from '../chain/provider-wallet.js';
import { createChainClient } from '../chain/serving-contract.js';
import { ConfigError, loadConfig } from '../config/load.js';
import { openStores, StoreNotFoundError, type Stores } from '../jobs/open-stores.js';
import { createLogger } from '../obs/logger.js';
import { TeeError, type TeeKeyProvider } from '../tee/key-provider.js';
import { openTeeKeyProvider } from '../tee/open-key-provider.js';
import {
  commandOutput,
  EXIT_FAILED,
  EXIT_OK,
  EXIT_USAGE,
  formatWei as wei,
  OUTPUT_FLAGS,
  OUTPUT_USAGE,
  processIo,
  type CommandIo,
  type CommandOutput,
  type OutputOptions,
} from './command-io.js';

/**
 * `pixeld settle`: one settlement round now, from the daemon's own data dir — reconciling whatever an
 * earlier run left open first, under the same lock the daemon takes (so it never races a running
 * daemon's round). Prints one line per user (`--json`: one object), each step on stderr as it goes.
 * `--dry-run` signs and previews, persists and sends nothing.
 *
 * Exit status: 0 everything sent was settled (SUCCESS or PARTIAL), or nothing to do, or a dry run;
 * 1 another settler holds the lock, the chain failed, or an item was refused / left pending;
 * 2 bad arguments or configuration.
 */

export const SETTLE_USAGE = `Usage: pixeld settle [--dry-run] [--json] [--quiet] [--config <file>]

Runs one settlement round now: reconciles batches an earlier run left open, then settles every 0G user's
unsettled receipts on the InferenceServing contract (settleFeesWithTEE, signed by the TEE key, sent and
paid for by the provider wallet). Prints, per user: receipts, amount, nonce, status and transaction. Each
step (batches reconciled, items signed, transactions sent and mined) is shown on stderr as it happens.

  --dry-run           Prepare, sign and preview (previewSettlementResults) only: nothing persisted or sent
${OUTPUT_USAGE}
                      {"provider","contract","chainId","teeSigner","dryRun","outcome","error"?,"reconciled":[…],
                       "users":[{"user","receipts","amountWei","nonce","outcome","status"?,"shortfallWei"?,"txHash"?,
                       "block"?,"batchId"?}],"transactions":[…],"paidWei"}
  -c, --config <file> Config file (default: $PIXELD_CONFIG, else config/pixeld.yaml); use the daemon's

Needs chain.rpcUrl, chain.chainId, chain.servingAddress, the daemon's dataDir and TEE key, and the provider
wallet (env named by provider.wallet.privateKeyEnv, default PIXELD_PROVIDER_KEY, or provider.wallet.keystoreFile).
Exit status: 0 settled or nothing to do, 1 lock held / chain failed / an item not settled, 2 bad arguments or configuration.
`;

export interface SettleOptions extends OutputOptions {
  configPath?: string | undefined;
  dryRun?: boolean | undefined;
}

/** What `--json` prints. */
export interface SettleReport {
  provider: string;
  contract: string;
  chainId: number;
  teeSigner: string;
  dryRun: boolean;
  outcome: RoundResult['outcome'];
  error: string | undefined;
  reconciled: UserSettlement[];
  users: UserSettlement[];
  transactions: string[];
  /** What reached the provider in this run (settled, and the covered part of PARTIAL items). */
  paidWei: bigint;
}

/** settle asks nothing, so it needs only the output side and the environment of a command's io. */
export type SettleIo = Pick<CommandIo, 'stdout' | 'stderr' | 'env'>;

export interface SettleDeps {
  /** Replaces the key provider `tee.mode` names (tests inject a fake TEE). */
  tee?: TeeKeyProvider;
  /** How often a sent transaction is looked for. @default 1_000 */
  pollIntervalMs?: number;
}


export async function settle(options: SettleOptions, io: SettleIo, deps: SettleDeps = {}): Promise<number> {
  const out = commandOutput(io, options);
  let config;
  try {
    config = loadConfig({ configPath: options.configPath, env: io.env }).config;
  } catch (err) {
    if (err instanceof ConfigError) {
      io.stderr(`pixeld settle: ${err.message}`);
      return EXIT_USAGE;
    }
    throw err;
  }
  const { rpcUrl, chainId, servingAddress, rpcTimeoutMs } = config.chain;
  if (rpcUrl === undefined || chainId === undefined || servingAddress === undefined) {
    io.stderr('pixeld settle: config: chain.rpcUrl, chain.chainId and chain.servingAddress are required to settle');
    return EXIT_USAGE;
  }
  // The daemon's database: its SQLite file, or the PostgreSQL database its replicas share.
  let stores: Stores;
  try {
    out.progress('opening the daemon\'s database');
    stores = await openStores(config, { mustExist: true });
  } catch (err) {
    if (err instanceof StoreNotFoundError) {
      io.stderr(`pixeld settle: ${config.dataDir} holds no pixeld database (pixeld.sqlite): point dataDir at the daemon's data dir`);
      return EXIT_USAGE;
    }
    throw err;
  }

  // Never the RPC URL itself: providers put API keys in it.
  out.progress(`${stores.kind} ${stores.location}; chain ${chainId}, contract ${servingAddress}`);
  const chain = createChainClient({ rpcUrl, chainId, servingAddress, rpcTimeoutMs, freshReads: true });
  try {
    const wallet = await loadProviderWallet(config.provider.wallet, io.env, chain.provider);
    if (!wallet) {
      io.stderr(
        `pixeld settle: no provider wallet: set env ${config.provider.wallet.privateKeyEnv} to its private key, or ` +
          'provider.wallet.keystoreFile (the wallet that owns the service and receives the fees; never the TEE key)',
      );
      return EXIT_USAGE;
    }
    const providerAddress = resolveProviderAddress(config.provider.address, wallet);
    out.progress(`opening the TEE key (tee.mode ${config.tee.mode})`);
    const tee = deps.tee ?? (await openTeeKeyProvider({ tee: config.tee, dataDir: config.dataDir, nodeEnv: io.env.NODE_ENV }));
    // The settler's own log lines go to stderr, problems only: stdout is the report.
    const logger = createLogger({ level: 'warn', format: 'pretty', stream: lineWriter(io.stderr) });
    const settler = new Settler({
      billing: stores.billing,
      chain,
      wallet,
      providerAddress,
      tee,
      billingConfig: config.billing,
      logger,
      ...(deps.pollIntervalMs !== undefined ? { pollIntervalMs: deps.pollIntervalMs } : {}),
    });

    out.line(`Provider ${providerAddress}, contract ${servingAddress} on chain ${chainId}, TEE signer ${tee.address}`);
    if (options.dryRun) {
      // The TEE never hands out a signature it has not journaled (tee/settlement-journal.ts), previews included.
      out.line('Dry run: nothing is sent. The items are signed and kept in the TEE journal: the next round sends exactly these.');
    }
    const result = await settler.runRound({ dryRun: options.dryRun ?? false, onProgress: (line) => out.progress(line), reason: 'cli' });
    const all = [...result.reconciled, ...result.users];
    out.result({
      provider: providerAddress,
      contract: servingAddress,
      chainId,
      teeSigner: tee.address,
      dryRun: result.dryRun,
      outcome: result.outcome,
      error: result.error,
      reconciled: result.reconciled,
      users: result.users,
      transactions: result.transactions,
      paidWei: all.reduce((sum, u) => sum + paidWei(u), 0n),
    } satisfies SettleReport);
    if (result.outcome === 'locked') {
      io.stderr('pixeld settle: another settler holds the settlement lock (a running daemon or another pixeld settle); try again when it is done');
      return EXIT_FAILED;
    }
    return report(result, out, io);
  } catch (err) {
    if (err instanceof ConfigError || err instanceof TeeError) {
      io.stderr(`pixeld settle: ${err.message}`);
      return EXIT_USAGE;
    }
    throw err;
  } finally {
    chain.close();
    await stores.close();
  }
}

/** The human report (nothing under --json) and the exit status. */
function report(result: RoundResult, out: CommandOutput, io: SettleIo): number {
  if (result.reconciled.length > 0) {
    out.line('Reconciled from earlier runs:');
    for (const u of result.reconciled) out.line(userLine(u));
  }
  if (result.users.length > 0) {
    out.line(result.dryRun ? 'Would settle:' : 'Settled this round:');
    for (const u of result.users) out.line(userLine(u));
  }
  const all = [...result.reconciled, ...result.users];
  const paid = all.reduce((sum, u) => sum + paidWei(u), 0n);
  if (!result.dryRun) out.line(`Paid to the provider: ${wei(paid)} in ${result.transactions.length} transaction(s).`);
  if (result.outcome === 'interrupted') {
    io.stderr(`pixeld settle: the round ended early: ${result.error ?? 'unknown reason'}; what is left stays unsettled or in its batch for the next run`);
    return EXIT_FAILED;
  }
  if (all.length === 0) out.line('Nothing to settle.');
  const unsettled = all.filter((u) => !result.dryRun && !['settled', 'partial'].includes(u.outcome));
  return unsettled.length > 0 ? EXIT_FAILED : EXIT_OK;
}

function paidWei(u: UserSettlement): bigint {
  if (u.outcome === 'settled') return u.amountWei;
  if (u.outcome === 'partial') return u.amountWei - (u.shortfallWei ?? 0n);
  return 0n;
}


/** `  <user>  receipts <n>  <wei> wei (<0G> 0G)  nonce <n>  <STATUS …>  tx <hash>` */
export function userLine(u: UserSettlement): string {
  const parts = [`  ${u.user}`, `receipts ${u.receipts}`, wei(u.amountWei), `nonce ${u.nonce}`, statusText(u)];
  if (u.txHash) parts.push(`tx ${u.txHash}${u.block !== undefined ? ` (block ${u.block})` : ''}`);
  return parts.join('  ');
}

function statusText(u: UserSettlement): string {
  switch (u.outcome) {
    case 'settled':
      return 'SUCCESS';
    case 'partial':
      return `PARTIAL (short ${u.shortfallWei ?? 0n} wei; user refused until topped up)`;
    case 'refused':
      return `${u.status ?? 'NO RESULT'} (receipts kept unsettled; retried next round)`;
    case 'dropped':
      return u.status === 'PARTIAL'
        ? 'NOT SENT: the balance would pay nothing (receipts kept until the user tops up)'
        : `NOT SENT: preview says ${u.status} (receipts kept unsettled)`;
    case 'pending':
      return 'PENDING (transaction not mined yet; the next run picks it up)';
    case 'abandoned':
      return 'NOT SETTLED (nothing reached the chain; receipts unsettled again)';
    case 'preview':
      return `would be ${u.status}${u.status === 'PARTIAL' ? ` (short ${u.shortfallWei} wei)` : ''}`;
  }
}

function lineWriter(write: (line: string) => void): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line.trim() !== '') write(line);
      done();
    },
  });
}

/** `pixeld settle …` from the command line. */
export async function runSettleCli(argv: string[], io: SettleIo = processIo()): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      options: {
        config: { type: 'string', short: 'c' },
        'dry-run': { type: 'boolean' },
        ...OUTPUT_FLAGS,
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    io.stderr(`pixeld settle: ${(err as Error).message}\n\n${SETTLE_USAGE}`);
    return EXIT_USAGE;
  }
  if (values.help) {
    io.stdout(SETTLE_USAGE);
    return EXIT_OK;
  }
  return settle({ configPath: values.config, dryRun: values['dry-run'], json: values.json, quiet: values.quiet }, io);
}
