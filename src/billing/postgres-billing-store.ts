import type { Pool } from 'pg';
import { inTransaction } from '../jobs/postgres/pool.js';
import type { BillingStore, EarningsDay, ReceiptRecord } from './store.js';
import { batchFromRow, itemsToJson, receiptFromRow, resultsToJson, type BatchRow, type ReceiptRow } from './stored-rows.js';

/**
 * Billing in PostgreSQL (schema: jobs/postgres/migrations.ts), on the pool the job store uses. Amounts are
 * NUMERIC(78,0) and summed in SQL exactly; they cross into JS as decimal text and become bigint.
 *
 * The settlement lock is the `locks` row with an expiry, as in SQLite: it holds across replicas as long as
 * their clocks agree to well within `billing.settlementLockTtlMs`. The settler across replicas (issue 14,
 * later milestone) is to hold a session advisory lock (ADVISORY_LOCK.settlement) instead, which PostgreSQL
 * releases the moment the holder's connection dies, with no clock involved.
 */

/** A receipts row as PostgreSQL returns it: the user's column is `owner`. */
type OwnerReceiptRow = Omit<ReceiptRow, 'user'> & { owner: string };

const receiptFromOwnerRow = ({ owner, ...row }: OwnerReceiptRow): ReceiptRecord => receiptFromRow({ ...row, user: owner });

const SUCCESS = 0;
const PARTIAL = 1;

/** Receipts of a batch that are still in flight go back to unsettled (kept, never deleted). */
const RELEASE = "state = 'unsettled', batch_id = NULL, root = NULL, proof = NULL";

export function postgresBillingStore(pool: Pool): BillingStore {
  const rows = async <R extends object>(sql: string, params: unknown[] = []): Promise<R[]> => (await pool.query<R>(sql, params)).rows;

  return {
    async getReceipt(jobId) {
      const [row] = await rows<OwnerReceiptRow>('SELECT * FROM receipts WHERE job_id = $1', [jobId]);
      return row ? receiptFromOwnerRow(row) : undefined;
    },

    async unsettledWei(user) {
      const [row] = await rows<{ total: string }>(
        "SELECT COALESCE(SUM(fee_wei), 0)::text AS total FROM receipts WHERE owner = $1 AND state IN ('unsettled', 'in_flight')",
        [user],
      );
      return BigInt(row!.total);
    },

    async reservedWei(user) {
      const [row] = await rows<{ total: string }>(
        `SELECT COALESCE(SUM(images_requested * price_per_image_wei), 0)::text AS total FROM jobs
         WHERE owner = $1 AND status IN ('pending', 'processing')`,
        [user],
      );
      return BigInt(row!.total);
    },

    async usersWithUnsettled() {
      const found = await rows<{ owner: string; total: string; n: string }>(
        "SELECT owner, SUM(fee_wei)::text AS total, COUNT(*) AS n FROM receipts WHERE state = 'unsettled' GROUP BY owner ORDER BY owner",
      );
      return found.map((r) => ({ user: r.owner, feeWei: BigInt(r.total), receipts: Number(r.n) }));
    },

    async unsettledReceipts(user, limit) {
      // v1 receipts (seq NULL) first: they are voided on sight and must not hold back numbered ones.
      const found = await rows<OwnerReceiptRow>(
        "SELECT * FROM receipts WHERE owner = $1 AND state = 'unsettled' ORDER BY seq NULLS FIRST, job_id LIMIT $2",
        [user, limit],
      );
      return found.map(receiptFromOwnerRow);
    },

    async receiptsInSeqRange(user, afterSeq, upToSeq) {
      const found = await rows<OwnerReceiptRow>(
        "SELECT * FROM receipts WHERE owner = $1 AND seq > $2 AND seq <= $3 AND state <> 'invalid' ORDER BY seq",
        [user, afterSeq.toString(), upToSeq.toString()],
      );
      return found.map(receiptFromOwnerRow);
    },

    async prepareBatch(batch) {
      const stored = itemsToJson(batch.items);
      await inTransaction(pool, async (c) => {
        await c.query("INSERT INTO settlement_batches (id, state, items, created_ms) VALUES ($1, 'prepared', $2, $3)", [
          batch.id,
          stored,
          batch.createdMs,
        ]);
        for (const item of batch.items) {
          for (const r of item.receipts) {
            await c.query(
              "UPDATE receipts SET state = 'in_flight', batch_id = $1, root = $2, proof = $3 WHERE job_id = $4 AND state = 'unsettled'",
              [batch.id, item.requestsHash, JSON.stringify(r.proof), r.jobId],
            );
          }
        }
      });
    },

    async markUnbillable(receipts) {
      await inTransaction(pool, async (c) => {
        for (const r of receipts) {
          await c.query("UPDATE receipts SET state = $1, note = $2 WHERE job_id = $3 AND state = 'unsettled'", [r.state, r.note, r.jobId]);
        }
      });
    },

    async markPaidOnChain(receipts, outcome, at) {
      await inTransaction(pool, async (c) => {
        for (const r of receipts) {
          await c.query(
            `UPDATE receipts SET state = $1, root = $2, proof = $3, settled_tx = $4, settled_block = $5, settled_ms = $6, note = $7
             WHERE job_id = $8 AND state = 'unsettled'`,
            [outcome, r.root, JSON.stringify(r.proof), at.txHash, at.block, at.nowMs, at.note, r.jobId],
          );
        }
      });
    },

    async recordBatchTx(batchId, txHash, walletNonce, sentMs) {
      await pool.query(
        `UPDATE settlement_batches SET tx_hashes = (tx_hashes::jsonb || to_jsonb($1::text))::text, wallet_nonce = $2, sent_ms = $3,
           state = 'sent'
         WHERE id = $4 AND state IN ('prepared', 'sent')`,
        [txHash, walletNonce, sentMs, batchId],
      );
    },

    async confirmBatch(batchId, txHash, block, results, nowMs) {
      const stored = resultsToJson(results);
      await inTransaction(pool, async (c) => {
        const confirmed = await c.query(
          "UPDATE settlement_batches SET state = 'confirmed', block = $1, results = $2 WHERE id = $3 AND state IN ('prepared', 'sent')",
          [block, stored, batchId],
        );
        if ((confirmed.rowCount ?? 0) === 0) return;
        for (const r of results) {
          if (r.status === SUCCESS || r.status === PARTIAL) {
            await c.query(
              `UPDATE receipts SET state = $1, settled_tx = $2, settled_block = $3, settled_ms = $4
               WHERE batch_id = $5 AND owner = $6 AND state = 'in_flight'`,
              [r.status === SUCCESS ? 'settled' : 'partial', txHash, block, nowMs, batchId, r.user],
            );
          } else {
            await c.query(`UPDATE receipts SET ${RELEASE} WHERE batch_id = $1 AND owner = $2 AND state = 'in_flight'`, [batchId, r.user]);
          }
        }
        // Items the chain did not report on (none expected) are not lost either.
        await c.query(`UPDATE receipts SET ${RELEASE} WHERE batch_id = $1 AND state = 'in_flight'`, [batchId]);
      });
    },

    async abandonBatch(batchId, note) {
      await inTransaction(pool, async (c) => {
        const abandoned = await c.query(
          "UPDATE settlement_batches SET state = 'abandoned', note = $1 WHERE id = $2 AND state IN ('prepared', 'sent')",
          [note, batchId],
        );
        if ((abandoned.rowCount ?? 0) > 0) await c.query(`UPDATE receipts SET ${RELEASE} WHERE batch_id = $1 AND state = 'in_flight'`, [batchId]);
      });
    },

    async getBatch(batchId) {
      const [row] = await rows<BatchRow>('SELECT * FROM settlement_batches WHERE id = $1', [batchId]);
      return row ? batchFromRow(row) : undefined;
    },

    async openBatches() {
      return (await rows<BatchRow>("SELECT * FROM settlement_batches WHERE state IN ('prepared', 'sent') ORDER BY created_ms, id")).map(batchFromRow);
    },

    async tryLock(name, holder, nowMs, ttlMs) {
      // Two takers of a free lock: the second waits on the first's row, then sees it held.
      const { rowCount } = await pool.query(
        `INSERT INTO locks (name, holder, expires_ms) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
         WHERE locks.expires_ms <= $4 OR locks.holder = $2`,
        [name, holder, nowMs + ttlMs, nowMs],
      );
      return (rowCount ?? 0) > 0;
    },

    async unlock(name, holder) {
      await pool.query('DELETE FROM locks WHERE name = $1 AND holder = $2', [name, holder]);
    },

    async blockUser(block) {
      await pool.query(
        `INSERT INTO settlement_blocks (owner, shortfall_wei, balance_wei, since_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (owner) DO UPDATE SET shortfall_wei = excluded.shortfall_wei, balance_wei = excluded.balance_wei,
           since_ms = excluded.since_ms`,
        [block.user, block.shortfallWei.toString(), block.balanceWei.toString(), block.sinceMs],
      );
    },

    async getUserBlock(user) {
      const [row] = await rows<{ owner: string; shortfall_wei: string; balance_wei: string; since_ms: string }>(
        'SELECT owner, shortfall_wei::text, balance_wei::text, since_ms FROM settlement_blocks WHERE owner = $1',
        [user],
      );
      return row
        ? { user: row.owner, shortfallWei: BigInt(row.shortfall_wei), balanceWei: BigInt(row.balance_wei), sinceMs: Number(row.since_ms) }
        : undefined;
    },

    async unblockUser(user) {
      await pool.query('DELETE FROM settlement_blocks WHERE owner = $1', [user]);
    },

    async earningsByDay() {
      const found = await rows<{ day: string; state: string; fee: string; receipts: string; images: string }>(
        `SELECT to_char(to_timestamp(created) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, state,
           SUM(fee_wei)::text AS fee, COUNT(*) AS receipts, SUM(images) AS images
         FROM receipts GROUP BY 1, 2`,
      );
      const days = new Map<string, EarningsDay>();
      for (const row of found) {
        const d = days.get(row.day) ?? {
          day: row.day,
          receipts: 0,
          images: 0,
          settledWei: 0n,
          partialWei: 0n,
          unsettledWei: 0n,
          offchainWei: 0n,
          unbillableWei: 0n,
        };
        const fee = BigInt(row.fee);
        d.receipts += Number(row.receipts);
        d.images += Number(row.images);
        if (row.state === 'settled') d.settledWei += fee;
        else if (row.state === 'partial') d.partialWei += fee;
        else if (row.state === 'offchain') d.offchainWei += fee;
        else if (row.state === 'invalid' || row.state === 'void') d.unbillableWei += fee;
        else d.unsettledWei += fee;
        days.set(row.day, d);
      }
      return [...days.values()].sort((a, b) => a.day.localeCompare(b.day));
    },
  };
}
