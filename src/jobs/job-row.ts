import type { JobSignature } from '../tee/receipt.js';
import type { WebhookFormat } from '../webhooks/outbox.js';
import { reviveParams, type Job, type JobError, type JobResult } from './model.js';
import type { JobEvent, JobEventType } from './store.js';

/**
 * A jobs row as both stores keep it: JSON columns as text, the price as decimal text; integer columns
 * arrive as numbers from SQLite and as decimal text from PostgreSQL's BIGINT.
 */

type IntColumn = number | string;

const intOrUndefined = (value: IntColumn | null): number | undefined => (value === null ? undefined : Number(value));

export interface JobRow {
  seq: IntColumn;
  id: string;
  owner: string;
  kind: string;
  delivery: string;
  model: string;
  backend_id: string;
  status: string;
  params: string;
  inputs: string;
  request_sha256: string;
  price_per_image_wei: string;
  fingerprint: string;
  idempotency_key: string | null;
  base_url: string;
  created_ms: IntColumn;
  updated_ms: IntColumn;
  run_after_ms: IntColumn;
  started_ms: IntColumn | null;
  finished_ms: IntColumn | null;
  attempts: number;
  lease_token: string | null;
  lease_expires_ms: IntColumn | null;
  error: string | null;
  result: string | null;
  signature: string | null;
  expires_ms: IntColumn | null;
  results_deleted_ms: IntColumn | null;
  submitted_by: string | null;
  ran_by: string | null;
  webhook_url: string | null;
  webhook_format: string | null;
}

export function jobFromRow(row: JobRow): Job {
  return {
    id: row.id,
    owner: row.owner,
    kind: row.kind as Job['kind'],
    delivery: row.delivery as Job['delivery'],
    model: row.model,
    backendId: row.backend_id,
    status: row.status as Job['status'],
    params: reviveParams(JSON.parse(row.params) as Job['params']),
    inputs: JSON.parse(row.inputs) as Job['inputs'],
    requestSha256: row.request_sha256,
    pricePerImageWei: BigInt(row.price_per_image_wei),
    fingerprint: row.fingerprint,
    idempotencyKey: row.idempotency_key ?? undefined,
    baseUrl: row.base_url,
    createdMs: Number(row.created_ms),
    updatedMs: Number(row.updated_ms),
    runAfterMs: Number(row.run_after_ms),
    startedMs: intOrUndefined(row.started_ms),
    finishedMs: intOrUndefined(row.finished_ms),
    attempts: row.attempts,
    leaseToken: row.lease_token ?? undefined,
    leaseExpiresMs: intOrUndefined(row.lease_expires_ms),
    error: row.error === null ? undefined : (JSON.parse(row.error) as JobError),
    result: row.result === null ? undefined : (JSON.parse(row.result) as JobResult),
    signature: row.signature === null ? undefined : (JSON.parse(row.signature) as JobSignature),
    expiresMs: intOrUndefined(row.expires_ms),
    resultsDeletedMs: intOrUndefined(row.results_deleted_ms),
    submittedBy: row.submitted_by ?? undefined,
    ranBy: row.ran_by ?? undefined,
    webhook: row.webhook_url === null ? undefined : { url: row.webhook_url, format: row.webhook_format as WebhookFormat },
  };
}

/** A job_events row as both stores keep it (the detail as JSON text). */
export interface JobEventRow {
  job_id: string;
  seq: IntColumn;
  at_ms: IntColumn;
  type: string;
  attempt: IntColumn;
  replica: string | null;
  detail: string;
}

export function jobEventFromRow(row: JobEventRow): JobEvent {
  return {
    seq: Number(row.seq),
    atMs: Number(row.at_ms),
    type: row.type as JobEventType,
    attempt: Number(row.attempt),
    replica: row.replica ?? undefined,
    detail: JSON.parse(row.detail) as Record<string, unknown>,
  };
}
