/**
 * The webhook outbox: one row per job end (completed, failed, cancelled) of a job that names a webhook URL.
 * The row is written by the jobs table's trigger (a job's terminal transition and its delivery commit
 * together, whichever verb made it), and the delivery worker (./delivery-worker.ts) takes due rows under a
 * lease, as runners take jobs, so replicas sharing a PostgreSQL database share the deliveries.
 */

/** Which poll shape a delivery's body takes: 0G's (`/v1/async/jobs/{id}`) or theRouter's (`/v1/jobs/{id}`). */
export type WebhookFormat = '0g' | 'therouter';

/** The event a delivery announces; one per job, since a job ends once. */
export type WebhookEvent = 'job.completed' | 'job.failed' | 'job.cancelled';

/** pending: not yet received (an attempt may be under way); delivered: a 2xx came back; failed: given up. */
export type WebhookDeliveryState = 'pending' | 'delivered' | 'failed';

export interface WebhookDelivery {
  /** The `webhook-id` header: the same on every attempt, so a receiver can drop repeats. */
  id: string;
  jobId: string;
  event: WebhookEvent;
  /** The job's owner: whose secret signs the delivery. */
  owner: string;
  url: string;
  format: WebhookFormat;
  state: WebhookDeliveryState;
  attempts: number;
  createdMs: number;
  /** When the next attempt is due; undefined once delivered or failed. */
  nextAttemptMs: number | undefined;
  lastAttemptMs: number | undefined;
  /** The receiver's HTTP status at the last attempt; undefined when it gave none (refused, timed out). */
  lastStatus: number | undefined;
  /** Why the last attempt did not deliver; undefined after a delivery. */
  lastError: string | undefined;
  /** When it was delivered or given up. */
  finishedMs: number | undefined;
}

/** A delivery taken by a worker: every write of its outcome must carry this lease token. */
export interface ClaimedWebhookDelivery extends WebhookDelivery {
  leaseToken: string;
}

/** What one attempt came to, as the worker records it. */
export type WebhookAttemptOutcome =
  | { state: 'delivered'; status: number }
  | { state: 'pending'; status: number | undefined; error: string; nextAttemptMs: number }
  | { state: 'failed'; status: number | undefined; error: string };

/** The outbox's verbs, part of every JobStore. */
export interface WebhookOutbox {
  /**
   * Takes up to `limit` pending deliveries that are due and not leased (or whose lease ran out: a worker that
   * died mid-attempt), oldest due first, leasing each until nowMs + leaseMs.
   */
  claimWebhookDeliveries(nowMs: number, leaseMs: number, limit: number): Promise<ClaimedWebhookDelivery[]>;
  /** Records an attempt (attempts + 1) and its outcome, and drops the lease. False when the lease is no longer held. */
  recordWebhookAttempt(id: string, leaseToken: string, outcome: WebhookAttemptOutcome, nowMs: number): Promise<boolean>;
  /** The job's deliveries, oldest first; [] when it has none. */
  webhookDeliveries(jobId: string): Promise<WebhookDelivery[]>;
  /** Deliveries not yet delivered or given up (due, waiting for their retry, or under way), all replicas. */
  countPendingWebhookDeliveries(): Promise<number>;
}

/** A webhook_deliveries row as both stores keep it (integers as numbers from SQLite, as text from BIGINT). */
export interface WebhookDeliveryRow {
  id: string;
  job_id: string;
  event: string;
  owner: string;
  url: string;
  format: string;
  state: string;
  attempts: number;
  created_ms: number | string;
  next_attempt_ms: number | string | null;
  lease_token: string | null;
  lease_expires_ms: number | string | null;
  last_attempt_ms: number | string | null;
  last_status: number | null;
  last_error: string | null;
  finished_ms: number | string | null;
}

const intOrUndefined = (value: number | string | null): number | undefined => (value === null ? undefined : Number(value));

export function webhookDeliveryFromRow(row: WebhookDeliveryRow): WebhookDelivery {
  return {
    id: row.id,
    jobId: row.job_id,
    event: row.event as WebhookEvent,
    owner: row.owner,
    url: row.url,
    format: row.format as WebhookFormat,
    state: row.state as WebhookDeliveryState,
    attempts: row.attempts,
    createdMs: Number(row.created_ms),
    nextAttemptMs: intOrUndefined(row.next_attempt_ms),
    lastAttemptMs: intOrUndefined(row.last_attempt_ms),
    lastStatus: row.last_status ?? undefined,
    lastError: row.last_error ?? undefined,
    finishedMs: intOrUndefined(row.finished_ms),
  };
}

/** The outcome as the columns recordWebhookAttempt writes. */
export function attemptColumns(outcome: WebhookAttemptOutcome): {
  state: WebhookDeliveryState;
  status: number | null;
  error: string | null;
  nextAttemptMs: number | null;
} {
  return {
    state: outcome.state,
    status: outcome.status ?? null,
    error: outcome.state === 'delivered' ? null : outcome.error,
    nextAttemptMs: outcome.state === 'pending' ? outcome.nextAttemptMs : null,
  };
}
