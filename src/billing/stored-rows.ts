import type { ReceiptJson } from '../tee/receipt.js';
import type { LeafValues } from './leaf.js';
import type { BatchItem, EarningsDay, EarningsTotals, ItemResult, ReceiptRecord, ReceiptState, SettlementBatch, UserEarnings } from './store.js';

/**
 * Receipts and settlement batches as both stores keep them: JSON as text, amounts as decimal strings (wei
 * does not fit a JS number, and JSON has no bigint). Integer columns arrive as numbers from SQLite and as
 * decimal text from PostgreSQL's BIGINT; the receipt's user column is `user` in SQLite, `owner` in
 * PostgreSQL (USER is reserved there), and the PostgreSQL store renames it before mapping.
 */

type IntColumn = number | string;

export interface ReceiptRow {
  job_id: string;
  user: string;
  provider: string;
  fee_wei: string;
  images: number;
  created: IntColumn;
  seq: string | null;
  leaf: string;
  receipt: string;
  signature: string | null;
  state: string;
  note: string | null;
  batch_id: string | null;
  root: string | null;
  proof: string | null;
  settled_tx: string | null;
  settled_block: IntColumn | null;
  settled_ms: IntColumn | null;
}

export interface BatchRow {
  id: string;
  state: string;
  items: string;
  created_ms: IntColumn;
  tx_hashes: string;
  wallet_nonce: IntColumn | null;
  sent_ms: IntColumn | null;
  block: IntColumn | null;
  results: string | null;
  note: string | null;
}

const intOrUndefined = (value: IntColumn | null): number | undefined => (value === null ? undefined : Number(value));

export function receiptFromRow(row: ReceiptRow): ReceiptRecord {
  return {
    jobId: row.job_id,
    user: row.user,
    provider: row.provider,
    feeWei: BigInt(row.fee_wei),
    images: row.images,
    created: Number(row.created),
    leaf: JSON.parse(row.leaf) as LeafValues,
    receipt: JSON.parse(row.receipt) as ReceiptJson,
    seq: row.seq === null ? undefined : BigInt(row.seq),
    signature: row.signature === null ? undefined : (JSON.parse(row.signature) as ReceiptRecord['signature']),
    state: row.state as ReceiptState,
    note: row.note ?? undefined,
    batchId: row.batch_id ?? undefined,
    root: row.root ?? undefined,
    proof: row.proof === null ? undefined : (JSON.parse(row.proof) as string[]),
    settledTx: row.settled_tx ?? undefined,
    settledBlock: intOrUndefined(row.settled_block),
    settledMs: intOrUndefined(row.settled_ms),
  };
}

export function batchFromRow(row: BatchRow): SettlementBatch {
  return {
    id: row.id,
    state: row.state as SettlementBatch['state'],
    items: itemsFromJson(row.items),
    createdMs: Number(row.created_ms),
    txHashes: JSON.parse(row.tx_hashes) as string[],
    walletNonce: intOrUndefined(row.wallet_nonce),
    sentMs: intOrUndefined(row.sent_ms),
    block: intOrUndefined(row.block),
    results: row.results === null ? undefined : resultsFromJson(row.results),
    note: row.note ?? undefined,
  };
}

interface StoredItem extends Omit<BatchItem, 'nonce' | 'totalFeeWei'> {
  nonce: string;
  totalFeeWei: string;
}

interface StoredResult extends Omit<ItemResult, 'unsettledWei'> {
  unsettledWei: string;
}

export function itemsToJson(items: readonly BatchItem[]): string {
  return JSON.stringify(items.map((i): StoredItem => ({ ...i, nonce: i.nonce.toString(), totalFeeWei: i.totalFeeWei.toString() })));
}

function itemsFromJson(text: string): BatchItem[] {
  return (JSON.parse(text) as StoredItem[]).map((i) => ({ ...i, nonce: BigInt(i.nonce), totalFeeWei: BigInt(i.totalFeeWei) }));
}

export function resultsToJson(results: readonly ItemResult[]): string {
  return JSON.stringify(results.map((r): StoredResult => ({ ...r, unsettledWei: r.unsettledWei.toString() })));
}

function resultsFromJson(text: string): ItemResult[] {
  return (JSON.parse(text) as StoredResult[]).map((r) => ({ ...r, unsettledWei: BigInt(r.unsettledWei) }));
}

/** Receipts of one group (a UTC day, a user) in one state, summed by the store's SQL (or one receipt, where SQLite cannot sum exactly). */
export interface EarningsRow {
  /** The group: a day or a user. */
  key: string;
  state: string;
  feeWei: bigint;
  receipts: number;
  images: number;
}

/** Folds grouped receipt rows into one line per group, by the state of their receipts. */
function earningsByKey(rows: Iterable<EarningsRow>): Map<string, EarningsTotals> {
  const groups = new Map<string, EarningsTotals>();
  for (const row of rows) {
    const g = groups.get(row.key) ?? {
      receipts: 0,
      images: 0,
      settledWei: 0n,
      partialWei: 0n,
      unsettledWei: 0n,
      offchainWei: 0n,
      unbillableWei: 0n,
    };
    g.receipts += row.receipts;
    g.images += row.images;
    if (row.state === 'settled') g.settledWei += row.feeWei;
    else if (row.state === 'partial') g.partialWei += row.feeWei;
    else if (row.state === 'offchain') g.offchainWei += row.feeWei;
    else if (row.state === 'invalid' || row.state === 'void') g.unbillableWei += row.feeWei;
    else g.unsettledWei += row.feeWei;
    groups.set(row.key, g);
  }
  return groups;
}

/** One line per UTC day (rows keyed by day), oldest first. */
export function earningsByDayFrom(rows: Iterable<EarningsRow>): EarningsDay[] {
  return [...earningsByKey(rows)].map(([day, totals]) => ({ day, ...totals })).sort((a, b) => a.day.localeCompare(b.day));
}

/** One line per user (rows keyed by user), the `limit` largest total fees first, ties by user. */
export function earningsByUserFrom(rows: Iterable<EarningsRow>, limit: number): UserEarnings[] {
  const fee = (e: EarningsTotals) => e.settledWei + e.partialWei + e.unsettledWei + e.offchainWei + e.unbillableWei;
  const byFeeDescending = (a: UserEarnings, b: UserEarnings) => {
    const diff = fee(b) - fee(a);
    return diff > 0n ? 1 : diff < 0n ? -1 : a.user.localeCompare(b.user);
  };
  return [...earningsByKey(rows)].map(([user, totals]) => ({ user, ...totals })).sort(byFeeDescending).slice(0, limit);
}
