import type { RateLimitBuckets } from '../auth/rate-limiter.js';
import type { Config } from '../config/schema.js';
import type { BlobStore } from '../images/blob-store.js';
import type { Logger } from '../obs/logger.js';
import { logRecoveredJobs } from './runner.js';
import type { InterruptedJobPolicy, JobStore, RecoveredJobs } from './store.js';

export interface SweeperDeps {
  store: JobStore;
  blobs: BlobStore;
  rateLimitBuckets: RateLimitBuckets;
  /** Whether a job whose runner vanished (its lease ran out) may run again: its backend's rerunInterruptedJobs. */
  interruptedJobPolicy: InterruptedJobPolicy;
  jobs: Config['jobs'];
  logger: Logger;
  now: () => number;
}

/** Upload temp files older than this belong to requests that died half-way. */
const STALE_TEMP_MS = 60 * 60_000;
const BATCH = 500;

export interface SweepReport {
  leasesRequeued: number;
  /** Jobs whose lease ran out that their backend's policy (or their attempts) did not allow to run again. */
  leasesFailed: number;
  resultsExpired: number;
  blobsDeleted: number;
  tempFilesDeleted: number;
  recordsDeleted: number;
  rateLimitBucketsPruned: number;
}

/**
 * Periodic housekeeping: re-queues jobs whose runner stalled past its lease, expires results whose TTL
 * passed, deletes blobs no job needs any more, stale upload temp files, job records past their
 * retention, and rate-limit buckets full again (idle owners' rows would otherwise pile up in PostgreSQL).
 */
export class Sweeper {
  private timer: NodeJS.Timeout | undefined;
  private leaseTimer: NodeJS.Timeout | undefined;
  private running: Promise<SweepReport> | undefined;
  private recoveringLeases: Promise<unknown> | undefined;

  constructor(private readonly deps: SweeperDeps) {}

  start(): void {
    const { jobs, logger } = this.deps;
    this.timer = setInterval(() => void this.sweep().catch((err) => logger.error('sweep failed', { error: String(err) })), jobs.sweepIntervalMs);
    this.timer.unref();
    // Expired leases are looked for every half lease, not every sweep: a dead replica's jobs should wait
    // about a lease for another replica, not a lease plus a sweep interval.
    this.leaseTimer = setInterval(() => {
      this.recoveringLeases ??= this.recoverLeases()
        .then((leases) => {
          if (leases.requeued.length + leases.failed.length > 0) {
            logger.warn('recovered jobs whose lease ran out', { requeued: leases.requeued.length, failed: leases.failed.length });
          }
        })
        .catch((err: unknown) => logger.error('could not recover expired leases', { error: String(err) }))
        .finally(() => (this.recoveringLeases = undefined));
    }, Math.max(100, Math.floor(jobs.leaseMs / 2)));
    this.leaseTimer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    if (this.leaseTimer) clearInterval(this.leaseTimer);
    await Promise.all([this.running?.catch(() => undefined), this.recoveringLeases]);
  }

  /** Every recovered job gets its own line here, whether the lease timer or a sweep found it. */
  private async recoverLeases(): Promise<RecoveredJobs> {
    const { store, interruptedJobPolicy, jobs, now, logger } = this.deps;
    const recovered = await store.recoverExpiredLeases(interruptedJobPolicy, jobs.maxAttempts, now(), now() + jobs.resultTtlMs);
    logRecoveredJobs(logger, recovered, 'lease expired');
    return recovered;
  }

  /** One pass; concurrent calls share the pass in progress. */
  sweep(): Promise<SweepReport> {
    this.running ??= this.pass().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async pass(): Promise<SweepReport> {
    const { store, blobs, rateLimitBuckets, jobs, now, logger } = this.deps;
    const report: SweepReport = { leasesRequeued: 0, leasesFailed: 0, resultsExpired: 0, blobsDeleted: 0, tempFilesDeleted: 0, recordsDeleted: 0, rateLimitBucketsPruned: 0 };
    const leases = await this.recoverLeases();
    report.leasesRequeued = leases.requeued.length;
    report.leasesFailed = leases.failed.length;
    for (;;) {
      const expired = await store.expireResults(now(), BATCH);
      report.resultsExpired += expired.length;
      if (expired.length < BATCH) break;
    }
    for (;;) {
      const deleted = await store.deleteFinishedBefore(now() - jobs.recordRetentionMs, BATCH);
      report.recordsDeleted += deleted;
      if (deleted < BATCH) break;
    }
    const graceCutoff = now() - jobs.orphanGraceMs;
    for await (const blob of blobs.list()) {
      if (blob.storedMs > graceCutoff) continue;
      if (await store.isBlobReferenced(blob.sha256)) continue;
      if (await blobs.removeUnlessStoredAfter(blob.sha256, graceCutoff)) report.blobsDeleted += 1;
    }
    report.tempFilesDeleted = await blobs.removeStaleTemp(now() - STALE_TEMP_MS);
    report.rateLimitBucketsPruned = await rateLimitBuckets.pruneIdle();
    if (Object.values(report).some((n) => n > 0)) logger.info('sweep', report);
    return report;
  }
}
