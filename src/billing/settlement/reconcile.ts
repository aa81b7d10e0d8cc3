import type { SettlementBatch } from '../store.js';
import { applyMinedBatch, userSettlement } from './apply-results.js';
import { findItemTransaction, readAccounts } from './chain-reads.js';
import {
  minedReceipt,
  pendingTransactionOf,
  resendBatch,
  settlementCalldata,
  waitForBatch,
  walletNonceAtHead,
  walletNonces,
  type SentTransaction,
  type WaitOutcome,
} from './send-batch.js';
import type { RoundContext, UserSettlement } from './types.js';

/**
 * Step 6: a batch left open by a crash, an RPC outage or a transaction still pending is settled against
 * the chain — exactly once, nothing lost. The chain decides: a recorded transaction that was mined is
 * applied; a batch whose items consumed their nonces is applied from the transaction that carried
 * them; a batch nothing of which reached the chain is abandoned (receipts unsettled again; its items
 * stay signed, to be sent again as they are, and nothing is signed over their receipts) once nothing of
 * it can still be mined, or re-sent under its own wallet nonce when its transaction merely vanished
 * from the node.
 */

export interface ReconcileBatchOptions {
  /** How long to wait for a transaction that is still pending (0: look once and leave it open). */
  maxWaitMs: number;
}

export async function reconcileBatch(ctx: RoundContext, batch: SettlementBatch, options: ReconcileBatchOptions): Promise<UserSettlement[]> {
  ctx.checkAlive();
  ctx.counters.batchesReconciled += 1;
  ctx.progress(`reconciling batch ${batch.id} (${batch.state}, ${batch.items.length} users, ${batch.txHashes.length} tx hashes)`);
  const outcomes = batch.state === 'sent' && batch.txHashes.length > 0 ? await reconcileSent(ctx, batch, options) : await resolveByItemNonces(ctx, batch);
  const summary = outcomes.reduce<Record<string, number>>((acc, o) => ({ ...acc, [o.outcome]: (acc[o.outcome] ?? 0) + 1 }), {});
  ctx.deps.logger.info('settlement: reconciled an open batch', { batch: batch.id, state: batch.state, ...summary });
  return outcomes;
}

async function reconcileSent(ctx: RoundContext, batch: SettlementBatch, options: ReconcileBatchOptions): Promise<UserSettlement[]> {
  const mined = await minedReceipt(ctx, batch.txHashes);
  if (mined) return applyMinedBatch(ctx, batch, mined);
  const walletNonce = batch.walletNonce!;
  const seen = await walletNonceAtHead(ctx);
  if (seen.nonce > walletNonce) {
    const late = await minedReceipt(ctx, batch.txHashes);
    if (late) return applyMinedBatch(ctx, batch, late);
    // The wallet nonce went to a transaction whose hash is not recorded: none of ours can be mined now.
    return resolveByItemNonces(ctx, batch, { nothingPending: true, atBlock: seen.block });
  }
  let sent: SentTransaction | undefined = await pendingTransactionOf(ctx, batch.txHashes);
  if (!sent) {
    // Recorded but gone from the node (never broadcast, or dropped): the same items under the same wallet
    // nonce, so that whichever copy is ever mined, it is mined once.
    ctx.deps.logger.warn('settlement: a recorded settlement transaction is unknown to the node; re-sending it', {
      batch: batch.id,
      walletNonce,
    });
    sent = await resendBatch(ctx, batch.id, walletNonce, batch.items.length, settlementCalldata(ctx, batch.items), batch.txHashes);
  } else {
    ctx.progress(`batch ${batch.id}: tx ${sent.hashes.at(-1)} is still pending`);
  }
  const outcome: WaitOutcome = await waitForBatch(ctx, batch.id, sent, ctx.deps.now() + options.maxWaitMs);
  if (outcome.kind === 'mined') return applyMinedBatch(ctx, batch, outcome.receipt);
  if (outcome.kind === 'nonce-consumed') return resolveByItemNonces(ctx, batch, { nothingPending: true, atBlock: outcome.seenAtBlock });
  return batch.items.map((item) => userSettlement(item, batch.id, { outcome: 'pending', txHash: sent.hashes.at(-1) }));
}

/**
 * For a batch whose transaction is unknown: an item whose nonce the account has reached was (probably)
 * applied — the TEESettlementResult events name the transaction that carried it, whose results apply to
 * the whole batch. If none was applied and nothing from the wallet is pending, nothing of it can still
 * reach the chain: abandon it. Its receipts are unsettled again, but its items stay signed: the journal
 * of the settler that signed them holds them, and any settler sharing the key finds them in this batch
 * (the settlement signer verifies the items the database records) — so they are only ever sent again as
 * they are, never re-signed under another nonce, whichever replica settles next.
 *
 * `atBlock`: the block at which the wallet nonce was seen used. Accounts and events are read at that
 * block or later; a node behind it answers chain_unavailable and the batch waits for the next round,
 * rather than being judged from a lagging node's older state.
 */
export async function resolveByItemNonces(
  ctx: RoundContext,
  batch: SettlementBatch,
  known: { nothingPending?: boolean; atBlock?: number } = {},
): Promise<UserSettlement[]> {
  const { chain, providerAddress, logLookbackBlocks, billing, logger } = ctx.deps;
  const accounts = await readAccounts(chain, providerAddress, batch.items.map((i) => i.user), known.atBlock);
  for (const item of batch.items) {
    const chainNonce = accounts.get(item.user.toLowerCase())?.nonce ?? 0n;
    if (chainNonce < item.nonce) continue;
    // A later batch may have moved the nonce instead: only the transaction that carried this very item counts.
    const receipt = await findItemTransaction(chain, providerAddress, item, logLookbackBlocks, known.atBlock);
    if (receipt) {
      logger.warn('settlement: found the unrecorded transaction of an open batch; applying its results', {
        batch: batch.id,
        tx: receipt.hash,
        block: receipt.blockNumber,
      });
      return applyMinedBatch(ctx, batch, receipt);
    }
  }
  if (!known.nothingPending) {
    const { latest, pending } = await walletNonces(ctx);
    if (pending > latest) {
      ctx.progress(`batch ${batch.id}: the provider wallet has pending transactions; looking again next round`);
      return batch.items.map((item) => userSettlement(item, batch.id, { outcome: 'pending' }));
    }
  }
  await billing.abandonBatch(batch.id, 'nothing of it reached the chain (reconciled)');
  logger.info('settlement: abandoned a batch that never reached the chain; its receipts are unsettled again', { batch: batch.id });
  return batch.items.map((item) => userSettlement(item, batch.id, { outcome: 'abandoned' }));
}

