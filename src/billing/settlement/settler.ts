import { randomBytes } from 'node:crypto';
import { formatEther, isAddress } from 'ethers';
import { PixeldError } from '../../errors.js';
import type { BatchItem } from '../store.js';
import { applyMinedBatch, recordFailure, userSettlement } from './apply-results.js';
import { SettlementJournal } from '../../tee/settlement-journal.js';
import { SettlementSigner } from '../../tee/settlement-signer.js';
import { readAccounts } from './chain-reads.js';
import { buildItems, groupReceipts, settlementDomain } from './prepare-round.js';
import { reconcileBatch, resolveByItemNonces } from './reconcile.js';
import { reconcilePaidReceipts } from './reconcile-paid.js';
import { estimateBatchGas, sendBatch, settlementCalldata, trimByPreview, waitForBatch } from './send-batch.js';
import {
  RoundInterrupted,
  statusName,
  WalletUnfundedError,
  type FailureStatus,
  type ReconcileResult,
  type ResolvedSettlerDeps,
  type RoundContext,
  type RoundOptions,
  type RoundResult,
  type SettlementCounters,
  type SettlerDeps,
  type UserSettlement,
} from './types.js';

/** The settlement lock's name in the BillingStore: one settler at a time, across processes sharing the store. */
export const SETTLEMENT_LOCK = 'settlement';

/**
 * Runs settlement rounds (billing.md "Settlement round"): under the lock, reconcile what earlier rounds
 * left open, then group, sign, preview, persist, send and apply — chunk by chunk, so one failed batch
 * never stops the others. An unreachable chain ends the round early; everything is picked up by the next.
 */
export class Settler {
  readonly counters: SettlementCounters = {
    rounds: 0,
    roundsLocked: 0,
    roundsInterrupted: 0,
    transactionsSent: 0,
    replacements: 0,
    transactionsReverted: 0,
    batchesReconciled: 0,
    receiptsSettled: 0,
    receiptsPartial: 0,
    settledWei: 0n,
    shortfallWei: 0n,
    failures: { PROVIDER_MISMATCH: 0, NO_TEE_SIGNER: 0, INVALID_NONCE: 0, INVALID_SIGNATURE: 0 },
  };
  private readonly deps: ResolvedSettlerDeps;
  private current: Promise<unknown> | undefined;
  private abort = new AbortController();

  constructor(deps: SettlerDeps) {
    this.deps = {
      ...deps,
      now: deps.now ?? Date.now,
      pollIntervalMs: deps.pollIntervalMs ?? 1_000,
      maxTxWaitMs: deps.maxTxWaitMs ?? 10 * deps.billingConfig.txReplaceAfterMs,
      logLookbackBlocks: deps.logLookbackBlocks ?? 10_000,
      holder: deps.holder ?? `settler-${process.pid}-${randomBytes(6).toString('hex')}`,
      settlementSigner: new SettlementSigner({
        key: deps.tee,
        journal: new SettlementJournal(deps.tee.journalDir, deps.tee.address),
        domain: settlementDomain(deps),
        providerAddress: deps.providerAddress,
      }),
    };
  }

  /** true while a round or a reconciliation runs. */
  get running(): boolean {
    return this.current !== undefined;
  }

  /** One settlement round now (reconciling open batches first). Never overlaps another round, here or elsewhere. */
  async runRound(options: RoundOptions = {}): Promise<RoundResult> {
    const dryRun = options.dryRun ?? false;
    const result: RoundResult = { outcome: 'completed', error: undefined, dryRun, reconciled: [], users: [], transactions: [] };
    if (dryRun) return this.exclusive(() => this.dryRun(options, result), { ...result, outcome: 'busy' });
    const done = await this.withLock(options, result, async (ctx) => {
      this.counters.rounds += 1;
      ctx.deps.logger.debug('settlement: round starts', { reason: options.reason ?? 'manual' });
      for (const batch of await this.deps.billing.openBatches()) {
        result.reconciled.push(...(await reconcileBatch(ctx, batch, { maxWaitMs: this.deps.maxTxWaitMs })));
      }
      if (result.reconciled.some((u) => u.outcome === 'pending')) {
        // New transactions would only queue behind it under later wallet nonces.
        throw new RoundInterrupted('an earlier settlement transaction is still pending');
      }
      await this.settleChunks(ctx, options, result);
      return result;
    });
    this.logRound(done, options);
    return done;
  }

  /** Resolves the batches earlier runs left open (start-up), without starting a round. */
  async reconcile(options: { maxWaitMs?: number; onProgress?: (line: string) => void } = {}): Promise<ReconcileResult> {
    const out: ReconcileResult = { outcome: 'completed', error: undefined, batches: 0, users: [] };
    const result = await this.withLock({ onProgress: options.onProgress }, out, async (ctx) => {
      const open = await this.deps.billing.openBatches();
      out.batches = open.length;
      for (const batch of open) out.users.push(...(await reconcileBatch(ctx, batch, { maxWaitMs: options.maxWaitMs ?? 0 })));
      await this.observeChainNonces();
      return out;
    });
    if (result.outcome === 'interrupted') {
      this.deps.logger.warn('settlement: reconciliation ended early; the next round continues it', { error: result.error });
    }
    return result;
  }

  /**
   * Raises the TEE journal's floor to each owing user's on-chain nonce, so that receipts completed from
   * now on are numbered above it even when the database (or, outside tdx mode, the journal with it) was
   * restored from an older copy: otherwise they would be numbered below a nonce already used, and void.
   */
  private async observeChainNonces(): Promise<void> {
    const users = (await this.deps.billing.usersWithUnsettled()).map((u) => u.user).filter((u) => isAddress(u));
    if (users.length === 0) return;
    const accounts = await readAccounts(this.deps.chain, this.deps.providerAddress, users);
    for (const [user, account] of accounts) this.deps.settlementSigner.journal.observeChainNonce(user, account.nonce);
  }

  /** Ends a running round at its next step (what it sent stays recorded for the next one) and waits for it. */
  async stop(): Promise<void> {
    this.abort.abort();
    await this.current?.catch(() => undefined);
    this.abort = new AbortController();
  }

  private async settleChunks(ctx: RoundContext, options: RoundOptions, result: RoundResult): Promise<void> {
    const chunks = await groupReceipts(this.deps, options.users);
    if (chunks.length === 0) {
      ctx.progress('nothing to settle');
      return;
    }
    const users = chunks.reduce((n, c) => n + c.length, 0);
    const receipts = chunks.reduce((n, c) => n + c.reduce((m, u) => m + u.receipts.length, 0), 0);
    ctx.progress(`${users} users, ${receipts} receipts, ${chunks.length} transaction(s)`);
    for (const chunk of chunks) {
      ctx.checkAlive();
      ctx.progress(`reading ${chunk.length} account(s) and signing their items with the TEE key`);
      const prepared = await buildItems(this.deps, chunk);
      for (const below of prepared.belowNonce) await reconcilePaidReceipts(ctx, below);
      for (const { user, reason } of prepared.held) ctx.deps.logger.info('settlement: nothing sent for a user this round', { user, reason });
      if (prepared.items.length === 0) continue;
      ctx.progress(`previewing ${prepared.items.length} signed item(s) on chain (previewSettlementResults)`);
      const trimmed = await trimByPreview(ctx, prepared.items);
      for (const dropped of trimmed.dropped) result.users.push(this.dropped(ctx, dropped.item, dropped.status, dropped.shortfallWei));
      if (trimmed.kept.length === 0) continue;
      ctx.progress(`estimating gas for ${trimmed.kept.length} item(s)`);
      const data = settlementCalldata(ctx, trimmed.kept);
      const gasLimit = await estimateBatchGas(ctx, data);
      if (gasLimit === undefined) {
        ctx.deps.logger.error('settlement: the batch would revert (gas estimation); not sent, its receipts stay unsettled', {
          users: trimmed.kept.map((i) => i.user),
        });
        result.users.push(...trimmed.kept.map((item) => userSettlement(item, undefined, { outcome: 'abandoned' })));
        continue;
      }
      const batchId = `stl_${randomBytes(12).toString('hex')}`;
      await this.deps.billing.prepareBatch({ id: batchId, items: trimmed.kept, createdMs: this.deps.now() });
      const sent = await sendBatch(ctx, batchId, data, gasLimit);
      const outcome = await waitForBatch(ctx, batchId, sent, this.deps.now() + this.deps.maxTxWaitMs);
      const batch = { id: batchId, items: trimmed.kept };
      if (outcome.kind === 'mined') {
        result.users.push(...(await applyMinedBatch(ctx, batch, outcome.receipt)));
        result.transactions.push(outcome.receipt.hash);
      } else if (outcome.kind === 'nonce-consumed') {
        const stored = await this.deps.billing.getBatch(batchId);
        result.users.push(...(await resolveByItemNonces(ctx, stored!, { nothingPending: true, atBlock: outcome.seenAtBlock })));
      } else {
        result.users.push(...trimmed.kept.map((item) => userSettlement(item, batchId, { outcome: 'pending', txHash: sent.hashes.at(-1) })));
        // Later chunks would queue behind it under the next wallet nonce: leave them for the next round.
        throw new RoundInterrupted(`transaction ${sent.hashes.at(-1)} still not mined after ${this.deps.maxTxWaitMs} ms`);
      }
    }
  }

  private dropped(ctx: RoundContext, item: BatchItem, status: number, shortfallWei: bigint | undefined): UserSettlement {
    const name = statusName(status);
    if (name === 'PARTIAL') {
      // The balance moved since it was read: sending would forfeit the rest. The same item waits for a top-up.
      ctx.deps.logger.info('settlement: not sending an item the balance no longer covers; receipts kept until the user tops up', {
        user: item.user,
        feeWei: item.totalFeeWei.toString(),
        shortfallWei: shortfallWei?.toString(),
      });
    } else if (name !== 'SUCCESS') {
      recordFailure(ctx, name as FailureStatus, item, 'preview');
    }
    return userSettlement(item, undefined, { outcome: 'dropped', status: name, shortfallWei });
  }

  private async dryRun(options: RoundOptions, result: RoundResult): Promise<RoundResult> {
    const ctx = this.context(options, () => undefined);
    const open = await this.deps.billing.openBatches();
    if (open.length > 0) ctx.progress(`${open.length} open batch(es) would be reconciled first`);
    try {
      const chunks = await groupReceipts(this.deps, options.users);
      if (chunks.length === 0) ctx.progress('nothing to settle');
      for (const chunk of chunks) {
        const { items, held } = await buildItems(this.deps, chunk, { dryRun: true });
        for (const { user, reason } of held) ctx.progress(`${user}: nothing to send (${reason})`);
        if (items.length === 0) continue;
        const trimmed = await trimByPreview(ctx, items);
        const dropped = new Map(trimmed.dropped.map((d) => [d.item.user.toLowerCase(), d]));
        for (const item of items) {
          const d = dropped.get(item.user.toLowerCase());
          const status = d ? statusName(d.status) : 'SUCCESS';
          result.users.push(userSettlement(item, undefined, { outcome: 'preview', status, shortfallWei: d?.shortfallWei }));
        }
      }
    } catch (err) {
      if (!isChainUnavailable(err)) throw err;
      result.outcome = 'interrupted';
      result.error = (err as Error).message;
    }
    return result;
  }

  /** Runs `fn` under the settlement lock (renewed while it runs); interruptions end it with what was done. */
  private async withLock<T extends { outcome: string; error: string | undefined }>(
    options: Pick<RoundOptions, 'onProgress'>,
    result: T,
    fn: (ctx: RoundContext) => Promise<T>,
  ): Promise<T> {
    return this.exclusive(async () => {
      const { billing, holder, now, logger } = this.deps;
      // Renewed every third of its lifetime while the round runs.
      const lockTtlMs = this.deps.billingConfig.settlementLockTtlMs;
      if (!(await billing.tryLock(SETTLEMENT_LOCK, holder, now(), lockTtlMs))) {
        this.counters.roundsLocked += 1;
        return { ...result, outcome: 'locked' };
      }
      let lost = false;
      const renew = setInterval(() => {
        billing.tryLock(SETTLEMENT_LOCK, holder, now(), lockTtlMs).then(
          (held) => {
            if (!held) lost = true;
          },
          (err: unknown) => logger.warn('settlement: could not renew the lock', { error: String(err) }),
        );
      }, Math.max(1, Math.floor(lockTtlMs / 3)));
      renew.unref();
      const ctx = this.context(options, () => {
        if (lost) throw new RoundInterrupted('the settlement lock was lost to another settler');
      });
      ctx.renewLock = async () => {
        if (!(await billing.tryLock(SETTLEMENT_LOCK, holder, now(), lockTtlMs))) {
          lost = true;
          throw new RoundInterrupted('the settlement lock was lost to another settler');
        }
      };
      try {
        return await fn(ctx);
      } catch (err) {
        if (!(err instanceof RoundInterrupted || err instanceof WalletUnfundedError || isChainUnavailable(err))) throw err;
        this.counters.roundsInterrupted += 1;
        result.outcome = 'interrupted';
        result.error = (err as Error).message;
        return result;
      } finally {
        clearInterval(renew);
        await billing.unlock(SETTLEMENT_LOCK, holder);
      }
    }, { ...result, outcome: 'busy' });
  }

  private async exclusive<T>(fn: () => Promise<T>, busy: T): Promise<T> {
    if (this.current) return busy;
    const run = fn();
    this.current = run;
    try {
      return await run;
    } finally {
      this.current = undefined;
    }
  }

  private context(options: Pick<RoundOptions, 'onProgress'>, extraCheck: () => void): RoundContext {
    const signal = this.abort.signal;
    return {
      deps: this.deps,
      counters: this.counters,
      signal,
      progress: (line) => options.onProgress?.(line),
      checkAlive: () => {
        if (signal.aborted) throw new RoundInterrupted('the settler is stopping');
        extraCheck();
      },
      renewLock: async () => undefined,
    };
  }

  private logRound(result: RoundResult, options: RoundOptions): void {
    const { logger } = this.deps;
    if (result.outcome === 'locked' || result.outcome === 'busy') {
      logger.debug(`settlement: round skipped (${result.outcome === 'locked' ? 'another settler holds the lock' : 'a round is running'})`);
      return;
    }
    const all = [...result.reconciled, ...result.users];
    if (all.length === 0 && result.outcome === 'completed') return;
    const paid = all.reduce((sum, u) => sum + (u.outcome === 'settled' ? u.amountWei : u.outcome === 'partial' ? u.amountWei - (u.shortfallWei ?? 0n) : 0n), 0n);
    const fields = {
      reason: options.reason ?? 'manual',
      users: all.length,
      settled: all.filter((u) => u.outcome === 'settled').length,
      partial: all.filter((u) => u.outcome === 'partial').length,
      refused: all.filter((u) => u.outcome === 'refused' || u.outcome === 'dropped').length,
      pending: all.filter((u) => u.outcome === 'pending').length,
      paidWei: paid.toString(),
      paid0G: formatEther(paid),
      transactions: result.transactions,
    };
    if (result.outcome === 'interrupted') {
      logger.warn('settlement: round ended early; receipts stay unsettled or in their batch until the next round', { ...fields, error: result.error });
    } else {
      logger.info('settlement: round done', fields);
    }
  }
}

function isChainUnavailable(err: unknown): boolean {
  return err instanceof PixeldError && err.code === 'chain_unavailable';
}
