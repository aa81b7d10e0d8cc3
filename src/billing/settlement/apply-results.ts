import type { TransactionReceipt } from 'ethers';
import { getAccount } from '../../chain/get-account.js';
import { PixeldError } from '../../errors.js';
import type { BatchItem } from '../store.js';
import { settlementResultsOf } from './chain-reads.js';
import { statusName, type FailureStatus, type RoundContext, type UserSettlement } from './types.js';

/**
 * Step 5's second half: the chain's answer for a batch, applied once. SUCCESS → settled; PARTIAL →
 * the shortfall recorded and the user refused until they top up; any other status → the receipts are
 * unsettled again (never deleted) and an alert is raised; a reverted transaction → the batch is
 * abandoned and every receipt is unsettled again.
 */

export function userSettlement(item: BatchItem, batchId: string | undefined, extra: Partial<UserSettlement>): UserSettlement {
  return {
    user: item.user,
    receipts: item.receipts.length,
    amountWei: item.totalFeeWei,
    nonce: item.nonce,
    outcome: 'pending',
    status: undefined,
    shortfallWei: undefined,
    txHash: undefined,
    block: undefined,
    batchId,
    ...extra,
  };
}

export async function applyMinedBatch(
  ctx: RoundContext,
  batch: { id: string; items: readonly BatchItem[] },
  receipt: TransactionReceipt,
): Promise<UserSettlement[]> {
  const { billing, logger } = ctx.deps;
  const at = { txHash: receipt.hash, block: receipt.blockNumber };
  if (receipt.status !== 1) {
    await billing.abandonBatch(batch.id, `transaction ${receipt.hash} reverted in block ${receipt.blockNumber}`);
    ctx.counters.transactionsReverted += 1;
    logger.error('settlement: the transaction reverted; its receipts are unsettled again', { batch: batch.id, ...at });
    return batch.items.map((item) => userSettlement(item, batch.id, { outcome: 'abandoned', ...at }));
  }

  const results = settlementResultsOf(ctx.deps.chain, receipt);
  await billing.confirmBatch(batch.id, receipt.hash, receipt.blockNumber, results, ctx.deps.now());
  ctx.deps.onSettled?.(results.map((r) => r.user), receipt.blockNumber);
  const byUser = new Map(results.map((r) => [r.user.toLowerCase(), r]));
  const outcomes: UserSettlement[] = [];
  for (const item of batch.items) {
    const result = byUser.get(item.user.toLowerCase());
    if (!result) {
      // confirmBatch put its receipts back: nothing was paid for them in this transaction.
      logger.error('settlement: the transaction reported nothing for an item; its receipts are unsettled again', {
        batch: batch.id,
        user: item.user,
        ...at,
      });
      outcomes.push(userSettlement(item, batch.id, { outcome: 'refused', ...at }));
      continue;
    }
    const status = statusName(result.status);
    if (status === 'SUCCESS') {
      ctx.counters.receiptsSettled += item.receipts.length;
      ctx.counters.settledWei += item.totalFeeWei;
      outcomes.push(userSettlement(item, batch.id, { outcome: 'settled', status, ...at }));
    } else if (status === 'PARTIAL') {
      const balanceAfter = await balanceAfterPartial(ctx, item.user, receipt.blockNumber);
      await billing.blockUser({ user: item.user, shortfallWei: result.unsettledWei, balanceWei: balanceAfter, sinceMs: ctx.deps.now() });
      ctx.counters.receiptsPartial += item.receipts.length;
      ctx.counters.settledWei += item.totalFeeWei - result.unsettledWei;
      ctx.counters.shortfallWei += result.unsettledWei;
      logger.warn('settlement: PARTIAL — the balance did not cover the fees; the user is refused until they top up', {
        user: item.user,
        feeWei: item.totalFeeWei.toString(),
        shortfallWei: result.unsettledWei.toString(),
        ...at,
      });
      outcomes.push(userSettlement(item, batch.id, { outcome: 'partial', status, shortfallWei: result.unsettledWei, ...at }));
    } else {
      recordFailure(ctx, status, item, 'chain');
      outcomes.push(userSettlement(item, batch.id, { outcome: 'refused', status, ...at }));
    }
  }
  return outcomes;
}

/** Counts and logs an item the chain refused (or would refuse): its receipts stay unsettled. */
export function recordFailure(ctx: RoundContext, status: FailureStatus, item: BatchItem, source: 'chain' | 'preview'): void {
  ctx.counters.failures[status] += 1;
  const fields = { user: item.user, nonce: item.nonce.toString(), receipts: item.receipts.length, feeWei: item.totalFeeWei.toString(), source };
  if (status === 'INVALID_NONCE') {
    // Someone moved the account's nonce; the next round reads it again and signs above it.
    ctx.deps.logger.warn('settlement: INVALID_NONCE; the receipts stay unsettled and the nonce is re-read next round', fields);
    return;
  }
  ctx.deps.logger.error(`settlement: ${status}; the receipts are kept unsettled and retried every round`, {
    ...fields,
    hint: hintFor(status),
  });
}

function hintFor(status: FailureStatus): string {
  switch (status) {
    case 'NO_TEE_SIGNER':
      return 'the service TEE signer (or the user account) is not acknowledged: the contract owner must acknowledge it';
    case 'INVALID_SIGNATURE':
      return "the TEE key does not match the service's teeSignerAddress (re-register), or the user has no account";
    case 'PROVIDER_MISMATCH':
      return 'the provider wallet has no service registered on this contract';
    case 'INVALID_NONCE':
      return 'the on-chain nonce moved';
  }
}

/** After PARTIAL the contract has taken the whole balance; read it back at that block all the same. */
async function balanceAfterPartial(ctx: RoundContext, user: string, block: number): Promise<bigint> {
  try {
    return (await getAccount(ctx.deps.chain, user, ctx.deps.providerAddress, block))?.balance ?? 0n;
  } catch (err) {
    if (err instanceof PixeldError && err.code === 'chain_unavailable') return 0n;
    throw err;
  }
}
