import { Router } from 'express';
import { requireAdmin, type AdminToken } from '../../auth/admin-token.js';
import type { Settler } from '../../billing/settlement/settler.js';
import type { UserSettlement } from '../../billing/settlement/types.js';
import { PixeldError } from '../../errors.js';
import type { ReplicaPresence } from '../../jobs/postgres/replica-presence.js';
import type { JobRunner } from '../../jobs/runner.js';
import type { JobStore } from '../../jobs/store.js';
import type { AppDeps } from '../app.js';

/** What the admin routes read and drive, beyond the app's own deps. */
export interface AdminDeps {
  token: AdminToken;
  runner: JobRunner;
  store: JobStore;
  /** Undefined when the daemon does not settle (no chain or no provider wallet). */
  settler: Settler | undefined;
  /** This replica's name: the counters here are what it did, not what its database's other replicas did. */
  replicaId: string;
  /** The live replicas sharing the database; undefined on SQLite (one process). */
  presence: ReplicaPresence | undefined;
  /** The TEE-derived half of the dashboard's session key (src/http/dashboard/session.ts). */
  dashboardSecret: Buffer;
}

/**
 * The provider's own surface, behind the admin token (`admin.tokenSha256` / `admin.tokenEnv`):
 * `GET /v1/admin/metrics` — this replica's runner, queue, storage, process and settlement counters, and
 *   the live replicas sharing its database;
 * `POST /v1/admin/settle` — one settlement round now, answered with what it did.
 */
export function adminRoutes(deps: AppDeps): Router {
  const router = Router();
  const { admin } = deps;
  router.use('/v1/admin', requireAdmin(admin.token));

  router.get('/v1/admin/metrics', async (_req, res) => {
    const backends: Record<string, { running: number; concurrency: number; pending: number }> = {};
    for (const b of deps.config.backends) {
      backends[b.id] = {
        running: admin.runner.runningCount(b.id),
        concurrency: admin.runner.concurrencyOf(b.id),
        pending: await admin.store.countPending(b.id),
      };
    }
    const room = await deps.blobs.room();
    const memory = process.memoryUsage();
    const settler = admin.settler;
    res.setHeader('Cache-Control', 'no-store');
    const replicas = await admin.presence?.live();
    res.json({
      replica: admin.replicaId,
      replicas:
        replicas?.map((r) => ({ id: r.id, started_ms: r.startedMs, seen_ms: r.seenMs, version: r.version, signer: r.signer, backends: r.backends })) ??
        null,
      uptime_seconds: Math.floor(deps.now() / 1000) - deps.startedAtSeconds,
      process: { rss_bytes: memory.rss, heap_used_bytes: memory.heapUsed },
      storage: { free_bytes: room.freeBytes, reserved_bytes: room.reservedBytes, accepting_work: room.ok },
      runner: { ...admin.runner.counters, backends },
      settlement: settler
        ? {
            running: settler.running,
            ...settler.counters,
            settledWei: settler.counters.settledWei.toString(),
            shortfallWei: settler.counters.shortfallWei.toString(),
          }
        : null,
    });
  });

  router.post('/v1/admin/settle', async (_req, res) => {
    const settler = admin.settler;
    if (!settler) {
      throw new PixeldError('settlement_off', 'this daemon does not settle: configure chain.* and the provider wallet');
    }
    const round = await settler.runRound({ reason: 'admin' });
    res.setHeader('Cache-Control', 'no-store');
    res.json({
      outcome: round.outcome,
      error: round.error ?? null,
      reconciled: round.reconciled.map(userBody),
      users: round.users.map(userBody),
      transactions: round.transactions,
    });
  });

  return router;
}

function userBody(u: UserSettlement): Record<string, unknown> {
  return {
    user: u.user,
    receipts: u.receipts,
    amount_wei: u.amountWei.toString(),
    nonce: u.nonce.toString(),
    outcome: u.outcome,
    status: u.status ?? null,
    shortfall_wei: u.shortfallWei?.toString() ?? null,
    tx_hash: u.txHash ?? null,
  };
}
