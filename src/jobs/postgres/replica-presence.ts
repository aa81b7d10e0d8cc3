import type { Pool } from 'pg';
import type { JobError } from '../model.js';
import { errorDetail, finishing, FINISHED } from './postgres-store.js';

/**
 * Which replicas are alive, in the `replicas` table every replica shares. Each one writes its row at
 * start and refreshes `seen_ms` every `heartbeatMs`; the row is the evidence other replicas act on:
 * - a sync job is answered only on the connection of the replica that accepted it, so once that replica
 *   falls silent for `silentAfterMs` (SIGKILL, a lost machine) nobody can receive the job any more — it is
 *   cancelled instead of being run and billed for no one. A replica stopping cleanly cancels its own at
 *   once (its callers were answered 503);
 * - replicas must sign with one key: a receipt signed by another key cannot be settled by this replica's
 *   TEE. A live replica with another signer stops this one from starting.
 */

export interface ReplicaInfo {
  id: string;
  version: string;
  /** The TEE signing address. */
  signer: string;
  backends: string[];
}

export interface ReplicaRow {
  id: string;
  startedMs: number;
  seenMs: number;
  version: string;
  signer: string;
  backends: string[];
}

export interface ReplicaPresenceOptions {
  pool: Pool;
  info: ReplicaInfo;
  now: () => number;
  /** @default 5_000 */
  heartbeatMs?: number;
  /** A replica not seen for this long is taken for gone. @default 30_000 */
  silentAfterMs?: number;
  /** How long a cancelled job's record stays readable (jobs.resultTtlMs). */
  resultTtlMs: number;
  onError: (err: unknown) => void;
  /** Sync jobs cancelled because the replica holding their callers is gone. */
  onOrphansCancelled?: (count: number, replicas: string[]) => void;
}

/** Another live replica signs with a different key. */
export class SignerMismatchError extends Error {
  override readonly name = 'SignerMismatchError';
  constructor(
    readonly replica: string,
    readonly theirSigner: string,
    readonly ourSigner: string,
  ) {
    super(
      `replica ${replica} signs with ${theirSigner} and this one with ${ourSigner}: replicas of one provider must share the ` +
        'signing key (tee.mode dstack with the same app, or one dev key file), or the settling replica cannot settle the others\' receipts',
    );
  }
}

const ORPHANED: JobError = {
  code: 'job_cancelled',
  message: 'the replica holding the caller’s connection stopped; nobody was left to receive this job',
};

export class ReplicaPresence {
  private timer: NodeJS.Timeout | undefined;
  private beating: Promise<void> | undefined;
  private readonly heartbeatMs: number;
  private readonly silentAfterMs: number;

  constructor(private readonly options: ReplicaPresenceOptions) {
    this.heartbeatMs = options.heartbeatMs ?? 5_000;
    this.silentAfterMs = options.silentAfterMs ?? 30_000;
  }

  /** Writes this replica's row (refusing a live replica with another signer) and starts the heartbeat. */
  async start(): Promise<void> {
    const { pool, info, now } = this.options;
    const nowMs = now();
    const others = await this.live(nowMs);
    const stranger = others.find((r) => r.id !== info.id && r.signer.toLowerCase() !== info.signer.toLowerCase());
    if (stranger) throw new SignerMismatchError(stranger.id, stranger.signer, info.signer);
    await pool.query(
      `INSERT INTO replicas (id, started_ms, seen_ms, version, signer, backends) VALUES ($1, $2, $2, $3, $4, $5)
       ON CONFLICT (id) DO UPDATE SET started_ms = $2, seen_ms = $2, version = $3, signer = $4, backends = $5`,
      [info.id, nowMs, info.version, info.signer, JSON.stringify(info.backends)],
    );
    this.timer = setInterval(() => {
      this.beating ??= this.beat().finally(() => (this.beating = undefined));
    }, this.heartbeatMs);
    this.timer.unref();
  }

  /** Replicas seen within `silentAfterMs`, this one included, oldest start first. */
  async live(nowMs = this.options.now()): Promise<ReplicaRow[]> {
    const { rows } = await this.options.pool.query<{
      id: string;
      started_ms: string;
      seen_ms: string;
      version: string;
      signer: string;
      backends: string;
    }>('SELECT * FROM replicas WHERE seen_ms >= $1 ORDER BY started_ms, id', [nowMs - this.silentAfterMs]);
    return rows.map((r) => ({
      id: r.id,
      startedMs: Number(r.started_ms),
      seenMs: Number(r.seen_ms),
      version: r.version,
      signer: r.signer,
      backends: JSON.parse(r.backends) as string[],
    }));
  }

  /** One heartbeat: refresh this replica's row, then cancel the sync jobs of replicas gone silent. */
  async beat(): Promise<void> {
    const { pool, info, now } = this.options;
    const nowMs = now();
    try {
      await pool.query('UPDATE replicas SET seen_ms = $1 WHERE id = $2', [nowMs, info.id]);
      const { rows } = await pool.query<{ submitted_by: string }>(
        cancelSync(`submitted_by IN (SELECT id FROM replicas WHERE seen_ms < $4 AND id <> $5)`),
        [JSON.stringify(ORPHANED), nowMs, nowMs + this.options.resultTtlMs, nowMs - this.silentAfterMs, info.id],
      );
      if (rows.length > 0) this.options.onOrphansCancelled?.(rows.length, [...new Set(rows.map((r) => r.submitted_by))]);
    } catch (err) {
      this.options.onError(err);
    }
  }

  /**
   * Stops the heartbeat and, the runner having stopped, cancels this replica's unfinished sync jobs: their
   * callers were answered 503 and no replica can answer them now. Marks the row silent.
   */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.beating;
    const { pool, info, now } = this.options;
    const nowMs = now();
    try {
      await pool.query(cancelSync('submitted_by = $4'), [JSON.stringify(ORPHANED), nowMs, nowMs + this.options.resultTtlMs, info.id]);
      await pool.query('UPDATE replicas SET seen_ms = 0 WHERE id = $1', [info.id]);
    } catch (err) {
      this.options.onError(err);
    }
  }
}

/** Cancels unfinished sync jobs matching `where` ($1 error, $2 now, $3 expiry), telling every replica. */
function cancelSync(where: string): string {
  return finishing(
    `status = 'cancelled', error = $1, finished_ms = $2, updated_ms = $2, expires_ms = $3, ${FINISHED}`,
    `WHERE delivery = 'sync' AND status IN ('pending', 'processing') AND ${where}`,
    [{ type: 'cancelled', atMs: '$2', detail: errorDetail('$1') }],
    'cancelled',
  );
}
