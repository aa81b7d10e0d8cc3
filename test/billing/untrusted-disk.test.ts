import { copyFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { Wallet } from 'ethers';
import { describe, expect, it } from 'vitest';
import type { TestDaemon } from '../helpers/daemon.js';
import { startRpcProxy } from '../helpers/rpc-proxy.js';
import {
  PRICE,
  accountOf,
  completedJob,
  fundedUsers,
  generate,
  itemsSent,
  settlementEventsFor,
  standaloneSettler,
  startBillingDaemon,
  type BillingChain,
  type BillingDaemonOptions,
} from './fixture.js';
import { useBillingChain } from './chain-hooks.js';

/**
 * The operator who is paid controls the disk (tdx mode): whatever it does to the database, the amount
 * charged on chain is the sum of the fees the TEE signed in receipts, each receipt charged once. Real
 * chain (anvil + the project's InferenceServing), real daemon, the database edited with a second SQLite
 * connection as an operator would.
 */

let c: BillingChain;
const cleanups = useBillingChain((chain) => (c = chain));

async function daemon(dataDir?: string, config?: BillingDaemonOptions['config']): Promise<TestDaemon> {
  const d = await startBillingDaemon(c, { dataDir, config });
  cleanups.push(() => d.close());
  if (dataDir === undefined) cleanups.push(() => rmSync(d.dataDir, { recursive: true, force: true }));
  return d;
}

/** The operator's own connection to the daemon's database. */
function operatorDb(d: TestDaemon): Database.Database {
  const db = new Database(path.join(d.dataDir, 'pixeld.sqlite'));
  db.pragma('busy_timeout = 5000');
  cleanups.push(() => {
    db.close();
  });
  return db;
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

const stateOf = async (d: TestDaemon, jobId: string) => (await d.daemon.billing.getReceipt(jobId))!.state;

describe('settlement against an operator who edits the disk', () => {
  it('charges the signed fees when the fee, leaf and receipt JSON columns are inflated', async () => {
    const d = await daemon();
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    const jobs = [await completedJob(d, c, user, 1), await completedJob(d, c, user, 2)];
    const db = operatorDb(d);
    const inflated = (100n * PRICE).toString();
    for (const jobId of jobs) {
      const row = db.prepare<[string], { leaf: string }>('SELECT leaf FROM receipts WHERE job_id = ?').get(jobId)!;
      const leaf = JSON.parse(row.leaf) as string[];
      leaf[6] = inflated;
      db.prepare(`UPDATE receipts SET fee_wei = ?, leaf = ?, receipt = json_set(receipt, '$.fee_wei', ?) WHERE job_id = ?`).run(
        inflated,
        JSON.stringify(leaf),
        inflated,
        jobId,
      );
    }
    const before = await accountOf(c, user.address);

    const result = await d.daemon.settler!.runRound();

    expect(result.users).toMatchObject([{ user: user.address, outcome: 'settled', amountWei: 3n * PRICE }]);
    expect(await chargedOnChain(user)).toBe(3n * PRICE);
    expect(before.balance - (await accountOf(c, user.address)).balance).toBe(3n * PRICE);
  });

  it('never settles a receipt whose signed text was edited; alerts and keeps it as invalid', async () => {
    const d = await daemon();
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    const honest = await completedJob(d, c, user, 1);
    const edited = await completedJob(d, c, user, 1);
    const db = operatorDb(d);
    const row = db.prepare<[string], { receipt: string }>('SELECT receipt FROM receipts WHERE job_id = ?').get(edited)!;
    const receipt = JSON.parse(row.receipt) as { text: string };
    const text = receipt.text.replace(/fee_wei:\d+/, `fee_wei:${50n * PRICE}`);
    db.prepare(`UPDATE receipts SET receipt = json_set(receipt, '$.text', ?) WHERE job_id = ?`).run(text, edited);

    const result = await d.daemon.settler!.runRound();

    expect(result.users).toMatchObject([{ user: user.address, outcome: 'settled', amountWei: PRICE, receipts: 1 }]);
    expect(await chargedOnChain(user)).toBe(PRICE);
    expect(await stateOf(d, honest)).toBe('settled');
    expect(await d.daemon.billing.getReceipt(edited)).toMatchObject({ state: 'invalid', note: expect.stringMatching(/signed by 0x[0-9a-fA-F]{40}, not by this TEE key/) });
    // A later round does not pick it up either.
    expect(await d.daemon.settler!.runRound()).toMatchObject({ users: [], transactions: [] });
  });

  it('does not charge again for settled receipts flipped back to unsettled: the chain shows them paid', async () => {
    const d = await daemon();
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    const jobs = [await completedJob(d, c, user, 1), await completedJob(d, c, user, 1)];
    const first = await d.daemon.settler!.runRound();
    const tx = first.transactions[0]!;
    const db = operatorDb(d);
    db.prepare(
      `UPDATE receipts SET state = 'unsettled', batch_id = NULL, root = NULL, proof = NULL, settled_tx = NULL, settled_block = NULL
       WHERE user = ?`,
    ).run(user.address);
    const later = await completedJob(d, c, user, 1);

    const second = await d.daemon.settler!.runRound();

    // Only the new receipt is charged; the flipped ones are settled again from the chain, with their transaction.
    expect(second.users).toMatchObject([{ user: user.address, outcome: 'settled', receipts: 1, amountWei: PRICE, nonce: 3n }]);
    for (const jobId of jobs) expect(await d.daemon.billing.getReceipt(jobId)).toMatchObject({ state: 'settled', settledTx: tx });
    expect(await stateOf(d, later)).toBe('settled');
    expect(await chargedOnChain(user)).toBe(3n * PRICE);
    expect((await settlementEventsFor(c, user.address)).map((e) => e.status)).toEqual([0, 0]);
  });

  it('does not sign settled receipts again when, besides the database, the RPC node understates the nonce', async () => {
    const d = await daemon();
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    const jobs = [await completedJob(d, c, user, 1), await completedJob(d, c, user, 1)];
    const blockBefore = await c.anvil.provider.getBlockNumber();
    const first = await d.daemon.settler!.runRound();
    expect(first.users).toMatchObject([{ outcome: 'settled', nonce: 2n }]);
    operatorDb(d)
      .prepare(`UPDATE receipts SET state = 'unsettled', batch_id = NULL, root = NULL, proof = NULL, settled_tx = NULL WHERE user = ?`)
      .run(user.address);
    // The operator's node answers the account read with the state from before the settlement (nonce 0).
    const p = await startRpcProxy(c.anvil.rpcUrl);
    cleanups.push(() => p.close());
    p.once('eth_call', async (call) => {
      const [tx] = call.params as [unknown];
      const res = await fetch(c.anvil.rpcUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'eth_call', params: [tx, `0x${blockBefore.toString(16)}`] }),
      });
      return { lagging: ((await res.json()) as { result: unknown }).result };
    });
    const s = standaloneSettler(d, c, p.url);
    cleanups.push(() => s.close());

    const second = await s.settler.runRound();

    // The TEE journal knows nonce 2 was signed: the only item it offers is that same one, which the chain
    // (asked by the preview) refuses as used; nothing is signed or sent over receipts 1 and 2 again.
    expect(second.transactions).toEqual([]);
    expect(second.users).toMatchObject([{ user: user.address, outcome: 'dropped', status: 'INVALID_NONCE', nonce: 2n }]);
    expect(await settlementEventsFor(c, user.address)).toHaveLength(1);
    // Read honestly, the chain shows them paid: settled again with their transaction, still charged once.
    const third = await d.daemon.settler!.runRound();
    expect(third.transactions).toEqual([]);
    for (const jobId of jobs) expect(await d.daemon.billing.getReceipt(jobId)).toMatchObject({ state: 'settled', settledTx: first.transactions[0] });
    expect(await chargedOnChain(user)).toBe(2n * PRICE);
  });

  it('charges once when the data dir is restored from a copy taken before a settlement', async () => {
    const d = await daemon();
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    const jobs = [await completedJob(d, c, user, 1), await completedJob(d, c, user, 2)];
    const copy = path.join(d.dataDir, 'before-settlement.sqlite');
    const backup = new Database(path.join(d.dataDir, 'pixeld.sqlite'), { readonly: true });
    await backup.backup(copy);
    backup.close();

    const first = await d.daemon.settler!.runRound();
    expect(first.users).toMatchObject([{ outcome: 'settled', amountWei: 3n * PRICE }]);
    await d.close();
    for (const suffix of ['', '-wal', '-shm']) rmSync(path.join(d.dataDir, `pixeld.sqlite${suffix}`), { force: true });
    copyFileSync(copy, path.join(d.dataDir, 'pixeld.sqlite'));
    // Outside tdx mode the journal lives in the data dir: restored with it (here, to before it existed).
    rmSync(path.join(d.dataDir, 'settlement-journal.json'), { force: true });

    const restored = await daemon(d.dataDir);
    for (const jobId of jobs) expect(await stateOf(restored, jobId)).toBe('unsettled');
    const later = await completedJob(restored, c, user, 1);
    const second = await restored.daemon.settler!.runRound();

    expect(second.users).toMatchObject([{ user: user.address, outcome: 'settled', receipts: 1, amountWei: PRICE }]);
    for (const jobId of jobs) expect(await restored.daemon.billing.getReceipt(jobId)).toMatchObject({ state: 'settled', settledTx: first.transactions[0] });
    expect(await stateOf(restored, later)).toBe('settled');
    expect(await chargedOnChain(user)).toBe(4n * PRICE);
  });
});

describe('signatures outlive their job records', () => {
  it('serves a billed job’s signature from its receipt after the job record is gone', async () => {
    const d = await daemon();
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    const jobId = await completedJob(d, c, user, 1);
    const before = await fetch(`${d.url}/v1/proxy/signature/${jobId}`);
    expect(before.status).toBe(200);
    const signed = await before.json();
    // What the sweeper does once jobs.recordRetentionMs has passed.
    operatorDb(d).prepare('DELETE FROM jobs WHERE id = ?').run(jobId);
    expect(await d.daemon.store.get(jobId)).toBeUndefined();

    const after = await fetch(`${d.url}/v1/proxy/signature/${jobId}`);
    expect(after.status).toBe(200);
    expect(await after.json()).toEqual(signed);
  });
});

describe('no free images after a settlement', () => {
  it('a balance that exactly covered the receipts admits nothing more right after they are settled', async () => {
    // Accounts cached for a minute, as a busy daemon would.
    const d = await daemon(undefined, { auth: { mode: '0g', chainCacheMs: 60_000 } });
    const [user] = (await fundedUsers(c, 1, 2n * PRICE)) as [Wallet];
    // The daemon reads (and caches) the balance: 2, all of it now owed.
    await completedJob(d, c, user, 2);
    expect((await generate(d, c, user)).status).toBe(402);
    // Settled by another process (`pixeld settle`), which cannot tell this daemon's cache.
    const other = standaloneSettler(d, c, c.anvil.rpcUrl);
    cleanups.push(() => other.close());
    const result = await other.settler.runRound();
    expect(result.users).toMatchObject([{ outcome: 'settled', amountWei: 2n * PRICE }]);
    expect((await accountOf(c, user.address)).balance).toBe(0n);

    const rightAfter = await generate(d, c, user);
    expect(rightAfter.status).toBe(402);
    expect(rightAfter.body.error.code).toBe('insufficient_credits');
  });
});

describe('reads the settler trusts', () => {
  it('a node lagging behind the block where the wallet nonce was seen used cannot make a sent batch look lost', async () => {
    const d = await daemon();
    const p = await startRpcProxy(c.anvil.rpcUrl);
    cleanups.push(() => p.close());
    const s = standaloneSettler(d, c, p.url);
    cleanups.push(() => s.close());
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    const jobId = await completedJob(d, c, user, 1);
    await c.anvil.setAutomine(false);

    const round = s.settler.runRound();
    for (;;) {
      const [b] = await d.daemon.billing.openBatches();
      const hash = b?.txHashes[0];
      if (hash && (await c.anvil.provider.getTransaction(hash))) break;
      await new Promise((r) => setTimeout(r, 25));
    }
    // Mined now; but the receipt reads reach a node that has not seen the block, and so do the account
    // reads: at 'latest' it answers its own older state, at the newer block it has nothing.
    p.once('eth_getTransactionReceipt', async () => {
      await c.anvil.mine();
      return { lagging: null };
    });
    for (let i = 0; i < 6; i += 1) p.once('eth_getTransactionReceipt', () => ({ lagging: null }));
    const blockTags: unknown[] = [];
    const lagBlock = await c.anvil.provider.getBlockNumber();
    p.once('eth_call', async (call) => {
      const [tx, tag] = call.params as [unknown, unknown];
      blockTags.push(tag);
      if (tag !== 'latest') return 'drop';
      const res = await fetch(c.anvil.rpcUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'eth_call', params: [tx, `0x${lagBlock.toString(16)}`] }),
      });
      return { lagging: ((await res.json()) as { result: unknown }).result };
    });

    const first = await round;
    expect(blockTags).toHaveLength(1);
    expect(blockTags[0]).not.toBe('latest');
    expect(Number(blockTags[0])).toBeGreaterThan(lagBlock);
    expect(first.outcome).toBe('interrupted');
    expect(await stateOf(d, jobId)).toBe('in_flight');

    await c.anvil.setAutomine(true);
    const second = await s.settler.runRound();
    expect(second.reconciled).toMatchObject([{ user: user.address, outcome: 'settled' }]);
    expect(await stateOf(d, jobId)).toBe('settled');
    expect(await chargedOnChain(user)).toBe(PRICE);
    expect(await settlementEventsFor(c, user.address)).toHaveLength(1);
  });
});

