import {
  checkJobListLimit,
  MAX_ACTIVITY_BUCKETS,
  type DurationSummary,
  type JobActivityBucket,
  type JobListFilter,
} from './store.js';

/**
 * The read-only queries behind `listJobs` and `jobActivity`, written once for both stores: only the
 * placeholder style differs between SQLite and PostgreSQL.
 */

/** Collects bound values and names their placeholders (`?` for SQLite, `$n` for PostgreSQL). */
export interface SqlParams {
  readonly values: unknown[];
  add(value: unknown): string;
}

export function sqliteParams(): SqlParams {
  const values: unknown[] = [];
  return { values, add: (value) => (values.push(value), '?') };
}

export function postgresParams(): SqlParams {
  const values: unknown[] = [];
  return { values, add: (value) => `$${values.push(value)}` };
}

/** The SELECT for listJobs, or undefined when the filter can match nothing (an empty status list). */
export function listJobsQuery(filter: JobListFilter, params: SqlParams): string | undefined {
  checkJobListLimit(filter.limit);
  const where: string[] = [];
  if (filter.statuses !== undefined) {
    if (filter.statuses.length === 0) return undefined;
    where.push(`status IN (${filter.statuses.map((s) => params.add(s)).join(', ')})`);
  }
  if (filter.owner !== undefined) where.push(`owner = ${params.add(filter.owner)}`);
  if (filter.model !== undefined) where.push(`model = ${params.add(filter.model)}`);
  if (filter.before !== undefined) {
    // A row comparison walks the (created_ms, id) index from the cursor on: no gap, no repeat.
    where.push(`(created_ms, id) < (CAST(${params.add(filter.before.createdMs)} AS BIGINT), ${params.add(filter.before.id)})`);
  }
  return `SELECT * FROM jobs ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''}
    ORDER BY created_ms DESC, id DESC LIMIT ${params.add(filter.limit)}`;
}

/** One row of jobActivityQuery; PostgreSQL returns its BIGINT and NUMERIC aggregates as text. */
export interface ActivityRow {
  /** finished_ms divided by the bucket length (integer division): the bucket's index since the epoch. */
  bucket: number | string;
  succeeded: number | string;
  failed: number | string;
  cancelled: number | string;
  images: number | string;
  run_p50: number | string | null;
  run_p95: number | string | null;
  run_max: number | string | null;
  total_p50: number | string | null;
  total_p95: number | string | null;
  total_max: number | string | null;
}

/**
 * Aggregated in the database, from the index of finished jobs alone (jobs_finished covers every column
 * read here): one row per bucket in which something finished, so an hour of a busy provider comes back as
 * a few dozen rows. Percentiles are nearest-rank, computed with integer arithmetic
 * (rank ⌈n/2⌉ and ⌈95n/100⌉) so both databases pick the same job.
 */
export function jobActivityQuery(sinceMs: number, nowMs: number, bucketMs: number, params: SqlParams): string {
  const bucket = `CAST(${params.add(bucketMs)} AS BIGINT)`;
  const since = `CAST(${params.add(sinceMs)} AS BIGINT)`;
  const now = `CAST(${params.add(nowMs)} AS BIGINT)`;
  return `
    WITH finished AS MATERIALIZED (
      SELECT finished_ms / ${bucket} AS bucket, status,
        CASE WHEN status = 'completed' THEN images_delivered ELSE 0 END AS images,
        finished_ms - started_ms AS run_ms, finished_ms - created_ms AS total_ms
      FROM jobs
      WHERE finished_ms >= ${since} AND finished_ms <= ${now} AND status IN ('completed', 'failed', 'cancelled')
    ),
    ranked AS (
      SELECT bucket, run_ms, total_ms,
        ROW_NUMBER() OVER (PARTITION BY bucket ORDER BY run_ms) AS run_rank,
        ROW_NUMBER() OVER (PARTITION BY bucket ORDER BY total_ms) AS total_rank,
        COUNT(*) OVER (PARTITION BY bucket) AS n
      FROM finished WHERE status = 'completed'
    ),
    durations AS (
      SELECT bucket,
        MAX(CASE WHEN run_rank = (n + 1) / 2 THEN run_ms END) AS run_p50,
        MAX(CASE WHEN run_rank = (95 * n + 99) / 100 THEN run_ms END) AS run_p95,
        MAX(run_ms) AS run_max,
        MAX(CASE WHEN total_rank = (n + 1) / 2 THEN total_ms END) AS total_p50,
        MAX(CASE WHEN total_rank = (95 * n + 99) / 100 THEN total_ms END) AS total_p95,
        MAX(total_ms) AS total_max
      FROM ranked GROUP BY bucket
    ),
    counts AS (
      SELECT bucket,
        SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS succeeded,
        SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed,
        SUM(CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END) AS cancelled,
        SUM(images) AS images
      FROM finished GROUP BY bucket
    )
    SELECT counts.bucket AS bucket, succeeded, failed, cancelled, images,
      run_p50, run_p95, run_max, total_p50, total_p95, total_max
    FROM counts LEFT JOIN durations ON durations.bucket = counts.bucket
    ORDER BY counts.bucket`;
}

/** Refuses a window that is backwards, not whole milliseconds, or cut into more than MAX_ACTIVITY_BUCKETS. */
export function checkActivityWindow(sinceMs: number, nowMs: number, bucketMs: number): void {
  if (![sinceMs, nowMs, bucketMs].every(Number.isSafeInteger) || bucketMs < 1) {
    throw new RangeError(`job activity needs whole milliseconds and a bucket of at least 1 ms (since ${sinceMs}, now ${nowMs}, bucket ${bucketMs})`);
  }
  if (sinceMs > nowMs) throw new RangeError(`job activity since ${sinceMs} is after now ${nowMs}`);
  const buckets = Math.floor(nowMs / bucketMs) - Math.floor(sinceMs / bucketMs) + 1;
  if (buckets > MAX_ACTIVITY_BUCKETS) {
    throw new RangeError(`job activity from ${sinceMs} to ${nowMs} in ${bucketMs} ms buckets is ${buckets} buckets; at most ${MAX_ACTIVITY_BUCKETS}`);
  }
}

const summary = (p50: ActivityRow['run_p50'], p95: ActivityRow['run_p95'], max: ActivityRow['run_max']): DurationSummary | null =>
  p50 === null || p95 === null || max === null ? null : { p50: Number(p50), p95: Number(p95), max: Number(max) };

/** Every bucket of the window, oldest first: the database's rows where something finished, zeros elsewhere. */
export function activityBuckets(rows: readonly ActivityRow[], sinceMs: number, nowMs: number, bucketMs: number): JobActivityBucket[] {
  const found = new Map(rows.map((r) => [Number(r.bucket), r]));
  const buckets: JobActivityBucket[] = [];
  for (let index = Math.floor(sinceMs / bucketMs); index <= Math.floor(nowMs / bucketMs); index += 1) {
    const row = found.get(index);
    buckets.push({
      startMs: index * bucketMs,
      succeeded: row === undefined ? 0 : Number(row.succeeded),
      failed: row === undefined ? 0 : Number(row.failed),
      cancelled: row === undefined ? 0 : Number(row.cancelled),
      images: row === undefined ? 0 : Number(row.images),
      runMs: row === undefined ? null : summary(row.run_p50, row.run_p95, row.run_max),
      totalMs: row === undefined ? null : summary(row.total_p50, row.total_p95, row.total_max),
    });
  }
  return buckets;
}
