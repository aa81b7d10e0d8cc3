import { EventEmitter, once } from 'node:events';

/**
 * What happens to jobs, told to whoever waits for it in this process: long-polls and sync requests wait
 * for a job's end, the runner looks for work when a job is queued and stops an attempt whose job was
 * cancelled. This process's own runner and service report here directly; with replicas on PostgreSQL,
 * listenForJobSignals (postgres/job-notifications.ts) reports every replica's events here too, so an event
 * may arrive twice — every listener re-reads the store, never trusts the event alone.
 */
export class JobSignals {
  private readonly emitter = new EventEmitter();

  constructor() {
    // One listener per waiting request: thousands of long-polls are normal, not a leak.
    this.emitter.setMaxListeners(0);
  }

  /** The job completed, failed or was cancelled. */
  finished(jobId: string): void {
    this.emitter.emit(`finished:${jobId}`);
  }

  /** The job was cancelled: whoever runs it should stop. */
  cancelled(jobId: string): void {
    this.emitter.emit('cancelled', jobId);
  }

  /** A job of this backend is waiting to be claimed. */
  queued(backendId: string): void {
    this.emitter.emit('queued', backendId);
  }

  onCancelled(listener: (jobId: string) => void): () => void {
    this.emitter.on('cancelled', listener);
    return () => this.emitter.off('cancelled', listener);
  }

  onQueued(listener: (backendId: string) => void): () => void {
    this.emitter.on('queued', listener);
    return () => this.emitter.off('queued', listener);
  }

  /** Resolves when the job is reported finished; rejects when `signal` aborts first. */
  async untilFinished(jobId: string, signal: AbortSignal): Promise<void> {
    await once(this.emitter, `finished:${jobId}`, { signal });
  }
}
