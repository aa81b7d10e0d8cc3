import type Database from 'better-sqlite3';
import { isAddress } from 'ethers';
import { receiptLeaf } from '../../billing/leaf.js';
import { activityBuckets, checkActivityWindow, jobActivityQuery, listJobsQuery, sqliteParams, type ActivityRow } from '../job-queries.js';
import { jobEventFromRow, jobFromRow, type JobEventRow, type JobRow } from '../job-row.js';
import { newToken, type Job, type JobError, type JobResult, type JobStatus } from '../model.js';
import {
  InsufficientBalanceError,
  ModelBusyError,
  QueueFullError,
  type AdmissionLimits,
  EXPIRED_LEASE,
  interruptedJobDecision,
  type ClaimedJob,
  type InterruptedJobPolicy,
  type NewJobEvent,
  type RecoveredJobs,
  type JobStore,
  type NewJob,
  type ReceiptSigning,
  type Reservation,
} from '../store.js';
import { attemptColumns, webhookDeliveryFromRow, type WebhookDeliveryRow } from '../../webhooks/outbox.js';
import { seqKey } from './database.js';

/**
 * Jobs in the embedded SQLite database. Rows hold metadata only; image bytes live as files
 * (images/file-blob-store.ts) and `blob_refs` says which job still needs which file.
 */

/** The job store on an open database (see database.ts); it shares the file with the billing store. */
export function sqliteJobStore(db: Database.Database): JobStore {
  const stmt = {
    get: db.prepare<[string], JobRow>('SELECT * FROM jobs WHERE id = ?'),
    byIdempotencyKey: db.prepare<[string, string], JobRow>('SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?'),
    forgetIdempotencyKey: db.prepare<[string, string, number]>(
      'UPDATE jobs SET idempotency_key = NULL WHERE owner = ? AND idempotency_key = ? AND created_ms < ?',
    ),
    insert: db.prepare(
      `INSERT INTO jobs (id, owner, kind, delivery, model, backend_id, status, params, inputs, request_sha256,
         price_per_image_wei, fingerprint, idempotency_key, base_url, created_ms, updated_ms, run_after_ms, submitted_by,
         webhook_url, webhook_format)
       VALUES (@id, @owner, @kind, @delivery, @model, @backend_id, 'pending', @params, @inputs, @request_sha256,
         @price_per_image_wei, @fingerprint, @idempotency_key, @base_url, @created_ms, @created_ms, @created_ms, @submitted_by,
         @webhook_url, @webhook_format)`,
    ),
    insertRef: db.prepare<[string, string, string]>('INSERT OR IGNORE INTO blob_refs (job_id, sha256, role) VALUES (?, ?, ?)'),
    dropRefs: db.prepare<[string, string]>('DELETE FROM blob_refs WHERE job_id = ? AND role = ?'),
    countUnfinishedForModel: db.prepare<[string], { n: number }>(
      "SELECT COUNT(*) AS n FROM jobs WHERE model = ? AND status IN ('pending', 'processing')",
    ),
    countPending: db.prepare<[string], { n: number }>("SELECT COUNT(*) AS n FROM jobs WHERE backend_id = ? AND status = 'pending'"),
    countByStatusAndModel: db.prepare<[], { status: JobStatus; model: string; n: number }>(
      'SELECT status, model, COUNT(*) AS n FROM jobs GROUP BY status, model ORDER BY status, model',
    ),
    countAhead: db.prepare<[string, number], { n: number }>(
      "SELECT COUNT(*) AS n FROM jobs WHERE backend_id = ? AND status = 'pending' AND seq < ?",
    ),
    seqOf: db.prepare<[string], { seq: number }>('SELECT seq FROM jobs WHERE id = ?'),
    claimNext: db.prepare<[string, number, number, number, string, string, number], JobRow>(
      `UPDATE jobs SET status = 'processing', lease_token = ?, lease_expires_ms = ?, attempts = attempts + 1,
         started_ms = ?, updated_ms = ?, ran_by = ?
       WHERE id = (SELECT id FROM jobs WHERE backend_id = ? AND status = 'pending' AND run_after_ms <= ?
                   ORDER BY seq LIMIT 1)
       RETURNING *`,
    ),
    extendLease: db.prepare<[number, string, string]>(
      "UPDATE jobs SET lease_expires_ms = ? WHERE id = ? AND lease_token = ? AND status = 'processing'",
    ),
    complete: db.prepare<[string, number, string, number, number, number, string, string]>(
      `UPDATE jobs SET status = 'completed', result = ?, images_delivered = ?, signature = ?, finished_ms = ?, updated_ms = ?, expires_ms = ?,
         lease_token = NULL, lease_expires_ms = NULL, error = NULL
       WHERE id = ? AND lease_token = ? AND status = 'processing'`,
    ),
    fail: db.prepare<[string, number, number, number, string, string]>(
      `UPDATE jobs SET status = 'failed', error = ?, finished_ms = ?, updated_ms = ?, expires_ms = ?,
         lease_token = NULL, lease_expires_ms = NULL
       WHERE id = ? AND lease_token = ? AND status = 'processing'`,
    ),
    retryLater: db.prepare<[string, number, number, string, string]>(
      `UPDATE jobs SET status = 'pending', error = ?, run_after_ms = ?, updated_ms = ?,
         lease_token = NULL, lease_expires_ms = NULL
       WHERE id = ? AND lease_token = ? AND status = 'processing'`,
    ),
    cancel: db.prepare<[string, number, number, number, string]>(
      `UPDATE jobs SET status = 'cancelled', error = ?, finished_ms = ?, updated_ms = ?, expires_ms = ?,
         lease_token = NULL, lease_expires_ms = NULL
       WHERE id = ? AND status IN ('pending', 'processing')`,
    ),
    processing: db.prepare<[], JobRow>("SELECT * FROM jobs WHERE status = 'processing'"),
    unfinishedSync: db.prepare<[], { id: string }>(
      "SELECT id FROM jobs WHERE delivery = 'sync' AND status IN ('pending', 'processing')",
    ),
    releaseClaim: db.prepare<[number, string, string]>(
      `UPDATE jobs SET status = 'pending', attempts = attempts - 1, lease_token = NULL, lease_expires_ms = NULL,
         updated_ms = ?
       WHERE id = ? AND lease_token = ? AND status = 'processing'`,
    ),
    requeue: db.prepare<[number, string]>(
      `UPDATE jobs SET status = 'pending', lease_token = NULL, lease_expires_ms = NULL, updated_ms = ?
       WHERE id = ? AND status = 'processing'`,
    ),
    failInterrupted: db.prepare<[string, number, number, number, string]>(
      `UPDATE jobs SET status = 'failed', error = ?, finished_ms = ?, updated_ms = ?, expires_ms = ?,
         lease_token = NULL, lease_expires_ms = NULL
       WHERE id = ? AND status = 'processing'`,
    ),
    expiredLeases: db.prepare<[number], JobRow>("SELECT * FROM jobs WHERE status = 'processing' AND lease_expires_ms < ? ORDER BY seq"),
    dueForExpiry: db.prepare<[number, number], { id: string }>(
      `SELECT id FROM jobs WHERE results_deleted_ms IS NULL AND expires_ms IS NOT NULL AND expires_ms <= ?
       ORDER BY expires_ms LIMIT ?`,
    ),
    markExpired: db.prepare<[number, string]>('UPDATE jobs SET results_deleted_ms = ? WHERE id = ?'),
    isReferenced: db.prepare<[string], { one: number }>('SELECT 1 AS one FROM blob_refs WHERE sha256 = ? LIMIT 1'),
    oldFinished: db.prepare<[number, number], { id: string }>(
      'SELECT id FROM jobs WHERE finished_ms IS NOT NULL AND finished_ms < ? ORDER BY finished_ms LIMIT ?',
    ),
    deleteJob: db.prepare<[string]>('DELETE FROM jobs WHERE id = ?'),
    dropAllRefs: db.prepare<[string]>('DELETE FROM blob_refs WHERE job_id = ?'),
    recentDurations: db.prepare<[string, number], { d: number }>(
      `SELECT (finished_ms - started_ms) * 1.0 / MAX(1, json_array_length(result, '$.images')) AS d FROM jobs
       WHERE backend_id = ? AND status = 'completed' AND started_ms IS NOT NULL
       ORDER BY finished_ms DESC LIMIT ?`,
    ),
    insertReceipt: db.prepare(
      `INSERT OR IGNORE INTO receipts (job_id, user, provider, fee_wei, images, created, seq, leaf, receipt, signature, state)
       VALUES (@job_id, @user, @provider, @fee_wei, @images, @created, @seq, @leaf, @receipt, @signature, @state)`,
    ),
    lastSeq: db.prepare<[string], { last_seq: string }>('SELECT last_seq FROM receipt_sequences WHERE user = ?'),
    setSeq: db.prepare<[string, string]>(
      `INSERT INTO receipt_sequences (user, last_seq) VALUES (?, ?)
       ON CONFLICT (user) DO UPDATE SET last_seq = excluded.last_seq`,
    ),
    owedFees: db.prepare<[string, number], { fee_wei: string }>(
      `SELECT fee_wei FROM receipts WHERE user = ?
         AND (state IN ('unsettled', 'in_flight') OR (state IN ('settled', 'partial') AND settled_block > ?))`,
    ),
    reservedBy: db.prepare<[string], { n: number; price: string }>(
      `SELECT json_extract(params, '$.n') AS n, price_per_image_wei AS price FROM jobs
       WHERE owner = ? AND status IN ('pending', 'processing')`,
    ),
    bumpEvents: db.prepare<[number, string], { last_event_seq: number; attempts: number; ran_by: string | null; submitted_by: string | null }>(
      'UPDATE jobs SET last_event_seq = last_event_seq + ? WHERE id = ? RETURNING last_event_seq, attempts, ran_by, submitted_by',
    ),
    insertEvent: db.prepare<[string, number, number, string, number, string | null, string]>(
      'INSERT INTO job_events (job_id, seq, at_ms, type, attempt, replica, detail) VALUES (?, ?, ?, ?, ?, ?, ?)',
    ),
    jobEvents: db.prepare<[string], JobEventRow>('SELECT * FROM job_events WHERE job_id = ? ORDER BY seq'),
    dropEvents: db.prepare<[string]>('DELETE FROM job_events WHERE job_id = ?'),
    statusOf: db.prepare<[string], { status: JobStatus }>('SELECT status FROM jobs WHERE id = ?'),
    claimWebhookDeliveries: db.prepare<[string, number, number, number, number], WebhookDeliveryRow>(
      `UPDATE webhook_deliveries SET lease_token = ?, lease_expires_ms = ?
       WHERE id IN (SELECT id FROM webhook_deliveries
                    WHERE state = 'pending' AND next_attempt_ms <= ? AND (lease_expires_ms IS NULL OR lease_expires_ms < ?)
                    ORDER BY next_attempt_ms LIMIT ?)
       RETURNING *`,
    ),
    recordWebhookAttempt: db.prepare(
      `UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_ms = @now_ms, state = @state, last_status = @status,
         last_error = @error, next_attempt_ms = @next_attempt_ms, finished_ms = CASE WHEN @state = 'pending' THEN NULL ELSE @now_ms END,
         lease_token = NULL, lease_expires_ms = NULL
       WHERE id = @id AND lease_token = @lease_token AND state = 'pending'`,
    ),
    webhookDeliveries: db.prepare<[string], WebhookDeliveryRow>('SELECT * FROM webhook_deliveries WHERE job_id = ? ORDER BY created_ms, id'),
    countPendingWebhookDeliveries: db.prepare<[], { n: number }>("SELECT COUNT(*) AS n FROM webhook_deliveries WHERE state = 'pending'"),
    ping: db.prepare('SELECT 1'),
  };

  /**
   * Appends events to the job's history, numbered from the counter on its row. Called inside the
   * transaction of the transition they record, after its write (attempts and ran_by are the new ones).
   */
  function record(id: string, atMs: number, ...events: NewJobEvent[]): void {
    const job = stmt.bumpEvents.get(events.length, id)!;
    events.forEach((event, i) => {
      stmt.insertEvent.run(
        id,
        job.last_event_seq - events.length + i + 1,
        atMs,
        event.type,
        job.attempts + (event.attemptOffset ?? 0),
        event.type === 'queued' ? job.submitted_by : job.ran_by,
        JSON.stringify(event.detail ?? {}),
      );
    });
  }

  const create = db.transaction(
    (job: NewJob, idempotencyTtlMs: number, reservation: Reservation | undefined, limits: AdmissionLimits): { job: Job; created: boolean } => {
    if (job.idempotencyKey !== undefined) {
      stmt.forgetIdempotencyKey.run(job.owner, job.idempotencyKey, job.createdMs - idempotencyTtlMs);
      const existing = stmt.byIdempotencyKey.get(job.owner, job.idempotencyKey);
      if (existing) return { job: jobFromRow(existing), created: false };
    }
    const { maxPendingForBackend, maxUnfinishedForModel } = limits;
    if (maxPendingForBackend !== undefined && stmt.countPending.get(job.backendId)!.n >= maxPendingForBackend) {
      throw new QueueFullError(maxPendingForBackend);
    }
    if (maxUnfinishedForModel !== undefined && stmt.countUnfinishedForModel.get(job.model)!.n >= maxUnfinishedForModel) {
      throw new ModelBusyError(maxUnfinishedForModel);
    }
    if (reservation !== undefined) {
      let committed = 0n;
      // Settled after the balance's block: paid from money the balance still shows (ZeroGAuthenticator always
      // reads at a definite block; a balance without one is taken as current).
      for (const r of stmt.owedFees.all(job.owner, reservation.balanceBlock ?? Number.MAX_SAFE_INTEGER)) committed += BigInt(r.fee_wei);
      for (const r of stmt.reservedBy.all(job.owner)) committed += BigInt(r.n) * BigInt(r.price);
      const needed = BigInt(job.params.n) * job.pricePerImageWei;
      const available = reservation.budgetWei - committed;
      if (needed > available) throw new InsufficientBalanceError(needed, available < 0n ? 0n : available);
    }
    stmt.insert.run({
      id: job.id,
      owner: job.owner,
      kind: job.kind,
      delivery: job.delivery,
      model: job.model,
      backend_id: job.backendId,
      params: JSON.stringify(job.params),
      inputs: JSON.stringify(job.inputs),
      request_sha256: job.requestSha256,
      price_per_image_wei: job.pricePerImageWei.toString(),
      fingerprint: job.fingerprint,
      idempotency_key: job.idempotencyKey ?? null,
      base_url: job.baseUrl,
      created_ms: job.createdMs,
      submitted_by: job.submittedBy ?? null,
      webhook_url: job.webhook?.url ?? null,
      webhook_format: job.webhook?.format ?? null,
    });
    for (const input of job.inputs) stmt.insertRef.run(job.id, input.sha256, 'input');
    record(job.id, job.createdMs, { type: 'queued' });
    return { job: jobFromRow(stmt.get.get(job.id)!), created: true };
  },
  );

  const complete = db.transaction(
    (id: string, leaseToken: string, result: JobResult, signing: ReceiptSigning, nowMs: number, expiresMs: number) => {
    const row = stmt.get.get(id);
    // Not signed at all when the lease is gone (cancelled, or re-leased to another attempt).
    if (row?.status !== 'processing' || row.lease_token !== leaseToken) return false;
    const owner = row.owner;
    const last = BigInt(stmt.lastSeq.get(owner)?.last_seq ?? '0');
    const seq = (last > signing.seqFloor ? last : signing.seqFloor) + 1n;
    const signature = signing.sign(seq);
    const changed =
      stmt.complete.run(JSON.stringify(result), result.images.length, JSON.stringify(signature), nowMs, nowMs, expiresMs, id, leaseToken).changes > 0;
    if (changed) {
      stmt.setSeq.run(owner, seq.toString());
      stmt.dropRefs.run(id, 'input');
      record(id, nowMs, { type: 'succeeded', detail: { images: result.images.length, receiptSeq: seq.toString() } });
      for (const image of result.images) stmt.insertRef.run(id, image.sha256, 'output');
      // The receipt is written with the completion, or not at all (billing.md): delivered images only.
      const r = signature.receipt;
      if (BigInt(r.fee_wei) > 0n) {
        stmt.insertReceipt.run({
          job_id: id,
          user: r.user,
          provider: r.provider,
          fee_wei: r.fee_wei,
          images: r.images,
          created: r.created,
          seq: seqKey(seq),
          leaf: JSON.stringify(receiptLeaf(r)),
          receipt: JSON.stringify(r),
          signature: JSON.stringify({ signingAddress: signature.signingAddress, text: signature.text, signature: signature.signature }),
          state: isAddress(r.user) ? 'unsettled' : 'offchain',
        });
      }
    }
    return changed;
  },
  );

  const fail = db.transaction((id: string, leaseToken: string, error: JobError, nowMs: number, expiresMs: number) => {
    const changed = stmt.fail.run(JSON.stringify(error), nowMs, nowMs, expiresMs, id, leaseToken).changes > 0;
    if (changed) {
      stmt.dropRefs.run(id, 'input');
      record(id, nowMs, { type: 'failed', detail: { error } });
    }
    return changed;
  });

  const retryLater = db.transaction((id: string, leaseToken: string, error: JobError, runAfterMs: number, nowMs: number) => {
    const changed = stmt.retryLater.run(JSON.stringify(error), runAfterMs, nowMs, id, leaseToken).changes > 0;
    if (changed) record(id, nowMs, { type: 'retry_scheduled', detail: { error, runAfterMs } });
    return changed;
  });

  const claimNext = db.transaction((backendId: string, replicaId: string, nowMs: number, leaseMs: number, token: string) => {
    const row = stmt.claimNext.get(token, nowMs + leaseMs, nowMs, nowMs, replicaId, backendId, nowMs);
    if (row) record(row.id, nowMs, { type: 'started', detail: { leaseExpiresMs: nowMs + leaseMs } });
    return row;
  });

  const extendLease = db.transaction((id: string, leaseToken: string, leaseExpiresMs: number, nowMs: number) => {
    if (stmt.extendLease.run(leaseExpiresMs, id, leaseToken).changes > 0) return true;
    const job = stmt.statusOf.get(id);
    if (job) record(id, nowMs, { type: 'lease_renewal_refused', detail: { status: job.status } });
    return false;
  });

  const releaseClaim = db.transaction((id: string, leaseToken: string, nowMs: number) => {
    const changed = stmt.releaseClaim.run(nowMs, id, leaseToken).changes > 0;
    // The attempt given back is the one the release took off the count.
    if (changed) record(id, nowMs, { type: 'released', attemptOffset: 1 });
    return changed;
  });

  const cancel = db.transaction((id: string, nowMs: number, expiresMs: number) => {
    const error: JobError = { code: 'job_cancelled', message: 'cancelled by the caller' };
    const changed = stmt.cancel.run(JSON.stringify(error), nowMs, nowMs, expiresMs, id).changes > 0;
    if (changed) {
      stmt.dropRefs.run(id, 'input');
      record(id, nowMs, { type: 'cancelled', detail: { error } });
    }
    return changed;
  });

  const recoverInterrupted = db.transaction(
    (policy: InterruptedJobPolicy, maxAttempts: number, nowMs: number, expiresMs: number) => {
      const cancelled: string[] = [];
      const gone: JobError = {
        code: 'job_cancelled',
        message: 'the daemon restarted while the caller waited for this job; nobody was left to receive it',
      };
      for (const { id } of stmt.unfinishedSync.all()) {
        stmt.cancel.run(JSON.stringify(gone), nowMs, nowMs, expiresMs, id);
        stmt.dropRefs.run(id, 'input');
        record(id, nowMs, { type: 'cancelled', detail: { error: gone } });
        cancelled.push(id);
      }
      const processing = settleInterrupted(stmt.processing.all(), 'interrupted', 'the daemon stopped while running this job', policy, maxAttempts, nowMs, expiresMs);
      return { ...processing, cancelled };
    },
  );

  /** Re-queues or fails interrupted processing jobs, as the policy and the attempts left say. */
  function settleInterrupted(
    rows: JobRow[],
    cause: 'interrupted' | 'lease_expired',
    what: string,
    policy: InterruptedJobPolicy,
    maxAttempts: number,
    nowMs: number,
    expiresMs: number,
  ): RecoveredJobs {
    const requeued: string[] = [];
    const failed: string[] = [];
    for (const row of rows) {
      const job = jobFromRow(row);
      const decision = interruptedJobDecision(job, policy, maxAttempts);
      if (decision === 'rerun') {
        stmt.requeue.run(nowMs, job.id);
        record(job.id, nowMs, { type: cause });
        requeued.push(job.id);
      } else {
        const error: JobError = { code: 'upstream_error', message: `${what}, ${decision.reason}` };
        stmt.failInterrupted.run(JSON.stringify(error), nowMs, nowMs, expiresMs, job.id);
        stmt.dropRefs.run(job.id, 'input');
        record(job.id, nowMs, { type: cause }, { type: 'failed', detail: { error } });
        failed.push(job.id);
      }
    }
    return { requeued, failed };
  }

  const recoverExpiredLeases = db.transaction((policy: InterruptedJobPolicy, maxAttempts: number, nowMs: number, expiresMs: number) =>
    settleInterrupted(stmt.expiredLeases.all(nowMs), 'lease_expired', EXPIRED_LEASE, policy, maxAttempts, nowMs, expiresMs),
  );

  const expireResults = db.transaction((nowMs: number, limit: number): string[] => {
    const ids = stmt.dueForExpiry.all(nowMs, limit).map((r) => r.id);
    for (const id of ids) {
      stmt.markExpired.run(nowMs, id);
      stmt.dropAllRefs.run(id);
      record(id, nowMs, { type: 'results_expired' });
    }
    return ids;
  });

  const deleteFinishedBefore = db.transaction((cutoffMs: number, limit: number): number => {
    const ids = stmt.oldFinished.all(cutoffMs, limit).map((r) => r.id);
    for (const id of ids) {
      stmt.dropAllRefs.run(id);
      stmt.dropEvents.run(id);
      stmt.deleteJob.run(id);
    }
    return ids.length;
  });

  return {
    async create(job, idempotencyTtlMs, reservation, limits = {}) {
      return create(job, idempotencyTtlMs, reservation, limits);
    },
    async get(id) {
      const row = stmt.get.get(id);
      return row ? jobFromRow(row) : undefined;
    },
    async countUnfinishedForModel(model) {
      return stmt.countUnfinishedForModel.get(model)!.n;
    },
    async countPending(backendId) {
      return stmt.countPending.get(backendId)!.n;
    },
    async countByStatusAndModel() {
      return stmt.countByStatusAndModel.all().map((r) => ({ status: r.status, model: r.model, count: r.n }));
    },
    async listJobs(filter) {
      const params = sqliteParams();
      const sql = listJobsQuery(filter, params);
      return sql === undefined ? [] : db.prepare<unknown[], JobRow>(sql).all(...params.values).map(jobFromRow);
    },
    async jobActivity(sinceMs, nowMs, bucketMs) {
      checkActivityWindow(sinceMs, nowMs, bucketMs);
      const params = sqliteParams();
      const sql = jobActivityQuery(sinceMs, nowMs, bucketMs, params);
      return activityBuckets(db.prepare<unknown[], ActivityRow>(sql).all(...params.values), sinceMs, nowMs, bucketMs);
    },
    async jobEvents(jobId) {
      return stmt.jobEvents.all(jobId).map(jobEventFromRow);
    },
    async countAhead(job) {
      const seq = stmt.seqOf.get(job.id);
      return seq ? stmt.countAhead.get(job.backendId, seq.seq)!.n : 0;
    },
    async claimNext(backendId, replicaId, nowMs, leaseMs) {
      const token = newToken();
      const row = claimNext(backendId, replicaId, nowMs, leaseMs, token);
      return row ? ({ ...jobFromRow(row), leaseToken: token } as ClaimedJob) : undefined;
    },
    async extendLease(id, leaseToken, leaseExpiresMs, nowMs) {
      return extendLease(id, leaseToken, leaseExpiresMs, nowMs);
    },
    async complete(id, leaseToken, result, signing, nowMs, expiresMs) {
      return complete(id, leaseToken, result, signing, nowMs, expiresMs);
    },
    async fail(id, leaseToken, error, nowMs, expiresMs) {
      return fail(id, leaseToken, error, nowMs, expiresMs);
    },
    async retryLater(id, leaseToken, error, runAfterMs, nowMs) {
      return retryLater(id, leaseToken, error, runAfterMs, nowMs);
    },
    async cancel(id, nowMs, expiresMs) {
      cancel(id, nowMs, expiresMs);
      const row = stmt.get.get(id);
      return row ? jobFromRow(row) : undefined;
    },
    async releaseClaim(id, leaseToken, nowMs) {
      return releaseClaim(id, leaseToken, nowMs);
    },
    // One process per SQLite file: whatever the replica's name, every unfinished job in it is its own.
    async recoverInterrupted(_replicaId, policy, maxAttempts, nowMs, expiresMs) {
      return recoverInterrupted(policy, maxAttempts, nowMs, expiresMs);
    },
    async recoverExpiredLeases(policy, maxAttempts, nowMs, expiresMs) {
      return recoverExpiredLeases(policy, maxAttempts, nowMs, expiresMs);
    },
    async expireResults(nowMs, limit) {
      return expireResults(nowMs, limit);
    },
    async isBlobReferenced(sha256) {
      return stmt.isReferenced.get(sha256) !== undefined;
    },
    async deleteFinishedBefore(cutoffMs, limit) {
      return deleteFinishedBefore(cutoffMs, limit);
    },
    async recentPerImageMs(backendId, limit) {
      return stmt.recentDurations.all(backendId, limit).map((r) => r.d);
    },
    async claimWebhookDeliveries(nowMs, leaseMs, limit) {
      const token = newToken();
      return stmt.claimWebhookDeliveries
        .all(token, nowMs + leaseMs, nowMs, nowMs, limit)
        .sort((a, b) => Number(a.next_attempt_ms) - Number(b.next_attempt_ms))
        .map((row) => ({ ...webhookDeliveryFromRow(row), leaseToken: token }));
    },
    async recordWebhookAttempt(id, leaseToken, outcome, nowMs) {
      const c = attemptColumns(outcome);
      const params = { now_ms: nowMs, state: c.state, status: c.status, error: c.error, next_attempt_ms: c.nextAttemptMs, id, lease_token: leaseToken };
      return stmt.recordWebhookAttempt.run(params).changes > 0;
    },
    async webhookDeliveries(jobId) {
      return stmt.webhookDeliveries.all(jobId).map(webhookDeliveryFromRow);
    },
    async countPendingWebhookDeliveries() {
      return stmt.countPendingWebhookDeliveries.get()!.n;
    },
    async ping() {
      stmt.ping.get();
    },
    async close() {
      if (db.open) db.close();
    },
  };
}
