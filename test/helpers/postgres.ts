import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Pool } from 'pg';
import { migratePostgres } from '../../src/jobs/postgres/migrations.js';
import { createPostgresPool } from '../../src/jobs/postgres/pool.js';

/**
 * PostgreSQL for tests: the server on this machine (.ci/run starts it), reached through the `test`
 * database. Each test file makes a database of its own and drops it afterwards, so files running in
 * parallel never see each other's rows.
 */

/** The database tests connect to first; override with PIXELD_TEST_POSTGRES_URL. */
export const ADMIN_URL = process.env.PIXELD_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

export interface TestDatabase {
  name: string;
  url: string;
  /** A pool on it, migrated to the newest schema (ended by drop()). */
  pool(): Promise<Pool>;
  /** Ends the pools made here and drops the database, even with other connections still open. */
  drop(): Promise<void>;
}

async function admin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: ADMIN_URL });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

export const TABLES = [
  'jobs',
  'blob_refs',
  'receipts',
  'receipt_sequences',
  'settlement_batches',
  'settlement_items',
  'settlement_blocks',
  'replicas',
  'blob_chunks',
  'blobs',
  'rate_limit_buckets',
  'job_events',
  'webhook_deliveries',
];

/** Empties every pixeld table (the schema stays): a fresh store for the next test. */
export async function truncateAll(pool: Pool): Promise<void> {
  await pool.query(`TRUNCATE ${TABLES.join(', ')} RESTART IDENTITY`);
}

/** CREATE DATABASE pixeld_test_<random>; nothing in it until a pool() migrates it. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `pixeld_test_${randomBytes(6).toString('hex')}`;
  await admin((c) => c.query(`CREATE DATABASE ${name}`));
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  const pools: Pool[] = [];
  let migrated = false;
  const db: TestDatabase = {
    name,
    url: url.toString(),
    async pool() {
      const pool = createPostgresPool({ url: url.toString(), maxConnections: 8 });
      pools.push(pool);
      if (!migrated) {
        await migratePostgres(pool);
        migrated = true;
      }
      return pool;
    },
    async drop() {
      await Promise.all(pools.map((p) => (p.ended ? undefined : p.end().catch(() => undefined))));
      await admin((c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
    },
  };
  return db;
}
