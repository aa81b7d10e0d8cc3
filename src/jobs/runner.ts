import { createHash } from 'node:crypto';
import { BackendError } from '../backends/errors.js';
import type { BackendCallOptions, BackendCallResult, ImageBackend, InputImage } from '../backends/types.js';
import type { ModelCatalog } from '../backends/catalog.js';
import type { Config } from '../config/schema.js';
import { PixeldError } from '../errors.js';
import { storageError, type BlobStore } from '../images/blob-store.js';
import { NotAnImageError, normalizeOutputImage, type NormalizedImage } from '../images/normalize-output.js';
import type { Logger } from '../obs/logger.js';
import type { TeeKeyProvider } from '../tee/key-provider.js';
import { signJob, type JobSignature } from '../tee/receipt.js';
import type { JobSignals } from './job-signals.js';
import { newToken, type Job, type JobError, type JobResult, type StoredImage } from './model.js';
import { PartialImageHub } from './partial-images.js';
import type { ClaimedJob, InterruptedJobPolicy, JobStore, RecoveredJobs } from './store.js';

export interface RunnerDeps {
  store: JobStore;
  /** Where queued and cancelled jobs are heard of (this process's and, on PostgreSQL, every replica's). */
  signals: JobSignals;
  /** This replica's name, recorded on the jobs it claims. */
  replicaId: string;
  /** Whether a job cut off by a crash may run again (its backend's rerunInterruptedJobs). */
  interruptedJobPolicy: InterruptedJobPolicy;
  blobs: BlobStore;
  backends: ReadonlyMap<string, ImageBackend>;
  /** Calls each backend may run at once, by backend id. */
  concurrency: ReadonlyMap<string, number>;
  catalog: ModelCatalog;
  /** Signs every completed job's request and images (tee.md §3). */
  tee: TeeKeyProvider;
  /**
   * Each user's receipts are numbered above what the TEE already signed in settlements (the settlement
   * journal's floor), so a rolled-back database cannot hand out numbers the chain has passed. @default 0
   */
  receiptSeqFloor?: (user: string) => bigint;
  /** Provider wallet address named in receipts. */
  providerAddress: string;
  jobs: Config['jobs'];
  maxOutputPixels: number;
  logger: Logger;
  now: () => number;
  /** Told when an attempt ends, with how it ended and how long it ran (metrics). */
  onAttemptEnd?: (backendId: string, outcome: AttemptOutcome, ms: number) => void;
}

/**
 * How an attempt ended: its job completed (`dropped` when it had meanwhile been cancelled or re-leased),
 * will be retried, failed for good, was cancelled, or was given back by a clean shutdown.
 */
export type AttemptOutcome = 'completed' | 'dropped' | 'retried' | 'failed' | 'cancelled' | 'released';

/** How often the runner looks for work it was not told about (backoff timers, recovered jobs). */
const IDLE_POLL_MS = 500;
/** Per-image run times remembered for the Retry-After estimate. */
const DURATION_SAMPLES = 20;
/** First and longest wait before recording an attempt's outcome again, when the store could not write it. */
const RECORD_RETRY_FIRST_MS = 500;
const RECORD_RETRY_MAX_MS = 30_000;

/** What the runner has done since start, for /v1/admin/metrics; the numbers only grow. */
export interface RunnerCounters {
  attemptsStarted: number;
  jobsCompleted: number;
  jobsFailed: number;
  /** Attempts that failed transiently and were put back with a backoff. */
  attemptsRetried: number;
  /** Attempts aborted because their job was cancelled. */
  attemptsCancelled: number;
  /** Attempts given back to the queue by a clean shutdown. */
  attemptsReleased: number;
  imagesDelivered: number;
  /** Times an attempt's outcome could not be written (a full disk) and had to be written again. */
  recordRetries: number;
}

/**
 * Runs jobs from the store on their backends, at most `concurrency` backend calls at a time per backend:
 * a call slot is freed as soon as the backend answers, so the next job's call starts while the last
 * one's images are checked, hashed, signed and stored (the GPU does not wait for our bookkeeping). The runner
 * owns cancellation and deadlines: every attempt gets an AbortSignal that fires on cancel or when
 * `attemptTimeoutMs` passes. It splits n into calls of `maxImagesPerCall`, tops up short answers with
 * extra calls on fresh seeds, retries transient failures with backoff, normalises the output and
 * completes the job in one store transition.
 */
export class JobRunner {
  readonly counters: RunnerCounters = {
    attemptsStarted: 0,
    jobsCompleted: 0,
    jobsFailed: 0,
    attemptsRetried: 0,
    attemptsCancelled: 0,
    attemptsReleased: 0,
    imagesDelivered: 0,
    recordRetries: 0,
  };
  private readonly running = new Map<string, { controller: AbortController; backendId: string }>();
  private readonly runningPerBackend = new Map<string, number>();
  /** Backend call slots taken, by backend id: calls in progress, and claimed jobs about to make their first. */
  private readonly slotsTaken = new Map<string, number>();
  /** Running jobs waiting for a slot for a further call (n split over calls, top-ups): served before new claims. */
  private readonly slotWaiters = new Map<string, Array<() => void>>();
  private readonly perImageMs = new Map<string, number[]>();
  /** Progress (0–99) of running jobs whose backend reports it. */
  private readonly progress = new Map<string, number>();
  /** Streaming callers' partial images, by job id: handed to the backend calls of jobs someone streams. */
  readonly partialImages = new PartialImageHub();
  private timer: NodeJS.Timeout | undefined;
  private stopped = true;
  private pumping = new Set<string>();
  /** Backends woken while their pump was busy: it looks once more before it stops. */
  private repump = new Set<string>();
  private unsubscribe: Array<() => void> = [];

  constructor(private readonly deps: RunnerDeps) {}

  async start(): Promise<void> {
    const { store, jobs, now, logger } = this.deps;
    const recovered = await store.recoverInterrupted(
      this.deps.replicaId,
      this.deps.interruptedJobPolicy,
      jobs.maxAttempts,
      now(),
      now() + jobs.resultTtlMs,
    );
    const counts = { requeued: recovered.requeued.length, failed: recovered.failed.length, cancelled: recovered.cancelled.length };
    if (counts.requeued + counts.failed + counts.cancelled > 0) {
      logger.warn('recovered jobs interrupted by the last shutdown', counts);
      logRecoveredJobs(logger, recovered, 'restart');
    }
    for (const backendId of this.deps.backends.keys()) {
      const samples = await store.recentPerImageMs(backendId, DURATION_SAMPLES);
      this.perImageMs.set(backendId, samples);
    }
    this.stopped = false;
    this.unsubscribe = [
      this.deps.signals.onQueued((backendId) => this.wake(backendId)),
      this.deps.signals.onCancelled((jobId) => this.abort(jobId)),
    ];
    this.timer = setInterval(() => this.wakeAll(), IDLE_POLL_MS);
    this.timer.unref();
    this.wakeAll();
  }

  /** Stops claiming work and aborts running attempts; their jobs are picked up again at the next start. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    for (const unsubscribe of this.unsubscribe.splice(0)) unsubscribe();
    for (const { controller } of this.running.values()) {
      controller.abort(new PixeldError('shutting_down', 'the daemon is shutting down'));
    }
    const deadline = Date.now() + 5_000;
    while (this.running.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  }

  /** A job of this backend was queued: look for work now rather than at the next poll. */
  wake(backendId: string): void {
    // Replicas may serve different backends: a job queued for one this replica lacks is not its to claim.
    if (this.stopped || !this.deps.backends.has(backendId)) return;
    if (this.pumping.has(backendId)) this.repump.add(backendId);
    else void this.pump(backendId);
  }

  /** Aborts the running attempt of a job that was just cancelled in the store. */
  abort(jobId: string): void {
    this.running.get(jobId)?.controller.abort(new DOMException('the job was cancelled', 'AbortError'));
  }

  /** Percent done of a running job, when its backend reports progress. */
  progressOf(jobId: string): number | undefined {
    return this.progress.get(jobId);
  }

  runningCount(backendId: string): number {
    return this.runningPerBackend.get(backendId) ?? 0;
  }

  /** Typical milliseconds one image takes on this backend, from recent jobs; undefined before any ran. */
  typicalPerImageMs(backendId: string): number | undefined {
    const samples = this.perImageMs.get(backendId);
    if (!samples || samples.length === 0) return undefined;
    const sorted = [...samples].sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)];
  }

  concurrencyOf(backendId: string): number {
    return this.concurrency(backendId);
  }

  private wakeAll(): void {
    for (const backendId of this.deps.backends.keys()) void this.pump(backendId);
  }

  /** 0 for a backend this replica does not run (another replica sharing the database does). */
  private concurrency(backendId: string): number {
    return this.deps.concurrency.get(backendId) ?? 0;
  }

  private async pump(backendId: string): Promise<void> {
    if (this.pumping.has(backendId)) return;
    this.pumping.add(backendId);
    try {
      while (!this.stopped && (this.slotsTaken.get(backendId) ?? 0) < this.concurrency(backendId)) {
        const { store, now, jobs } = this.deps;
        // Taken before the claim, so a running job's further call cannot take it in between.
        this.slotsTaken.set(backendId, (this.slotsTaken.get(backendId) ?? 0) + 1);
        let job: ClaimedJob | undefined;
        try {
          job = await store.claimNext(backendId, this.deps.replicaId, now(), jobs.leaseMs);
        } catch (err) {
          this.releaseSlot(backendId, false);
          this.deps.logger.error('could not claim a job', { backendId, error: String(err) });
          return;
        }
        if (!job) {
          this.releaseSlot(backendId, false);
          return;
        }
        this.runningPerBackend.set(backendId, this.runningCount(backendId) + 1);
        void this.run(job).finally(() => {
          this.runningPerBackend.set(backendId, this.runningCount(backendId) - 1);
        });
      }
    } finally {
      this.pumping.delete(backendId);
      if (this.repump.delete(backendId)) this.wake(backendId);
    }
  }

  /** Waits for a call slot on this backend; rejects with the signal's reason if it aborts first. */
  private takeSlot(backendId: string, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    if ((this.slotsTaken.get(backendId) ?? 0) < this.concurrency(backendId)) {
      this.slotsTaken.set(backendId, (this.slotsTaken.get(backendId) ?? 0) + 1);
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const waiters = this.slotWaiters.get(backendId) ?? [];
      this.slotWaiters.set(backendId, waiters);
      const onAbort = () => {
        waiters.splice(waiters.indexOf(granted), 1);
        reject(signal.reason);
      };
      const granted = () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      };
      signal.addEventListener('abort', onAbort, { once: true });
      waiters.push(granted);
    });
  }

  /** Hands the slot to a running job waiting for one, or frees it and (unless told not to) looks for new work. */
  private releaseSlot(backendId: string, lookForWork = true): void {
    const next = this.slotWaiters.get(backendId)?.shift();
    if (next) {
      next();
      return;
    }
    this.slotsTaken.set(backendId, (this.slotsTaken.get(backendId) ?? 0) - 1);
    if (lookForWork) this.wake(backendId);
  }

  private async run(job: ClaimedJob): Promise<void> {
    const { store, jobs, now, logger } = this.deps;
    const backend = this.deps.backends.get(job.backendId);
    const controller = new AbortController();
    this.running.set(job.id, { controller, backendId: job.backendId });
    const startedMs = now();
    const deadlineMs = startedMs + jobs.attemptTimeoutMs;
    const deadline = setTimeout(
      () => controller.abort(new DOMException(`no result within ${jobs.attemptTimeoutMs} ms`, 'TimeoutError')),
      jobs.attemptTimeoutMs,
    );
    const log = logger.child({ jobId: job.id, backendId: job.backendId, attempt: job.attempts });
    // The lease is renewed for as long as this attempt runs, completion and failure records included: a
    // replica that dies stops renewing, and its job goes to another replica `leaseMs` later. A renewal the
    // store refuses means the job is no longer ours (cancelled, or re-leased after a stall): stop at once.
    // Once the outcome is being written, that write's own lease check decides (a renewal racing the
    // completion's commit is refused because the job just ended, not because it was taken).
    let writingOutcome = false;
    const renewal = setInterval(() => {
      const at = now();
      store.extendLease(job.id, job.leaseToken, at + jobs.leaseMs, at).then(
        (held) => {
          if (!held && !writingOutcome && !controller.signal.aborted) {
            log.warn('attempt aborted: the job\'s lease was lost (cancelled, or taken over after a stall)');
            controller.abort(new DOMException('the job\'s lease was lost', 'AbortError'));
          }
        },
        (err: unknown) => log.warn('could not renew the job\'s lease; trying again', { error: String(err) }),
      );
    }, Math.max(100, Math.floor(jobs.leaseMs / 3)));
    renewal.unref();
    this.counters.attemptsStarted += 1;
    // The pump took a call slot for this job's first call; produce() gives it back when the call ends.
    const slot = { held: true };
    let outcome: AttemptOutcome | undefined;
    try {
      if (!backend) throw new PixeldError('internal_error', `backend '${job.backendId}' is not configured any more`);
      log.info('job started', { replica: this.deps.replicaId, model: job.model, n: job.params.n });
      const { result, upstream } = await this.produce(job, backend, controller.signal, deadlineMs, slot, log);
      const signing = { seqFloor: this.deps.receiptSeqFloor?.(job.owner) ?? 0n, sign: (seq: bigint) => this.sign(job, result, seq) };
      const finishedMs = now();
      writingOutcome = true;
      if (await store.complete(job.id, job.leaseToken, result, signing, finishedMs, finishedMs + jobs.resultTtlMs)) {
        this.recordDuration(job.backendId, (finishedMs - startedMs) / Math.max(1, result.images.length));
        this.counters.jobsCompleted += 1;
        this.counters.imagesDelivered += result.images.length;
        outcome = 'completed';
        log.info('job completed', {
          images: result.images.length,
          requested: job.params.n,
          ms: finishedMs - startedMs,
          ...(result.warnings.length > 0 ? { warnings: result.warnings } : {}),
          ...(upstream.length > 0 ? { upstream } : {}),
        });
      } else {
        outcome = 'dropped';
        log.info('job finished after it was cancelled or re-leased; result dropped');
      }
    } catch (err) {
      writingOutcome = true;
      outcome = await this.recordFailure(job, err, controller.signal, log);
    } finally {
      if (outcome !== undefined) this.deps.onAttemptEnd?.(job.backendId, outcome, now() - startedMs);
      if (slot.held) this.releaseSlot(job.backendId);
      clearTimeout(deadline);
      clearInterval(renewal);
      this.running.delete(job.id);
      this.progress.delete(job.id);
      this.deps.signals.finished(job.id);
    }
  }

  /**
   * Records a failed attempt. When the store cannot write (a full disk: SQLITE_FULL), the job keeps its
   * lease and the write is tried again with a growing wait rather than escaping as an unhandled rejection
   * (which would end the process); nothing is lost. On stop it is left to the next start's recovery.
   */
  private async recordFailure(job: ClaimedJob, err: unknown, signal: AbortSignal, log: Logger): Promise<AttemptOutcome | undefined> {
    for (let waitMs = RECORD_RETRY_FIRST_MS; ; waitMs = Math.min(2 * waitMs, RECORD_RETRY_MAX_MS)) {
      try {
        return await this.handleFailure(job, err, signal, log);
      } catch (writeErr) {
        if (this.stopped) {
          log.error('could not record the attempt before stopping; the job is recovered at the next start', { error: String(writeErr) });
          return undefined;
        }
        this.counters.recordRetries += 1;
        log.error('could not record the attempt; trying again', { error: String(writeErr), retryInMs: waitMs });
        await new Promise((resolve) => setTimeout(resolve, waitMs).unref());
      }
    }
  }

  private async handleFailure(job: ClaimedJob, err: unknown, signal: AbortSignal, log: Logger): Promise<AttemptOutcome> {
    const { store, jobs, now } = this.deps;
    const reason: unknown = signal.aborted ? signal.reason : undefined;
    if (reason instanceof DOMException && reason.name === 'AbortError') {
      this.counters.attemptsCancelled += 1;
      // The cancel itself is logged where it happened ('job cancelled'); this only says the attempt stopped.
      log.debug('attempt aborted: job cancelled');
      return 'cancelled';
    }
    if (reason instanceof PixeldError && reason.code === 'shutting_down') {
      // A clean stop is not the job's fault: it goes back to the queue without spending an attempt.
      await store.releaseClaim(job.id, job.leaseToken, now());
      this.counters.attemptsReleased += 1;
      log.info('attempt aborted: shutting down; job returned to the queue');
      return 'released';
    }
    // A write that failed for lack of space (an image file, the completion itself) is retried like a busy backend.
    const failure = classify(storageError(err), reason, jobs.attemptTimeoutMs);
    const finishedMs = now();
    if (failure.retryable && job.attempts < jobs.maxAttempts) {
      const backoff = failure.retryAfterMs ?? jobs.retryBackoffMs * 2 ** (job.attempts - 1);
      await store.retryLater(job.id, job.leaseToken, failure.error, finishedMs + backoff, finishedMs);
      this.counters.attemptsRetried += 1;
      setTimeout(() => this.wake(job.backendId), backoff).unref();
      // `error`, not `message`: winston would append a meta `message` to the line's own, which stays fixed for jq.
      log.warn('attempt failed; will retry', { code: failure.error.code, error: failure.error.message, retryInMs: backoff, details: failure.details });
      return 'retried';
    }
    await store.fail(job.id, job.leaseToken, failure.error, finishedMs, finishedMs + jobs.resultTtlMs);
    this.counters.jobsFailed += 1;
    const level = failure.error.code === 'internal_error' ? 'error' : 'warn';
    log.log(level, 'job failed', { code: failure.error.code, error: failure.error.message, details: failure.details, attempts: job.attempts });
    return 'failed';
  }

  private async produce(
    job: Job,
    backend: ImageBackend,
    signal: AbortSignal,
    deadlineMs: number,
    slot: { held: boolean },
    log: Logger,
  ): Promise<{ result: JobResult; upstream: Array<Record<string, string>> }> {
    const { params } = job;
    const inputs = await Promise.all(job.inputs.filter((i) => i.role === 'image').map((i) => this.inputImage(i)));
    const maskInput = job.inputs.find((i) => i.role === 'mask');
    const base: Omit<BackendCallOptions, 'n' | 'seed' | 'onPartialImage'> = {
      model: this.backendModel(job),
      prompt: params.prompt,
      size: params.size,
      quality: params.quality,
      background: params.background,
      outputFormat: params.outputFormat,
      negativePrompt: params.negativePrompt,
      numInferenceSteps: params.numInferenceSteps,
      guidanceScale: params.guidanceScale,
      images: job.kind === 'edit' ? inputs : undefined,
      mask: maskInput ? await this.inputImage(maskInput) : undefined,
      signal,
      deadlineMs,
      onProgress: () => undefined,
    };
    // With each image's sha256: a copy of one (a server that reuses one seed for a whole call) is neither
    // delivered nor billed twice; the next call tops the job up, or fewer are delivered.
    const delivered: Array<NormalizedImage & { sha256: string }> = [];
    let duplicates = 0;
    const warnings = new Set<string>();
    // The trace ids of the backend's answers (one per call), so one job's line leads to the upstream's logs.
    const upstream: Array<Record<string, string>> = [];
    let lastRejection: string | undefined;
    let nextSeed = params.seed;
    const callLimit = Math.ceil(params.n / backend.maxImagesPerCall) + this.deps.jobs.maxTopUpCalls;
    for (let call = 0; call < callLimit && delivered.length < params.n; call += 1) {
      const want = Math.min(backend.maxImagesPerCall, params.n - delivered.length);
      const seed = nextSeed;
      // Every image gets its own seed, also in top-up calls, so a short answer is never filled with copies.
      nextSeed += want;
      const before = delivered.length;
      const onProgress = (percent: number) => {
        if (!Number.isFinite(percent)) return;
        // The job's share done: images already delivered, plus this call's part of its own images.
        const overall = Math.floor((100 * (before + (want * Math.min(100, Math.max(0, percent))) / 100)) / params.n);
        this.progress.set(job.id, Math.max(this.progress.get(job.id) ?? 0, Math.min(99, overall)));
      };
      if (!slot.held) {
        await this.takeSlot(job.backendId, signal);
        slot.held = true;
      }
      let answer: BackendCallResult;
      const callStartedMs = this.deps.now();
      try {
        const onPartialImage = this.partialImages.forwarder(job.id, () => this.progress.get(job.id) ?? 0);
        answer = await backend.generate({ ...base, n: want, seed, onProgress, onPartialImage });
      } finally {
        slot.held = false;
        this.releaseSlot(job.backendId);
      }
      if (answer.response.headers) upstream.push(answer.response.headers);
      log.debug('backend call answered', {
        call: call + 1,
        n: want,
        images: answer.images.length,
        ms: this.deps.now() - callStartedMs,
        ...(answer.response.headers ? { upstream: answer.response.headers } : {}),
      });
      for (const w of answer.warnings) warnings.add(w.feature ? `${w.feature}: ${w.message}` : w.message);
      for (const bytes of answer.images.slice(0, want)) {
        try {
          const image = await normalizeOutputImage(bytes, {
            outputFormat: params.outputFormat,
            outputCompression: params.outputCompression,
            background: params.background,
            maxPixels: this.deps.maxOutputPixels,
          });
          const sha256 = createHash('sha256').update(image.bytes).digest('hex');
          if (delivered.some((d) => d.sha256 === sha256)) {
            duplicates += 1;
            continue;
          }
          delivered.push({ ...image, sha256 });
        } catch (err) {
          if (!(err instanceof NotAnImageError)) throw err;
          lastRejection = err.message;
        }
      }
    }
    if (delivered.length === 0) {
      throw new BackendError(backend.id, 'bad_response', lastRejection ?? 'the backend answered without any image');
    }
    if (duplicates > 0) warnings.add(`the backend returned ${duplicates} byte-identical cop${duplicates === 1 ? 'y' : 'ies'} of an image; each image is delivered and billed once`);
    if (delivered.length < params.n) warnings.add(`delivered ${delivered.length} of ${params.n} requested images`);
    const images: StoredImage[] = [];
    for (const image of delivered) {
      const stored = await this.deps.blobs.putBuffer(image.bytes, image.sha256);
      images.push({ sha256: stored.sha256, mediaType: image.mediaType, bytes: stored.bytes, width: image.width, height: image.height });
    }
    const first = delivered[0]!;
    const result: JobResult = {
      created: Math.floor(this.deps.now() / 1000),
      images,
      size: `${first.width}x${first.height}`,
      quality: params.quality,
      outputFormat: params.outputFormat,
      background: delivered.some((i) => i.hasAlpha) && params.background !== 'opaque' ? 'transparent' : 'opaque',
      fileToken: newToken(),
      warnings: [...warnings],
    };
    return { result, upstream };
  }

  /** Signed inside the completion, so no completed job is ever without its signatures. */
  private sign(job: Job, result: JobResult, seq: bigint): JobSignature {
    const images = result.images.map((i) => i.sha256);
    return signJob(this.deps.tee, {
      seq,
      provider: this.deps.providerAddress,
      job: job.id,
      model: job.model,
      user: job.owner,
      requestSha256: job.requestSha256,
      imageSha256: images,
      pricePerImageWei: job.pricePerImageWei,
      feeWei: job.pricePerImageWei * BigInt(images.length),
      created: result.created,
    });
  }

  private backendModel(job: Job): string {
    const model = this.deps.catalog.models.find((m) => m.id === job.model);
    return model?.backendModel ?? job.model;
  }

  private async inputImage(input: Job['inputs'][number]): Promise<InputImage> {
    return {
      // On PostgreSQL, copied out of the database first when another replica accepted the job.
      path: await this.deps.blobs.localPath(input.sha256),
      mediaType: input.mediaType,
      width: input.width,
      height: input.height,
      sha256: input.sha256,
    };
  }

  private recordDuration(backendId: string, perImageMs: number): void {
    const samples = this.perImageMs.get(backendId) ?? [];
    samples.unshift(perImageMs);
    if (samples.length > DURATION_SAMPLES) samples.length = DURATION_SAMPLES;
    this.perImageMs.set(backendId, samples);
  }
}

/**
 * One `job recovered` line per job a recovery touched, so each job's own lines tell the whole story: `restart`
 * for jobs the last shutdown interrupted, `lease expired` for jobs whose replica stopped answering.
 */
export function logRecoveredJobs(logger: Logger, recovered: RecoveredJobs & { cancelled?: string[] }, cause: 'restart' | 'lease expired'): void {
  for (const outcome of ['requeued', 'failed', 'cancelled'] as const) {
    for (const jobId of recovered[outcome] ?? []) logger.warn('job recovered', { jobId, outcome, cause });
  }
}

interface Failure {
  error: JobError;
  retryable: boolean;
  retryAfterMs: number | undefined;
  details: string[];
}

function classify(err: unknown, abortReason: unknown, attemptTimeoutMs: number): Failure {
  if ((abortReason instanceof DOMException && abortReason.name === 'TimeoutError') || (err instanceof BackendError && err.kind === 'timeout')) {
    return {
      error: { code: 'upstream_timeout', message: `the backend did not finish within ${Math.round(attemptTimeoutMs / 1000)} s` },
      retryable: false,
      retryAfterMs: undefined,
      details: [],
    };
  }
  if (err instanceof BackendError) {
    switch (err.kind) {
      case 'moderation':
        return { error: { code: 'moderation_blocked', message: err.message }, retryable: false, retryAfterMs: undefined, details: err.details };
      case 'unavailable':
        return {
          error: { code: 'upstream_error', message: `the backend is unavailable: ${err.message}` },
          retryable: true,
          retryAfterMs: err.retryAfterMs,
          details: err.details,
        };
      default:
        return { error: { code: 'upstream_error', message: `the backend failed: ${err.message}` }, retryable: false, retryAfterMs: undefined, details: err.details };
    }
  }
  if (err instanceof PixeldError) {
    return { error: { code: err.code, message: err.message }, retryable: err.retryable, retryAfterMs: undefined, details: err.details };
  }
  return {
    error: { code: 'internal_error', message: 'the job failed inside the daemon; the operator can find the cause in the log' },
    retryable: false,
    retryAfterMs: undefined,
    details: [String((err as Error)?.stack ?? err)],
  };
}
