import type { ReceiptJson } from '../tee/receipt.js';
import type { LeafValues } from './leaf.js';

/**
 * A receipt's place in settlement:
 * - `unsettled`: owed, waiting for a round;
 * - `offchain`: the owner is not a 0G user (an API-key router): billed by the router, never settled here;
 * - `in_flight`: part of a batch that was prepared or sent and not yet confirmed;
 * - `settled`: paid on chain (SUCCESS);
 * - `partial`: in a batch the chain settled PARTIAL: what the balance covered was paid, the rest is not owed.
 * A receipt is never deleted.
 */
export type ReceiptState = 'unsettled' | 'offchain' | 'in_flight' | 'settled' | 'partial';

export interface ReceiptRecord {
  jobId: string;
  user: string;
  provider: string;
  feeWei: bigint;
  images: number;
  created: number;
  leaf: LeafValues;
  receipt: ReceiptJson;
  state: ReceiptState;
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

export interface EarningsDay {
  /** UTC day, YYYY-MM-DD, of the receipt's creation. */
  day: string;
  receipts: number;
  images: number;
  settledWei: bigint;
  partialWei: bigint;
  unsettledWei: bigint;
  offchainWei: bigint;
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
  /** The user's oldest unsettled receipts. */
  unsettledReceipts(user: string, limit: number): Promise<ReceiptRecord[]>;
  /** The highest settlement nonce this daemon has used for the user. */
  lastNonce(user: string): Promise<bigint | undefined>;
  /**
   * Persists a batch before anything is sent: the batch row, its receipts moved to in_flight with their
   * roots and proofs, and every user's nonce. Refuses (returns false) when a receipt is no longer unsettled.
   */
  prepareBatch(batch: { id: string; items: BatchItem[]; createdMs: number }): Promise<boolean>;
  /** Records a transaction sent (or re-sent) for the batch, before waiting for it. */
  recordBatchTx(batchId: string, txHash: string, walletNonce: number, sentMs: number): Promise<void>;
  /**
   * Applies the chain's answer: per user SUCCESS → settled, PARTIAL → partial, anything else → back to
   * unsettled (kept, never deleted); the batch becomes confirmed.
   */
  confirmBatch(batchId: string, txHash: string, block: number, results: ItemResult[], nowMs: number): Promise<void>;
  /** Nothing of the batch reached the chain: its receipts go back to unsettled. */
  abandonBatch(batchId: string, note: string): Promise<void>;
  getBatch(batchId: string): Promise<SettlementBatch | undefined>;
  /** Batches prepared or sent and not yet confirmed or abandoned (to reconcile at start-up). */
  openBatches(): Promise<SettlementBatch[]>;
  /** Takes or renews a named lock; false when another holder has it and it has not expired. */
  tryLock(name: string, holder: string, nowMs: number, ttlMs: number): Promise<boolean>;
  unlock(name: string, holder: string): Promise<void>;
  blockUser(block: UserBlock): Promise<void>;
  getUserBlock(user: string): Promise<UserBlock | undefined>;
  unblockUser(user: string): Promise<void>;
  earningsByDay(): Promise<EarningsDay[]>;
}
