import { parseArgs } from 'node:util';
import { formatEther } from 'ethers';
import type { BillingStore, EarningsDay, EarningsTotals } from '../billing/store.js';
import { getAccountsByProvider } from '../chain/get-accounts-by-provider.js';
import { loadProviderWallet, resolveProviderAddress } from '../chain/provider-wallet.js';
import { createChainClient } from '../chain/serving-contract.js';
import type { Config } from '../config/schema.js';
import { openStores, StoreNotFoundError } from '../jobs/open-stores.js';
import {
  CommandError,
  commandOutput,
  EXIT_OK,
  EXIT_USAGE,
  loadCommandConfig,
  OUTPUT_FLAGS,
  OUTPUT_USAGE,
  processIo,
  reportCommandError,
  requireChainConfig,
  type CommandIo,
  type OutputOptions,
} from './command-io.js';

/**
 * The provider's books: `pixeld accounts` (every user with an account on chain, next to what this daemon
 * holds for them) and `pixeld earnings` (receipts per day by settlement state). Both only read: the
 * daemon's database (its SQLite file — safe while it runs, WAL readers never block it — or PostgreSQL) and
 * the chain.
 */

export const ACCOUNTS_USAGE = `Usage: pixeld accounts [--json] [--quiet] [--config <file>]

Lists every user account with this provider on the InferenceServing contract: on-chain balance, pending
refunds, settlement nonce and acknowledgement, next to this daemon's unsettled receipts and the
reservations of unfinished jobs, and what is left available.

${OUTPUT_USAGE}
                      {"provider","accounts":[{"user","balanceWei","pendingRefundWei","unsettledWei","reservedWei",
                       "availableWei","blocked","nonce","acknowledged"}],"totals":{"balanceWei","unsettledWei","reservedWei"}}
  -c, --config <file> Config file (default: $PIXELD_CONFIG, else config/pixeld.yaml)
`;

export const EARNINGS_USAGE = `Usage: pixeld earnings [--json] [--quiet] [--config <file>]

Receipts per day (UTC): images delivered, fees settled, settled short (PARTIAL), still unsettled, and
billed off chain (API-key routers), with totals.

${OUTPUT_USAGE}
                      {"days":[{"day","receipts","images","settledWei","partialWei","unsettledWei","offchainWei",
                       "unbillableWei"}],"total":{…the same without "day"}}
  -c, --config <file> Config file (default: $PIXELD_CONFIG, else config/pixeld.yaml)
`;

export interface LedgerOptions extends OutputOptions {
  configPath?: string | undefined;
}

/** One row of `pixeld accounts --json`. */
export interface AccountReport {
  user: string;
  balanceWei: bigint;
  pendingRefundWei: bigint;
  unsettledWei: bigint;
  reservedWei: bigint;
  /** balance − pending refunds − unsettled − reserved, at least 0. */
  availableWei: bigint;
  /** Refused new work since a settlement came out short (PARTIAL), until the user tops up. */
  blocked: boolean;
  nonce: bigint;
  acknowledged: boolean;
}

/** What `pixeld accounts --json` prints. */
export interface AccountsReport {
  provider: string;
  accounts: AccountReport[];
  totals: { balanceWei: bigint; unsettledWei: bigint; reservedWei: bigint };
}

/** What `pixeld earnings --json` prints. */
export interface EarningsReport {
  days: EarningsDay[];
  total: EarningsTotals;
}

const zeroG = (wei: bigint) => formatEther(wei);

async function openBooks(config: Readonly<Config>): Promise<{ billing: BillingStore; close: () => Promise<void> }> {
  try {
    const stores = await openStores(config, { mustExist: true });
    return { billing: stores.billing, close: () => stores.close() };
  } catch (err) {
    if (err instanceof StoreNotFoundError) {
      throw new CommandError(`no daemon database at ${err.file}: has pixeld served with this config?`, EXIT_USAGE);
    }
    throw err;
  }
}

export async function accounts(options: LedgerOptions, io: CommandIo): Promise<number> {
  const out = commandOutput(io, options);
  try {
    const config = loadCommandConfig(options.configPath, io.env);
    const chainConfig = requireChainConfig(config, 'accounts');
    const client = createChainClient(chainConfig);
    out.progress('opening the daemon\'s database');
    const books = await openBooks(config);
    try {
      const wallet = await loadProviderWallet(config.provider.wallet, io.env);
      const provider = resolveProviderAddress(config.provider.address, wallet);
      if (/^0x0{40}$/.test(provider)) throw new CommandError('set provider.address or the provider wallet', EXIT_USAGE);
      out.progress(`reading the accounts of provider ${provider} on chain ${chainConfig.chainId}`);
      const onChain = await getAccountsByProvider(client, { provider });
      out.progress(`reading this daemon's receipts and reservations for ${onChain.length} user(s)`);
      const report: AccountsReport = { provider, accounts: [], totals: { balanceWei: 0n, unsettledWei: 0n, reservedWei: 0n } };
      for (const account of onChain) {
        const unsettled = await books.billing.unsettledWei(account.user);
        const reserved = await books.billing.reservedWei(account.user);
        const available = account.balance - account.pendingRefund - unsettled - reserved;
        report.accounts.push({
          user: account.user,
          balanceWei: account.balance,
          pendingRefundWei: account.pendingRefund,
          unsettledWei: unsettled,
          reservedWei: reserved,
          availableWei: available > 0n ? available : 0n,
          blocked: (await books.billing.getUserBlock(account.user)) !== undefined,
          nonce: account.nonce,
          acknowledged: account.acknowledged,
        });
        report.totals.balanceWei += account.balance;
        report.totals.unsettledWei += unsettled;
        report.totals.reservedWei += reserved;
      }
      out.result(report);
      out.line(`provider ${provider}: ${onChain.length} account(s)   (amounts in 0G)`);
      const rows = [['user', 'balance', 'pending refund', 'unsettled', 'reserved', 'available', 'nonce', 'ack']];
      for (const a of report.accounts) {
        rows.push([
          a.user,
          zeroG(a.balanceWei),
          zeroG(a.pendingRefundWei),
          zeroG(a.unsettledWei),
          zeroG(a.reservedWei),
          zeroG(a.availableWei) + (a.blocked ? ' (blocked: settled short)' : ''),
          a.nonce.toString(),
          a.acknowledged ? 'yes' : 'no',
        ]);
      }
      const { totals } = report;
      rows.push(['total', zeroG(totals.balanceWei), '', zeroG(totals.unsettledWei), zeroG(totals.reservedWei), '', '', '']);
      for (const line of table(rows)) out.line(line);
      return EXIT_OK;
    } finally {
      await books.close();
      client.close();
    }
  } catch (err) {
    return reportCommandError('accounts', err, io);
  }
}

export async function earnings(options: LedgerOptions, io: CommandIo): Promise<number> {
  const out = commandOutput(io, options);
  try {
    const config = loadCommandConfig(options.configPath, io.env);
    out.progress('opening the daemon\'s database');
    const books = await openBooks(config);
    try {
      out.progress('summing receipts per day');
      const days = await books.billing.earningsByDay();
      const rows = [['day (UTC)', 'receipts', 'images', 'settled', 'settled short', 'unsettled', 'off chain', 'never charged']];
      const total: EarningsTotals = { receipts: 0, images: 0, settledWei: 0n, partialWei: 0n, unsettledWei: 0n, offchainWei: 0n, unbillableWei: 0n };
      for (const d of days) {
        rows.push([
          d.day,
          String(d.receipts),
          String(d.images),
          zeroG(d.settledWei),
          zeroG(d.partialWei),
          zeroG(d.unsettledWei),
          zeroG(d.offchainWei),
          zeroG(d.unbillableWei),
        ]);
        total.receipts += d.receipts;
        total.images += d.images;
        total.settledWei += d.settledWei;
        total.partialWei += d.partialWei;
        total.unsettledWei += d.unsettledWei;
        total.offchainWei += d.offchainWei;
        total.unbillableWei += d.unbillableWei;
      }
      out.result({ days, total } satisfies EarningsReport);
      rows.push([
        'total',
        String(total.receipts),
        String(total.images),
        zeroG(total.settledWei),
        zeroG(total.partialWei),
        zeroG(total.unsettledWei),
        zeroG(total.offchainWei),
        zeroG(total.unbillableWei),
      ]);
      out.line('fees in 0G; "settled short" are receipts of a PARTIAL settlement: only what the balance covered was paid');
      out.line('"never charged": receipts that fail verification (invalid) or fall at or below a settled nonce (void): see pixeld settle\'s log');
      for (const line of table(rows)) out.line(line);
      return EXIT_OK;
    } finally {
      await books.close();
    }
  } catch (err) {
    return reportCommandError('earnings', err, io);
  }
}

function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ').trimEnd());
}

export async function runLedgerCli(command: 'accounts' | 'earnings', argv: string[], io: CommandIo = processIo()): Promise<number> {
  const usage = command === 'accounts' ? ACCOUNTS_USAGE : EARNINGS_USAGE;
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      options: { config: { type: 'string', short: 'c' }, ...OUTPUT_FLAGS, help: { type: 'boolean', short: 'h' } },
    }));
  } catch (err) {
    io.stderr(`pixeld ${command}: ${(err as Error).message}\n\n${usage}`);
    return EXIT_USAGE;
  }
  if (values.help) {
    io.stdout(usage);
    return EXIT_OK;
  }
  const options = { configPath: values.config, json: values.json, quiet: values.quiet };
  return command === 'accounts' ? accounts(options, io) : earnings(options, io);
}
