import type { Config } from '../config/schema.js';
import { PixeldError } from '../errors.js';
import { removeQuietly, type BlobStore } from '../images/blob-store.js';
import type { Logger } from '../obs/logger.js';
import type { JobSignals } from './job-signals.js';
import { isTerminal, newJobId, type ImageJobRequest, type Job, type JobInput, type JobWebhook } from './model.js';
import type { LivePartialImages, PartialImageSink } from './partial-images.js';
import type { JobRunner } from './runner.js';
import {
  InsufficientBalanceError,
  ModelBusyError,
  QueueFullError,
  type AdmissionLimits,
  type JobEvent,
  type JobStore,
  type Reservation,
} from './store.js';

export interface JobServiceDeps {
  store: JobStore;
  signals: JobSignals;
  /** This replica's name, recorded on the jobs it accepts. */
  replicaId: string;
  blobs: BlobStore;
  runner: JobRunner;
  jobs: Config['jobs'];
  /** Pending jobs each backend may hold before submits get 429. */
  maxQueuedJobs: ReadonlyMap<string, number>;
  logger: Logger;
  /** log.prompts: whether a job's queued line carries its prompt (users' text). */
  logPrompts: boolean;
  now: () => number;
}

export interface SubmitOptions {
  owner: string;
  /** What the job's n × price must fit in (0G users on priced models). */
  reservation: Reservation | undefined;
  delivery: 'sync' | 'async';
  idempotencyKey: string | undefined;
  baseUrl: string;
  /** The request that submits the job, named in its queued line. */
  requestId: string;
  /** A streaming caller's partial images (undefined: none wanted); released with stopPartialImages. */
  partialImages: PartialImageSink | undefined;
  /** Where the job's end is announced (already checked); undefined: nowhere. */
  webhook: JobWebhook | undefined;
}

export interface CancelOptions {
  /** The request that cancels the job, named in its cancelled line. */
  requestId: string;
  /** Why, when not the caller's own cancel (a sync caller that went away, a shutdown). */
  reason?: string;
}

/** Seconds a poll is told to wait, whatever the estimate says. */
const MIN_RETRY_AFTER_S = 1;
const MAX_RETRY_AFTER_S = 60;
/** The same bounds for `retry-after-ms`, the estimate before it is rounded up to whole seconds. */
const MIN_RETRY_AFTER_MS = 100;
const MAX_RETRY_AFTER_MS = MAX_RETRY_AFTER_S * 1000;

/** When a poller should come back: whole seconds for Retry-After, and the estimate itself for retry-after-ms. */
export interface RetryAfter {
  seconds: number;
  ms: number;
}

/**
 * What the HTTP routes call: admission (bounded queue, idempotency), reads, cancel and waiting for a
 * job to end. It owns the handing of uploaded files to the blob store so that an accepted job's inputs
 * are on disk before its row exists.
 */
export class JobService {
  private readonly shutdown = new AbortController();

  constructor(private readonly deps: JobServiceDeps) {}

  /** Aborts when the daemon begins to stop: sync waiters answer 503 and new submits are refused. */
  get shutdownSignal(): AbortSignal {
    return this.shutdown.signal;
  }

  beginShutdown(): void {
    this.shutdown.abort(new PixeldError('shutting_down', 'the provider is restarting; retry in a moment', { retryAfterSeconds: 5 }));
  }

  /** Returns the job and whether it was created now (false: an Idempotency-Key replay). */
  async submit(request: ImageJobRequest, options: SubmitOptions): Promise<{ job: Job; created: boolean }> {
    const { store, blobs, now, jobs } = this.deps;
    const temps = [...request.images, ...(request.mask ? [request.mask] : [])];
    try {
      if (this.shutdown.signal.aborted) throw this.shutdown.signal.reason;
      // The last of the disk is kept for jobs already accepted: they must still write images and receipts.
      const room = await blobs.room();
      if (!room.ok) {
        throw new PixeldError(
          'insufficient_storage',
          `the provider is low on storage space (${mib(room.freeBytes)} MiB free, ${mib(room.reservedBytes)} MiB kept for accepted jobs); try again later`,
          { retryAfterSeconds: 30 },
        );
      }
      const backendId = request.model.backend;
      const limits: AdmissionLimits = {
        maxPendingForBackend: this.deps.maxQueuedJobs.get(backendId),
        maxUnfinishedForModel: request.model.maxInFlight,
      };
      // The insert checks the bounds, atomically with the other replicas'. A request with uploads is checked
      // once before too, so a full queue costs no storing of its images.
      if (temps.length > 0) {
        if (limits.maxPendingForBackend !== undefined && (await store.countPending(backendId)) >= limits.maxPendingForBackend) {
          throw await this.admissionRefusal(new QueueFullError(limits.maxPendingForBackend), request);
        }
        if ((await store.countUnfinishedForModel(request.model.id)) >= request.model.maxInFlight) {
          throw await this.admissionRefusal(new ModelBusyError(request.model.maxInFlight), request);
        }
      }
      const inputs: JobInput[] = [];
      for (const [i, image] of temps.entries()) {
        const stored = await blobs.putFile(image.tmpPath, image.sha256);
        inputs.push({
          role: i < request.images.length ? 'image' : 'mask',
          sha256: stored.sha256,
          bytes: stored.bytes,
          mediaType: image.info.mediaType,
          width: image.info.width,
          height: image.info.height,
        });
      }
      const id = newJobId();
      // Before the insert, after which a runner may claim the job: its first backend call must ask for previews.
      if (options.partialImages) this.deps.runner.partialImages.attach(id, options.partialImages);
      const outcome = await store.create(
        {
          id,
          owner: options.owner,
          kind: request.kind,
          delivery: options.delivery,
          model: request.model.id,
          backendId,
          params: request.params,
          inputs,
          requestSha256: request.requestSha256,
          pricePerImageWei: request.model.pricePerImageWei,
          fingerprint: request.fingerprint,
          idempotencyKey: options.idempotencyKey,
          baseUrl: options.baseUrl,
          createdMs: now(),
          submittedBy: this.deps.replicaId,
          webhook: options.webhook,
        },
        jobs.idempotencyTtlMs,
        options.reservation,
        limits,
      ).catch(async (err: unknown) => {
        this.stopPartialImages(id);
        if (err instanceof QueueFullError || err instanceof ModelBusyError) throw await this.admissionRefusal(err, request);
        if (err instanceof InsufficientBalanceError) {
          throw new PixeldError(
            'insufficient_credits',
            `this request needs ${err.neededWei} wei (n × price per image); your available balance with this provider is ${err.availableWei} wei`,
          );
        }
        throw err;
      });
      // A replay is another job, which this request did not start: it gets that job's completed image only.
      if (!outcome.created) this.stopPartialImages(id);
      if (!outcome.created && outcome.job.fingerprint !== request.fingerprint) {
        throw new PixeldError(
          'idempotency_key_reused',
          'this Idempotency-Key was already used for a different request; use a new key for a new request',
        );
      }
      if (outcome.created) {
        this.logQueued(outcome.job, options.requestId);
        this.deps.signals.queued(backendId);
      }
      return outcome;
    } finally {
      // Uploads still in the temp dir were not taken into the blob store (an error happened first).
      await Promise.all(temps.map((t) => removeQuietly(t.tmpPath)));
    }
  }

  /** The streaming caller is done with the job: its partial images are no longer wanted. */
  stopPartialImages(id: string): void {
    this.deps.runner.partialImages.detach(id);
  }

  /** An async job's previews for event streams, while this replica holds them (it took the submit). */
  livePartialImagesOf(id: string): LivePartialImages | undefined {
    return this.deps.runner.partialImages.liveOf(id);
  }

  /** Percent done of a running job, when its backend reports progress. */
  progressOf(id: string): number | undefined {
    return this.deps.runner.progressOf(id);
  }

  async get(id: string): Promise<Job | undefined> {
    return this.deps.store.get(id);
  }

  /** The job's history, oldest first ([] for an unknown job). */
  async jobEvents(id: string): Promise<JobEvent[]> {
    return this.deps.store.jobEvents(id);
  }

  /** Resolves when this process hears the job ended (from any replica on PostgreSQL); rejects when `signal` aborts first. */
  untilFinished(id: string, signal: AbortSignal): Promise<void> {
    return this.deps.signals.untilFinished(id, signal);
  }

  /** Cancels a pending or running job; a finished job is returned as it is. */
  async cancel(id: string, options: CancelOptions): Promise<Job | undefined> {
    const { store, now, jobs, signals } = this.deps;
    const before = await store.get(id);
    const job = await store.cancel(id, now(), now() + jobs.resultTtlMs);
    if (job?.status === 'cancelled' && before !== undefined && before.status !== 'cancelled') {
      this.deps.logger.info('job cancelled', { jobId: id, requestId: options.requestId, was: before.status, reason: options.reason });
    }
    if (job?.status === 'cancelled') {
      signals.cancelled(id);
      signals.finished(id);
    }
    return job;
  }

  /**
   * Resolves with the job once it has ended, or as it is when `timeoutMs` passes or `signal` aborts.
   * Wakes on job events (every replica's, on PostgreSQL); a re-read each second also catches an end whose
   * event was missed (a dropped LISTEN connection).
   */
  async waitForEnd(id: string, timeoutMs: number, signal?: AbortSignal): Promise<Job | undefined> {
    const deadline = Date.now() + timeoutMs;
    const signals = this.deps.signals;
    for (;;) {
      const job = await this.deps.store.get(id);
      if (!job || isTerminal(job.status)) return job;
      const remaining = deadline - Date.now();
      if (remaining <= 0 || signal?.aborted) return job;
      const wait = new AbortController();
      const onAbort = () => wait.abort();
      signal?.addEventListener('abort', onAbort, { once: true });
      const timer = setTimeout(() => wait.abort(), Math.min(remaining, 1_000));
      try {
        await signals.untilFinished(id, wait.signal);
      } catch {
        // timeout slice or caller gone: loop re-reads the job
      } finally {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      }
    }
  }

  /**
   * When a poller should come back: the estimated time until this job ends, from its place in the queue,
   * the backend's concurrency and recent per-image run times.
   */
  async retryAfter(job: Job): Promise<RetryAfter> {
    const { runner, now } = this.deps;
    const perImageMs = runner.typicalPerImageMs(job.backendId) ?? 5_000;
    const ownMs = perImageMs * job.params.n;
    let estimateMs: number;
    if (job.status === 'processing') {
      const elapsedMs = now() - (job.startedMs ?? now());
      const progress = runner.progressOf(job.id);
      // A backend that reports progress knows better than our averages: extrapolate from it.
      estimateMs = progress !== undefined && progress > 0 ? (elapsedMs * (100 - progress)) / progress : ownMs - elapsedMs;
    } else {
      const ahead = await this.deps.store.countAhead(job);
      // A backend run by other replicas (0 here): at least one lane drains it.
      const slots = Math.max(1, runner.concurrencyOf(job.backendId));
      const busy = runner.runningCount(job.backendId);
      // Jobs ahead (assumed the same size as this one) drain through `slots` lanes, after the running ones.
      const waves = Math.floor((ahead + busy) / slots);
      estimateMs = waves * ownMs + ownMs;
    }
    return {
      seconds: clampSeconds(estimateMs / 1000),
      ms: Math.min(MAX_RETRY_AFTER_MS, Math.max(MIN_RETRY_AFTER_MS, Math.ceil(estimateMs))),
    };
  }

  private logQueued(job: Job, requestId: string): void {
    const { params } = job;
    this.deps.logger.info('job queued', {
      jobId: job.id,
      requestId,
      owner: job.owner,
      model: job.model,
      backendId: job.backendId,
      kind: job.kind,
      delivery: job.delivery,
      n: params.n,
      size: params.size,
      ...(this.deps.logPrompts ? { prompt: params.prompt, negativePrompt: params.negativePrompt } : {}),
    });
  }

  private async admissionRefusal(err: QueueFullError | ModelBusyError, request: ImageJobRequest): Promise<PixeldError> {
    const model = request.model.id;
    const options = { retryAfterSeconds: await this.queueDrainSeconds(request.model.backend), cause: err };
    return err instanceof QueueFullError
      ? new PixeldError('queue_full', `the queue for model '${model}' is full; retry later`, options)
      : new PixeldError('model_busy', `model '${model}' has ${err.limit} jobs in flight; retry later`, options);
  }

  /** A full queue frees a place when a running job ends: about one image's time. */
  private async queueDrainSeconds(backendId: string): Promise<number> {
    return clampSeconds((this.deps.runner.typicalPerImageMs(backendId) ?? 5_000) / 1000);
  }
}

function clampSeconds(seconds: number): number {
  return Math.min(MAX_RETRY_AFTER_S, Math.max(MIN_RETRY_AFTER_S, Math.ceil(seconds)));
}

function mib(bytes: number): string {
  return (bytes / (1024 * 1024)).toFixed(1);
}
