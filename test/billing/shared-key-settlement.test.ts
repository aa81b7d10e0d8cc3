import { rmSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { Wallet } from 'ethers';
import { describe, expect, it } from 'vitest';
import type { SettlerDeps } from '../../src/billing/settlement/types.js';
import { JOURNAL_FILE } from '../../src/tee/settlement-journal.js';
import { tempDir, type TestDaemon } from '../helpers/daemon.js';
import {
  PRICE,
  accountOf,
  as,
  completedJob,
  fundedUsers,
  itemsSent,
  mined,
  settlementEventsFor,
  standaloneSettler,
  startBillingDaemon,
  type BillingChain,
  type StandaloneSettler,
} from './fixture.js';
import { useBillingChain } from './chain-hooks.js';

/**
 * Settlers that share the TEE key but not the journal — replicas under dstack (one derived key, a journal
 * on each replica's own volume), or one instance whose journal was lost while the database kept its
 * batches. Each journal knows only what its own settler signed; the database's batches are how one learns
 * what the other signed. Regression for: replica A signs and records an item (receipts 1..3, nonce 3) and
 * dies before sending it; replica B abandons A's batch and, the balance now lower, signs receipts 1..2
 * under nonce 2, which lands; A restarts and re-sends its journal's nonce-3 item, which the chain accepts —
 * receipts 1 and 2 charged twice.
 *
 * Real chain (anvil + the project's InferenceServing), receipts from real jobs, real Settlers on the
 * daemon's SQLite database, each with its own journal dir.
 */

let c: BillingChain;
const cleanups = useBillingChain((chain) => (c = chain));

async function daemon(): Promise<TestDaemon> {
  const d = await startBillingDaemon(c);
  cleanups.push(() => rmSync(d.dataDir, { recursive: true, force: true }));
  cleanups.push(() => d.close());
  return d;
}

/** A settler on the daemon's database with the daemon's TEE key and a journal in `journalDir`. */
function settlerWithJournal(d: TestDaemon, journalDir: string, overrides: Partial<SettlerDeps> = {}): StandaloneSettler {
  const s = standaloneSettler(d, c, c.anvil.rpcUrl, {
    tee: { signer: d.daemon.tee.signer, address: d.daemon.tee.address, journalDir },
    ...overrides,
  });
  cleanups.push(() => s.close());
  return s;
}

/** A settler that dies after its batch is recorded, before its transaction is signed and sent. */
const dyingBeforeSend = (d: TestDaemon, journalDir: string) =>
  settlerWithJournal(d, journalDir, {
    wallet: {
      signTransaction: async () => {
        throw new Error('the replica died before sending');
      },
    },
  });

function journalDir(): string {
  const dir = tempDir('pixeld-journal-');
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Everything charged to the user on chain: the totalFee of each item the chain settled SUCCESS. */
async function chargedOnChain(user: Wallet): Promise<bigint> {
  let total = 0n;
  for (const event of await settlementEventsFor(c, user.address)) {
    if (event.status !== 0) continue;
    total += (await itemsSent(c, event.tx)).get(user.address.toLowerCase())!.totalFee;
  }
  return total;
}

/** The user withdraws `amountWei` from the account (a refund, after the lock time). */
async function withdraw(user: Wallet, amountWei: bigint): Promise<void> {
  await mined(as(c.serving, user).requestRefund(c.provider.address, amountWei));
  await c.anvil.increaseTime(3_601);
  await mined(as(c.serving, user).processRefunds(c.provider.address));
}

const topUp = (user: Wallet, amountWei: bigint) => mined(as(c.serving, user).depositFund(c.provider.address, { value: amountWei }));

/** Every item the database records in any batch, read as an operator would, straight from the file. */
function recordedItems(d: TestDaemon): Array<{ user: string; provider: string; totalFee: bigint; requestsHash: string; nonce: bigint; signature: string }> {
  const db = new Database(path.join(d.dataDir, 'pixeld.sqlite'), { readonly: true });
  try {
    const rows = db.prepare<[], { items: string }>('SELECT items FROM settlement_batches').all();
    return rows.flatMap((r) =>
      (JSON.parse(r.items) as Array<{ user: string; totalFeeWei: string; requestsHash: string; nonce: string; signature: string }>).map((i) => ({
        user: i.user,
        provider: c.provider.address,
        totalFee: BigInt(i.totalFeeWei),
        requestsHash: i.requestsHash,
        nonce: BigInt(i.nonce),
        signature: i.signature,
      })),
    );
  } finally {
    db.close();
  }
}

/** What the chain would answer now to each recorded item, sent on its own: its status (0 SUCCESS, 4 INVALID_NONCE, …). */
async function replayStatuses(d: TestDaemon): Promise<number[]> {
  const statuses: number[] = [];
  for (const item of recordedItems(d)) {
    const [failedUsers, reasons, partialUsers] = (await as(c.serving, c.provider).getFunction('previewSettlementResults').staticCall([item])) as unknown as [string[], bigint[], string[], bigint[]];
    statuses.push(failedUsers.length > 0 ? Number(reasons[0]) : partialUsers.length > 0 ? 1 : 0);
  }
  return statuses;
}

describe('settlers sharing the TEE key, each with its own journal', () => {
  it('replica B does not sign over receipts in replica A’s recorded item; A later sends that item: each receipt charged once', async () => {
    const d = await daemon();
    const [user] = (await fundedUsers(c, 1, 3n * PRICE)) as [Wallet];
    const jobs = [await completedJob(d, c, user, 1), await completedJob(d, c, user, 1), await completedJob(d, c, user, 1)];
    const dirA = journalDir();
    const dirB = journalDir();

    // A signs receipts 1..3 (nonce 3), records the batch, and dies before sending.
    await expect(dyingBeforeSend(d, dirA).settler.runRound()).rejects.toThrow(/died before sending/);
    const [aBatch] = await d.daemon.billing.openBatches();
    expect(aBatch!.items).toMatchObject([{ nonce: 3n, totalFeeWei: 3n * PRICE }]);
    const aItem = aBatch!.items[0]!;
    // The user withdraws a third: the balance no longer covers A's item.
    await withdraw(user, PRICE);
    expect((await accountOf(c, user.address)).balance).toBe(2n * PRICE);

    // B takes over: A's batch never reached the chain, so it is abandoned and its receipts are unsettled again.
    const roundB = await settlerWithJournal(d, dirB).settler.runRound();
    // The user tops up; A comes back with its journal.
    await topUp(user, 3n * PRICE);
    const roundA = await settlerWithJournal(d, dirA).settler.runRound();

    // Each receipt charged once: 3 × PRICE, whatever the order of the settlers.
    expect(await chargedOnChain(user)).toBe(3n * PRICE);
    expect((await accountOf(c, user.address)).balance).toBe(2n * PRICE);
    expect(roundB.reconciled).toMatchObject([{ outcome: 'abandoned', nonce: 3n }]);
    // B did not sign receipts 1..2 under a new nonce: the item A signed needs more than the balance.
    expect(roundB.transactions).toEqual([]);
    expect(roundB.users).toEqual([]);
    expect(roundA.users).toMatchObject([{ user: user.address, outcome: 'settled', nonce: 3n, amountWei: 3n * PRICE, receipts: 3 }]);
    const sent = (await itemsSent(c, roundA.transactions[0]!)).get(user.address.toLowerCase())!;
    expect(sent).toEqual({ nonce: 3n, requestsHash: aItem.requestsHash, totalFee: 3n * PRICE });
    for (const jobId of jobs) expect(await d.daemon.billing.getReceipt(jobId)).toMatchObject({ state: 'settled', settledTx: roundA.transactions[0] });
    // No signed item the database records can land any more (all at or below the account's nonce).
    expect(await replayStatuses(d)).toEqual([4, 4]);
    // Neither settler has anything left to do.
    expect(await settlerWithJournal(d, dirB).settler.runRound()).toMatchObject({ users: [], transactions: [] });
  });

  it('replica B sends the item A recorded, as signed, when the balance covers it; A then has nothing to send', async () => {
    const d = await daemon();
    const [user] = (await fundedUsers(c, 1, 5n * PRICE)) as [Wallet];
    await completedJob(d, c, user, 2);
    await completedJob(d, c, user, 1);
    const dirA = journalDir();
    await expect(dyingBeforeSend(d, dirA).settler.runRound()).rejects.toThrow(/died before sending/);
    const aItem = (await d.daemon.billing.openBatches())[0]!.items[0]!;
    // A receipt completed since: B's round sees it too, but it is not signed while A's item is outstanding.
    await completedJob(d, c, user, 1);

    const roundB = await settlerWithJournal(d, journalDir()).settler.runRound();
    const roundA = await settlerWithJournal(d, dirA).settler.runRound();
    const roundB2 = await settlerWithJournal(d, journalDir()).settler.runRound();

    expect(roundB.users).toMatchObject([{ outcome: 'settled', nonce: 2n, amountWei: 3n * PRICE, receipts: 2 }]);
    expect((await itemsSent(c, roundB.transactions[0]!)).get(user.address.toLowerCase())).toEqual({
      nonce: 2n,
      requestsHash: aItem.requestsHash,
      totalFee: 3n * PRICE,
    });
    // A: its journal's item has landed; the newer receipt is signed above it.
    expect(roundA.users).toMatchObject([{ outcome: 'settled', nonce: 3n, amountWei: PRICE, receipts: 1 }]);
    expect(roundB2).toMatchObject({ users: [], transactions: [] });
    expect(await chargedOnChain(user)).toBe(4n * PRICE);
    expect((await accountOf(c, user.address)).balance).toBe(PRICE);
  });

  it('a lost journal with the database intact: the recorded item is taken into the new journal and sent as signed, even after the database loses it', async () => {
    const d = await daemon();
    const [user] = (await fundedUsers(c, 1, 3n * PRICE)) as [Wallet];
    for (let i = 0; i < 3; i += 1) await completedJob(d, c, user, 1);
    const lost = journalDir();
    await expect(dyingBeforeSend(d, lost).settler.runRound()).rejects.toThrow(/died before sending/);
    const recorded = (await d.daemon.billing.openBatches())[0]!.items[0]!;
    // The journal's volume is replaced by a new, empty one.
    rmSync(path.join(lost, JOURNAL_FILE));
    await withdraw(user, PRICE);

    const held = await settlerWithJournal(d, lost).settler.runRound();
    // Nothing new signed over receipts 1..3: the recorded item needs more than the balance.
    expect(held).toMatchObject({ users: [], transactions: [] });
    // The operator then rolls the database back to before the batch: the journal still has the item.
    const db = new Database(path.join(d.dataDir, 'pixeld.sqlite'));
    db.exec('DELETE FROM settlement_batches; DELETE FROM settlement_items;');
    db.close();
    await topUp(user, 3n * PRICE);
    const sent = await settlerWithJournal(d, lost).settler.runRound();

    expect(await chargedOnChain(user)).toBe(3n * PRICE);
    expect(sent.users).toMatchObject([{ outcome: 'settled', nonce: 3n, amountWei: 3n * PRICE, receipts: 3 }]);
    expect((await itemsSent(c, sent.transactions[0]!)).get(user.address.toLowerCase())).toEqual({
      nonce: 3n,
      requestsHash: recorded.requestsHash,
      totalFee: 3n * PRICE,
    });
    expect(await settlementEventsFor(c, user.address)).toHaveLength(1);
  });
});
