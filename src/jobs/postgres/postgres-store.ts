import { isAddress } from 'ethers';
import type { Pool, PoolClient } from 'pg';
import { receiptLeaf } from '../../billing/leaf.js';
import { activityBuckets, checkActivityWindow, jobActivityQuery, listJobsQuery, postgresParams, type ActivityRow } from '../job-queries.js';
import { jobEventFromRow, jobFromRow, type JobEventRow, type JobRow } from '../job-row.js';
import { newToken, type JobError, type JobStatus } from '../model.js';
import {
  InsufficientBalanceError,
  ModelBusyError,
  QueueFullError,
  type AdmissionLimits,
  EXPIRED_LEASE,
  interruptedJobDecision,
  type ClaimedJob,
  type InterruptedJobPolicy,
  type JobEventType,
  type RecoveredJobs,
  type JobStore,
  type NewJob,
  type ReceiptSigning,
  type Reservation,
} from '../store.js';
import { attemptColumns, webhookDeliveryFromRow, type WebhookDeliveryRow } from '../../webhooks/outbox.js';
import { ADVISORY_LOCK, inTransaction, JOB_EVENTS_CHANNEL } from './pool.js';

/**
 * Jobs in PostgreSQL (schema: ./migrations.ts), for replicas that share one database. The same verbs as
 * the SQLite store, each one statement or one transaction; what SQLite gets from having a single writer
 * is a lock here:
 * - claimNext takes the oldest runnable job with `FOR UPDATE SKIP LOCKED`: two replicas polling the same
 *   backend never get the same job and never wait on each other;
 * - complete locks the job's row and then the owner's `receipt_sequences` row (an upsert holds it to the
 *   commit), so two replicas never hand out one sequence number and numbers follow commit order;
 * - create takes the owner's advisory transaction lock before the budget check, so two replicas cannot
 *   both admit jobs against the same wei, nor both insert one Idempotency-Key.
 * Every write by a lease holder matches its lease token.
 */

/** The columns written by every `… → finished` transition: the lease is gone with it. */
export const FINISHED = 'lease_token = NULL, lease_expires_ms = NULL';

/** An event a statement appends, its parts as SQL over the transition's rows (`$n` parameters, columns). */
export interface SqlJobEvent {
  type: JobEventType;
  /** BIGINT milliseconds. */
  atMs: string;
  /** JSON text; `{}` when absent. */
  detail?: string;
  /** Added to the row's attempts (after the transition) to name the attempt the event belongs to. */
  attemptOffset?: number;
}

/** An event detail of `{error}`, from the error's JSON text (json, not jsonb: it keeps the text as written). */
export const errorDetail = (errorJson: string) => `json_build_object('error', ${errorJson}::json)::text`;

/**
 * Appends the events to the history of each row of `source` (a CTE of job rows whose event counter was
 * already bumped by events.length): the events take the numbers up to the new counter, in order.
 */
const insertEvents = (source: string, events: readonly SqlJobEvent[]) => `
  INSERT INTO job_events (job_id, seq, at_ms, type, attempt, replica, detail)
  ${events
    .map(
      (e, i) => `SELECT id, last_event_seq - ${events.length - 1 - i}, (${e.atMs})::bigint, '${e.type}', attempts + ${e.attemptOffset ?? 0},
        ${e.type === 'queued' ? 'submitted_by' : 'ran_by'}, (${e.detail ?? "'{}'"})::text FROM ${source}`,
    )
    .join(' UNION ALL ')}`;

/**
 * The CTEs `changed` (`UPDATE jobs SET <set> <rest>`, which also bumps each row's event counter, returning
 * the rows) and `events` (their history lines): a transition and its events in one statement, so recording
 * history adds no round trip. Follow with more CTEs or the statement's SELECT over `changed`.
 */
export const withEvents = (set: string, rest: string, events: readonly SqlJobEvent[]) => `
  changed AS (UPDATE jobs SET ${set}${set === '' ? '' : ', '}last_event_seq = last_event_seq + ${events.length} ${rest} RETURNING jobs.*),
  events AS (${insertEvents('changed', events)})`;

/**
 * A transition that finishes jobs (`set` and `rest` as in withEvents): drops their input references and
 * records the events in the same statement, and tells every replica (a long-poll waiting on another replica
 * wakes; `cancelled` also stops the attempt wherever it runs). Returns id and submitted_by of each job.
 */
export const finishing = (set: string, rest: string, events: readonly SqlJobEvent[], notify: 'finished' | 'cancelled' = 'finished') => `
  WITH ${withEvents(set, rest, events)},
       refs AS (DELETE FROM blob_refs USING changed WHERE blob_refs.job_id = changed.id AND blob_refs.role = 'input')
  SELECT id, submitted_by, ${notify === 'cancelled' ? `pg_notify('${JOB_EVENTS_CHANNEL}', 'cancelled ' || id), ` : ''}
    pg_notify('${JOB_EVENTS_CHANNEL}', 'finished ' || id) FROM changed`;

/** Tells the replicas serving the backend that a job is waiting (returns nothing useful; run for the effect). */
const notifyQueued = (c: Pool | PoolClient, backendId: string) =>
  c.query(`SELECT pg_notify('${JOB_EVENTS_CHANNEL}', 'queued ' || $1::text)`, [backendId]);

const addRefs = (c: PoolClient, jobId: string, role: 'input' | 'output', shas: string[]) =>
  c.query('INSERT INTO blob_refs (job_id, sha256, role) SELECT $1, unnest($2::text[]), $3 ON CONFLICT DO NOTHING', [jobId, shas, role]);

const UNFINISHED_OF_MODEL = "SELECT COUNT(*) AS n FROM jobs WHERE model = $1 AND status IN ('pending', 'processing')";
const PENDING_OF_BACKEND = "SELECT COUNT(*) AS n FROM jobs WHERE backend_id = $1 AND status = 'pending'";

/**
 * Counts (`sql`, with `key` as $1) under an advisory transaction lock on `key`: every replica admitting
 * against the same bound waits here, so the count stays true until this transaction commits.
 */
async function lockedCount(c: PoolClient, lockClass: number, key: string, sql: string): Promise<number> {
  await c.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [lockClass, key]);
  return Number((await c.query<{ n: string }>(sql, [key])).rows[0]!.n);
}

const CANCELLED: JobError = { code: 'job_cancelled', message: 'cancelled by the caller' };

/**
 * Re-queues or fails interrupted processing jobs (rows locked by the caller), as the policy and the attempts
 * left say; `cause` is the event that records why.
 */
async function settleInterrupted(
  c: PoolClient,
  rows: JobRow[],
  cause: 'interrupted' | 'lease_expired',
  what: string,
  policy: InterruptedJobPolicy,
  maxAttempts: number,
  nowMs: number,
  expiresMs: number,
): Promise<RecoveredJobs> {
  const requeued: string[] = [];
  const failed: string[] = [];
  for (const row of rows) {
    const job = jobFromRow(row);
    const decision = interruptedJobDecision(job, policy, maxAttempts);
    if (decision === 'rerun') {
      await c.query(
        `WITH ${withEvents(`status = 'pending', ${FINISHED}, updated_ms = $1`, 'WHERE id = $2', [{ type: cause, atMs: '$1' }])}
         SELECT pg_notify('${JOB_EVENTS_CHANNEL}', 'queued ' || backend_id) FROM changed`,
        [nowMs, job.id],
      );
      requeued.push(job.id);
    } else {
      await c.query(
        finishing(`status = 'failed', error = $1, finished_ms = $2, updated_ms = $2, expires_ms = $3, ${FINISHED}`, 'WHERE id = $4', [
          { type: cause, atMs: '$2' },
          { type: 'failed', atMs: '$2', detail: errorDetail('$1') },
        ]),
        [JSON.stringify({ code: 'upstream_error', message: `${what}, ${decision.reason}` }), nowMs, expiresMs, job.id],
      );
      failed.push(job.id);
    }
  }
  return { requeued, failed };
}

/**
 * The job store on a pool (see pool.ts), which it shares with the billing store: a completion and its
 * receipt are one transaction. The schema must be migrated (migratePostgres) before the first call.
 * `close()` ends the pool.
 */
export function postgresJobStore(pool: Pool): JobStore {
  let closed = false;
  const one = async (sql: string, params: unknown[]): Promise<JobRow | undefined> =>
    (await pool.query<JobRow>(sql, params)).rows[0];
  const changed = async (sql: string, params: unknown[]): Promise<boolean> => ((await pool.query(sql, params)).rowCount ?? 0) > 0;
  const count = async (sql: string, params: unknown[]): Promise<number> =>
    Number((await pool.query<{ n: string }>(sql, params)).rows[0]!.n);

  async function admit(c: PoolClient, job: NewJob, reservation: Reservation): Promise<void> {
    // One statement, so one snapshot: a completion that commits meanwhile moves a job's reservation into a
    // receipt, and is seen either before (reservation) or after (receipt), never in neither.
    const { rows } = await c.query<{ committed: string }>(
      `SELECT (
         (SELECT COALESCE(SUM(fee_wei), 0) FROM receipts WHERE owner = $1
            AND (state IN ('unsettled', 'in_flight') OR (state IN ('settled', 'partial') AND settled_block > $2)))
         + (SELECT COALESCE(SUM(images_requested * price_per_image_wei), 0) FROM jobs
            WHERE owner = $1 AND status IN ('pending', 'processing'))
       )::text AS committed`,
      // Settled after the balance's block: paid from money the balance still shows (a balance read at no
      // definite block is taken as current).
      [job.owner, reservation.balanceBlock ?? Number.MAX_SAFE_INTEGER],
    );
    const committed = BigInt(rows[0]!.committed);
    const needed = BigInt(job.params.n) * job.pricePerImageWei;
    const available = reservation.budgetWei - committed;
    if (needed > available) throw new InsufficientBalanceError(needed, available < 0n ? 0n : available);
  }

  return {
    async create(job, idempotencyTtlMs, reservation, limits: AdmissionLimits = {}) {
      return inTransaction(pool, async (c) => {
        if (job.idempotencyKey !== undefined || reservation !== undefined) {
          // Held to the commit: the owner's next create waits, then sees this one's job and receipts.
          await c.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [ADVISORY_LOCK.admission, job.owner]);
        }
        if (job.idempotencyKey !== undefined) {
          await c.query('UPDATE jobs SET idempotency_key = NULL WHERE owner = $1 AND idempotency_key = $2 AND created_ms < $3', [
            job.owner,
            job.idempotencyKey,
            job.createdMs - idempotencyTtlMs,
          ]);
          const existing = (await c.query<JobRow>('SELECT * FROM jobs WHERE owner = $1 AND idempotency_key = $2', [job.owner, job.idempotencyKey]))
            .rows[0];
          if (existing) return { job: jobFromRow(existing), created: false };
        }
        // Locks in one order everywhere (owner, model, backend), so two creates never wait on each other in a circle.
        const { maxUnfinishedForModel, maxPendingForBackend } = limits;
        if (maxUnfinishedForModel !== undefined && (await lockedCount(c, ADVISORY_LOCK.modelAdmission, job.model, UNFINISHED_OF_MODEL)) >= maxUnfinishedForModel) {
          throw new ModelBusyError(maxUnfinishedForModel);
        }
        if (maxPendingForBackend !== undefined && (await lockedCount(c, ADVISORY_LOCK.queueAdmission, job.backendId, PENDING_OF_BACKEND)) >= maxPendingForBackend) {
          throw new QueueFullError(maxPendingForBackend);
        }
        if (reservation !== undefined) await admit(c, job, reservation);
        const { rows } = await c.query<JobRow>(
          `WITH changed AS (
             INSERT INTO jobs (id, owner, kind, delivery, model, backend_id, status, params, images_requested, inputs,
               request_sha256, price_per_image_wei, fingerprint, idempotency_key, base_url, created_ms, updated_ms, run_after_ms,
               submitted_by, last_event_seq, webhook_url, webhook_format)
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, $15, $16, 1, $17, $18)
             RETURNING *),
           events AS (${insertEvents('changed', [{ type: 'queued', atMs: 'created_ms' }])})
           SELECT * FROM changed`,
          [
            job.id,
            job.owner,
            job.kind,
            job.delivery,
            job.model,
            job.backendId,
            JSON.stringify(job.params),
            job.params.n,
            JSON.stringify(job.inputs),
            job.requestSha256,
            job.pricePerImageWei.toString(),
            job.fingerprint,
            job.idempotencyKey ?? null,
            job.baseUrl,
            job.createdMs,
            job.submittedBy ?? null,
            job.webhook?.url ?? null,
            job.webhook?.format ?? null,
          ],
        );
        if (job.inputs.length > 0) await addRefs(c, job.id, 'input', job.inputs.map((i) => i.sha256));
        await notifyQueued(c, job.backendId);
        return { job: jobFromRow(rows[0]!), created: true };
      });
    },

    async get(id) {
      const row = await one('SELECT * FROM jobs WHERE id = $1', [id]);
      return row ? jobFromRow(row) : undefined;
    },

    async countUnfinishedForModel(model) {
      return count(UNFINISHED_OF_MODEL, [model]);
    },

    async countPending(backendId) {
      return count(PENDING_OF_BACKEND, [backendId]);
    },

    async countByStatusAndModel() {
      const { rows } = await pool.query<{ status: JobStatus; model: string; n: string }>(
        'SELECT status, model, COUNT(*) AS n FROM jobs GROUP BY status, model ORDER BY status, model',
      );
      return rows.map((r) => ({ status: r.status, model: r.model, count: Number(r.n) }));
    },

    async listJobs(filter) {
      const params = postgresParams();
      const sql = listJobsQuery(filter, params);
      return sql === undefined ? [] : (await pool.query<JobRow>(sql, params.values)).rows.map(jobFromRow);
    },

    async jobActivity(sinceMs, nowMs, bucketMs) {
      checkActivityWindow(sinceMs, nowMs, bucketMs);
      const params = postgresParams();
      const { rows } = await pool.query<ActivityRow>(jobActivityQuery(sinceMs, nowMs, bucketMs, params), params.values);
      return activityBuckets(rows, sinceMs, nowMs, bucketMs);
    },

    async jobEvents(jobId) {
      const { rows } = await pool.query<JobEventRow>('SELECT * FROM job_events WHERE job_id = $1 ORDER BY seq', [jobId]);
      return rows.map(jobEventFromRow);
    },

    async countAhead(job) {
      return count(
        `SELECT COUNT(*) AS n FROM jobs WHERE backend_id = $1 AND status = 'pending'
           AND seq < (SELECT seq FROM jobs WHERE id = $2)`,
        [job.backendId, job.id],
      );
    },

    async claimNext(backendId, replicaId, nowMs, leaseMs) {
      const token = newToken();
      const row = await one(
        `WITH ${withEvents(
          'status = \'processing\', lease_token = $1, lease_expires_ms = $2, attempts = attempts + 1, started_ms = $3, updated_ms = $3, ran_by = $5',
          `WHERE seq = (SELECT seq FROM jobs WHERE backend_id = $4 AND status = 'pending' AND run_after_ms <= $3
                        ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)`,
          [{ type: 'started', atMs: '$3', detail: "json_build_object('leaseExpiresMs', lease_expires_ms)" }],
        )}
         SELECT * FROM changed`,
        [token, nowMs + leaseMs, nowMs, backendId, replicaId],
      );
      return row ? ({ ...jobFromRow(row), leaseToken: token } as ClaimedJob) : undefined;
    },

    async extendLease(id, leaseToken, leaseExpiresMs, nowMs) {
      const held = await changed("UPDATE jobs SET lease_expires_ms = $1 WHERE id = $2 AND lease_token = $3 AND status = 'processing'", [
        leaseExpiresMs,
        id,
        leaseToken,
      ]);
      // A second statement only when refused, which ends the attempt: the renewal itself stays one.
      if (!held) {
        await pool.query(
          `WITH ${withEvents('', 'WHERE id = $1', [
            { type: 'lease_renewal_refused', atMs: '$2', detail: "json_build_object('status', status)" },
          ])} SELECT id FROM changed`,
          [id, nowMs],
        );
      }
      return held;
    },

    async complete(id, leaseToken, result, signing: ReceiptSigning, nowMs, expiresMs) {
      return inTransaction(pool, async (c) => {
        // The job's row first: a cancel or a re-lease waits for this transaction, or this one for it.
        const job = (await c.query<{ owner: string; status: string; lease_token: string | null }>(
          'SELECT owner, status, lease_token FROM jobs WHERE id = $1 FOR UPDATE',
          [id],
        )).rows[0];
        // Not signed at all when the lease is gone (cancelled, or re-leased to another attempt).
        if (job?.status !== 'processing' || job.lease_token !== leaseToken) return false;
        // What needs no sequence number is written before the owner's row is locked: every statement after
        // that lock makes the owner's next completion, on any replica, wait longer.
        await c.query("DELETE FROM blob_refs WHERE job_id = $1 AND role = 'input'", [id]);
        if (result.images.length > 0) await addRefs(c, id, 'output', result.images.map((i) => i.sha256));
        await c.query(`SELECT pg_notify('${JOB_EVENTS_CHANNEL}', 'finished ' || $1::text)`, [id]);
        // The owner's row stays locked to the commit: the next completion of this owner, on any replica,
        // waits here and gets the number after this one.
        const { rows } = await c.query<{ seq: string }>(
          `INSERT INTO receipt_sequences (owner, last_seq) VALUES ($1, $2::numeric + 1)
           ON CONFLICT (owner) DO UPDATE SET last_seq = GREATEST(receipt_sequences.last_seq, $2::numeric) + 1
           RETURNING last_seq::text AS seq`,
          [job.owner, signing.seqFloor.toString()],
        );
        const seq = BigInt(rows[0]!.seq);
        const signature = signing.sign(seq);
        await c.query(
          `WITH ${withEvents(
            `status = 'completed', result = $1, images_delivered = $2, signature = $3, finished_ms = $4, updated_ms = $4,
             expires_ms = $5, ${FINISHED}, error = NULL`,
            'WHERE id = $6',
            [{ type: 'succeeded', atMs: '$4', detail: '$7' }],
          )} SELECT id FROM changed`,
          [
            JSON.stringify(result),
            result.images.length,
            JSON.stringify(signature),
            nowMs,
            expiresMs,
            id,
            JSON.stringify({ images: result.images.length, receiptSeq: seq.toString() }),
          ],
        );
        // The receipt is written with the completion, or not at all (billing.md): delivered images only.
        const r = signature.receipt;
        if (BigInt(r.fee_wei) > 0n) {
          await c.query(
            `INSERT INTO receipts (job_id, owner, provider, fee_wei, images, created, seq, leaf, receipt, signature, state)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (job_id) DO NOTHING`,
            [
              id,
              r.user,
              r.provider,
              r.fee_wei,
              r.images,
              r.created,
              seq.toString(),
              JSON.stringify(receiptLeaf(r)),
              JSON.stringify(r),
              JSON.stringify({ signingAddress: signature.signingAddress, text: signature.text, signature: signature.signature }),
              isAddress(r.user) ? 'unsettled' : 'offchain',
            ],
          );
        }
        return true;
      });
    },

    async fail(id, leaseToken, error, nowMs, expiresMs) {
      const { rowCount } = await pool.query(
        finishing(
          `status = 'failed', error = $1, finished_ms = $2, updated_ms = $2, expires_ms = $3, ${FINISHED}`,
          "WHERE id = $4 AND lease_token = $5 AND status = 'processing'",
          [{ type: 'failed', atMs: '$2', detail: errorDetail('$1') }],
        ),
        [JSON.stringify(error), nowMs, expiresMs, id, leaseToken],
      );
      return (rowCount ?? 0) > 0;
    },

    async retryLater(id, leaseToken, error, runAfterMs, nowMs) {
      return changed(
        `WITH ${withEvents(
          `status = 'pending', error = $1, run_after_ms = $2, updated_ms = $3, ${FINISHED}`,
          "WHERE id = $4 AND lease_token = $5 AND status = 'processing'",
          [{ type: 'retry_scheduled', atMs: '$3', detail: "json_build_object('error', $1::json, 'runAfterMs', run_after_ms)" }],
        )} SELECT id FROM changed`,
        [JSON.stringify(error), runAfterMs, nowMs, id, leaseToken],
      );
    },

    async cancel(id, nowMs, expiresMs) {
      await pool.query(
        finishing(
          `status = 'cancelled', error = $1, finished_ms = $2, updated_ms = $2, expires_ms = $3, ${FINISHED}`,
          "WHERE id = $4 AND status IN ('pending', 'processing')",
          [{ type: 'cancelled', atMs: '$2', detail: errorDetail('$1') }],
          'cancelled',
        ),
        [JSON.stringify(CANCELLED), nowMs, expiresMs, id],
      );
      const row = await one('SELECT * FROM jobs WHERE id = $1', [id]);
      return row ? jobFromRow(row) : undefined;
    },

    async releaseClaim(id, leaseToken, nowMs) {
      // A replica that stops gives the job back: another one serving the backend can take it at once.
      return changed(
        `WITH ${withEvents(
          `status = 'pending', attempts = attempts - 1, ${FINISHED}, updated_ms = $1`,
          "WHERE id = $2 AND lease_token = $3 AND status = 'processing'",
          // The attempt given back is the one the release took off the count.
          [{ type: 'released', atMs: '$1', attemptOffset: 1 }],
        )}
         SELECT pg_notify('${JOB_EVENTS_CHANNEL}', 'queued ' || backend_id) FROM changed`,
        [nowMs, id, leaseToken],
      );
    },

    // Only the restarting replica's jobs: the sync jobs whose callers waited on it, and the jobs it was
    // running. Jobs recorded under no replica are from before replicas (one process) and are its own too.
    // Another replica's running jobs are left alone; if that replica died, its leases run out and
    // recoverExpiredLeases gives the jobs to whoever serves their backend.
    async recoverInterrupted(replicaId, policy: InterruptedJobPolicy, maxAttempts, nowMs, expiresMs) {
      return inTransaction(pool, async (c) => {
        const gone: JobError = {
          code: 'job_cancelled',
          message: 'the daemon restarted while the caller waited for this job; nobody was left to receive it',
        };
        const cancelled = await c.query<{ id: string }>(
          finishing(
            `status = 'cancelled', error = $1, finished_ms = $2, updated_ms = $2, expires_ms = $3, ${FINISHED}`,
            "WHERE delivery = 'sync' AND status IN ('pending', 'processing') AND (submitted_by = $4 OR submitted_by IS NULL)",
            [{ type: 'cancelled', atMs: '$2', detail: errorDetail('$1') }],
            'cancelled',
          ),
          [JSON.stringify(gone), nowMs, expiresMs, replicaId],
        );
        const processing = await c.query<JobRow>(
          "SELECT * FROM jobs WHERE status = 'processing' AND (ran_by = $1 OR ran_by IS NULL) ORDER BY seq FOR UPDATE",
          [replicaId],
        );
        const outcome = await settleInterrupted(c, processing.rows, 'interrupted', 'the daemon stopped while running this job', policy, maxAttempts, nowMs, expiresMs);
        return { ...outcome, cancelled: cancelled.rows.map((r) => r.id) };
      });
    },

    async recoverExpiredLeases(policy, maxAttempts, nowMs, expiresMs) {
      return inTransaction(pool, async (c) => {
        // SKIP LOCKED: two replicas' sweepers share the expired jobs instead of waiting on each other.
        const expired = await c.query<JobRow>(
          "SELECT * FROM jobs WHERE status = 'processing' AND lease_expires_ms < $1 ORDER BY seq FOR UPDATE SKIP LOCKED",
          [nowMs],
        );
        return settleInterrupted(c, expired.rows, 'lease_expired', EXPIRED_LEASE, policy, maxAttempts, nowMs, expiresMs);
      });
    },

    async expireResults(nowMs, limit) {
      // SKIP LOCKED: two replicas' sweepers share the work instead of waiting on each other's rows.
      const { rows } = await pool.query<{ id: string }>(
        `WITH due AS (
           SELECT id, expires_ms FROM jobs WHERE results_deleted_ms IS NULL AND expires_ms IS NOT NULL AND expires_ms <= $1
           ORDER BY expires_ms LIMIT $2 FOR UPDATE SKIP LOCKED),
         ${withEvents('results_deleted_ms = $1', 'FROM due WHERE jobs.id = due.id', [{ type: 'results_expired', atMs: '$1' }])},
         refs AS (DELETE FROM blob_refs USING changed WHERE blob_refs.job_id = changed.id)
         SELECT due.id FROM due JOIN changed ON changed.id = due.id ORDER BY due.expires_ms, due.id`,
        [nowMs, limit],
      );
      return rows.map((r) => r.id);
    },

    async isBlobReferenced(sha256) {
      return ((await pool.query('SELECT 1 FROM blob_refs WHERE sha256 = $1 LIMIT 1', [sha256])).rowCount ?? 0) > 0;
    },

    async deleteFinishedBefore(cutoffMs, limit) {
      return count(
        `WITH old AS (
           SELECT id FROM jobs WHERE finished_ms IS NOT NULL AND finished_ms < $1
           ORDER BY finished_ms LIMIT $2 FOR UPDATE SKIP LOCKED),
         refs AS (DELETE FROM blob_refs USING old WHERE blob_refs.job_id = old.id),
         events AS (DELETE FROM job_events USING old WHERE job_events.job_id = old.id),
         gone AS (DELETE FROM jobs USING old WHERE jobs.id = old.id RETURNING 1)
         SELECT COUNT(*) AS n FROM gone`,
        [cutoffMs, limit],
      );
    },

    async recentPerImageMs(backendId, limit) {
      const { rows } = await pool.query<{ d: number }>(
        `SELECT (finished_ms - started_ms)::float8 / GREATEST(1, images_delivered) AS d FROM jobs
         WHERE backend_id = $1 AND status = 'completed' AND started_ms IS NOT NULL
         ORDER BY finished_ms DESC LIMIT $2`,
        [backendId, limit],
      );
      return rows.map((r) => r.d);
    },

    async claimWebhookDeliveries(nowMs, leaseMs, limit) {
      const token = newToken();
      // SKIP LOCKED: replicas' workers share the due deliveries, and never take one another holds.
      const { rows } = await pool.query<WebhookDeliveryRow>(
        `WITH due AS (
           SELECT id FROM webhook_deliveries
           WHERE state = 'pending' AND next_attempt_ms <= $3 AND (lease_expires_ms IS NULL OR lease_expires_ms < $3)
           ORDER BY next_attempt_ms LIMIT $4 FOR UPDATE SKIP LOCKED)
         UPDATE webhook_deliveries d SET lease_token = $1, lease_expires_ms = $2 FROM due WHERE d.id = due.id
         RETURNING d.*`,
        [token, nowMs + leaseMs, nowMs, limit],
      );
      return rows
        .sort((a, b) => Number(a.next_attempt_ms) - Number(b.next_attempt_ms))
        .map((row) => ({ ...webhookDeliveryFromRow(row), leaseToken: token }));
    },

    async recordWebhookAttempt(id, leaseToken, outcome, nowMs) {
      const c = attemptColumns(outcome);
      return changed(
        `UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_ms = $1, state = $2, last_status = $3, last_error = $4,
           next_attempt_ms = $5, finished_ms = CASE WHEN $2 = 'pending' THEN NULL ELSE $1::bigint END, lease_token = NULL, lease_expires_ms = NULL
         WHERE id = $6 AND lease_token = $7 AND state = 'pending'`,
        [nowMs, c.state, c.status, c.error, c.nextAttemptMs, id, leaseToken],
      );
    },

    async webhookDeliveries(jobId) {
      const { rows } = await pool.query<WebhookDeliveryRow>('SELECT * FROM webhook_deliveries WHERE job_id = $1 ORDER BY created_ms, id', [jobId]);
      return rows.map(webhookDeliveryFromRow);
    },

    async countPendingWebhookDeliveries() {
      return count("SELECT COUNT(*) AS n FROM webhook_deliveries WHERE state = 'pending'", []);
    },

    async ping() {
      await pool.query('SELECT 1');
    },

    async close() {
      if (closed) return;
      closed = true;
      await pool.end();
    },
  };
}
