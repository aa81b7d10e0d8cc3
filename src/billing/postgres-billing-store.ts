import type { Pool, PoolClient } from 'pg';
import { ADVISORY_LOCK, inTransaction } from '../jobs/postgres/pool.js';
import type { LeafValues } from './leaf.js';
import type { BillingStore, ReceiptRecord, RecordedItem } from './store.js';
import { batchFromRow, earningsByDayFrom, earningsByUserFrom, itemsToJson, receiptFromRow, resultsToJson, type BatchRow, type ReceiptRow } from './stored-rows.js';

/**
 * Billing in PostgreSQL (schema: jobs/postgres/migrations.ts), on the pool the job store uses. Amounts are
 * NUMERIC(78,0) and summed in SQL exactly; they cross into JS as decimal text and become bigint.
 *
 * A named lock (the settlement lock) is a session advisory lock held on a connection of its own: exactly
 * one holder across every replica and command, and PostgreSQL releases it the moment the holder's
 * connection dies — no expiry, no clocks to agree. Renewing it checks that connection is still alive.
 */

/** A receipts row as PostgreSQL returns it: the user's column is `owner`. */
type OwnerReceiptRow = Omit<ReceiptRow, 'user'> & { owner: string };

const receiptFromOwnerRow = ({ owner, ...row }: OwnerReceiptRow): ReceiptRecord => receiptFromRow({ ...row, user: owner });

const SUCCESS = 0;
const PARTIAL = 1;

/** Receipts of a batch that are still in flight go back to unsettled (kept, never deleted). */
const RELEASE = "state = 'unsettled', batch_id = NULL, root = NULL, proof = NULL";

export function postgresBillingStore(pool: Pool): BillingStore {
  /** The locks this process holds, each on the connection (session) that took it. */
  const held = new Map<string, { holder: string; client: PoolClient; lost: boolean }>();
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

    async receiptsOf(user, page) {
      const found = await rows<OwnerReceiptRow>(
        'SELECT * FROM receipts WHERE owner = $1 AND seq IS NOT NULL AND seq > $2 AND created >= $3 ORDER BY seq LIMIT $4',
        [user, page.afterSeq.toString(), page.sinceCreated, page.limit],
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
          await c.query('INSERT INTO settlement_items (owner, nonce, batch_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING', [
            item.user.toLowerCase(),
            item.nonce.toString(),
            batch.id,
          ]);
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

    async signedItemsAbove(user, aboveNonce) {
      const owner = user.toLowerCase();
      const batches = await rows<BatchRow>(
        `SELECT * FROM settlement_batches WHERE id IN (SELECT batch_id FROM settlement_items WHERE owner = $1 AND nonce > $2)
         ORDER BY created_ms, id`,
        [owner, aboveNonce.toString()],
      );
      const found: Array<Omit<RecordedItem, 'leaves'>> = [];
      for (const batch of batches.map(batchFromRow)) {
        for (const item of batch.items) {
          if (item.user.toLowerCase() === owner && item.nonce > aboveNonce) found.push({ batchId: batch.id, batchState: batch.state, item });
        }
      }
      const jobIds = [...new Set(found.flatMap((f) => f.item.receipts.map((r) => r.jobId)))];
      const leaves = new Map(
        (await rows<{ job_id: string; leaf: string }>('SELECT job_id, leaf FROM receipts WHERE job_id = ANY($1)', [jobIds])).map((r) => [
          r.job_id,
          JSON.parse(r.leaf) as LeafValues,
        ]),
      );
      return found
        .map((f) => ({ ...f, leaves: f.item.receipts.map((r) => leaves.get(r.jobId)) }))
        .sort((a, b) => (a.item.nonce < b.item.nonce ? -1 : a.item.nonce > b.item.nonce ? 1 : 0));
    },

    async getBatch(batchId) {
      const [row] = await rows<BatchRow>('SELECT * FROM settlement_batches WHERE id = $1', [batchId]);
      return row ? batchFromRow(row) : undefined;
    },

    async openBatches() {
      return (await rows<BatchRow>("SELECT * FROM settlement_batches WHERE state IN ('prepared', 'sent') ORDER BY created_ms, id")).map(batchFromRow);
    },

    // The session holds the lock: the clock and the TTL play no part.
    async tryLock(name, holder) {
      const mine = held.get(name);
      if (mine) {
        if (mine.holder !== holder) return false;
        if (!mine.lost) {
          try {
            await mine.client.query('SELECT 1');
            return true;
          } catch {
            mine.lost = true;
          }
        }
        // The connection died and the lock with it: another process may hold it now.
        held.delete(name);
        mine.client.release(true);
        return false;
      }
      const client = await pool.connect();
      let taken = false;
      try {
        taken = (await client.query<{ taken: boolean }>('SELECT pg_try_advisory_lock($1, hashtext($2)) AS taken', [ADVISORY_LOCK.settlement, name]))
          .rows[0]!.taken;
      } catch (err) {
        client.release(true);
        throw err;
      }
      if (!taken) {
        client.release();
        return false;
      }
      const lock = { holder, client, lost: false };
      // A checked-out client's error would otherwise be an uncaught 'error' event; the next renewal reports it.
      client.on('error', () => (lock.lost = true));
      held.set(name, lock);
      return true;
    },

    async unlock(name, holder) {
      const mine = held.get(name);
      if (mine?.holder !== holder) return;
      held.delete(name);
      try {
        await mine.client.query('SELECT pg_advisory_unlock($1, hashtext($2))', [ADVISORY_LOCK.settlement, name]);
        mine.client.release();
      } catch {
        mine.client.release(true); // the session is gone, and the lock with it
      }
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
      return earningsByDayFrom(
        found.map((r) => ({ key: r.day, state: r.state, feeWei: BigInt(r.fee), receipts: Number(r.receipts), images: Number(r.images) })),
      );
    },

    async earningsByUser(limit) {
      const found = await rows<{ owner: string; state: string; fee: string; receipts: string; images: string }>(
        'SELECT owner, state, SUM(fee_wei)::text AS fee, COUNT(*) AS receipts, SUM(images) AS images FROM receipts GROUP BY 1, 2',
      );
      return earningsByUserFrom(
        found.map((r) => ({ key: r.owner, state: r.state, feeWei: BigInt(r.fee), receipts: Number(r.receipts), images: Number(r.images) })),
        limit,
      );
    },

    async recentBatches(limit) {
      return (await rows<BatchRow>('SELECT * FROM settlement_batches ORDER BY created_ms DESC, id DESC LIMIT $1', [limit])).map(batchFromRow);
    },
  };
}
