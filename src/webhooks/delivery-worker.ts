import type { Config } from '../config/schema.js';
import type { Base64Images } from '../http/render.js';
import { jsonBody } from '../http/render.js';
import type { JobStore } from '../jobs/store.js';
import type { Logger } from '../obs/logger.js';
import { finishedJobBody } from './job-body.js';
import type { ClaimedWebhookDelivery, WebhookAttemptOutcome } from './outbox.js';
import type { WebhookSecrets } from './secrets.js';
import { postWebhook, printableUrl, WebhookUrlError, type WebhookNetDeps } from './webhook-url.js';

/**
 * Sends the outbox's deliveries. Every `pollIntervalMs` it leases the due ones (at most
 * `maxConcurrentDeliveries` in flight), renders each job's finished poll body, signs it with the owner's
 * secret and POSTs it. A 2xx delivers; 410 Gone means the receiver wants no more and ends it; anything else
 * (another status, a timeout, a refused connection, a name that did not resolve) is tried again after an
 * exponentially growing, jittered delay, until `retryForMs` after the job ended. A URL the SSRF guard refuses
 * is given up at once. Because the lease outlives an attempt, a worker that dies mid-attempt hands the
 * delivery to the next worker (here or on another replica) with the same webhook-id: at least once.
 */

export interface WebhookWorkerDeps {
  store: JobStore;
  secrets: WebhookSecrets;
  images: Base64Images;
  net: WebhookNetDeps;
  config: Config['webhooks'];
  logger: Logger;
  now: () => number;
  /** 0 ≤ x < 1, for the retry delay's jitter. @default Math.random */
  random?: () => number;
  /** Told when an attempt ends (recorded or not), with how it ended and how long it took (metrics). */
  onAttemptEnd?: (result: WebhookAttemptResult, ms: number) => void;
}

/**
 * How one attempt ended, as the metrics count it: `delivered` (2xx); `retry` (another status, a timeout or a
 * connection error, tried again later); `gave_up` (such a failure once retryForMs ran out, or the job was
 * removed before it was announced); `gone` (410); `refused` (the SSRF guard refused the address);
 * `interrupted` (the daemon stopped during it; due again at once).
 */
export const WEBHOOK_ATTEMPT_RESULTS = ['delivered', 'retry', 'gave_up', 'gone', 'refused', 'interrupted'] as const;
export type WebhookAttemptResult = (typeof WEBHOOK_ATTEMPT_RESULTS)[number];

/** Undelivered attempts before the next is due: firstRetryDelayMs × 2^(attempts − 1), capped, then jittered. */
export function retryDelayMs(attempts: number, config: Pick<Config['webhooks'], 'firstRetryDelayMs' | 'maxRetryDelayMs'>, random: number): number {
  const delay = Math.min(config.maxRetryDelayMs, config.firstRetryDelayMs * 2 ** Math.min(attempts - 1, 30));
  // Equal jitter: never less than half the delay, so a flapping receiver still gets room; spread enough that
  // deliveries failed together do not come back together.
  return Math.round(delay / 2 + (random * delay) / 2);
}

export class WebhookDeliveryWorker {
  private timer: NodeJS.Timeout | undefined;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly stopping = new AbortController();
  private polling: Promise<void> | undefined;

  constructor(private readonly deps: WebhookWorkerDeps) {}

  /** A lease lasts an attempt twice over (rendering the body included), so a live worker never loses one. */
  get leaseMs(): number {
    return this.deps.config.attemptTimeoutMs * 2 + 10_000;
  }

  start(): void {
    this.timer = setInterval(() => {
      this.polling ??= this.poll()
        .catch((err: unknown) => {
          this.deps.logger.error('webhooks: could not take due deliveries', { error: String(err) });
        })
        .finally(() => (this.polling = undefined));
    }, this.deps.config.pollIntervalMs);
    this.timer.unref();
  }

  /**
   * Stops taking deliveries and aborts those under way, recording each as due at once: the next start (or
   * another replica) sends it again, with the same webhook-id.
   */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.stopping.abort(new Error('the daemon is stopping'));
    await this.polling;
    await Promise.allSettled([...this.inFlight]);
  }

  /** Takes what is due (up to the free slots) and starts each attempt; resolves once they are started. */
  async poll(): Promise<void> {
    const free = this.deps.config.maxConcurrentDeliveries - this.inFlight.size;
    if (free <= 0 || this.stopping.signal.aborted) return;
    const due = await this.deps.store.claimWebhookDeliveries(this.deps.now(), this.leaseMs, free);
    for (const delivery of due) {
      const attempt = this.attempt(delivery).catch((err: unknown) => {
        this.deps.logger.error('webhooks: a delivery attempt failed unexpectedly', { deliveryId: delivery.id, jobId: delivery.jobId, error: String(err) });
      });
      this.inFlight.add(attempt);
      void attempt.finally(() => this.inFlight.delete(attempt));
    }
  }

  private async attempt(delivery: ClaimedWebhookDelivery): Promise<void> {
    const { store, logger } = this.deps;
    const startedMs = this.deps.now();
    const { result, outcome } = await this.send(delivery);
    this.deps.onAttemptEnd?.(result, this.deps.now() - startedMs);
    const recorded = await store.recordWebhookAttempt(delivery.id, delivery.leaseToken, outcome, this.deps.now());
    const fields = { deliveryId: delivery.id, jobId: delivery.jobId, event: delivery.event, url: printableUrl(delivery.url), attempt: delivery.attempts + 1 };
    if (!recorded) {
      logger.warn('webhooks: a delivery attempt ended after its lease; another worker has it now', fields);
    } else if (outcome.state === 'delivered') {
      logger.info('webhooks: delivered', { ...fields, status: outcome.status });
    } else if (outcome.state === 'failed') {
      logger.warn('webhooks: delivery given up', { ...fields, status: outcome.status, error: outcome.error });
    } else {
      logger.info('webhooks: delivery attempt failed; retrying', { ...fields, status: outcome.status, error: outcome.error, nextAttemptMs: outcome.nextAttemptMs });
    }
  }

  private async send(delivery: ClaimedWebhookDelivery): Promise<{ result: WebhookAttemptResult; outcome: WebhookAttemptOutcome }> {
    const { store, secrets, config } = this.deps;
    const job = await store.get(delivery.jobId);
    if (!job) return { result: 'gave_up', outcome: { state: 'failed', status: undefined, error: 'the job is gone' } };
    const body = jsonBody(await finishedJobBody(job, delivery.format, this.deps.images, this.deps.now()));
    let status: number | undefined;
    let error: string;
    try {
      status = await postWebhook(this.deps.net, {
        url: delivery.url,
        body,
        headers: secrets.headersFor(delivery.owner, delivery.id, this.deps.now(), body),
        timeoutMs: config.attemptTimeoutMs,
        signal: this.stopping.signal,
      });
      if (status >= 200 && status < 300) return { result: 'delivered', outcome: { state: 'delivered', status } };
      if (status === 410) {
        return { result: 'gone', outcome: { state: 'failed', status, error: 'the receiver answered 410 Gone: it wants no more deliveries' } };
      }
      error = status >= 300 && status < 400 ? `the receiver answered HTTP ${status} (redirects are not followed)` : `the receiver answered HTTP ${status}`;
    } catch (err) {
      if (this.stopping.signal.aborted) {
        const outcome = { state: 'pending', status: undefined, error: 'the daemon stopped during this attempt', nextAttemptMs: this.deps.now() } as const;
        return { result: 'interrupted', outcome };
      }
      if (err instanceof WebhookUrlError && err.kind === 'refused') {
        return { result: 'refused', outcome: { state: 'failed', status: undefined, error: err.message } };
      }
      error = err instanceof WebhookUrlError ? err.message : connectionError(err, config.attemptTimeoutMs);
    }
    const nowMs = this.deps.now();
    const nextAttemptMs = nowMs + retryDelayMs(delivery.attempts + 1, config, (this.deps.random ?? Math.random)());
    if (nextAttemptMs > delivery.createdMs + config.retryForMs) {
      const given = `${error}; gave up after ${delivery.attempts + 1} attempts (retried for ${config.retryForMs} ms)`;
      return { result: 'gave_up', outcome: { state: 'failed', status, error: given } };
    }
    return { result: 'retry', outcome: { state: 'pending', status, error, nextAttemptMs } };
  }
}

function connectionError(err: unknown, timeoutMs: number): string {
  const name = (err as { name?: unknown }).name;
  if (name === 'TimeoutError') return `no answer within ${timeoutMs} ms`;
  const code = (err as { code?: unknown }).code ?? (err as { cause?: { code?: unknown } }).cause?.code;
  return typeof code === 'string' ? `the connection failed (${code})` : `the connection failed (${String((err as Error).message ?? err)})`;
}
