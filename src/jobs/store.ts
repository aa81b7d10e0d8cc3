import type { JobSignature } from '../tee/receipt.js';
import type { WebhookOutbox } from '../webhooks/outbox.js';
import type { Job, JobError, JobResult, JobStatus } from './model.js';

/** What the HTTP layer hands the store; the store fills in the lifecycle fields. */
export type NewJob = Partial<Pick<Job, 'submittedBy' | 'webhook'>> &
  Pick<
  Job,
  | 'id'
  | 'owner'
  | 'kind'
  | 'delivery'
  | 'model'
  | 'backendId'
  | 'params'
  | 'inputs'
  | 'requestSha256'
  | 'pricePerImageWei'
  | 'fingerprint'
  | 'idempotencyKey'
  | 'baseUrl'
  | 'createdMs'
  >;

/**
 * Admission against the user's on-chain balance (billing.md): the job's n × price must fit in
 * `budgetWei` (balance − pending refunds) after the user's unsettled receipts and the reservations of
 * their unfinished jobs. Checked and inserted in one transaction, so two concurrent submits cannot both
 * spend the same wei.
 */
export interface Reservation {
  budgetWei: bigint;
  /**
   * The block the balance was read at. Receipts settled in a later block were paid from a balance this
   * figure still includes, so they still count against it until the balance is read again.
   */
  balanceBlock: number | undefined;
}

/** The job's reservation does not fit; the numbers say by how much. */
export class InsufficientBalanceError extends Error {
  override readonly name = 'InsufficientBalanceError';
  constructor(
    readonly neededWei: bigint,
    readonly availableWei: bigint,
  ) {
    super(`needs ${neededWei} wei, ${availableWei} wei available`);
  }
}

/**
 * Bounds checked inside the job's insert, so replicas admitting at the same moment cannot overshoot them
 * together. Absent: no bound.
 */
export interface AdmissionLimits {
  /** Unfinished (pending or processing) jobs of the job's model, from every owner and replica. */
  maxUnfinishedForModel?: number;
  /** Pending jobs waiting for the job's backend. */
  maxPendingForBackend?: number;
}

/** The job's model already has `limit` unfinished jobs. */
export class ModelBusyError extends Error {
  override readonly name = 'ModelBusyError';
  constructor(readonly limit: number) {
    super(`the model has ${limit} unfinished jobs`);
  }
}

/** The job's backend already has `limit` pending jobs. */
export class QueueFullError extends Error {
  override readonly name = 'QueueFullError';
  constructor(readonly limit: number) {
    super(`the backend has ${limit} pending jobs`);
  }
}

export interface ClaimedJob extends Job {
  leaseToken: string;
}

export type InterruptedJobPolicy = (job: Job) => 'rerun' | 'fail';

/** The ids of the jobs a recovery put back in the queue and of those it failed, each logged by the caller. */
export interface RecoveredJobs {
  requeued: string[];
  failed: string[];
}

/** What recovery does with a job whose attempt was cut off: run it again, or fail it and say why. */
export function interruptedJobDecision(job: Job, policy: InterruptedJobPolicy, maxAttempts: number): 'rerun' | { reason: string } {
  if (job.attempts >= maxAttempts) return { reason: `and it had used all ${maxAttempts} attempts` };
  return policy(job) === 'rerun' ? 'rerun' : { reason: 'and this backend cannot safely run it again' };
}

/** How an expired lease is explained in the error of a job it fails. */
export const EXPIRED_LEASE = 'the replica running this job stopped answering (its lease ran out)';

/**
 * Where jobs live. Every transition is one named, atomic verb; writes by a runner carry the lease token
 * it got from `claimNext`, so a runner that lost its lease cannot overwrite anyone's result.
 * One conformance suite (test/jobs/store-conformance.ts) runs against every implementation.
 */
/** How the store has a completed job signed once its receipt has a sequence number. */
export interface ReceiptSigning {
  /** The owner's receipts must be numbered above this (what the TEE already signed in settlements). */
  seqFloor: bigint;
  /** Synchronous: called inside the completion transaction. */
  sign(seq: bigint): JobSignature;
}

/** Which jobs `listJobs` returns. */
export interface JobListFilter {
  /** Any of these statuses; every status when absent. */
  statuses?: readonly JobStatus[];
  /** Exactly this `Job.owner`. */
  owner?: string;
  model?: string;
  /** Paging, newest first: only jobs strictly older than this (createdMs, then id as the tie-break). */
  before?: { createdMs: number; id: string };
  /** 1 to MAX_JOB_LIST_LIMIT. */
  limit: number;
}

export const MAX_JOB_LIST_LIMIT = 500;

/** The store refuses a page size it would not serve in one query; the CLI checks it first with a friendlier message. */
export function checkJobListLimit(limit: number): void {
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_JOB_LIST_LIMIT) {
    throw new RangeError(`a job list limit is a whole number from 1 to ${MAX_JOB_LIST_LIMIT}, not ${limit}`);
  }
}

/** Milliseconds, nearest-rank percentiles (the ⌈p·n⌉-th smallest), so every value is one a job really took. */
export interface DurationSummary {
  p50: number;
  p95: number;
  max: number;
}

/** What finished in one time slice (`jobActivity`). */
export interface JobActivityBucket {
  /** The slice's start, a multiple of the bucket length. */
  startMs: number;
  succeeded: number;
  failed: number;
  cancelled: number;
  /** Images delivered by the jobs that succeeded. */
  images: number;
  /** finishedMs − startedMs (the last attempt) of the jobs that succeeded; null when none did. */
  runMs: DurationSummary | null;
  /** finishedMs − createdMs (queue wait and every attempt) of the same jobs; null when none did. */
  totalMs: DurationSummary | null;
}

/**
 * What can happen to a job, one event per thing that happened. A recovery that fails a job writes two:
 * `interrupted` (or `lease_expired`), then `failed`; alone, they mean the job went back to the queue.
 * succeeded, failed and cancelled are the last event of a job's run; `results_expired` may follow them.
 */
export type JobEventType =
  | 'queued'
  | 'started'
  | 'lease_renewal_refused'
  | 'lease_expired'
  | 'retry_scheduled'
  | 'released'
  | 'succeeded'
  | 'failed'
  | 'cancelled'
  | 'interrupted'
  | 'results_expired';

/** One line of a job's history, written in the same transaction as the transition it records. */
export interface JobEvent {
  /** 1, 2, … per job, in the order the transitions committed; never reused, so a reader can resume after one. */
  seq: number;
  atMs: number;
  type: JobEventType;
  /**
   * The attempt the event belongs to: the new attempt's number for `started`, the attempt given back for
   * `released`, otherwise the attempts started so far (0 while the job has not run).
   */
  attempt: number;
  /**
   * The replica that accepted the job (`queued`), or that runs or last ran it (every other event). A
   * lease_renewal_refused names the job's attempt and replica at the refusal, which may be a newer
   * attempt than the one whose renewal was refused.
   */
  replica: string | undefined;
  /**
   * Facts of the event's type, never a prompt or image bytes: `error` ({code, message}) on failed,
   * cancelled and retry_scheduled; `runAfterMs` on retry_scheduled; `images` and `receiptSeq` (the
   * receipt's sequence number, decimal text) on succeeded; `leaseExpiresMs` on started; `status` (the job's, when refused) on
   * lease_renewal_refused.
   */
  detail: Record<string, unknown>;
}

/** An event a transition appends (stores only): the attempt is the job's count plus `attemptOffset`. */
export interface NewJobEvent {
  type: JobEventType;
  detail?: Record<string, unknown>;
  attemptOffset?: number;
}

/** The most buckets one `jobActivity` call returns: a chart has no use for more. */
export const MAX_ACTIVITY_BUCKETS = 10_000;

/**
 * Jobs, and the outbox of their webhook deliveries (a job's delivery is written with its terminal transition,
 * by the stores' trigger on the jobs table).
 */
export interface JobStore extends WebhookOutbox {
  /**
   * Inserts a pending job. When the job carries an Idempotency-Key that this owner used within
   * `idempotencyTtlMs`, nothing is inserted and the earlier job is returned with `created: false`.
   */
  create(
    job: NewJob,
    idempotencyTtlMs: number,
    reservation?: Reservation,
    limits?: AdmissionLimits,
  ): Promise<{ job: Job; created: boolean }>;
  get(id: string): Promise<Job | undefined>;
  /** Jobs of this model not yet finished (pending or processing), from every owner. */
  countUnfinishedForModel(model: string): Promise<number>;
  /** Pending jobs waiting for this backend. */
  countPending(backendId: string): Promise<number>;
  /** Jobs the store holds, counted by status and model (every status and model with at least one job). */
  countByStatusAndModel(): Promise<Array<{ status: JobStatus; model: string; count: number }>>;
  /** Jobs matching the filter, newest first (createdMs descending, then id descending). */
  listJobs(filter: JobListFilter): Promise<Job[]>;
  /**
   * Jobs that finished (completed, failed or cancelled) from `sinceMs` to `nowMs`, bucketed by finishedMs
   * into slices of `bucketMs`: every bucket from the one holding sinceMs to the one holding nowMs is
   * present, oldest first, with zeros when nothing finished in it.
   */
  jobActivity(sinceMs: number, nowMs: number, bucketMs: number): Promise<JobActivityBucket[]>;
  /** The job's history, oldest first; [] for an unknown job (or one deleted past retention). */
  jobEvents(jobId: string): Promise<JobEvent[]>;
  /** Pending jobs of the same backend that will be claimed before this one. */
  countAhead(job: Job): Promise<number>;
  /**
   * Takes the oldest runnable pending job of the backend, starting an attempt under a fresh lease, and
   * records `replicaId` as the replica running it.
   */
  claimNext(backendId: string, replicaId: string, nowMs: number, leaseMs: number): Promise<ClaimedJob | undefined>;
  /** False when the lease is gone (the job was cancelled, or re-leased after a stall): the history records the refusal. */
  extendLease(id: string, leaseToken: string, leaseExpiresMs: number, nowMs: number): Promise<boolean>;
  /**
   * Completes the job with its result and signatures in one transition: takes the owner's next receipt
   * sequence number (above `signing.seqFloor` and every number given before), has the job signed with it,
   * and writes the job, the signature and the receipt together — so sequence order is commit order and a
   * settlement never covers a number before a lower one is written.
   */
  complete(id: string, leaseToken: string, result: JobResult, signing: ReceiptSigning, nowMs: number, expiresMs: number): Promise<boolean>;
  fail(id: string, leaseToken: string, error: JobError, nowMs: number, expiresMs: number): Promise<boolean>;
  /** Back to pending, to be claimed again no earlier than runAfterMs; the error is kept for the record. */
  retryLater(id: string, leaseToken: string, error: JobError, runAfterMs: number, nowMs: number): Promise<boolean>;
  /** Pending or processing → cancelled. Returns the job after the call (unchanged when already finished). */
  cancel(id: string, nowMs: number, expiresMs: number): Promise<Job | undefined>;
  /** Gives a claimed job back as if the attempt never started (a clean shutdown aborted it). */
  releaseClaim(id: string, leaseToken: string, nowMs: number): Promise<boolean>;
  /**
   * At start-up, after a crash: sync jobs not yet finished are cancelled (their callers are gone); every
   * async job left processing is re-queued or failed, as the policy says; jobs that already used
   * `maxAttempts` are failed. Only `replicaId`'s jobs where replicas share the store (the sync jobs it
   * accepted, the jobs it was running): another replica's running jobs are still running. A SQLite file
   * has one process, so every job in it is that process's.
   */
  recoverInterrupted(
    replicaId: string,
    policy: InterruptedJobPolicy,
    maxAttempts: number,
    nowMs: number,
    expiresMs: number,
  ): Promise<RecoveredJobs & { cancelled: string[] }>;
  /**
   * Processing jobs whose lease ran out (a stalled runner, a replica that died) go back to pending, or are
   * failed, as the policy and the attempts left say — as at start-up, for whichever replica ran them.
   */
  recoverExpiredLeases(
    policy: InterruptedJobPolicy,
    maxAttempts: number,
    nowMs: number,
    expiresMs: number,
  ): Promise<RecoveredJobs>;
  /** Marks finished jobs whose TTL passed as expired and drops their file references; returns their ids. */
  expireResults(nowMs: number, limit: number): Promise<string[]>;
  /** Whether any job still needs the blob (inputs of unfinished jobs, outputs of unexpired ones). */
  isBlobReferenced(sha256: string): Promise<boolean>;
  /** Forgets finished jobs that ended before the cut-off, with their events; returns how many. */
  deleteFinishedBefore(cutoffMs: number, limit: number): Promise<number>;
  /** Milliseconds per delivered image (last attempt's start → end) of recently completed jobs, newest first. */
  recentPerImageMs(backendId: string, limit: number): Promise<number[]>;
  ping(): Promise<void>;
  close(): Promise<void>;
}
