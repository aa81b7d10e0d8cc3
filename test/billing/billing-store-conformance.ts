import { getAddress } from 'ethers';
import fc from 'fast-check';
import { beforeEach, describe, expect, it } from 'vitest';
import { earningsByDayFrom, earningsByUserFrom, type EarningsRow } from '../../src/billing/stored-rows.js';
import type { BillingStore } from '../../src/billing/store.js';
import { newJobId, type JobResult } from '../../src/jobs/model.js';
import type { JobStore, NewJob } from '../../src/jobs/store.js';
import type { JobSignature } from '../../src/tee/receipt.js';
import { jobParams } from '../helpers/job-params.js';

/** The replica name the stores are driven as. */
const REPLICA = 'replica-1';

/**
 * The behaviour every BillingStore must have, verb by verb, on a store whose receipts come from its job
 * store's completions (as in the daemon: the receipt is written in the completion's transaction). Each
 * implementation's test file calls this with a factory returning a fresh, empty pair on one database.
 */
export interface BillingStores {
  jobs: JobStore;
  billing: BillingStore;
}

const ALICE = '0x00000000000000000000000000000000000a11ce';
const BOB = '0x0000000000000000000000000000000000000b0b';
const PRICE = 1_000_000_000_000_000n;
const DAY = 86_400;
/** 2026-01-01T00:00:00Z, in seconds. */
const JAN_1 = 1_767_225_600;

export function describeBillingStoreConformance(name: string, open: () => Promise<BillingStores>): void {
  describe(`BillingStore conformance: ${name}`, () => {
    let jobs: JobStore;
    let billing: BillingStore;
    beforeEach(async () => {
      ({ jobs, billing } = await open());
      return () => jobs.close();
    });

    const newJob = (owner: string, n: number): NewJob => ({
      id: newJobId(),
      owner,
      kind: 'generation',
      delivery: 'async',
      model: 'm',
      backendId: 'gpu',
      params: jobParams({ n }),
      inputs: [],
      requestSha256: 'a'.repeat(64),
      pricePerImageWei: PRICE,
      fingerprint: 'f'.repeat(64),
      idempotencyKey: undefined,
      baseUrl: 'http://x',
      createdMs: 1_000,
    });

    /** A job of `owner` completed with `images` delivered: its receipt is written with the completion. */
    async function paid(owner: string, options: { images?: number; created?: number; floor?: bigint; feeWei?: bigint } = {}) {
      const images = options.images ?? 1;
      const job = newJob(owner, images);
      await jobs.create(job, 0);
      const claimed = (await jobs.claimNext('gpu', REPLICA, 2_000, 60_000))!;
      let seq = 0n;
      const result: JobResult = {
        created: 1,
        images: Array.from({ length: images }, (_, i) => ({ sha256: `${job.id}-${i}`, mediaType: 'image/png' as const, bytes: 1, width: 64, height: 64 })),
        size: '64x64',
        quality: 'high',
        outputFormat: 'png',
        background: 'opaque',
        fileToken: 't'.repeat(32),
        warnings: [],
      };
      const fee = options.feeWei ?? BigInt(images) * PRICE;
      const ok = await jobs.complete(
        job.id,
        claimed.leaseToken,
        result,
        {
          seqFloor: options.floor ?? 0n,
          sign: (s): JobSignature => {
            seq = s;
            return {
              signingAddress: '0x0000000000000000000000000000000000000001',
              text: `signed ${job.id}`,
              signature: '0xsig',
              receipt: {
                version: 2,
                tee: 'INSECURE-DEV',
                provider: '0x0000000000000000000000000000000000000002',
                signer: '0x0000000000000000000000000000000000000001',
                job: job.id,
                model: 'm',
                user: owner,
                seq: s.toString(),
                request_sha256: 'a'.repeat(64),
                images,
                image_sha256: result.images.map((i) => i.sha256),
                price_per_image_wei: PRICE.toString(),
                fee_wei: fee.toString(),
                created: options.created ?? JAN_1,
                text: 'image-receipt/2',
                signature: '0xsig',
              },
            };
          },
        },
        3_000,
        9_000,
      );
      expect(ok).toBe(true);
      return { jobId: job.id, seq };
    }

    const item = (user: string, nonce: bigint, receipts: Array<{ jobId: string }>) => ({
      user,
      nonce,
      totalFeeWei: 2n ** 70n + nonce,
      requestsHash: `0xroot-${user.slice(-4)}`,
      signature: '0xteesig',
      receipts: receipts.map((r) => ({ jobId: r.jobId, proof: [`0xproof-${r.jobId.slice(-4)}`] })),
    });

    it('writes a receipt with each paid completion: unsettled for 0G users, offchain for others, none when free', async () => {
      const { jobId, seq } = await paid(ALICE, { images: 2 });
      const r = (await billing.getReceipt(jobId))!;
      expect(r).toMatchObject({
        jobId,
        user: ALICE,
        provider: '0x0000000000000000000000000000000000000002',
        feeWei: 2n * PRICE,
        images: 2,
        created: JAN_1,
        seq,
        state: 'unsettled',
        note: undefined,
        batchId: undefined,
        root: undefined,
        proof: undefined,
        settledTx: undefined,
        settledBlock: undefined,
        settledMs: undefined,
      });
      expect(seq).toBe(1n);
      expect(r.receipt).toMatchObject({ job: jobId, user: ALICE, fee_wei: (2n * PRICE).toString() });
      expect(r.signature).toEqual({ signingAddress: '0x0000000000000000000000000000000000000001', text: `signed ${jobId}`, signature: '0xsig' });
      expect(Array.isArray(r.leaf)).toBe(true);

      const router = await paid('router-x');
      expect((await billing.getReceipt(router.jobId))!.state).toBe('offchain');
      const free = await paid(ALICE, { feeWei: 0n });
      expect(await billing.getReceipt(free.jobId)).toBeUndefined();
      expect(await billing.getReceipt(newJobId())).toBeUndefined();
    });

    it('sums what a user owes (unsettled and in flight) and reserves (unfinished jobs), exactly beyond 2^64', async () => {
      const a = await paid(ALICE, { feeWei: 2n ** 80n });
      await paid(ALICE, { feeWei: 5n });
      await paid(BOB, { feeWei: 7n });
      expect(await billing.unsettledWei(ALICE)).toBe(2n ** 80n + 5n);
      await billing.prepareBatch({ id: 'b1', items: [item(ALICE, 1n, [a])], createdMs: 10 });
      expect(await billing.unsettledWei(ALICE)).toBe(2n ** 80n + 5n);
      expect(await billing.reservedWei(ALICE)).toBe(0n);
      await jobs.create(newJob(ALICE, 3), 0);
      await jobs.create(newJob(ALICE, 1), 0);
      expect(await billing.reservedWei(ALICE)).toBe(4n * PRICE);
      expect(await billing.reservedWei(BOB)).toBe(0n);
    });

    it('lists users with unsettled receipts, and each one’s receipts lowest number first', async () => {
      const a1 = await paid(ALICE, { feeWei: 3n });
      const a2 = await paid(ALICE, { feeWei: 4n });
      const a3 = await paid(ALICE, { feeWei: 5n });
      await paid(BOB, { feeWei: 7n });
      await paid('router-x', { feeWei: 9n });
      const users = (await billing.usersWithUnsettled()).sort((x, y) => x.user.localeCompare(y.user));
      expect(users).toEqual([
        { user: BOB, feeWei: 7n, receipts: 1 },
        { user: ALICE, feeWei: 12n, receipts: 3 },
      ]);
      expect((await billing.unsettledReceipts(ALICE, 10)).map((r) => r.jobId)).toEqual([a1.jobId, a2.jobId, a3.jobId]);
      expect((await billing.unsettledReceipts(ALICE, 2)).map((r) => r.seq)).toEqual([1n, 2n]);
    });

    it('finds receipts in a sequence range numerically (9 < 10), in every state but invalid', async () => {
      const r9 = await paid(ALICE, { floor: 8n });
      const r10 = await paid(ALICE);
      const r11 = await paid(ALICE);
      const r12 = await paid(ALICE);
      expect([r9.seq, r10.seq, r11.seq, r12.seq]).toEqual([9n, 10n, 11n, 12n]);
      await billing.markUnbillable([{ jobId: r11.jobId, state: 'invalid', note: 'edited' }]);
      await billing.markUnbillable([{ jobId: r12.jobId, state: 'void', note: 'below the nonce' }]);
      expect((await billing.receiptsInSeqRange(ALICE, 8n, 12n)).map((r) => r.seq)).toEqual([9n, 10n, 12n]);
      expect((await billing.receiptsInSeqRange(ALICE, 9n, 10n)).map((r) => r.seq)).toEqual([10n]);
      expect(await billing.receiptsInSeqRange(BOB, 0n, 100n)).toEqual([]);
    });

    it('pages an owner’s receipts by sequence number (9 < 10), from a creation time, in every state', async () => {
      const r9 = await paid(ALICE, { floor: 8n, created: JAN_1 });
      const r10 = await paid(ALICE, { created: JAN_1 + DAY });
      const r11 = await paid(ALICE, { created: JAN_1 + 2 * DAY });
      const r12 = await paid(ALICE, { created: JAN_1 + 3 * DAY });
      await paid(BOB, { created: JAN_1 + DAY });
      const router = await paid('router-x', { created: JAN_1 });
      await billing.markUnbillable([{ jobId: r11.jobId, state: 'invalid', note: 'edited' }]);
      const seqs = async (user: string, page: { afterSeq: bigint; sinceCreated: number; limit: number }) =>
        (await billing.receiptsOf(user, page)).map((r) => r.seq);
      expect(await seqs(ALICE, { afterSeq: 0n, sinceCreated: 0, limit: 2 })).toEqual([9n, 10n]);
      expect(await seqs(ALICE, { afterSeq: 10n, sinceCreated: 0, limit: 2 })).toEqual([11n, 12n]);
      expect(await seqs(ALICE, { afterSeq: 12n, sinceCreated: 0, limit: 2 })).toEqual([]);
      expect(await seqs(ALICE, { afterSeq: 0n, sinceCreated: JAN_1 + DAY, limit: 10 })).toEqual([10n, 11n, 12n]);
      const page = await billing.receiptsOf(ALICE, { afterSeq: 10n, sinceCreated: 0, limit: 1 });
      expect(page.map((r) => [r.jobId, r.state, r.note])).toEqual([[r11.jobId, 'invalid', 'edited']]);
      expect((await billing.receiptsOf('router-x', { afterSeq: 0n, sinceCreated: 0, limit: 10 })).map((r) => [r.jobId, r.state])).toEqual([
        [router.jobId, 'offchain'],
      ]);
      expect(await seqs(BOB, { afterSeq: 0n, sinceCreated: JAN_1 + 2 * DAY, limit: 10 })).toEqual([]);
      expect([r9.seq, r10.seq, r12.seq]).toEqual([9n, 10n, 12n]);
    });

    it('marks only unsettled receipts invalid or void, with the reason', async () => {
      const a = await paid(ALICE);
      const b = await paid(ALICE);
      await billing.prepareBatch({ id: 'b1', items: [item(ALICE, 1n, [b])], createdMs: 10 });
      await billing.markUnbillable([
        { jobId: a.jobId, state: 'void', note: 'v1 receipt' },
        { jobId: b.jobId, state: 'invalid', note: 'not while in flight' },
      ]);
      expect(await billing.getReceipt(a.jobId)).toMatchObject({ state: 'void', note: 'v1 receipt' });
      expect(await billing.getReceipt(b.jobId)).toMatchObject({ state: 'in_flight', note: undefined });
      expect(await billing.unsettledWei(ALICE)).toBe(PRICE);
    });

    it('prepares a batch: persisted as signed, its unsettled receipts in flight with root and proof', async () => {
      const a = await paid(ALICE);
      const gone = await paid(ALICE);
      const b = await paid(BOB);
      await billing.markUnbillable([{ jobId: gone.jobId, state: 'void', note: 'x' }]);
      const items = [item(ALICE, 2n, [a, gone]), item(BOB, 1n, [b])];
      await billing.prepareBatch({ id: 'batch-1', items, createdMs: 1_234 });
      expect(await billing.getReceipt(a.jobId)).toMatchObject({
        state: 'in_flight',
        batchId: 'batch-1',
        root: items[0]!.requestsHash,
        proof: items[0]!.receipts[0]!.proof,
      });
      expect(await billing.getReceipt(gone.jobId)).toMatchObject({ state: 'void', batchId: undefined });
      const batch = (await billing.getBatch('batch-1'))!;
      expect(batch).toEqual({
        id: 'batch-1',
        state: 'prepared',
        items,
        createdMs: 1_234,
        txHashes: [],
        walletNonce: undefined,
        sentMs: undefined,
        block: undefined,
        results: undefined,
        note: undefined,
      });
      expect(await billing.openBatches()).toEqual([batch]);
      expect(await billing.getBatch('nope')).toBeUndefined();
      expect(await billing.usersWithUnsettled()).toEqual([]);
    });

    it('records every transaction sent for a batch, in order', async () => {
      const a = await paid(ALICE);
      await billing.prepareBatch({ id: 'b', items: [item(ALICE, 1n, [a])], createdMs: 1 });
      await billing.recordBatchTx('b', '0xtx1', 41, 100);
      await billing.recordBatchTx('b', '0xtx2', 41, 200);
      expect(await billing.getBatch('b')).toMatchObject({ state: 'sent', txHashes: ['0xtx1', '0xtx2'], walletNonce: 41, sentMs: 200 });
      expect((await billing.openBatches()).map((x) => x.id)).toEqual(['b']);
    });

    it('confirms a batch: SUCCESS settled, PARTIAL partial, anything else and unreported users back to unsettled', async () => {
      const carol = '0x00000000000000000000000000000000000ca201';
      const dave = '0x00000000000000000000000000000000000da7e0';
      const a = await paid(ALICE);
      const b = await paid(BOB);
      const c = await paid(carol);
      const d = await paid(dave);
      const items = [item(ALICE, 1n, [a]), item(BOB, 1n, [b]), item(carol, 1n, [c]), item(dave, 1n, [d])];
      await billing.prepareBatch({ id: 'b', items, createdMs: 1 });
      await billing.recordBatchTx('b', '0xtx', 7, 100);
      const results = [
        { user: ALICE, status: 0, unsettledWei: 0n },
        { user: BOB, status: 1, unsettledWei: 2n ** 65n },
        { user: carol, status: 5, unsettledWei: 0n },
      ];
      await billing.confirmBatch('b', '0xtx', 321, results, 5_000);
      expect(await billing.getReceipt(a.jobId)).toMatchObject({ state: 'settled', settledTx: '0xtx', settledBlock: 321, settledMs: 5_000 });
      expect(await billing.getReceipt(b.jobId)).toMatchObject({ state: 'partial', settledTx: '0xtx', settledBlock: 321 });
      for (const r of [c, d]) {
        expect(await billing.getReceipt(r.jobId)).toMatchObject({ state: 'unsettled', batchId: undefined, root: undefined, proof: undefined });
      }
      expect(await billing.getBatch('b')).toMatchObject({ state: 'confirmed', block: 321, results });
      expect(await billing.openBatches()).toEqual([]);
      // Confirming again changes nothing.
      await billing.confirmBatch('b', '0xother', 999, [{ user: carol, status: 0, unsettledWei: 0n }], 6_000);
      expect((await billing.getReceipt(c.jobId))!.state).toBe('unsettled');
      expect((await billing.getBatch('b'))!.block).toBe(321);
    });

    it('abandons a batch that never reached the chain: its receipts are unsettled again', async () => {
      const a = await paid(ALICE);
      await billing.prepareBatch({ id: 'b', items: [item(ALICE, 1n, [a])], createdMs: 1 });
      await billing.abandonBatch('b', 'nothing was sent');
      expect(await billing.getBatch('b')).toMatchObject({ state: 'abandoned', note: 'nothing was sent' });
      expect(await billing.getReceipt(a.jobId)).toMatchObject({ state: 'unsettled', batchId: undefined });
      // A confirmed batch is not abandoned afterwards.
      await billing.prepareBatch({ id: 'c', items: [item(ALICE, 2n, [a])], createdMs: 2 });
      await billing.confirmBatch('c', '0xtx', 5, [{ user: ALICE, status: 0, unsettledWei: 0n }], 10);
      await billing.abandonBatch('c', 'too late');
      expect(await billing.getBatch('c')).toMatchObject({ state: 'confirmed', note: undefined });
      expect((await billing.getReceipt(a.jobId))!.state).toBe('settled');
    });

    it('finds the items recorded for a user above a nonce, in batches of every state, numerically, with their receipts’ leaves', async () => {
      const [a, b, c] = [await paid(ALICE), await paid(ALICE), await paid(ALICE)];
      const d = await paid(BOB);
      const leafOf = async (r: { jobId: string }) => (await billing.getReceipt(r.jobId))!.leaf;
      await billing.prepareBatch({ id: 'b1', items: [item(ALICE, 9n, [a]), item(BOB, 9n, [d])], createdMs: 1 });
      await billing.abandonBatch('b1', 'nothing was sent');
      // The signer writes the user checksummed; the receipts' rows may have it in lower case.
      await billing.prepareBatch({ id: 'b2', items: [item(getAddress(ALICE), 10n, [a, b])], createdMs: 2 });
      await billing.confirmBatch('b2', '0xtx', 5, [{ user: getAddress(ALICE), status: 3, unsettledWei: 0n }], 10);
      await billing.prepareBatch({ id: 'b3', items: [item(ALICE, 2n ** 70n, [c, { jobId: 'job_gone' }])], createdMs: 3 });
      // The same item sent again in a later batch is found in each.
      await billing.prepareBatch({ id: 'b4', items: [item(BOB, 9n, [d])], createdMs: 4 });

      const above9 = await billing.signedItemsAbove(getAddress(ALICE), 9n);
      expect(above9.map((r) => [r.batchId, r.batchState, r.item.nonce])).toEqual([
        ['b2', 'confirmed', 10n],
        ['b3', 'prepared', 2n ** 70n],
      ]);
      expect(above9[0]!.item).toEqual(item(getAddress(ALICE), 10n, [a, b]));
      expect(above9[0]!.leaves).toEqual([await leafOf(a), await leafOf(b)]);
      expect(above9[1]!.leaves).toEqual([await leafOf(c), undefined]);
      expect((await billing.signedItemsAbove(ALICE, 0n)).map((r) => [r.batchId, r.item.nonce])).toEqual([
        ['b1', 9n],
        ['b2', 10n],
        ['b3', 2n ** 70n],
      ]);
      expect((await billing.signedItemsAbove(BOB, 8n)).map((r) => [r.batchId, r.batchState, r.item.user])).toEqual([
        ['b1', 'abandoned', BOB],
        ['b4', 'prepared', BOB],
      ]);
      expect(await billing.signedItemsAbove(ALICE, 2n ** 70n)).toEqual([]);
      expect(await billing.signedItemsAbove('0x000000000000000000000000000000000000ca01', 0n)).toEqual([]);
    });

    it('marks unsettled receipts the chain shows paid, with the transaction that paid them', async () => {
      const a = await paid(ALICE);
      const b = await paid(ALICE);
      const at = { txHash: '0xpaid', block: 77, nowMs: 8_000, note: 'found on chain' };
      await billing.markPaidOnChain([{ jobId: a.jobId, root: '0xr', proof: ['0xp1', '0xp2'] }], 'settled', at);
      await billing.markPaidOnChain([{ jobId: b.jobId, root: '0xr2', proof: [] }], 'partial', at);
      expect(await billing.getReceipt(a.jobId)).toMatchObject({
        state: 'settled',
        root: '0xr',
        proof: ['0xp1', '0xp2'],
        settledTx: '0xpaid',
        settledBlock: 77,
        settledMs: 8_000,
        note: 'found on chain',
      });
      expect((await billing.getReceipt(b.jobId))!.state).toBe('partial');
      // Only unsettled receipts move.
      await billing.markPaidOnChain([{ jobId: a.jobId, root: '0xz', proof: [] }], 'partial', { ...at, txHash: '0xother' });
      expect((await billing.getReceipt(a.jobId))!.settledTx).toBe('0xpaid');
    });

    it('holds a named lock for one holder until it is released', async () => {
      expect(await billing.tryLock('settle', 'a', 1_000, 500)).toBe(true);
      expect(await billing.tryLock('settle', 'b', 1_200, 500)).toBe(false);
      expect(await billing.tryLock('settle', 'a', 1_400, 500)).toBe(true); // renewed
      expect(await billing.tryLock('settle', 'b', 1_800, 500)).toBe(false);
      expect(await billing.tryLock('other', 'b', 1_800, 500)).toBe(true);
      await billing.unlock('settle', 'b'); // not b's: nothing happens
      expect(await billing.tryLock('settle', 'b', 1_850, 500)).toBe(false);
      await billing.unlock('settle', 'a');
      expect(await billing.tryLock('settle', 'b', 1_851, 500)).toBe(true);
      await billing.unlock('settle', 'b');
      await billing.unlock('other', 'b');
      expect(await billing.tryLock('settle', 'c', 1_901, 500)).toBe(true);
      await billing.unlock('settle', 'c');
    });

    it('blocks a user after a PARTIAL, updates the block, and lifts it', async () => {
      expect(await billing.getUserBlock(ALICE)).toBeUndefined();
      await billing.blockUser({ user: ALICE, shortfallWei: 2n ** 90n, balanceWei: 3n, sinceMs: 10 });
      expect(await billing.getUserBlock(ALICE)).toEqual({ user: ALICE, shortfallWei: 2n ** 90n, balanceWei: 3n, sinceMs: 10 });
      await billing.blockUser({ user: ALICE, shortfallWei: 1n, balanceWei: 4n, sinceMs: 20 });
      expect(await billing.getUserBlock(ALICE)).toEqual({ user: ALICE, shortfallWei: 1n, balanceWei: 4n, sinceMs: 20 });
      expect(await billing.getUserBlock(BOB)).toBeUndefined();
      await billing.unblockUser(ALICE);
      expect(await billing.getUserBlock(ALICE)).toBeUndefined();
    });

    it('adds up earnings per UTC day and settlement state', async () => {
      const s = await paid(ALICE, { images: 2, created: JAN_1 + 10 });
      const p = await paid(BOB, { images: 1, created: JAN_1 + DAY - 1 });
      await paid(ALICE, { images: 1, created: JAN_1 + 100 });
      await paid('router-x', { images: 3, created: JAN_1 + DAY });
      const v = await paid(ALICE, { images: 1, created: JAN_1 + DAY + 5 });
      await billing.markPaidOnChain([{ jobId: s.jobId, root: '0x', proof: [] }], 'settled', { txHash: '0x1', block: 1, nowMs: 1, note: '' });
      await billing.markPaidOnChain([{ jobId: p.jobId, root: '0x', proof: [] }], 'partial', { txHash: '0x1', block: 1, nowMs: 1, note: '' });
      await billing.markUnbillable([{ jobId: v.jobId, state: 'void', note: 'x' }]);
      expect(await billing.earningsByDay()).toEqual([
        { day: '2026-01-01', receipts: 3, images: 4, settledWei: 2n * PRICE, partialWei: PRICE, unsettledWei: PRICE, offchainWei: 0n, unbillableWei: 0n },
        { day: '2026-01-02', receipts: 2, images: 4, settledWei: 0n, partialWei: 0n, unsettledWei: 0n, offchainWei: 3n * PRICE, unbillableWei: PRICE },
      ]);
    });

    it('adds up earnings per user and settlement state, the largest total fees first, exactly beyond 2^64', async () => {
      const carol = '0x00000000000000000000000000000000000ca201';
      const s = await paid(ALICE, { images: 2 });
      await paid(ALICE, { images: 1, feeWei: 2n ** 70n });
      const v = await paid(ALICE, { images: 1 });
      await paid(BOB, { images: 4 });
      await paid('router-x', { images: 1 });
      await paid(carol, { images: 1 });
      await billing.markPaidOnChain([{ jobId: s.jobId, root: '0x', proof: [] }], 'settled', { txHash: '0x1', block: 1, nowMs: 1, note: '' });
      await billing.markUnbillable([{ jobId: v.jobId, state: 'invalid', note: 'x' }]);
      const totals = { partialWei: 0n, offchainWei: 0n, unbillableWei: 0n };
      expect(await billing.earningsByUser(10)).toEqual([
        { user: ALICE, receipts: 3, images: 4, ...totals, settledWei: 2n * PRICE, unsettledWei: 2n ** 70n, unbillableWei: PRICE },
        { user: BOB, receipts: 1, images: 4, ...totals, settledWei: 0n, unsettledWei: 4n * PRICE },
        // Equal totals: by user.
        { user: carol, receipts: 1, images: 1, ...totals, settledWei: 0n, unsettledWei: PRICE },
        { user: 'router-x', receipts: 1, images: 1, ...totals, settledWei: 0n, unsettledWei: 0n, offchainWei: PRICE },
      ]);
      expect((await billing.earningsByUser(2)).map((e) => e.user)).toEqual([ALICE, BOB]);
      expect(await billing.earningsByUser(0)).toEqual([]);
    });

    /** A receipt of `owner` for `feeWei` created at `created`, left in `state` (offchain: the owner is not an address). */
    async function receiptIn(state: 'unsettled' | 'settled' | 'partial' | 'void' | 'invalid', owner: string, feeWei: bigint, created: number) {
      const r = await paid(owner, { feeWei, created });
      const at = { txHash: '0x1', block: 1, nowMs: 1, note: '' };
      if (state === 'settled' || state === 'partial') await billing.markPaidOnChain([{ jobId: r.jobId, root: '0x', proof: [] }], state, at);
      if (state === 'void' || state === 'invalid') await billing.markUnbillable([{ jobId: r.jobId, state, note: 'x' }]);
    }

    const zero = { receipts: 0, images: 0, settledWei: 0n, partialWei: 0n, unsettledWei: 0n, offchainWei: 0n, unbillableWei: 0n };

    it('adds up fees near and above 2^63 exactly, and a great many small ones', async () => {
      const near = [2n ** 63n - 1n, 2n ** 63n, 2n ** 63n + 1n, 2n ** 64n + 999_999_999n, 10n ** 27n - 1n];
      for (const fee of near) await receiptIn('settled', ALICE, fee, JAN_1);
      for (let i = 0; i < 40; i += 1) await receiptIn('unsettled', ALICE, 999_999_999n, JAN_1 + DAY);
      for (let i = 0; i < 40; i += 1) await receiptIn('unsettled', BOB, 1n, JAN_1 + DAY);
      const nearTotal = near.reduce((a, b) => a + b);
      expect(await billing.earningsByDay()).toEqual([
        { day: '2026-01-01', ...zero, receipts: 5, images: 5, settledWei: nearTotal },
        { day: '2026-01-02', ...zero, receipts: 80, images: 80, unsettledWei: 40n * 999_999_999n + 40n },
      ]);
      expect(await billing.earningsByUser(10)).toEqual([
        { user: ALICE, ...zero, receipts: 45, images: 45, settledWei: nearTotal, unsettledWei: 40n * 999_999_999n },
        { user: BOB, ...zero, receipts: 40, images: 40, unsettledWei: 40n },
      ]);
    });

    it('adds up exactly a group whose fees pass 2^63 even in parts of nine digits', async () => {
      // Twenty fees of 27 digits: their parts above the last nine digits sum past 2^63.
      const wide = 10n ** 27n - 1n;
      for (let i = 0; i < 20; i += 1) await receiptIn('unsettled', ALICE, wide, JAN_1);
      await receiptIn('settled', BOB, 5n, JAN_1 + DAY);
      expect(await billing.earningsByDay()).toEqual([
        { day: '2026-01-01', ...zero, receipts: 20, images: 20, unsettledWei: 20n * wide },
        { day: '2026-01-02', ...zero, receipts: 1, images: 1, settledWei: 5n },
      ]);
      expect(await billing.earningsByUser(1)).toEqual([{ user: ALICE, ...zero, receipts: 20, images: 20, unsettledWei: 20n * wide }]);
    });

    it('adds up exactly fees of more digits than a 64-bit part can hold', async () => {
      // One such fee alone in its group: nothing overflows, the fee is simply too wide to split.
      const huge = 2n ** 255n + 12_345n;
      await receiptIn('partial', ALICE, huge, JAN_1);
      await receiptIn('settled', ALICE, 3n, JAN_1);
      await receiptIn('void', BOB, 7n, JAN_1);
      expect(await billing.earningsByDay()).toEqual([
        { day: '2026-01-01', ...zero, receipts: 3, images: 3, settledWei: 3n, partialWei: huge, unbillableWei: 7n },
      ]);
      expect(await billing.earningsByUser(10)).toEqual([
        { user: ALICE, ...zero, receipts: 2, images: 2, settledWei: 3n, partialWei: huge },
        { user: BOB, ...zero, receipts: 1, images: 1, unbillableWei: 7n },
      ]);
    });

    it('adds up earnings as the fold of every receipt one by one does, on any receipts', async () => {
      const owners = [ALICE, BOB, 'router-x'];
      const states = ['unsettled', 'settled', 'partial', 'void', 'invalid'] as const;
      // A free job writes no receipt: every fee here is at least 1 wei.
      const fee = fc.oneof(
        fc.bigInt({ min: 1n, max: 10n ** 12n }),
        fc.bigInt({ min: 2n ** 62n, max: 2n ** 65n }),
        fc.bigInt({ min: 10n ** 26n, max: 10n ** 27n - 1n }),
        fc.bigInt({ min: 1n, max: 2n ** 256n - 1n }),
      );
      const receipt = fc.record({
        owner: fc.integer({ min: 0, max: owners.length - 1 }),
        state: fc.constantFrom(...states),
        feeWei: fee,
        day: fc.integer({ min: 0, max: 3 }),
      });
      // The store keeps every run's receipts: the expected fold is over all of them.
      const all: EarningsRow[] = [];
      const byUser: EarningsRow[] = [];
      await fc.assert(
        fc.asyncProperty(fc.array(receipt, { maxLength: 12 }), async (receipts) => {
          for (const r of receipts) {
            const owner = owners[r.owner]!;
            await receiptIn(r.state, owner, r.feeWei, JAN_1 + r.day * DAY + 7);
            // An off-chain user's receipt is never unsettled, so marking it changes nothing.
            const kept = owner === 'router-x' ? 'offchain' : r.state;
            const day = new Date((JAN_1 + r.day * DAY) * 1000).toISOString().slice(0, 10);
            all.push({ key: day, state: kept, feeWei: r.feeWei, receipts: 1, images: 1 });
            byUser.push({ key: owner, state: kept, feeWei: r.feeWei, receipts: 1, images: 1 });
          }
          expect(await billing.earningsByDay()).toEqual(earningsByDayFrom(all));
          expect(await billing.earningsByUser(10)).toEqual(earningsByUserFrom(byUser, 10));
        }),
        { numRuns: 15 },
      );
    });

    it('lists the newest batches first, in every state, up to the limit', async () => {
      const a = await paid(ALICE);
      const b = await paid(BOB);
      await billing.prepareBatch({ id: 'b-old', items: [item(ALICE, 1n, [a])], createdMs: 10 });
      await billing.recordBatchTx('b-old', '0xtx1', 1, 11);
      await billing.confirmBatch('b-old', '0xtx1', 7, [{ user: ALICE, status: 0, unsettledWei: 0n }], 12);
      await billing.prepareBatch({ id: 'b-mid', items: [item(BOB, 1n, [b])], createdMs: 20 });
      await billing.abandonBatch('b-mid', 'nothing was sent');
      // Same creation time: the larger id is newer.
      await billing.prepareBatch({ id: 'b-new-1', items: [item(BOB, 2n, [b])], createdMs: 30 });
      await billing.prepareBatch({ id: 'b-new-2', items: [], createdMs: 30 });
      expect((await billing.recentBatches(10)).map((x) => [x.id, x.state])).toEqual([
        ['b-new-2', 'prepared'],
        ['b-new-1', 'prepared'],
        ['b-mid', 'abandoned'],
        ['b-old', 'confirmed'],
      ]);
      const [, , , old] = await billing.recentBatches(4);
      expect(old).toEqual(await billing.getBatch('b-old'));
      expect(old).toMatchObject({ txHashes: ['0xtx1'], block: 7, items: [{ user: ALICE, nonce: 1n }] });
      expect((await billing.recentBatches(1)).map((x) => x.id)).toEqual(['b-new-2']);
    });
  });
}
