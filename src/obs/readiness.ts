import type { ImageBackend } from '../backends/types.js';
import type { JobStore } from '../jobs/store.js';

export interface ReadinessReport {
  ready: boolean;
  store: string;
  backends: Record<string, string>;
}

export interface ReadinessDeps {
  store: JobStore;
  backends: ReadonlyMap<string, ImageBackend>;
  /** How long one probe may take. @default 2_000 */
  probeTimeoutMs?: number;
  /** A result is reused for this long, so a busy load balancer does not hammer the backends. @default 5_000 */
  cacheMs?: number;
}

/** Answers /readyz: the store answers a query and every backend answers its health probe. */
export class Readiness {
  private cached: { atMs: number; report: Promise<ReadinessReport> } | undefined;

  constructor(private readonly deps: ReadinessDeps) {}

  check(): Promise<ReadinessReport> {
    const cacheMs = this.deps.cacheMs ?? 5_000;
    if (this.cached && Date.now() - this.cached.atMs < cacheMs) return this.cached.report;
    const report = this.probe();
    this.cached = { atMs: Date.now(), report };
    return report;
  }

  private async probe(): Promise<ReadinessReport> {
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
