import type Database from 'better-sqlite3';
import { seqKey } from '../jobs/sqlite/database.js';
import {
  batchFromRow,
  earningsByDayFrom,
  earningsByUserFrom,
  itemsToJson,
  receiptFromRow,
  resultsToJson,
  type BatchRow,
  type EarningsRow,
  type ReceiptRow,
} from './stored-rows.js';
import type { LeafValues } from './leaf.js';
import type { BatchItem, BillingStore, ItemResult, RecordedItem } from './store.js';

/**
 * Billing in the daemon's SQLite file. Amounts are kept as decimal text and summed as bigint in JS:
 * wei totals overflow SQLite's 64-bit integers. Earnings are the exception (see `earningsRows`).
 */

const sum = (values: Iterable<string>): bigint => {
  let total = 0n;
  for (const v of values) total += BigInt(v);
  return total;
};

const SUCCESS = 0;
const PARTIAL = 1;

/** The groups earnings are added up by: a receipt's UTC day of creation, or its user. */
const EARNINGS_KEYS = { day: "strftime('%Y-%m-%d', created, 'unixepoch')", user: 'user' } as const;
type EarningsKey = keyof typeof EARNINGS_KEYS;

/**
 * A fee is summed in two parts, its last LOW_DIGITS decimal digits and the digits above them, each CAST to
 * an integer. A fee of more than MAX_SPLIT_DIGITS digits would leave a high part CAST cannot hold (it
 * clamps to 2^63 - 1 without a word), so such a fee, or text that is not plain digits, is not split at all.
 */
const LOW_DIGITS = 9;
const MAX_SPLIT_DIGITS = LOW_DIGITS + 18;
const LOW_SCALE = 10n ** BigInt(LOW_DIGITS);

interface GroupedEarningsRow {
  key: string;
  state: string;
  fee_high: bigint;
  fee_low: bigint;
  /** Fees in the group the split cannot carry exactly. */
  unsplittable: bigint;
  receipts: bigint;
  images: bigint;
}

/** What SQLite's SUM raises when a 64-bit total overflows (better-sqlite3 gives it as the error's message). */
const isIntegerOverflow = (e: unknown): boolean => e instanceof Error && e.message === 'integer overflow';

export function sqliteBillingStore(db: Database.Database): BillingStore {
  const stmt = {
    receipt: db.prepare<[string], ReceiptRow>('SELECT * FROM receipts WHERE job_id = ?'),
    owedFees: db.prepare<[string], { fee_wei: string }>(
      "SELECT fee_wei FROM receipts WHERE user = ? AND state IN ('unsettled', 'in_flight')",
    ),
    reserved: db.prepare<[string], { n: number; price: string }>(
      `SELECT json_extract(params, '$.n') AS n, price_per_image_wei AS price FROM jobs
       WHERE owner = ? AND status IN ('pending', 'processing')`,
    ),
    unsettledByUser: db.prepare<[], { user: string; fee_wei: string }>("SELECT user, fee_wei FROM receipts WHERE state = 'unsettled'"),
    // v1 receipts (seq NULL) first: they are voided on sight and must not hold back numbered ones.
    unsettledOf: db.prepare<[string, number], ReceiptRow>(
      "SELECT * FROM receipts WHERE user = ? AND state = 'unsettled' ORDER BY seq NULLS FIRST, job_id LIMIT ?",
    ),
    inSeqRange: db.prepare<[string, string, string], ReceiptRow>(
      "SELECT * FROM receipts WHERE user = ? AND seq > ? AND seq <= ? AND state <> 'invalid' ORDER BY seq",
    ),
    pageOf: db.prepare<[string, string, number, number], ReceiptRow>(
      'SELECT * FROM receipts WHERE user = ? AND seq IS NOT NULL AND seq > ? AND created >= ? ORDER BY seq LIMIT ?',
    ),
    unbillable: db.prepare<[string, string, string]>("UPDATE receipts SET state = ?, note = ? WHERE job_id = ? AND state = 'unsettled'"),
    paidOnChain: db.prepare(
      `UPDATE receipts SET state = @state, root = @root, proof = @proof, settled_tx = @tx, settled_block = @block,
         settled_ms = @now, note = @note
       WHERE job_id = @jobId AND state = 'unsettled'`,
    ),
    insertBatch: db.prepare<[string, string, number]>("INSERT INTO settlement_batches (id, state, items, created_ms) VALUES (?, 'prepared', ?, ?)"),
    claimReceipt: db.prepare<[string, string, string, string]>(
      "UPDATE receipts SET state = 'in_flight', batch_id = ?, root = ?, proof = ? WHERE job_id = ? AND state = 'unsettled'",
    ),
    batch: db.prepare<[string], BatchRow>('SELECT * FROM settlement_batches WHERE id = ?'),
    insertItem: db.prepare<[string, string, string]>('INSERT OR IGNORE INTO settlement_items (user, nonce, batch_id) VALUES (?, ?, ?)'),
    batchesWithItemsAbove: db.prepare<[string, string], BatchRow>(
      `SELECT * FROM settlement_batches WHERE id IN (SELECT batch_id FROM settlement_items WHERE user = ? AND nonce > ?)
       ORDER BY created_ms, id`,
    ),
    leafOf: db.prepare<[string], { leaf: string }>('SELECT leaf FROM receipts WHERE job_id = ?'),
    recordTx: db.prepare<[string, number, number, string]>(
      `UPDATE settlement_batches SET tx_hashes = json_insert(tx_hashes, '$[#]', ?), wallet_nonce = ?, sent_ms = ?, state = 'sent'
       WHERE id = ? AND state IN ('prepared', 'sent')`,
    ),
    confirm: db.prepare<[number, string, string]>(
      "UPDATE settlement_batches SET state = 'confirmed', block = ?, results = ? WHERE id = ? AND state IN ('prepared', 'sent')",
    ),
    settleReceipts: db.prepare<[string, string, number, number, string, string]>(
      `UPDATE receipts SET state = ?, settled_tx = ?, settled_block = ?, settled_ms = ?
       WHERE batch_id = ? AND user = ? AND state = 'in_flight'`,
    ),
    releaseReceipts: db.prepare<[string, string]>(
      `UPDATE receipts SET state = 'unsettled', batch_id = NULL, root = NULL, proof = NULL
       WHERE batch_id = ? AND user = ? AND state = 'in_flight'`,
    ),
    releaseBatchReceipts: db.prepare<[string]>(
      "UPDATE receipts SET state = 'unsettled', batch_id = NULL, root = NULL, proof = NULL WHERE batch_id = ? AND state = 'in_flight'",
    ),
    abandon: db.prepare<[string, string]>(
      "UPDATE settlement_batches SET state = 'abandoned', note = ? WHERE id = ? AND state IN ('prepared', 'sent')",
    ),
    openBatches: db.prepare<[], BatchRow>("SELECT * FROM settlement_batches WHERE state IN ('prepared', 'sent') ORDER BY created_ms"),
    lock: db.prepare<[string, string, number, number, string]>(
      `INSERT INTO locks (name, holder, expires_ms) VALUES (?, ?, ?)
       ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
       WHERE locks.expires_ms <= ? OR locks.holder = ?`,
    ),
    unlock: db.prepare<[string, string]>('DELETE FROM locks WHERE name = ? AND holder = ?'),
    block: db.prepare(
      `INSERT INTO settlement_blocks (user, shortfall_wei, balance_wei, since_ms) VALUES (@user, @shortfall, @balance, @since)
       ON CONFLICT (user) DO UPDATE SET shortfall_wei = excluded.shortfall_wei, balance_wei = excluded.balance_wei,
         since_ms = excluded.since_ms`,
    ),
    getBlock: db.prepare<[string], { user: string; shortfall_wei: string; balance_wei: string; since_ms: number }>(
      'SELECT * FROM settlement_blocks WHERE user = ?',
    ),
    unblock: db.prepare<[string]>('DELETE FROM settlement_blocks WHERE user = ?'),
    earnings: {
      day: groupedEarnings(db, EARNINGS_KEYS.day),
      user: groupedEarnings(db, EARNINGS_KEYS.user),
    },
    earningsOfEachReceipt: {
      day: earningsOfEachReceipt(db, EARNINGS_KEYS.day),
      user: earningsOfEachReceipt(db, EARNINGS_KEYS.user),
    },
    recentBatches: db.prepare<[number], BatchRow>('SELECT * FROM settlement_batches ORDER BY created_ms DESC, id DESC LIMIT ?'),
  };

  /**
   * Earnings rows grouped by `key` and state, added up by SQLite (the dashboard asks every few seconds, and
   * millions of receipts read one by one into JS would hold up the daemon). Where a group's fees cannot be
   * summed exactly in 64-bit parts, the receipts are read one by one and summed as bigint instead.
   */
  function earningsRows(key: EarningsKey): EarningsRow[] {
    let grouped: GroupedEarningsRow[];
    try {
      grouped = stmt.earnings[key].all();
    } catch (e) {
      if (!isIntegerOverflow(e)) throw e;
      return eachReceiptRows(key);
    }
    if (grouped.some((g) => g.unsplittable > 0n)) return eachReceiptRows(key);
    return grouped.map((g) => ({
      key: g.key,
      state: g.state,
      feeWei: g.fee_high * LOW_SCALE + g.fee_low,
      receipts: Number(g.receipts),
      images: Number(g.images),
    }));
  }

  const eachReceiptRows = (key: EarningsKey): EarningsRow[] =>
    stmt.earningsOfEachReceipt[key].all().map((r) => ({ key: r.key, state: r.state, feeWei: BigInt(r.fee_wei), receipts: 1, images: r.images }));

  const prepareBatch = db.transaction((batch: { id: string; items: BatchItem[]; createdMs: number }) => {
    const stored = itemsToJson(batch.items);
    stmt.insertBatch.run(batch.id, stored, batch.createdMs);
    for (const item of batch.items) {
      stmt.insertItem.run(item.user.toLowerCase(), seqKey(item.nonce), batch.id);
      for (const r of item.receipts) stmt.claimReceipt.run(batch.id, item.requestsHash, JSON.stringify(r.proof), r.jobId);
    }
  });

  const markUnbillable = db.transaction((receipts: ReadonlyArray<{ jobId: string; state: 'invalid' | 'void'; note: string }>) => {
    for (const r of receipts) stmt.unbillable.run(r.state, r.note, r.jobId);
  });

  const markPaidOnChain = db.transaction(
    (
      receipts: ReadonlyArray<{ jobId: string; root: string; proof: string[] }>,
      outcome: 'settled' | 'partial',
      at: { txHash: string; block: number; nowMs: number; note: string },
    ) => {
      for (const r of receipts) {
        stmt.paidOnChain.run({
          state: outcome,
          root: r.root,
          proof: JSON.stringify(r.proof),
          tx: at.txHash,
          block: at.block,
          now: at.nowMs,
          note: at.note,
          jobId: r.jobId,
        });
      }
    },
  );

  const confirmBatch = db.transaction((batchId: string, txHash: string, block: number, results: ItemResult[], nowMs: number) => {
    const stored = resultsToJson(results);
    if (stmt.confirm.run(block, stored, batchId).changes === 0) return;
    for (const r of results) {
      if (r.status === SUCCESS || r.status === PARTIAL) {
        stmt.settleReceipts.run(r.status === SUCCESS ? 'settled' : 'partial', txHash, block, nowMs, batchId, r.user);
      } else {
        stmt.releaseReceipts.run(batchId, r.user);
      }
    }
    // Items the chain did not report on (none expected) are not lost either.
    stmt.releaseBatchReceipts.run(batchId);
  });

  const abandonBatch = db.transaction((batchId: string, note: string) => {
    if (stmt.abandon.run(note, batchId).changes > 0) stmt.releaseBatchReceipts.run(batchId);
  });

  return {
    async getReceipt(jobId) {
      const row = stmt.receipt.get(jobId);
      return row ? receiptFromRow(row) : undefined;
    },
    async unsettledWei(user) {
      return sum(stmt.owedFees.all(user).map((r) => r.fee_wei));
    },
    async reservedWei(user) {
      let total = 0n;
      for (const row of stmt.reserved.all(user)) total += BigInt(row.n) * BigInt(row.price);
      return total;
    },
    async usersWithUnsettled() {
      const totals = new Map<string, { feeWei: bigint; receipts: number }>();
      for (const row of stmt.unsettledByUser.all()) {
        const t = totals.get(row.user) ?? { feeWei: 0n, receipts: 0 };
        t.feeWei += BigInt(row.fee_wei);
        t.receipts += 1;
        totals.set(row.user, t);
      }
      return [...totals].map(([user, t]) => ({ user, ...t }));
    },
    async unsettledReceipts(user, limit) {
      return stmt.unsettledOf.all(user, limit).map(receiptFromRow);
    },
    async receiptsOf(user, page) {
      return stmt.pageOf.all(user, seqKey(page.afterSeq), page.sinceCreated, page.limit).map(receiptFromRow);
    },
    async receiptsInSeqRange(user, afterSeq, upToSeq) {
      return stmt.inSeqRange.all(user, seqKey(afterSeq), seqKey(upToSeq)).map(receiptFromRow);
    },
    async prepareBatch(batch) {
      prepareBatch(batch);
    },
    async markUnbillable(receipts) {
      markUnbillable(receipts);
    },
    async markPaidOnChain(receipts, outcome, at) {
      markPaidOnChain(receipts, outcome, at);
    },
    async recordBatchTx(batchId, txHash, walletNonce, sentMs) {
      stmt.recordTx.run(txHash, walletNonce, sentMs, batchId);
    },
    async confirmBatch(batchId, txHash, block, results, nowMs) {
      confirmBatch(batchId, txHash, block, results, nowMs);
    },
    async abandonBatch(batchId, note) {
      abandonBatch(batchId, note);
    },
    async signedItemsAbove(user, aboveNonce) {
      const found: RecordedItem[] = [];
      for (const row of stmt.batchesWithItemsAbove.all(user.toLowerCase(), seqKey(aboveNonce))) {
        const batch = batchFromRow(row);
        for (const item of batch.items) {
          if (item.user.toLowerCase() !== user.toLowerCase() || item.nonce <= aboveNonce) continue;
          const leaves = item.receipts.map((r) => {
            const leaf = stmt.leafOf.get(r.jobId)?.leaf;
            return leaf === undefined ? undefined : (JSON.parse(leaf) as LeafValues);
          });
          found.push({ batchId: batch.id, batchState: batch.state, item, leaves });
        }
      }
      return found.sort((a, b) => (a.item.nonce < b.item.nonce ? -1 : a.item.nonce > b.item.nonce ? 1 : 0));
    },
    async getBatch(batchId) {
      const row = stmt.batch.get(batchId);
      return row ? batchFromRow(row) : undefined;
    },
    async openBatches() {
      return stmt.openBatches.all().map(batchFromRow);
    },
    async tryLock(name, holder, nowMs, ttlMs) {
      return stmt.lock.run(name, holder, nowMs + ttlMs, nowMs, holder).changes > 0;
    },
    async unlock(name, holder) {
      stmt.unlock.run(name, holder);
    },
    async blockUser(block) {
      stmt.block.run({ user: block.user, shortfall: block.shortfallWei.toString(), balance: block.balanceWei.toString(), since: block.sinceMs });
    },
    async getUserBlock(user) {
      const row = stmt.getBlock.get(user);
      return row
        ? { user: row.user, shortfallWei: BigInt(row.shortfall_wei), balanceWei: BigInt(row.balance_wei), sinceMs: row.since_ms }
        : undefined;
    },
    async unblockUser(user) {
      stmt.unblock.run(user);
    },
    async earningsByDay() {
      return earningsByDayFrom(earningsRows('day'));
    },
    async earningsByUser(limit) {
      return earningsByUserFrom(earningsRows('user'), limit);
    },
    async recentBatches(limit) {
      return stmt.recentBatches.all(limit).map(batchFromRow);
    },
  };
}

/** Receipts' fees, counts and images per group and state; integers as bigint (a part's sum passes 2^53). */
function groupedEarnings(db: Database.Database, key: string): Database.Statement<[], GroupedEarningsRow> {
  return db
    .prepare<[], GroupedEarningsRow>(
      `SELECT ${key} AS key, state,
         SUM(CAST(substr(fee_wei, 1, max(length(fee_wei) - ${LOW_DIGITS}, 0)) AS INTEGER)) AS fee_high,
         SUM(CAST(substr(fee_wei, -${LOW_DIGITS}) AS INTEGER)) AS fee_low,
         SUM(length(fee_wei) > ${MAX_SPLIT_DIGITS} OR fee_wei GLOB '*[^0-9]*') AS unsplittable,
         COUNT(*) AS receipts, SUM(images) AS images
       FROM receipts GROUP BY 1, 2`,
    )
    .safeIntegers(true);
}

/** Each receipt's group, state, fee and images: for the bigint sum when the grouped one cannot be exact. */
function earningsOfEachReceipt(db: Database.Database, key: string): Database.Statement<[], { key: string; state: string; fee_wei: string; images: number }> {
  return db.prepare(`SELECT ${key} AS key, state, fee_wei, images FROM receipts`);
}
