import { formatEther } from 'ethers';
import { nextScheduledRound } from '../../billing/settlement/triggers.js';
import { statusName } from '../../billing/settlement/types.js';
import type { EarningsTotals, SettlementBatch } from '../../billing/store.js';
import { isExpired, type Job } from '../../jobs/model.js';
import type { JobActivityBucket } from '../../jobs/store.js';
import { reportDataOf } from '../../tee/attestation.js';
import { reportDataOfTdxQuote } from '../../tee/configfs-tsm.js';
import { PIXELD_VERSION } from '../../version.js';
import type { AppDeps } from '../app.js';

/**
 * What `GET /dashboard/api/state` answers: one snapshot of everything the page shows, read afresh at each
 * poll. Amounts are decimal wei strings with their 0G value beside them; times are unix milliseconds (the
 * page prints them in UTC). No prompt and no credential is ever part of it.
 */

/** Jobs listed under "recent jobs". */
export const RECENT_JOBS = 25;
/** The throughput and latency charts: the last hour, per minute. */
export const ACTIVITY_WINDOW_MS = 60 * 60 * 1000;
export const ACTIVITY_BUCKET_MS = 60 * 1000;
/** Days and users listed under earnings; batches under settlement history. */
export const EARNINGS_DAYS = 14;
export const EARNINGS_USERS = 20;
export const RECENT_BATCHES = 15;

export interface Amount {
  wei: string;
  /** The same amount in 0G (18 decimals), as a decimal string. */
  og: string;
}

const amount = (wei: bigint): Amount => ({ wei: wei.toString(), og: formatEther(wei) });

export async function dashboardState(deps: AppDeps): Promise<Record<string, unknown>> {
  const nowMs = deps.now();
  const { store, runner, settler } = deps.admin;
  const [readiness, jobs, activity, days, users, batches, attestation] = await Promise.all([
    deps.readiness.check(),
    store.listJobs({ limit: RECENT_JOBS }),
    store.jobActivity(nowMs - ACTIVITY_WINDOW_MS, nowMs, ACTIVITY_BUCKET_MS),
    deps.billing.earningsByDay(),
    deps.billing.earningsByUser(EARNINGS_USERS),
    deps.billing.recentBatches(RECENT_BATCHES),
    attestationStatus(deps),
  ]);
  const backends = await Promise.all(
    deps.config.backends.map(async (b) => ({
      id: b.id,
      type: b.type,
      pending: await store.countPending(b.id),
      running: runner.runningCount(b.id),
      concurrency: runner.concurrencyOf(b.id),
      health: readiness.backends[b.id] ?? 'not probed',
    })),
  );
  return {
    now_ms: nowMs,
    version: PIXELD_VERSION,
    replica: deps.admin.replicaId,
    ready: readiness.ready,
    store_health: readiness.store,
    backends,
    jobs: jobs.map((job) => jobRow(job, nowMs)),
    activity: { bucket_ms: ACTIVITY_BUCKET_MS, buckets: activity.map(activityRow) },
    earnings: {
      totals: totalsRow(days.reduce(addTotals, emptyTotals())),
      by_day: days.slice(-EARNINGS_DAYS).reverse().map((d) => ({ day: d.day, ...totalsRow(d) })),
      by_user: users.map((u) => ({ user: u.user, ...totalsRow(u) })),
    },
    settlement: {
      enabled: settler !== undefined,
      running: settler?.running ?? false,
      // The cron's next round; users past a threshold are settled sooner, between rounds.
      next_scheduled_ms: settler === undefined ? null : (nextScheduledRound(deps.config.billing.settlementCron)?.getTime() ?? null),
      batches: batches.map(batchRow),
    },
    attestation,
  };
}

function jobRow(job: Job, nowMs: number): Record<string, unknown> {
  const expired = job.status === 'completed' && isExpired(job, nowMs);
  const images = job.result?.images ?? [];
  return {
    id: job.id,
    status: job.status,
    expired,
    model: job.model,
    backend: job.backendId,
    owner: job.owner,
    created_ms: job.createdMs,
    started_ms: job.startedMs ?? null,
    finished_ms: job.finishedMs ?? null,
    attempts: job.attempts,
    n: job.params.n,
    images: images.length,
    error: job.error ?? null,
    thumbnails: job.status === 'completed' && !expired ? images.map((_, i) => `/dashboard/thumbs/${job.id}/${i}`) : [],
  };
}

function activityRow(b: JobActivityBucket): Record<string, unknown> {
  return {
    start_ms: b.startMs,
    succeeded: b.succeeded,
    failed: b.failed,
    cancelled: b.cancelled,
    images: b.images,
    run_ms: b.runMs,
    total_ms: b.totalMs,
  };
}

function emptyTotals(): EarningsTotals {
  return { receipts: 0, images: 0, settledWei: 0n, partialWei: 0n, unsettledWei: 0n, offchainWei: 0n, unbillableWei: 0n };
}

function addTotals(sum: EarningsTotals, e: EarningsTotals): EarningsTotals {
  return {
    receipts: sum.receipts + e.receipts,
    images: sum.images + e.images,
    settledWei: sum.settledWei + e.settledWei,
    partialWei: sum.partialWei + e.partialWei,
    unsettledWei: sum.unsettledWei + e.unsettledWei,
    offchainWei: sum.offchainWei + e.offchainWei,
    unbillableWei: sum.unbillableWei + e.unbillableWei,
  };
}

/** `settled` counts what PARTIAL settlements paid too: both are money received. */
function totalsRow(e: EarningsTotals): Record<string, unknown> {
  return {
    receipts: e.receipts,
    images: e.images,
    settled: amount(e.settledWei + e.partialWei),
    unsettled: amount(e.unsettledWei),
    offchain: amount(e.offchainWei),
    unbillable: amount(e.unbillableWei),
  };
}

function batchRow(b: SettlementBatch): Record<string, unknown> {
  return {
    id: b.id,
    state: b.state,
    created_ms: b.createdMs,
    sent_ms: b.sentMs ?? null,
    block: b.block ?? null,
    tx_hashes: b.txHashes,
    users: b.items.length,
    receipts: b.items.reduce((n, i) => n + i.receipts.length, 0),
    total_fee: amount(b.items.reduce((sum, i) => sum + i.totalFeeWei, 0n)),
    results: (b.results ?? []).map((r) => ({ user: r.user, status: statusName(r.status), unsettled: amount(r.unsettledWei) })),
    note: b.note ?? null,
  };
}

/**
 * The TEE mode and signer, and the report /v1/attestation/report serves without a nonce (the cached one, so
 * polling quotes no more often than that route does): when it was made, and whether the report_data inside
 * its quote is sha256(binding) ‖ zeros for this signer. The quote is parsed, not verified: its signature
 * and Intel's certificates are what `pixeld verify` checks, with collateral fetched from the internet.
 */
async function attestationStatus(deps: AppDeps): Promise<Record<string, unknown>> {
  const { attestation } = deps;
  const base = {
    tee: attestation.tee,
    signing_address: attestation.binding.signing_address,
    key_source: attestation.binding.key_source,
    provider_address: attestation.binding.provider_address,
  };
  try {
    const report = await attestation.report(undefined, 'dashboard');
    return {
      ...base,
      report_ms: attestation.cachedReportMs ?? null,
      quote_provider: report.quote_provider,
      quote_binds_signer: report.intel_quote === null ? null : reportDataOfTdxQuote(Buffer.from(report.intel_quote, 'hex'))?.toString('hex') === reportDataOf(attestation.binding, undefined).toString('hex'),
      error: null,
    };
  } catch (err) {
    return { ...base, report_ms: null, quote_provider: null, quote_binds_signer: null, error: (err as Error).message };
  }
}
