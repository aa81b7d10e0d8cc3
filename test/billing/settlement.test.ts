import { rmSync } from 'node:fs';
import { ZeroHash, parseEther, type Wallet } from 'ethers';
import { describe, expect, it } from 'vitest';
import { verifyLeaf, type LeafValues } from '../../src/billing/leaf.js';
import { acknowledgeService, revokeServiceAcknowledgement, settlementDomain, signSettlement } from '../chain/anvil.js';
import { ControlledBackend } from '../helpers/controlled-backend.js';
import type { TestDaemon } from '../helpers/daemon.js';
import { startRpcProxy, type RpcProxy } from '../helpers/rpc-proxy.js';
import {
  PRICE,
  accountOf,
  as,
  bearer,
  completedJob,
  fundedUsers,
  gasPaid,
  generate,
  itemsSent,
  mined,
  receiptOf,
  settlementEventsFor,
  standaloneSettler,
  startBillingDaemon,
  type BillingChain,
  type StandaloneSettler,
} from './fixture.js';
import { useBillingChain } from './chain-hooks.js';

/**
 * Settlement rounds against a real chain: anvil running the project's InferenceServing, receipts made
 * by real jobs through the daemon's HTTP API with 0G session tokens, and the daemon's own settler.
 */

let c: BillingChain;
const cleanups = useBillingChain((chain) => (c = chain));

async function daemon(options: Parameters<typeof startBillingDaemon>[1] = {}): Promise<TestDaemon> {
  const d = await startBillingDaemon(c, options);
  if (options.dataDir === undefined) cleanups.push(() => rmSync(d.dataDir, { recursive: true, force: true }));
  cleanups.push(() => d.close());
  return d;
}

async function waitFor<T>(probe: () => Promise<T | undefined>, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}

const stateOf = async (d: TestDaemon, jobId: string) => (await d.daemon.billing.getReceipt(jobId))!.state;

async function proxy(): Promise<RpcProxy> {
  const p = await startRpcProxy(c.anvil.rpcUrl);
  cleanups.push(() => p.close());
  return p;
}

function settlerVia(d: TestDaemon, rpcUrl: string, overrides: Parameters<typeof standaloneSettler>[3] = {}): StandaloneSettler {
  const s = standaloneSettler(d, c, rpcUrl, overrides);
  cleanups.push(() => s.close());
  return s;
}

const providerBalance = () => c.anvil.provider.getBalance(c.provider.address);

describe('a settlement round', () => {
  it('settles several users in one transaction: all SUCCESS, the provider is paid exactly the fees, every proof verifies against the requestsHash sent', async () => {
    const d = await daemon();
    const users = await fundedUsers(c, 3);
    const jobs = new Map<Wallet, string[]>();
    for (const [i, user] of users.entries()) {
      jobs.set(user, [await completedJob(d, c, user, i + 1), await completedJob(d, c, user, 1)]);
    }
    const fees = new Map(users.map((u, i) => [u, BigInt(i + 2) * PRICE]));
    const total = [...fees.values()].reduce((a, b) => a + b, 0n);
    const before = providerBalance();
    const balancesBefore = await Promise.all(users.map((u) => accountOf(c, u.address)));

    const result = await d.daemon.settler!.runRound();

    expect(result.outcome).toBe('completed');
    expect(result.transactions).toHaveLength(1);
    expect(result.users.map((u) => u.outcome)).toEqual(['settled', 'settled', 'settled']);
    const txHash = result.transactions[0]!;
    const receipt = (await c.anvil.provider.getTransactionReceipt(txHash))!;
    expect((await providerBalance()) - (await before)).toBe(total - gasPaid(receipt));

    const sent = await itemsSent(c, txHash);
    expect(sent.size).toBe(3);
    for (const [i, user] of users.entries()) {
      const item = sent.get(user.address.toLowerCase())!;
      expect(item.totalFee).toBe(fees.get(user));
      // The nonce is the highest receipt sequence number the item covers: two receipts each.
      expect(item.nonce).toBe(2n);
      const account = await accountOf(c, user.address);
      expect(account.nonce).toBe(2n);
      expect(balancesBefore[i]!.balance - account.balance).toBe(fees.get(user));
      for (const jobId of jobs.get(user)!) {
        const r = await receiptOf(d, c, user, jobId);
        expect(r.state).toBe('settled');
        expect(r.settlement).toMatchObject({ requests_hash: item.requestsHash, tx_hash: txHash, block: receipt.blockNumber, outcome: 'SUCCESS' });
        expect(verifyLeaf(item.requestsHash, r.leaf.values as LeafValues, r.settlement.proof as string[])).toBe(true);
        // The proof is for this receipt only: another user's root does not accept it.
        const other = sent.get(users[(i + 1) % 3]!.address.toLowerCase())!;
        expect(verifyLeaf(other.requestsHash, r.leaf.values as LeafValues, r.settlement.proof as string[])).toBe(false);
      }
      const owed = await fetch(`${d.url}/v1/user/${user.address}/unsettledfee`, { headers: { authorization: await bearer(c, user) } });
      expect(await owed.json()).toEqual({ unsettledFee: '0' });
    }
    expect(d.daemon.settler!.counters).toMatchObject({ transactionsSent: 1, receiptsSettled: 6, settledWei: total });

    // Nothing is left: the next round sends nothing and the nonce is not touched.
    const again = await d.daemon.settler!.runRound();
    expect(again).toMatchObject({ outcome: 'completed', users: [], transactions: [] });
  });

  it('puts at most 50 users in a transaction: 55 users take two, each settled once', async () => {
    const d = await daemon();
    const users = await fundedUsers(c, 55);
    const jobIds: string[] = [];
    for (let i = 0; i < users.length; i += 11) {
      jobIds.push(...(await Promise.all(users.slice(i, i + 11).map((u) => completedJob(d, c, u)))));
    }
    const before = await providerBalance();

    const result = await d.daemon.settler!.runRound();

    expect(result.outcome).toBe('completed');
    expect(result.transactions).toHaveLength(2);
    expect(result.users.filter((u) => u.outcome === 'settled')).toHaveLength(55);
    const sent = await Promise.all(result.transactions.map((h) => itemsSent(c, h)));
    expect(sent.map((items) => items.size)).toEqual([50, 5]);
    expect(new Set([...sent[0]!.keys(), ...sent[1]!.keys()]).size).toBe(55);
    const gas = (await Promise.all(result.transactions.map(async (h) => gasPaid((await c.anvil.provider.getTransactionReceipt(h))!)))).reduce((a, b) => a + b, 0n);
    expect((await providerBalance()) - before).toBe(55n * PRICE - gas);
    for (const jobId of jobIds) expect(await stateOf(d, jobId)).toBe('settled');
  }, 60_000);

  it('settles only the whole receipts the balance covers, in sequence order — never a PARTIAL that forfeits the rest; the rest after a top-up', async () => {
    const d = await daemon();
    const [user] = (await fundedUsers(c, 1, 4n * PRICE)) as [Wallet];
    const jobs = [await completedJob(d, c, user, 1), await completedJob(d, c, user, 2), await completedJob(d, c, user, 1)];
    // After the jobs the user takes 2 of their 4 back: the balance covers the first receipt (1), not the next (2).
    await mined(as(c.serving, user).requestRefund(c.provider.address, 2n * PRICE));
    await c.anvil.increaseTime(3601);
    await mined(as(c.serving, user).processRefunds(c.provider.address));
    expect((await accountOf(c, user.address)).balance).toBe(2n * PRICE);
    const before = await providerBalance();

    const first = await d.daemon.settler!.runRound();

    expect(first.users).toMatchObject([{ user: user.address, outcome: 'settled', status: 'SUCCESS', amountWei: PRICE, receipts: 1, nonce: 1n }]);
    const receipt = (await c.anvil.provider.getTransactionReceipt(first.transactions[0]!))!;
    expect((await providerBalance()) - before).toBe(PRICE - gasPaid(receipt));
    expect(await Promise.all(jobs.map((j) => stateOf(d, j)))).toEqual(['settled', 'unsettled', 'unsettled']);
    expect(await d.daemon.billing.getUserBlock(user.address)).toBeUndefined();
    // What is still owed (3) is above the balance (1): no more work until the user tops up.
    expect((await generate(d, c, user)).status).toBe(402);
    // Nothing else fits: the next round sends nothing rather than a PARTIAL.
    expect(await d.daemon.settler!.runRound()).toMatchObject({ outcome: 'completed', transactions: [] });

    await mined(as(c.serving, user).depositFund(c.provider.address, { value: 3n * PRICE }));
    const second = await d.daemon.settler!.runRound();
    expect(second.users).toMatchObject([{ user: user.address, outcome: 'settled', amountWei: 3n * PRICE, receipts: 2, nonce: 3n }]);
    expect(await Promise.all(jobs.map((j) => stateOf(d, j)))).toEqual(['settled', 'settled', 'settled']);
    // Charged exactly the sum of the receipts, once, with no PARTIAL on the way.
    expect((await settlementEventsFor(c, user.address)).map((e) => e.status)).toEqual([0, 0]);
    // 4 deposited − 2 refunded + 3 topped up − 4 charged.
    expect((await accountOf(c, user.address)).balance).toBe(PRICE);
    expect(d.daemon.settler!.counters).toMatchObject({ receiptsPartial: 0, settledWei: 4n * PRICE });
  });

  it('refuses a job whose reservation does not fit before any GPU work: 402 and no backend call', async () => {
    const backend = new ControlledBackend('reference');
    const d = await daemon({ backends: new Map([['reference', backend]]) });
    const [user] = (await fundedUsers(c, 1, (3n * PRICE) / 2n)) as [Wallet];
    const res = await generate(d, c, user, 2);
    expect(res.status).toBe(402);
    expect(res.body.error.code).toBe('insufficient_credits');
    expect(res.body.error.message).toContain(`needs ${2n * PRICE} wei`);
    expect(backend.calls).toHaveLength(0);
    expect(await d.daemon.store.countUnfinishedForModel('ref')).toBe(0);
  });

  it('INVALID_NONCE when the nonce moved on chain after signing: the receipt can never be charged (void); later receipts are numbered above the new nonce', async () => {
    const d = await daemon({ wallet: false });
    const p = await proxy();
    const { settler } = settlerVia(d, p.url);
    const [user, other] = (await fundedUsers(c, 2)) as [Wallet, Wallet];
    const jobId = await completedJob(d, c, user);
    await completedJob(d, c, other);
    p.once('eth_getTransactionCount', async () => {
      // The batch is signed with nonce 1 and persisted; now something settles nonce 100 for the user.
      const item = await signSettlement(c.teeKey, settlementDomain(c.anvil.chainId, c.serving.target as string), {
        user: user.address,
        provider: c.provider.address,
        totalFee: 1n,
        requestsHash: ZeroHash,
        nonce: 100n,
      });
      await mined(as(c.serving, c.provider).settleFeesWithTEE([item]));
      return 'answer' as const;
    });

    const first = await settler.runRound();

    expect(first.outcome).toBe('completed');
    const byUser = new Map(first.users.map((u) => [u.user, u]));
    expect(byUser.get(user.address)).toMatchObject({ outcome: 'refused', status: 'INVALID_NONCE', nonce: 1n });
    expect(byUser.get(other.address)).toMatchObject({ outcome: 'settled' });
    expect(await stateOf(d, jobId)).toBe('unsettled');
    expect(settler.counters.failures.INVALID_NONCE).toBe(1);

    // An item with nonce 100 was signed by this key: it may have paid for anything numbered up to 100.
    const second = await settler.runRound();
    expect(second).toMatchObject({ outcome: 'completed', users: [], transactions: [] });
    expect(await d.daemon.billing.getReceipt(jobId)).toMatchObject({ state: 'void', note: expect.stringMatching(/at or below the settled nonce/) });

    const later = await completedJob(d, c, user);
    expect((await d.daemon.billing.getReceipt(later))!.seq).toBe(101n);
    const third = await settler.runRound();
    expect(third.users).toMatchObject([{ user: user.address, outcome: 'settled', nonce: 101n }]);
    expect(await stateOf(d, later)).toBe('settled');
    expect((await accountOf(c, user.address)).nonce).toBe(101n);
  });

  it('NO_TEE_SIGNER while the acknowledgement is revoked: receipts kept unsettled and alerted, settled after re-acknowledgement', async () => {
    const d = await daemon({ wallet: false });
    const p = await proxy();
    const { settler } = settlerVia(d, p.url);
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    const jobId = await completedJob(d, c, user);
    await revokeServiceAcknowledgement(c.serving, c.owner, c.provider.address);

    // The preview sees it: nothing is sent.
    const walletNonce = await c.anvil.provider.getTransactionCount(c.provider.address);
    const previewed = await settler.runRound();
    expect(previewed.users).toMatchObject([{ outcome: 'dropped', status: 'NO_TEE_SIGNER' }]);
    expect(previewed.transactions).toEqual([]);
    expect(await c.anvil.provider.getTransactionCount(c.provider.address)).toBe(walletNonce);
    expect(await stateOf(d, jobId)).toBe('unsettled');

    // Revoked between the preview and the transaction: the chain itself answers NO_TEE_SIGNER.
    await acknowledgeService(c.serving, c.owner, c.provider.address);
    p.once('eth_getTransactionCount', async () => {
      await revokeServiceAcknowledgement(c.serving, c.owner, c.provider.address);
      return 'answer' as const;
    });
    const refused = await settler.runRound();
    expect(refused.transactions).toHaveLength(1);
    expect(refused.users).toMatchObject([{ outcome: 'refused', status: 'NO_TEE_SIGNER', nonce: 1n }]);
    expect(await stateOf(d, jobId)).toBe('unsettled');
    expect(settler.counters.failures.NO_TEE_SIGNER).toBe(2);

    await acknowledgeService(c.serving, c.owner, c.provider.address);
    const settled = await settler.runRound();
    // The refused item is still the TEE's outstanding one: sent again exactly as signed.
    expect(settled.users).toMatchObject([{ outcome: 'settled', nonce: 1n }]);
    expect(await stateOf(d, jobId)).toBe('settled');
    expect(await settlementEventsFor(c, user.address)).toMatchObject([{ status: 3 }, { status: 0 }]);
  });

  it('an RPC outage mid-round loses nothing: what was sent is reconciled and settled once when the chain is back', async () => {
    const d = await daemon({ wallet: false });
    const p = await proxy();
    const { settler } = settlerVia(d, p.url);
    const [alice, bob] = (await fundedUsers(c, 2)) as [Wallet, Wallet];
    const balanceBefore = (await accountOf(c, alice.address)).balance;
    const firstJob = await completedJob(d, c, alice);

    // The node goes away as the transaction is sent: it never arrives.
    p.once('eth_sendRawTransaction', () => {
      p.cut();
      return 'drop' as const;
    });
    const cutOff = await settler.runRound();
    expect(cutOff.outcome).toBe('interrupted');
    expect(cutOff.error).toMatch(/could not be read/);
    const [open] = await d.daemon.billing.openBatches();
    expect(open).toMatchObject({ state: 'sent' });
    expect(open!.txHashes).toHaveLength(1);
    expect(await stateOf(d, firstJob)).toBe('in_flight');
    // The daemon keeps serving (its own chain reads do not go through the dead proxy).
    const bobJob = await completedJob(d, c, bob);

    p.restore();
    const back = await settler.runRound();
    expect(back.outcome).toBe('completed');
    expect(back.reconciled).toMatchObject([{ user: alice.address, outcome: 'settled', batchId: open!.id }]);
    expect(back.users).toMatchObject([{ user: bob.address, outcome: 'settled' }]);
    const resent = (await d.daemon.billing.getBatch(open!.id))!;
    expect(resent.state).toBe('confirmed');
    expect(resent.txHashes).toHaveLength(2);
    expect(back.reconciled[0]!.txHash).toBe(resent.txHashes[1]);

    // The node goes away after the transaction was mined, before the settler saw the receipt.
    const secondJob = await completedJob(d, c, alice);
    p.once('eth_getTransactionReceipt', () => {
      p.cut();
      return 'drop' as const;
    });
    expect((await settler.runRound()).outcome).toBe('interrupted');
    expect(await stateOf(d, secondJob)).toBe('in_flight');
    p.restore();
    const later = await settler.runRound();
    expect(later.reconciled).toMatchObject([{ user: alice.address, outcome: 'settled' }]);
    expect(await stateOf(d, secondJob)).toBe('settled');

    // Settled exactly once each: two events, two fees taken, receipts settled.
    expect(await settlementEventsFor(c, alice.address)).toMatchObject([{ status: 0 }, { status: 0 }]);
    expect(balanceBefore - (await accountOf(c, alice.address)).balance).toBe(2n * PRICE);
    expect(await stateOf(d, firstJob)).toBe('settled');
    expect(await stateOf(d, bobJob)).toBe('settled');
    expect(await d.daemon.billing.openBatches()).toEqual([]);
  });

  it('a batch prepared but never recorded is resolved from the chain: applied → confirmed with its transaction; not → abandoned, nonce kept used', async () => {
    const d = await daemon({ wallet: false });
    const p = await proxy();
    const { settler } = settlerVia(d, p.url);
    const [alice, bob] = (await fundedUsers(c, 2)) as [Wallet, Wallet];
    const aliceJob = await completedJob(d, c, alice);

    // The transaction reached the chain but the process died before recording its hash.
    let sentByHand = '';
    p.once('eth_getTransactionCount', async () => {
      const [batch] = await d.daemon.billing.openBatches();
      const items = batch!.items.map((i) => [i.user, c.provider.address, i.totalFeeWei, i.requestsHash, i.nonce, i.signature]);
      sentByHand = (await mined(as(c.serving, c.provider).settleFeesWithTEE(items))).hash;
      p.cut();
      return 'drop' as const;
    });
    expect((await settler.runRound()).outcome).toBe('interrupted');
    expect(await d.daemon.billing.openBatches()).toMatchObject([{ state: 'prepared', txHashes: [] }]);
    p.restore();
    const reconciled = await settler.reconcile();
    expect(reconciled).toMatchObject({ outcome: 'completed', batches: 1, users: [{ user: alice.address, outcome: 'settled', txHash: sentByHand }] });
    expect(await d.daemon.billing.getReceipt(aliceJob)).toMatchObject({ state: 'settled', settledTx: sentByHand });
    expect(await settlementEventsFor(c, alice.address)).toHaveLength(1);
    expect((await accountOf(c, alice.address)).nonce).toBe(1n);

    // Nothing reached the chain.
    const bobJob = await completedJob(d, c, bob);
    p.once('eth_getTransactionCount', () => {
      p.cut();
      return 'drop' as const;
    });
    expect((await settler.runRound()).outcome).toBe('interrupted');
    p.restore();
    expect(await settler.reconcile()).toMatchObject({ users: [{ user: bob.address, outcome: 'abandoned', nonce: 1n }] });
    expect(await stateOf(d, bobJob)).toBe('unsettled');
    // The TEE journal still holds the signed item: it is sent again as it was, never re-signed under another nonce.
    const next = await settler.runRound();
    expect(next.users).toMatchObject([{ user: bob.address, outcome: 'settled', nonce: 1n }]);
    expect(await settlementEventsFor(c, bob.address)).toHaveLength(1);
  });

  it('reconciles at daemon start-up what a crashed settler left open', async () => {
    const first = await daemon({ wallet: false });
    const p = await proxy();
    const { settler, close } = settlerVia(first, p.url);
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    const jobId = await completedJob(first, c, user);
    p.once('eth_getTransactionReceipt', () => {
      p.cut();
      return 'drop' as const;
    });
    expect((await settler.runRound()).outcome).toBe('interrupted');
    const [open] = await first.daemon.billing.openBatches();
    await close();
    await first.close();

    const restarted = await daemon({ dataDir: first.dataDir });
    expect(await restarted.daemon.billing.getBatch(open!.id)).toMatchObject({ state: 'confirmed' });
    expect(await stateOf(restarted, jobId)).toBe('settled');
    expect(await settlementEventsFor(c, user.address)).toHaveLength(1);
  });

  it('re-sends a transaction not mined in time with the same wallet nonce and higher fees; the one mined counts', async () => {
    const d = await daemon({ wallet: false });
    const { settler } = settlerVia(d, c.anvil.rpcUrl, { billingConfig: { ...d.config.billing, txReplaceAfterMs: 400, feeBumpPercent: 25 } });
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    const jobId = await completedJob(d, c, user);
    await c.anvil.setAutomine(false);

    const round = settler.runRound();
    // A hash is recorded before its transaction is broadcast: wait until the node has it too.
    const pendingTx = async (which: (hashes: string[]) => string | undefined) => {
      const [b] = await d.daemon.billing.openBatches();
      const hash = b && which(b.txHashes);
      return hash ? ((await c.anvil.provider.getTransaction(hash)) ?? undefined) : undefined;
    };
    const firstTx = await waitFor(() => pendingTx((h) => h[0]));
    const firstHash = firstTx.hash;
    const secondTx = await waitFor(() => pendingTx((h) => (h.length >= 2 ? h.at(-1) : undefined)));
    const batch = (await d.daemon.billing.openBatches())[0]!;
    expect(secondTx.nonce).toBe(firstTx.nonce);
    expect(secondTx.maxFeePerGas! * 100n).toBeGreaterThanOrEqual(firstTx.maxFeePerGas! * 125n);
    expect(secondTx.maxPriorityFeePerGas! * 100n).toBeGreaterThanOrEqual(firstTx.maxPriorityFeePerGas! * 125n);
    expect((await settler.runRound()).outcome).toBe('busy');

    await c.anvil.mine();
    const result = await round;
    expect(result.users).toMatchObject([{ outcome: 'settled' }]);
    const stored = (await d.daemon.billing.getBatch(batch.id))!;
    expect(stored.state).toBe('confirmed');
    expect(stored.txHashes.length).toBeGreaterThanOrEqual(2);
    expect(stored.txHashes).toContain(result.transactions[0]);
    expect(result.transactions[0]).not.toBe(firstHash);
    expect(settler.counters.replacements).toBeGreaterThanOrEqual(1);
    expect(await d.daemon.billing.getReceipt(jobId)).toMatchObject({ state: 'settled', settledTx: result.transactions[0] });
    expect(await settlementEventsFor(c, user.address)).toHaveLength(1);
  });

  it('a receipt served a moment after the nonce shows as used still counts as mined, with its hash and gas', async () => {
    const d = await daemon({ wallet: false });
    const p = await proxy();
    const { settler } = settlerVia(d, p.url);
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    const jobId = await completedJob(d, c, user);
    await c.anvil.setAutomine(false);

    const round = settler.runRound();
    await waitFor(async () => {
      const [b] = await d.daemon.billing.openBatches();
      const hash = b?.txHashes[0];
      return hash ? ((await c.anvil.provider.getTransaction(hash)) ?? undefined) : undefined;
    });
    // The block is mined as the settler asks for the receipt, but two receipt reads in a row reach a node
    // that has not seen it yet, while the nonce read reaches one that has.
    p.once('eth_getTransactionReceipt', async () => {
      await c.anvil.mine();
      return { lagging: null };
    });
    p.once('eth_getTransactionReceipt', () => ({ lagging: null }));
    const result = await round;

    expect(result.users).toMatchObject([{ user: user.address, outcome: 'settled' }]);
    expect(result.transactions).toHaveLength(1);
    expect(await d.daemon.billing.getReceipt(jobId)).toMatchObject({ state: 'settled', settledTx: result.transactions[0] });
    expect(await settlementEventsFor(c, user.address)).toHaveLength(1);
  });

  it('runs one settler at a time: a second one started together reports the lock held', async () => {
    const d = await daemon({ wallet: false });
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    await completedJob(d, c, user);
    const a = settlerVia(d, c.anvil.rpcUrl).settler;
    const b = settlerVia(d, c.anvil.rpcUrl).settler;

    const results = await Promise.all([a.runRound(), b.runRound()]);

    expect(results.map((r) => r.outcome).sort()).toEqual(['completed', 'locked']);
    expect(results.flatMap((r) => r.transactions)).toHaveLength(1);
    expect(a.counters.roundsLocked + b.counters.roundsLocked).toBe(1);
    expect(await settlementEventsFor(c, user.address)).toHaveLength(1);
    // The lock is released with the round.
    expect((await b.runRound()).outcome).toBe('completed');
  });
});

describe('when rounds run', () => {
  it('settles early whoever is due: fees at the threshold, near the balance, or a refund about to unlock', async () => {
    const d = await daemon({ config: { billing: { userThresholdWei: (2n * PRICE).toString(), lowBalancePercent: 50, refundGuardMs: 2 * 3_600_000 } } });
    const [heavy, refunding, calm] = (await fundedUsers(c, 3)) as [Wallet, Wallet, Wallet];
    const [low] = (await fundedUsers(c, 1, (3n * PRICE) / 2n)) as [Wallet];
    const jobs = {
      heavy: [await completedJob(d, c, heavy), await completedJob(d, c, heavy)],
      low: await completedJob(d, c, low),
      refunding: await completedJob(d, c, refunding),
      calm: await completedJob(d, c, calm),
    };
    await mined(as(c.serving, refunding).requestRefund(c.provider.address, parseEther('0.1')));

    const due = await d.daemon.settlementTriggers!.checkNow();

    expect(new Map(due.map((u) => [u.user, u.reason]))).toEqual(
      new Map([
        [heavy.address, 'threshold'],
        [low.address, 'low-balance'],
        [refunding.address, 'refund'],
      ]),
    );
    for (const jobId of [...jobs.heavy, jobs.low, jobs.refunding]) expect(await stateOf(d, jobId)).toBe('settled');
    expect(await stateOf(d, jobs.calm)).toBe('unsettled');
  });

  it('runs rounds on the cron schedule once the daemon is started', async () => {
    const d = await daemon({ config: { billing: { settlementCron: '* * * * * *' } } });
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    const jobId = await completedJob(d, c, user);
    await waitFor(async () => ((await stateOf(d, jobId)) === 'settled' ? true : undefined), 5_000);
  });

  it('leaves settlement off, and says why, without a provider wallet', async () => {
    const d = await daemon({ wallet: false });
    expect(d.daemon.settler).toBeUndefined();
    expect(d.logs.some((l) => String(l.message).startsWith('settlement is off: no provider wallet'))).toBe(true);
  });
});
