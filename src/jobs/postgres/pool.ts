import pg from 'pg';
import type { Pool, PoolClient } from 'pg';

/**
 * The connection pool the PostgreSQL stores share, and the few helpers every statement of theirs uses.
 * Replicas of one provider share nothing but this database: every lock that must hold across them is a
 * row lock or an advisory lock in it, never a lock in this process.
 */

export interface PostgresPoolOptions {
  /** A `postgres://` (or `postgresql://`) URL. */
  url: string;
  /** Connections this process keeps open at most. @default 10 */
  maxConnections?: number;
  /** A connection attempt gives up after this long. @default 5_000 */
  connectTimeoutMs?: number;
  /** An idle connection the server or the network dropped; the pool replaces it. @default ignored */
  onIdleError?: (err: Error) => void;
}

export function createPostgresPool(options: PostgresPoolOptions): Pool {
  const pool = new pg.Pool({
    connectionString: options.url,
    max: options.maxConnections ?? 10,
    connectionTimeoutMillis: options.connectTimeoutMs ?? 5_000,
    application_name: 'pixeld',
  });
  // Without a listener, an idle client's error (a restarted server) would be an uncaught 'error' event.
  pool.on('error', (err) => options.onIdleError?.(err));
  return pool;
}

/**
 * Runs `fn` in one transaction on one connection: committed when it resolves, rolled back when it throws.
 * READ COMMITTED (PostgreSQL's default): each statement sees what was committed before it began, so a
 * check that must see one consistent state is one statement, and a decision that must not race another
 * process's takes a row lock (`FOR UPDATE`) or an advisory lock first.
 */
export async function inTransaction<T>(pool: Pool, fn: (client: PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let broken = false;
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    try {
      await client.query('ROLLBACK');
    } catch {
      broken = true; // the connection is gone; the server rolled back on its own
    }
    throw err;
  } finally {
    client.release(broken);
  }
}

/**
 * Advisory lock classes: the first key of `pg_advisory_lock(int, int)`. The two-key space does not overlap
 * the one-key space, so other software on the same database cannot take ours by accident.
 */
export const ADVISORY_LOCK = {
  /** Schema migrations: one process at a time (key 2 = 0). */
  migrations: 0x70780001,
  /** Admission of one owner's jobs (key 2 = hashtext(owner)): budget check and insert, one at a time. */
  admission: 0x70780002,
  /** Named locks, the settlement lock among them (key 2 = hashtext(name)): one holder across replicas. */
  settlement: 0x70780003,
  /** A model's unfinished-job cap (key 2 = hashtext(model)): count and insert, one replica at a time. */
  modelAdmission: 0x70780004,
  /** A backend's pending-queue bound (key 2 = hashtext(backend id)). */
  queueAdmission: 0x70780005,
} as const;

/**
 * The channel every job event goes out on, from inside the transaction that caused it (so it is sent on
 * commit, and never for a rolled-back change). Payload: `<event> <id>` — `finished <job id>` (completed,
 * failed or cancelled), `cancelled <job id>` (also sent with its `finished`), `queued <backend id>`.
 */
export const JOB_EVENTS_CHANNEL = 'pixeld_jobs';

/** The URL without its password, for logs and `pixeld migrate`'s output. */
export function redactDatabaseUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString();
  } catch {
    return 'postgres://(unparsable URL)';
  }
}
