import { collectDefaultMetrics, Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { BillingStore } from '../billing/store.js';
import type { Settler } from '../billing/settlement/settler.js';
import type { AttemptOutcome, JobRunner } from '../jobs/runner.js';
import type { JobStore } from '../jobs/store.js';
import { WEBHOOK_ATTEMPT_RESULTS, type WebhookAttemptResult } from '../webhooks/delivery-worker.js';

/** Every metric name starts with this. */
export const METRICS_PREFIX = 'pixeld_';

/** Seconds: an image takes from a second (small, fast GPU) to minutes (large, queued upstream). */
const ATTEMPT_BUCKETS_SECONDS = [0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600];
/** Seconds: most requests answer in milliseconds; sync generations wait for their images. */
const HTTP_BUCKETS_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
/** Seconds: a receiver answers in milliseconds; a slow one runs into webhooks.attemptTimeoutMs (10 s unless set). */
const WEBHOOK_BUCKETS_SECONDS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** What the scrape-time metrics read: made in main.ts once the daemon's parts exist. */
export interface MetricsSources {
  store: JobStore;
  billing: BillingStore;
  runner: JobRunner;
  /** Undefined when the daemon does not settle. */
  settler: Settler | undefined;
  /** Every configured backend id (the runner's counts are 0 for those this replica does not run). */
  backendIds: readonly string[];
  info: { version: string; signer: string; teeMode: string; replica: string };
}

/**
 * The Prometheus metrics of one daemon, on a registry main.ts makes and hands in (never prom-client's
 * global one). The runner's attempts and the HTTP requests are observed as they end; everything else is
 * read from the stores, the runner and the settler when scraped. Each metric is listed in the README (Metrics).
 */
export class DaemonMetrics {
  readonly registry: Registry;
  private readonly attemptSeconds: Histogram<'backend' | 'outcome'>;
  private readonly httpSeconds: Histogram<'method' | 'route' | 'status'>;
  private readonly webhookAttempts: Counter<'outcome'>;
  private readonly webhookSeconds: Histogram;

  constructor(registry: Registry) {
    this.registry = registry;
    collectDefaultMetrics({ register: registry, prefix: METRICS_PREFIX });
    this.attemptSeconds = new Histogram({
      name: `${METRICS_PREFIX}backend_attempt_duration_seconds`,
      help: 'Duration of job attempts on a backend (all its calls, checks and signing), by how the attempt ended',
      labelNames: ['backend', 'outcome'],
      buckets: ATTEMPT_BUCKETS_SECONDS,
      registers: [registry],
    });
    this.httpSeconds = new Histogram({
      name: `${METRICS_PREFIX}http_request_duration_seconds`,
      help: 'HTTP request duration by method, route pattern (never the raw path) and status',
      labelNames: ['method', 'route', 'status'],
      buckets: HTTP_BUCKETS_SECONDS,
      registers: [registry],
    });
    this.webhookAttempts = new Counter({
      name: `${METRICS_PREFIX}webhook_deliveries_total`,
      help: 'Webhook delivery attempts this replica made, by outcome: delivered, retry, gave_up, gone (410), refused (address), interrupted (stop)',
      labelNames: ['outcome'],
      registers: [registry],
    });
    // Every outcome from the start, at 0: rate() and alerts on a rare one (gave_up) see a series before it happens.
    for (const outcome of WEBHOOK_ATTEMPT_RESULTS) this.webhookAttempts.inc({ outcome }, 0);
    this.webhookSeconds = new Histogram({
      name: `${METRICS_PREFIX}webhook_delivery_duration_seconds`,
      help: 'Duration of one webhook delivery attempt (rendering the body and the POST, until the answer, error or timeout)',
      buckets: WEBHOOK_BUCKETS_SECONDS,
      registers: [registry],
    });
  }

  observeAttempt(backendId: string, outcome: AttemptOutcome, ms: number): void {
    this.attemptSeconds.observe({ backend: backendId, outcome }, ms / 1000);
  }

  observeWebhookAttempt(outcome: WebhookAttemptResult, ms: number): void {
    this.webhookAttempts.inc({ outcome });
    this.webhookSeconds.observe(ms / 1000);
  }

  /** `route` is the matched express route pattern, or `unmatched`: never a path holding ids. */
  observeRequest(method: string, route: string, status: number, ms: number): void {
    this.httpSeconds.observe({ method, route, status: String(status) }, ms / 1000);
  }

  /** Registers the metrics read at scrape time. Call once. */
  watch(sources: MetricsSources): void {
    const { store, billing, runner, settler, backendIds, info } = sources;
    const registers = [this.registry];
    new Gauge({
      name: `${METRICS_PREFIX}info`,
      help: 'Always 1: this daemon\'s version, receipt signer address, TEE mode and replica name',
      labelNames: ['version', 'signer', 'tee_mode', 'replica'],
      registers,
    }).set({ version: info.version, signer: info.signer, tee_mode: info.teeMode, replica: info.replica }, 1);
    new Gauge({
      name: `${METRICS_PREFIX}jobs`,
      help: 'Jobs held by the store (all replicas sharing it), by status and model',
      labelNames: ['status', 'model'],
      registers,
      async collect() {
        this.reset();
        for (const row of await store.countByStatusAndModel()) this.set({ status: row.status, model: row.model }, row.count);
      },
    });
    new Gauge({
      name: `${METRICS_PREFIX}queue_pending_jobs`,
      help: 'Pending jobs waiting for a backend (all replicas sharing the store)',
      labelNames: ['backend'],
      registers,
      async collect() {
        for (const id of backendIds) this.set({ backend: id }, await store.countPending(id));
      },
    });
    new Gauge({
      name: `${METRICS_PREFIX}backend_in_flight_jobs`,
      help: 'Jobs this replica is running on a backend',
      labelNames: ['backend'],
      registers,
      collect() {
        for (const id of backendIds) this.set({ backend: id }, runner.runningCount(id));
      },
    });
    new Counter({
      name: `${METRICS_PREFIX}jobs_finished_total`,
      help: 'Jobs this replica finished, by outcome (completed or failed)',
      labelNames: ['outcome'],
      registers,
      collect() {
        this.reset();
        this.inc({ outcome: 'completed' }, runner.counters.jobsCompleted);
        this.inc({ outcome: 'failed' }, runner.counters.jobsFailed);
      },
    });
    new Counter({
      name: `${METRICS_PREFIX}images_delivered_total`,
      help: 'Images this replica delivered in completed jobs',
      registers,
      collect() {
        this.reset();
        this.inc(runner.counters.imagesDelivered);
      },
    });
    new Gauge({
      name: `${METRICS_PREFIX}webhook_deliveries_pending`,
      help: 'Webhook deliveries not yet delivered or given up: due, waiting for a retry, or under way (all replicas sharing the store)',
      registers,
      async collect() {
        this.set(await store.countPendingWebhookDeliveries());
      },
    });
    new Gauge({
      name: `${METRICS_PREFIX}receipts_unsettled`,
      help: 'Receipts waiting for a settlement round (state unsettled; those in a sent batch are not counted), all users',
      registers,
      async collect() {
        const users = await billing.usersWithUnsettled();
        this.set(users.reduce((sum, u) => sum + u.receipts, 0));
      },
    });
    new Gauge({
      name: `${METRICS_PREFIX}receipts_unsettled_wei`,
      help: 'Fees (wei) of the receipts waiting for a settlement round, all users; a float, exact below 2^53 wei',
      registers,
      async collect() {
        const users = await billing.usersWithUnsettled();
        this.set(Number(users.reduce((sum, u) => sum + u.feeWei, 0n)));
      },
    });
    new Counter({
      name: `${METRICS_PREFIX}settlement_rounds_total`,
      help: 'Settlement rounds this replica tried, by outcome: run (took the lock and started), locked (another settler had it), interrupted (a round or the start-up reconciliation ended early)',
      labelNames: ['outcome'],
      registers,
      collect() {
        this.reset();
        if (!settler) return;
        this.inc({ outcome: 'run' }, settler.counters.rounds);
        this.inc({ outcome: 'locked' }, settler.counters.roundsLocked);
        this.inc({ outcome: 'interrupted' }, settler.counters.roundsInterrupted);
      },
    });
  }
}
