import type { ImageBackend } from '../backends/types.js';
import type { PriceGuardReport } from '../chain/price-guard.js';
import type { JobStore } from '../jobs/store.js';

export interface ReadinessReport {
  ready: boolean;
  store: string;
  backends: Record<string, string>;
  /** Each model's price against the chain; present when 0G users are served. */
  prices?: PriceGuardReport;
}

export interface ReadinessDeps {
  store: JobStore;
  backends: ReadonlyMap<string, ImageBackend>;
  /** The price guard, when 0G users are served: a model they may not be billed for makes the daemon not ready. */
  prices?: { report(): PriceGuardReport } | undefined;
  /** How long one probe may take. @default 2_000 */
  probeTimeoutMs?: number;
  /** A result is reused for this long, so a busy load balancer does not hammer the backends. @default 5_000 */
  cacheMs?: number;
}

type ProbeReport = Omit<ReadinessReport, 'prices'>;

/**
 * Answers /readyz: the store answers a query, every backend answers its health probe, and — with 0G users —
 * every model may be billed at its configured price (the price verdicts are read fresh, not cached).
 */
export class Readiness {
  private cached: { atMs: number; report: Promise<ProbeReport> } | undefined;

  constructor(private readonly deps: ReadinessDeps) {}

  async check(): Promise<ReadinessReport> {
    const cacheMs = this.deps.cacheMs ?? 5_000;
    if (!this.cached || Date.now() - this.cached.atMs >= cacheMs) this.cached = { atMs: Date.now(), report: this.probe() };
    const probed = await this.cached.report;
    if (!this.deps.prices) return probed;
    const prices = this.deps.prices.report();
    const billable = Object.values(prices.models).every((m) => m.billable);
    return { ...probed, ready: probed.ready && billable, prices };
  }

  private async probe(): Promise<ProbeReport> {
    const timeoutMs = this.deps.probeTimeoutMs ?? 2_000;
    const store = await this.deps.store.ping().then(
      () => 'ok',
      (err: unknown) => `failing: ${(err as Error).message}`,
    );
    const backends: Record<string, string> = {};
    await Promise.all(
      [...this.deps.backends.values()].map(async (backend) => {
        backends[backend.id] = await backend.checkHealth(AbortSignal.timeout(timeoutMs)).then(
          () => 'ok',
          (err: unknown) => `failing: ${(err as Error).message ?? String(err)}`,
        );
      }),
    );
    const ready = store === 'ok' && Object.values(backends).every((s) => s === 'ok');
    return { ready, store, backends };
  }
}
