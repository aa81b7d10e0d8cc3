import { parseArgs } from 'node:util';
import { formatEther } from 'ethers';
import type { BillingStore } from '../billing/store.js';
import { getAccountsByProvider } from '../chain/get-accounts-by-provider.js';
import { loadProviderWallet, resolveProviderAddress } from '../chain/provider-wallet.js';
import { createChainClient } from '../chain/serving-contract.js';
import type { Config } from '../config/schema.js';
import { openStores, StoreNotFoundError } from '../jobs/open-stores.js';
import {
  CommandError,
  EXIT_OK,
  EXIT_USAGE,
  loadCommandConfig,
  processIo,
  reportCommandError,
  requireChainConfig,
  type CommandIo,
} from './command-io.js';

/**
 * The provider's books: `pixeld accounts` (every user with an account on chain, next to what this daemon
 * holds for them) and `pixeld earnings` (receipts per day by settlement state). Both only read: the
 * daemon's database (its SQLite file — safe while it runs, WAL readers never block it — or PostgreSQL) and
 * the chain.
 */

export const ACCOUNTS_USAGE = `Usage: pixeld accounts [--config <file>]

Lists every user account with this provider on the InferenceServing contract: on-chain balance, pending
refunds, settlement nonce and acknowledgement, next to this daemon's unsettled receipts and the
reservations of unfinished jobs, and what is left available.
`;

export const EARNINGS_USAGE = `Usage: pixeld earnings [--config <file>]

Receipts per day (UTC): images delivered, fees settled, settled short (PARTIAL), still unsettled, and
billed off chain (API-key routers), with totals.
`;

export interface LedgerOptions {
  configPath?: string | undefined;
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
  try {
    const config = loadCommandConfig(options.configPath, io.env);
    const client = createChainClient(requireChainConfig(config, 'accounts'));
    const books = await openBooks(config);
    try {
      const wallet = await loadProviderWallet(config.provider.wallet, io.env);
      const provider = resolveProviderAddress(config.provider.address, wallet);
      if (/^0x0{40}$/.test(provider)) throw new CommandError('set provider.address or the provider wallet', EXIT_USAGE);
      const onChain = await getAccountsByProvider(client, { provider });
      io.stdout(`provider ${provider}: ${onChain.length} account(s)   (amounts in 0G)`);
      const rows = [['user', 'balance', 'pending refund', 'unsettled', 'reserved', 'available', 'nonce', 'ack']];
      let totals = { balance: 0n, unsettled: 0n, reserved: 0n };
      for (const account of onChain) {
        const unsettled = await books.billing.unsettledWei(account.user);
        const reserved = await books.billing.reservedWei(account.user);
        const available = account.balance - account.pendingRefund - unsettled - reserved;
        totals = { balance: totals.balance + account.balance, unsettled: totals.unsettled + unsettled, reserved: totals.reserved + reserved };
        const blocked = await books.billing.getUserBlock(account.user);
        rows.push([
          account.user,
          zeroG(account.balance),
          zeroG(account.pendingRefund),
          zeroG(unsettled),
          zeroG(reserved),
          zeroG(available > 0n ? available : 0n) + (blocked ? ' (blocked: settled short)' : ''),
          account.nonce.toString(),
          account.acknowledged ? 'yes' : 'no',
        ]);
      }
      rows.push(['total', zeroG(totals.balance), '', zeroG(totals.unsettled), zeroG(totals.reserved), '', '', '']);
      for (const line of table(rows)) io.stdout(line);
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
  try {
    const config = loadCommandConfig(options.configPath, io.env);
    const books = await openBooks(config);
    try {
      const days = await books.billing.earningsByDay();
      const rows = [['day (UTC)', 'receipts', 'images', 'settled', 'settled short', 'unsettled', 'off chain', 'never charged']];
      const total = { receipts: 0, images: 0, settled: 0n, partial: 0n, unsettled: 0n, offchain: 0n, unbillable: 0n };
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
        total.settled += d.settledWei;
        total.partial += d.partialWei;
        total.unsettled += d.unsettledWei;
        total.offchain += d.offchainWei;
        total.unbillable += d.unbillableWei;
      }
      rows.push([
        'total',
        String(total.receipts),
        String(total.images),
        zeroG(total.settled),
        zeroG(total.partial),
        zeroG(total.unsettled),
        zeroG(total.offchain),
        zeroG(total.unbillable),
      ]);
      io.stdout('fees in 0G; "settled short" are receipts of a PARTIAL settlement: only what the balance covered was paid');
      io.stdout('"never charged": receipts that fail verification (invalid) or fall at or below a settled nonce (void): see pixeld settle\'s log');
      for (const line of table(rows)) io.stdout(line);
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
    ({ values } = parseArgs({ args: argv, allowPositionals: false, options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } } }));
  } catch (err) {
    io.stderr(`pixeld ${command}: ${(err as Error).message}\n\n${usage}`);
    return EXIT_USAGE;
  }
  if (values.help) {
    io.stdout(usage);
    return EXIT_OK;
  }
  return command === 'accounts' ? accounts({ configPath: values.config }, io) : earnings({ configPath: values.config }, io);
}
