import { existsSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { postgresBillingStore } from '../billing/postgres-billing-store.js';
import { sqliteBillingStore } from '../billing/sqlite-billing-store.js';
import type { BillingStore } from '../billing/store.js';
import { memoryRateLimitBuckets } from '../auth/memory-rate-limit-buckets.js';
import { postgresRateLimitBuckets } from '../auth/postgres-rate-limit-buckets.js';
import type { RateLimitBuckets, RateLimits } from '../auth/rate-limiter.js';
import type { Config } from '../config/schema.js';
import type { BlobStore } from '../images/blob-store.js';
import { FileBlobStore } from '../images/file-blob-store.js';
import { PostgresBlobStore } from '../images/postgres-blob-store.js';
import { migratePostgres, POSTGRES_MIGRATIONS } from './postgres/migrations.js';
import { createPostgresPool, redactDatabaseUrl } from './postgres/pool.js';
import { postgresJobStore } from './postgres/postgres-store.js';
import { MIGRATION_NAMES, MIGRATIONS, openSqliteDatabase } from './sqlite/database.js';
import { sqliteJobStore } from './sqlite/sqlite-store.js';
import type { JobSignals } from './job-signals.js';
import { listenForJobSignals, type JobNotifications } from './postgres/job-notifications.js';
import { ReplicaPresence, type ReplicaPresenceOptions } from './postgres/replica-presence.js';
import type { JobStore } from './store.js';

/**
 * The one place that picks the store: embedded SQLite under `dataDir`, or PostgreSQL when `database.url`
 * is set. The daemon and every command that reads the books (settle, accounts, earnings, migrate) open
 * their stores here, so they always look at the same database. Opening applies the missing migrations.
 */

export type StoreKind = 'sqlite' | 'postgres';

export interface StoreMigrations {
  /** Schema version found (0: a new database) and the version now. */
  from: number;
  to: number;
  /** What this open applied, in order. */
  applied: Array<{ version: number; name: string }>;
}

export interface Stores {
  kind: StoreKind;
  /** The SQLite file, or the PostgreSQL URL without its password. */
  location: string;
  jobs: JobStore;
  billing: BillingStore;
  migrations: StoreMigrations;
  /**
   * Reports other processes' job events (ends, cancels, queued work) to `events`. On PostgreSQL a LISTEN
   * connection hears every replica; a SQLite file has one process, whose runner and service report
   * everything themselves, so there is nothing to hear.
   */
  listenForJobSignals(signals: JobSignals, onError: (err: Error) => void): JobNotifications;
  /**
   * The owners' rate-limit buckets: in the database on PostgreSQL, so the replicas share one allowance per
   * owner; in this process on SQLite, whose file has one daemon.
   */
  rateLimitBuckets(limits: RateLimits, now: () => number): RateLimitBuckets;
  /**
   * The store for image bytes, made and its directories created: files under dataDir beside a SQLite file;
   * on PostgreSQL the database's own tables, which every replica reads, with local copies for the backends.
   */
  openBlobStore(options: { minFreeBytes: number; now: () => number }): Promise<BlobStore>;
  /**
   * This replica's row among the live replicas (PostgreSQL). Undefined on SQLite: its file has one
   * process, and there is nobody else to tell.
   */
  replicaPresence(options: Omit<ReplicaPresenceOptions, 'pool'>): ReplicaPresence | undefined;
  /** Closes the database (the SQLite file, or the pool), once; the job store's close() does the same. */
  close(): Promise<void>;
}

export type StoreConfig = Pick<Config, 'dataDir' | 'store' | 'database'>;

export interface OpenStoresOptions {
  /** Refuse to create a SQLite file that is not there (commands that read what a daemon wrote). */
  mustExist?: boolean;
  /** An idle PostgreSQL connection failed (the pool replaces it). */
  onIdleError?: (err: Error) => void;
}

/** The SQLite file is missing and `mustExist` was asked for. */
export class StoreNotFoundError extends Error {
  override readonly name = 'StoreNotFoundError';
  constructor(readonly file: string) {
    super(`no pixeld database at ${file}`);
  }
}

export function storeKind(config: StoreConfig): StoreKind {
  return config.store.type ?? (config.database.url !== undefined ? 'postgres' : 'sqlite');
}

export const sqliteFile = (config: Pick<Config, 'dataDir'>): string => path.join(config.dataDir, 'pixeld.sqlite');

export async function openStores(config: StoreConfig, options: OpenStoresOptions = {}): Promise<Stores> {
  if (storeKind(config) === 'postgres') {
    const url = config.database.url!;
    const pool = createPostgresPool({
      url,
      maxConnections: config.database.maxConnections,
      connectTimeoutMs: config.database.connectTimeoutMs,
      onIdleError: options.onIdleError,
    });
    let migrations: StoreMigrations;
    try {
      const result = await migratePostgres(pool);
      migrations = result;
    } catch (err) {
      await pool.end();
      throw err;
    }
    const jobs = postgresJobStore(pool);
    return {
      kind: 'postgres',
      location: redactDatabaseUrl(url),
      jobs,
      billing: postgresBillingStore(pool),
      migrations,
      listenForJobSignals: (signals, onError) =>
        listenForJobSignals({ url, signals, connectTimeoutMs: config.database.connectTimeoutMs, onError }),
      rateLimitBuckets: (limits, now) => postgresRateLimitBuckets(pool, limits, now),
      openBlobStore: ({ minFreeBytes, now }) => initialised(new PostgresBlobStore({ pool, dataDir: config.dataDir, minFreeBytes, now })),
      replicaPresence: (presence) => new ReplicaPresence({ ...presence, pool }),
      close: () => jobs.close(),
    };
  }
  const file = sqliteFile(config);
  if (options.mustExist && !existsSync(file)) throw new StoreNotFoundError(file);
  let migrations: StoreMigrations = { from: 0, to: 0, applied: [] };
  const db = openSqliteDatabase(file, {
    onMigrated: (from, to) => {
      const applied = [];
      for (let v = from + 1; v <= to; v += 1) applied.push({ version: v, name: MIGRATION_NAMES[v - 1] ?? `schema ${v}` });
      migrations = { from, to, applied };
    },
  });
  const jobs = sqliteJobStore(db);
  return {
    kind: 'sqlite',
    location: file,
    jobs,
    billing: sqliteBillingStore(db),
    migrations,
    listenForJobSignals: () => ({ ready: Promise.resolve(), close: async () => undefined }),
    rateLimitBuckets: memoryRateLimitBuckets,
    openBlobStore: ({ minFreeBytes }) => initialised(new FileBlobStore(config.dataDir, minFreeBytes)),
    replicaPresence: () => undefined,
    close: () => jobs.close(),
  };
}

export interface SchemaStatus {
  kind: StoreKind;
  /** The SQLite file, or the PostgreSQL URL without its password. */
  location: string;
  /** The schema version the database is at (0: no database, or an empty one). */
  version: number;
  /** The version this pixeld migrates to. */
  latest: number;
  /** Whether the SQLite file exists (always true for PostgreSQL, whose database must exist to be read). */
  exists: boolean;
}

/**
 * The database's schema version, read without changing anything: no file is created, no migration
 * applied, no lock taken (`pixeld doctor`). Rejects when the database cannot be reached.
 */
export async function readSchemaStatus(config: StoreConfig): Promise<SchemaStatus> {
  if (storeKind(config) === 'postgres') {
    const url = config.database.url!;
    const pool = createPostgresPool({ url, maxConnections: 1, connectTimeoutMs: config.database.connectTimeoutMs });
    try {
      const location = redactDatabaseUrl(url);
      const latest = POSTGRES_MIGRATIONS.at(-1)?.version ?? 0;
      const table = await pool.query<{ t: string | null }>("SELECT to_regclass('schema_migrations')::text AS t");
      if (table.rows[0]?.t == null) return { kind: 'postgres', location, version: 0, latest, exists: true };
      const { rows } = await pool.query<{ v: number | null }>('SELECT max(version) AS v FROM schema_migrations');
      return { kind: 'postgres', location, version: rows[0]?.v ?? 0, latest, exists: true };
    } finally {
      await pool.end();
    }
  }
  const file = sqliteFile(config);
  if (!existsSync(file)) return { kind: 'sqlite', location: file, version: 0, latest: MIGRATIONS.length, exists: false };
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return { kind: 'sqlite', location: file, version: db.pragma('user_version', { simple: true }) as number, latest: MIGRATIONS.length, exists: true };
  } finally {
    db.close();
  }
}

async function initialised(blobs: FileBlobStore | PostgresBlobStore): Promise<BlobStore> {
  await blobs.init();
  return blobs;
}
