import { setTimeout as sleep } from 'node:timers/promises';
import { isError, Transaction, type TransactionReceipt, type TransactionRequest } from 'ethers';
import { chainUnavailable, isRevert } from '../../chain/errors.js';
import { gasLimitFor } from '../../chain/gas.js';
import type { BatchItem } from '../store.js';
import { contractItem, previewSettlement } from './chain-reads.js';
import { WalletUnfundedError, type RoundContext } from './types.js';

/**
 * Step 4's preview and the sending of settleFeesWithTEE (step 5 and 7): each transaction is signed
 * first, its hash recorded, and only then broadcast — so whatever happens next, the hash is known and
 * a restart can look it up. A transaction still pending after txReplaceAfterMs is signed again with
 * the same wallet nonce and fees raised by feeBumpPercent; every hash is recorded and whichever mines
 * counts (one wallet nonce: at most one of them can).
 */

export interface Trimmed {
  /** Items the preview says settle in full. */
  kept: BatchItem[];
  /** Items the preview says would fail (with the status) or come back PARTIAL (status 1, with the shortfall). */
  dropped: Array<{ item: BatchItem; status: number; shortfallWei: bigint | undefined }>;
}

/**
 * Keeps only the items that would settle in full. A PARTIAL item is never sent: the contract would consume
 * its nonce and the unpaid rest would no longer be owed on chain. Items are signed to fit the balance, so
 * this happens only when the balance moved since it was read; the item waits for a top-up.
 */
export async function trimByPreview(ctx: RoundContext, items: BatchItem[]): Promise<Trimmed> {
  const preview = await previewSettlement(ctx.deps.chain, ctx.deps.providerAddress, items);
  const trimmed: Trimmed = { kept: [], dropped: [] };
  for (const item of items) {
    const key = item.user.toLowerCase();
    const failed = preview.failed.get(key);
    const shortfall = preview.partial.get(key);
    if (failed !== undefined) trimmed.dropped.push({ item, status: failed, shortfallWei: undefined });
    else if (shortfall !== undefined) trimmed.dropped.push({ item, status: 1, shortfallWei: shortfall });
    else trimmed.kept.push(item);
  }
  return trimmed;
}

export function settlementCalldata(ctx: RoundContext, items: readonly BatchItem[]): string {
  return ctx.deps.chain.serving.interface.encodeFunctionData('settleFeesWithTEE', [
    items.map((i) => contractItem(i, ctx.deps.providerAddress)),
  ]);
}

/** Gas for the batch, with gasLimitFor's margin; undefined if it would revert. */
export async function estimateBatchGas(ctx: RoundContext, data: string): Promise<bigint | undefined> {
  try {
    const estimate = await ctx.deps.chain.provider.estimateGas({
      from: ctx.deps.providerAddress,
      to: ctx.deps.chain.servingAddress,
      data,
    });
    return gasLimitFor(estimate);
  } catch (err) {
    if (isRevert(err)) return undefined;
    throw chainUnavailable('estimateGas(settleFeesWithTEE)', err);
  }
}

export type Fees = { type: 2; maxFeePerGas: bigint; maxPriorityFeePerGas: bigint } | { type: 0; gasPrice: bigint };

/** A batch's transaction as last sent: what a replacement is built from. */
export interface SentTransaction {
  walletNonce: number;
  gasLimit: bigint;
  data: string;
  fees: Fees;
  /** Every hash recorded for the batch, oldest first. */
  hashes: string[];
  lastSentMs: number;
}

async function currentFees(ctx: RoundContext): Promise<Fees> {
  try {
    const data = await ctx.deps.chain.provider.getFeeData();
    if (data.maxFeePerGas !== null && data.maxPriorityFeePerGas !== null) {
      return { type: 2, maxFeePerGas: data.maxFeePerGas, maxPriorityFeePerGas: data.maxPriorityFeePerGas };
    }
    if (data.gasPrice !== null) return { type: 0, gasPrice: data.gasPrice };
  } catch (err) {
    throw chainUnavailable('getFeeData', err);
  }
  throw chainUnavailable('getFeeData', new Error('the node reports no gas price'));
}

const raise = (wei: bigint, percent: number) => (wei * BigInt(100 + percent) + 99n) / 100n;
const max = (a: bigint, b: bigint) => (a > b ? a : b);

/** Both fee fields raised by feeBumpPercent (nodes refuse a replacement that raises only one), and never below today's. */
function bumped(previous: Fees, now: Fees, percent: number): Fees {
  if (previous.type === 2 && now.type === 2) {
    return {
      type: 2,
      maxFeePerGas: max(raise(previous.maxFeePerGas, percent), now.maxFeePerGas),
      maxPriorityFeePerGas: max(raise(previous.maxPriorityFeePerGas, percent), now.maxPriorityFeePerGas),
    };
  }
  if (previous.type === 0 && now.type === 0) return { type: 0, gasPrice: max(raise(previous.gasPrice, percent), now.gasPrice) };
  return now;
}

/** Signs, records, then broadcasts; returns the hash. */
async function signRecordBroadcast(ctx: RoundContext, batchId: string, sent: Omit<SentTransaction, 'hashes' | 'lastSentMs'>): Promise<string> {
  const request: TransactionRequest = {
    chainId: ctx.deps.chain.chainId,
    to: ctx.deps.chain.servingAddress,
    data: sent.data,
    value: 0n,
    nonce: sent.walletNonce,
    gasLimit: sent.gasLimit,
    ...sent.fees,
  };
  const signed = await ctx.deps.wallet.signTransaction(request);
  const hash = Transaction.from(signed).hash!;
  await ctx.deps.billing.recordBatchTx(batchId, hash, sent.walletNonce, ctx.deps.now());
  await broadcast(ctx, signed, hash);
  return hash;
}

async function broadcast(ctx: RoundContext, signed: string, hash: string): Promise<void> {
  try {
    await ctx.deps.chain.provider.send('eth_sendRawTransaction', [signed]);
  } catch (err) {
    const message = String((err as { shortMessage?: string; message?: string }).message ?? err);
    if (/already known|known transaction|already imported/i.test(message)) return;
    if (isError(err, 'NONCE_EXPIRED')) {
      // Something with this wallet nonce was mined: the wait finds out whether it was one of ours.
      ctx.deps.logger.warn('settlement: the node says the wallet nonce is used already', { tx: hash });
      return;
    }
    if (isError(err, 'REPLACEMENT_UNDERPRICED')) {
      ctx.deps.logger.warn('settlement: replacement refused as underpriced; raising again at the next interval', { tx: hash });
      return;
    }
    if (isError(err, 'INSUFFICIENT_FUNDS')) {
      throw new WalletUnfundedError(
        `the provider wallet ${ctx.deps.providerAddress} cannot pay for the settlement transaction's gas: top it up`,
      );
    }
    throw chainUnavailable('eth_sendRawTransaction', err);
  }
}

async function walletNonce(ctx: RoundContext, tag: 'latest' | 'pending'): Promise<number> {
  try {
    return await ctx.deps.chain.provider.getTransactionCount(ctx.deps.providerAddress, tag);
  } catch (err) {
    throw chainUnavailable('getTransactionCount', err);
  }
}

/** The wallet's mined nonce at a definite block (the node's head when asked), and that block. */
export async function walletNonceAtHead(ctx: RoundContext): Promise<{ nonce: number; block: number }> {
  try {
    const block = await ctx.deps.chain.provider.getBlockNumber();
    return { nonce: await ctx.deps.chain.provider.getTransactionCount(ctx.deps.providerAddress, block), block };
  } catch (err) {
    throw chainUnavailable('getTransactionCount', err);
  }
}

export const walletNonces = async (ctx: RoundContext) => ({ latest: await walletNonce(ctx, 'latest'), pending: await walletNonce(ctx, 'pending') });

/** First send of a prepared batch, at the wallet's next nonce. */
export async function sendBatch(ctx: RoundContext, batchId: string, data: string, gasLimit: bigint): Promise<SentTransaction> {
  const nonce = await walletNonce(ctx, 'pending');
  const fees = await currentFees(ctx);
  ctx.checkAlive();
  await ctx.renewLock();
  const hash = await signRecordBroadcast(ctx, batchId, { walletNonce: nonce, gasLimit, data, fees });
  ctx.counters.transactionsSent += 1;
  ctx.progress(`sent tx ${hash} (batch ${batchId}, wallet nonce ${nonce}); waiting for it to be mined…`);
  return { walletNonce: nonce, gasLimit, data, fees, hashes: [hash], lastSentMs: ctx.deps.now() };
}

/** Sends a recorded batch again under its own wallet nonce (its transaction vanished from the node). */
export async function resendBatch(
  ctx: RoundContext,
  batchId: string,
  walletNonceUsed: number,
  items: number,
  data: string,
  hashes: string[],
): Promise<SentTransaction> {
  // Sent even if it would now revert: a mined revert uses up the wallet nonce, so no earlier copy can
  // ever be mined and the batch can be abandoned safely.
  const gasLimit = (await estimateBatchGas(ctx, data)) ?? 100_000n + 80_000n * BigInt(items);
  const fees = await currentFees(ctx);
  ctx.checkAlive();
  await ctx.renewLock();
  const hash = await signRecordBroadcast(ctx, batchId, { walletNonce: walletNonceUsed, gasLimit, data, fees });
  ctx.counters.transactionsSent += 1;
  ctx.progress(`re-sent batch ${batchId} as tx ${hash} (wallet nonce ${walletNonceUsed}); waiting for it to be mined…`);
  return { walletNonce: walletNonceUsed, gasLimit, data, fees, hashes: [...hashes, hash], lastSentMs: ctx.deps.now() };
}

/** A pending transaction of the batch as the node knows it, to continue waiting (and bumping) from. */
export async function pendingTransactionOf(ctx: RoundContext, hashes: readonly string[]): Promise<SentTransaction | undefined> {
  for (const hash of [...hashes].reverse()) {
    let tx;
    try {
      tx = await ctx.deps.chain.provider.getTransaction(hash);
    } catch (err) {
      throw chainUnavailable('getTransaction', err);
    }
    if (!tx || tx.blockNumber !== null) continue;
    const fees: Fees =
      tx.maxFeePerGas !== null && tx.maxPriorityFeePerGas !== null
        ? { type: 2, maxFeePerGas: tx.maxFeePerGas, maxPriorityFeePerGas: tx.maxPriorityFeePerGas }
        : { type: 0, gasPrice: tx.gasPrice };
    return { walletNonce: tx.nonce, gasLimit: tx.gasLimit, data: tx.data, fees, hashes: [...hashes], lastSentMs: ctx.deps.now() };
  }
  return undefined;
}

/** The receipt of whichever of these transactions was mined, if any. */
export async function minedReceipt(ctx: RoundContext, hashes: readonly string[]): Promise<TransactionReceipt | undefined> {
  for (const hash of [...hashes].reverse()) {
    try {
      const receipt = await ctx.deps.chain.provider.getTransactionReceipt(hash);
      if (receipt) return receipt;
    } catch (err) {
      throw chainUnavailable('getTransactionReceipt', err);
    }
  }
  return undefined;
}

export type WaitOutcome =
  | { kind: 'mined'; receipt: TransactionReceipt }
  /**
   * The wallet nonce was used by a transaction that is none of ours (or whose hash was lost), as seen at
   * block `seenAtBlock`: what follows reads the chain at or after it, never from a node further behind.
   */
  | { kind: 'nonce-consumed'; seenAtBlock: number }
  /** Still pending at the deadline. */
  | { kind: 'timeout' };

/** Further looks for our receipt, a poll interval apart, once the wallet nonce shows as used. */
const RECEIPT_LAG_LOOKS = 3;

/** Waits for one of the batch's transactions to be mined, re-sending with higher fees when it lingers. */
export async function waitForBatch(ctx: RoundContext, batchId: string, sent: SentTransaction, deadlineMs: number): Promise<WaitOutcome> {
  const { txReplaceAfterMs, feeBumpPercent } = ctx.deps.billingConfig;
  for (;;) {
    const receipt = await minedReceipt(ctx, sent.hashes);
    if (receipt) {
      ctx.progress(`tx ${receipt.hash} mined in block ${receipt.blockNumber}`);
      return { kind: 'mined', receipt };
    }
    const seen = await walletNonceAtHead(ctx);
    if (seen.nonce > sent.walletNonce) {
      // Mined between the two reads, or replaced by something that is not ours. A node can report the
      // nonce used a moment before it serves the receipt (anvil under load did): look a few more times
      // before settling for the users' on-chain nonces, which lose the transaction's hash and gas.
      for (let look = 0; look <= RECEIPT_LAG_LOOKS; look += 1) {
        const late = await minedReceipt(ctx, sent.hashes);
        if (late) return { kind: 'mined', receipt: late };
        if (look < RECEIPT_LAG_LOOKS) await sleepInterruptibly(ctx, ctx.deps.pollIntervalMs);
      }
      return { kind: 'nonce-consumed', seenAtBlock: seen.block };
    }
    if (ctx.deps.now() >= deadlineMs) return { kind: 'timeout' };
    ctx.checkAlive();
    if (ctx.deps.now() - sent.lastSentMs >= txReplaceAfterMs) {
      const fees = bumped(sent.fees, await currentFees(ctx), feeBumpPercent);
      ctx.checkAlive();
      await ctx.renewLock();
      const hash = await signRecordBroadcast(ctx, batchId, { walletNonce: sent.walletNonce, gasLimit: sent.gasLimit, data: sent.data, fees });
      sent.fees = fees;
      sent.hashes.push(hash);
      sent.lastSentMs = ctx.deps.now();
      ctx.counters.replacements += 1;
      ctx.progress(`tx not mined after ${txReplaceAfterMs} ms: re-sent with fees +${feeBumpPercent}% as ${hash}`);
      ctx.deps.logger.info('settlement: replaced a pending transaction with higher fees', { batch: batchId, tx: hash, walletNonce: sent.walletNonce });
    }
    await sleepInterruptibly(ctx, ctx.deps.pollIntervalMs);
  }
}

async function sleepInterruptibly(ctx: RoundContext, ms: number): Promise<void> {
  try {
    await sleep(ms, undefined, { signal: ctx.signal });
  } catch {
    // Aborted: the settler is stopping.
  }
  ctx.checkAlive();
}
