import type { ReceiptJson } from '../tee/receipt.js';
import type { LeafValues } from './leaf.js';

/**
 * A receipt's place in settlement:
 * - `unsettled`: owed, waiting for a round;
 * - `offchain`: the owner is not a 0G user (an API-key router): billed by the router, never settled here;
 * - `in_flight`: part of a batch that was prepared or sent and not yet confirmed;
 * - `settled`: paid on chain (SUCCESS);
 * - `partial`: in a batch the chain settled PARTIAL: what the balance covered was paid, the rest is not owed;
 * - `invalid`: its signed text or signature does not hold up against the TEE key (the row was edited or
 *   forged): never settled, kept for a person to look at (`note` says why);
 * - `void`: can never be charged — numbered at or below the user's on-chain nonce without a settlement of
 *   it found on chain, or a v1 receipt without a sequence number (`note` says which).
 * A receipt is never deleted.
 */
export type ReceiptState = 'unsettled' | 'offchain' | 'in_flight' | 'settled' | 'partial' | 'invalid' | 'void';

export interface ReceiptRecord {
  jobId: string;
  user: string;
  provider: string;
  feeWei: bigint;
  images: number;
  created: number;
  leaf: LeafValues;
  receipt: ReceiptJson;
  /** The user's sequence number from the receipt (undefined for v1 receipts). */
  seq: bigint | undefined;
  /** The 0G-compatible signature made with the receipt, served by /v1/proxy/signature/{id}. */
  signature: { signingAddress: string; text: string; signature: string } | undefined;
  state: ReceiptState;
  /** Why an `invalid` or `void` receipt is so; how a receipt was found settled on chain. */
  note: string | undefined;
  batchId: string | undefined;
  /** The requestsHash (Merkle root) of the user's receipts in the batch, and this receipt's proof. */
  root: string | undefined;
  proof: string[] | undefined;
  settledTx: string | undefined;
  settledBlock: number | undefined;
  settledMs: number | undefined;
}

/** One user's item in a settlement batch, exactly as signed and sent. */
export interface BatchItem {
  user: string;
  nonce: bigint;
  totalFeeWei: bigint;
  requestsHash: string;
  /** The TEE key's EIP-712 signature. */
  signature: string;
  /** Receipts this item settles, with each one's proof against requestsHash. */
  receipts: Array<{ jobId: string; proof: string[] }>;
}

export type BatchState = 'prepared' | 'sent' | 'confirmed' | 'abandoned';

/**
 * A batch item as the database records it, with the leaf the receipts table holds for each receipt it
 * covers. Untrusted: the TEE's settlement signer checks the signature against its key and the leaves
 * against the signed requestsHash before it takes the item into account.
 */
export interface RecordedItem {
  batchId: string;
  batchState: BatchState;
  item: BatchItem;
  /** In `item.receipts` order; undefined where the receipts table has no row for the job. */
  leaves: Array<LeafValues | undefined>;
}

export interface SettlementBatch {
  id: string;
  state: BatchState;
  items: BatchItem[];
  createdMs: number;
  /** Every transaction hash sent for this batch (replacements with a higher fee append). */
  txHashes: string[];
  walletNonce: number | undefined;
  sentMs: number | undefined;
  block: number | undefined;
  results: ItemResult[] | undefined;
  note: string | undefined;
}

export interface ItemResult {
  user: string;
  /** InferenceServing status code: 0 SUCCESS … 5 INVALID_SIGNATURE. */
  status: number;
  unsettledWei: bigint;
}

export interface UserBlock {
  user: string;
  shortfallWei: bigint;
  /** The on-chain balance when the block was set; a top-up above it lifts the block. */
  balanceWei: bigint;
  sinceMs: number;
}

/** Receipts and their fees, split by settlement state. */
export interface EarningsTotals {
  receipts: number;
  images: number;
  settledWei: bigint;
  partialWei: bigint;
  unsettledWei: bigint;
  offchainWei: bigint;
  /** `invalid` and `void` receipts: never charged. */
  unbillableWei: bigint;
}

export interface EarningsDay extends EarningsTotals {
  /** UTC day, YYYY-MM-DD, of the receipt's creation. */
  day: string;
}

export interface UserEarnings extends EarningsTotals {
  user: string;
}

/**
 * Receipts, settlement batches, per-user nonces, settlement blocks and the settlement lock. Receipts are
 * created by the job store in the completion transaction; everything else moves through these verbs, each
 * one atomic.
 */
export interface BillingStore {
  getReceipt(jobId: string): Promise<ReceiptRecord | undefined>;
  /** Fees owed by the user and not yet settled (unsettled + in flight). */
  unsettledWei(user: string): Promise<bigint>;
  /** n × price of the user's jobs still pending or running. */
  reservedWei(user: string): Promise<bigint>;
  /** Users with unsettled receipts, with their totals. */
  usersWithUnsettled(): Promise<Array<{ user: string; feeWei: bigint; receipts: number }>>;
  /** The user's unsettled receipts, lowest sequence number first. */
  unsettledReceipts(user: string, limit: number): Promise<ReceiptRecord[]>;
  /**
   * A page of the owner's numbered receipts (v2, every state), lowest sequence number first: those numbered
   * above `afterSeq` and created at or after `sinceCreated` (unix seconds), at most `limit`. What
   * GET /v1/receipts serves; v1 receipts (no sequence number, never charged) are not listed.
   */
  receiptsOf(user: string, page: { afterSeq: bigint; sinceCreated: number; limit: number }): Promise<ReceiptRecord[]>;
  /** The user's receipts numbered in (afterSeq, upToSeq], in any state but `invalid`, lowest first. */
  receiptsInSeqRange(user: string, afterSeq: bigint, upToSeq: bigint): Promise<ReceiptRecord[]>;
  /**
   * Persists a batch before anything is sent: the batch row, each item's user and nonce (what
   * signedItemsAbove looks up), and its receipts moved to in_flight with their roots and proofs. A receipt that is no longer unsettled (or no longer there) is left as it is: the item
   * was signed over the receipts' own texts, not these rows.
   */
  prepareBatch(batch: { id: string; items: BatchItem[]; createdMs: number }): Promise<void>;
  /** Unsettled receipts that can never be charged → `invalid` or `void`, with the reason. */
  markUnbillable(receipts: ReadonlyArray<{ jobId: string; state: 'invalid' | 'void'; note: string }>): Promise<void>;
  /** Unsettled receipts the chain shows paid by a settlement (found from its events after a rollback). */
  markPaidOnChain(
    receipts: ReadonlyArray<{ jobId: string; root: string; proof: string[] }>,
    outcome: 'settled' | 'partial',
    at: { txHash: string; block: number; nowMs: number; note: string },
  ): Promise<void>;
  /** Records a transaction sent (or re-sent) for the batch, before waiting for it. */
  recordBatchTx(batchId: string, txHash: string, walletNonce: number, sentMs: number): Promise<void>;
  /**
   * Applies the chain's answer: per user SUCCESS → settled, PARTIAL → partial, anything else → back to
   * unsettled (kept, never deleted); the batch becomes confirmed.
   */
  confirmBatch(batchId: string, txHash: string, block: number, results: ItemResult[], nowMs: number): Promise<void>;
  /**
   * The user's items with a nonce above `aboveNonce`, in batches of every state (abandoned and confirmed
   * ones too: an item the chain refused, or one that never reached it, is still signed and could still be
   * sent), lowest nonce first. An item sent again in a later batch appears once per batch. What another
   * settler (a replica with its own journal) signed: the signer never signs over those receipts again.
   */
  signedItemsAbove(user: string, aboveNonce: bigint): Promise<RecordedItem[]>;
  /** Nothing of the batch reached the chain: its receipts go back to unsettled. */
  abandonBatch(batchId: string, note: string): Promise<void>;
  getBatch(batchId: string): Promise<SettlementBatch | undefined>;
  /** Batches prepared or sent and not yet confirmed or abandoned (to reconcile at start-up). */
  openBatches(): Promise<SettlementBatch[]>;
  /**
   * Takes or renews a named lock; false when another holder has it. SQLite (one file shared by the daemon
   * and commands) keeps it for `ttlMs` from each renewal; PostgreSQL for as long as the taking connection
   * lives (an advisory lock: a dead holder never blocks the others, whatever the clocks say).
   */
  tryLock(name: string, holder: string, nowMs: number, ttlMs: number): Promise<boolean>;
  unlock(name: string, holder: string): Promise<void>;
  blockUser(block: UserBlock): Promise<void>;
  getUserBlock(user: string): Promise<UserBlock | undefined>;
  unblockUser(user: string): Promise<void>;
  earningsByDay(): Promise<EarningsDay[]>;
  /**
   * Receipts per user (every receipt ever written), the `limit` users with the largest fees first (fees
   * of every state summed; ties by user).
   */
  earningsByUser(limit: number): Promise<UserEarnings[]>;
  /** The newest `limit` batches, every state, newest first (createdMs, then id). */
  recentBatches(limit: number): Promise<SettlementBatch[]>;
}
