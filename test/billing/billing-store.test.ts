import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { postgresBillingStore } from '../../src/billing/postgres-billing-store.js';
import { sqliteBillingStore } from '../../src/billing/sqlite-billing-store.js';
import { migratePostgres, POSTGRES_MIGRATIONS } from '../../src/jobs/postgres/migrations.js';
import { ADVISORY_LOCK, createPostgresPool } from '../../src/jobs/postgres/pool.js';
import { postgresJobStore } from '../../src/jobs/postgres/postgres-store.js';
import { MIGRATIONS, openSqliteDatabase } from '../../src/jobs/sqlite/database.js';
import { sqliteJobStore } from '../../src/jobs/sqlite/sqlite-store.js';
import { tempDir } from '../helpers/daemon.js';
import { createTestDatabase, truncateAll, type TestDatabase } from '../helpers/postgres.js';
import { describeBillingStoreConformance } from './billing-store-conformance.js';

/** The billing store's verbs on both stores: the embedded SQLite file and PostgreSQL (this file's own database). */

describeBillingStoreConformance('sqlite', async () => {
  const db = openSqliteDatabase(path.join(tempDir(), 'pixeld.sqlite'));
  return { jobs: sqliteJobStore(db), billing: sqliteBillingStore(db) };
});

describe('sqlite billing store', () => {
  it('lets a named lock lapse when its holder stops renewing it (the daemon and commands share one file)', async () => {
    const billing = sqliteBillingStore(openSqliteDatabase(path.join(tempDir(), 'pixeld.sqlite')));
    expect(await billing.tryLock('settle', 'a', 1_000, 500)).toBe(true);
    expect(await billing.tryLock('settle', 'a', 1_400, 500)).toBe(true); // renewed to 1_900
    expect(await billing.tryLock('settle', 'b', 1_899, 500)).toBe(false);
    expect(await billing.tryLock('settle', 'b', 1_900, 500)).toBe(true);
    expect(await billing.tryLock('settle', 'a', 1_901, 500)).toBe(false);
  });
});

/** Every `all()` of the statements `db` prepares from now on: its SQL and how many rows it gave. */
function recordReads(db: Database.Database): Array<{ sql: string; rows: number }> {
  const reads: Array<{ sql: string; rows: number }> = [];
  const prepare = db.prepare.bind(db);
  db.prepare = ((sql: string) => {
    const statement = prepare(sql);
    const all = statement.all.bind(statement);
    statement.all = (...params: unknown[]) => {
      const rows = all(...params);
      reads.push({ sql, rows: rows.length });
      return rows;
    };
    return statement;
  }) as typeof db.prepare;
  return reads;
}

describe('sqlite earnings', () => {
  /** 2026-01-01T00:00:00Z, in seconds. */
  const JAN_1 = 1_767_225_600;

  it('reads one row per group and state, from an index that holds what it sums, unless a group is too large to sum in SQL', async () => {
    const db = openSqliteDatabase(path.join(tempDir(), 'pixeld.sqlite'));
    const insert = db.prepare<[string, string, string, number, string]>(
      "INSERT INTO receipts (job_id, user, provider, fee_wei, images, created, leaf, receipt, state) VALUES (?, ?, 'p', ?, 1, ?, '{}', '{}', ?)",
    );
    // 2 users x 2 days x 2 states, 5 receipts each.
    let n = 0;
    for (const user of ['u1', 'u2']) {
      for (const created of [JAN_1, JAN_1 + 86_400]) {
        for (const state of ['settled', 'unsettled']) {
          for (let i = 0; i < 5; i += 1) insert.run(`job-${(n += 1)}`, user, '1000000000000000000', created, state);
        }
      }
    }
    const reads = recordReads(db);
    const billing = sqliteBillingStore(db);

    expect((await billing.earningsByDay()).map((d) => [d.day, d.receipts])).toEqual([
      ['2026-01-01', 20],
      ['2026-01-02', 20],
    ]);
    expect((await billing.earningsByUser(10)).map((u) => [u.user, u.receipts])).toEqual([
      ['u1', 20],
      ['u2', 20],
    ]);
    expect(reads.map((r) => r.rows)).toEqual([4, 4]);
    const plans = reads.map((r) => db.prepare<[], { detail: string }>(`EXPLAIN QUERY PLAN ${r.sql}`).all().map((p) => p.detail));
    expect(plans).toEqual([['SCAN receipts USING COVERING INDEX receipts_earnings_by_day'], ['SCAN receipts USING COVERING INDEX receipts_earnings_by_user']]);

    // Fees whose parts above the last nine digits add up past 2^63: the grouped read stops at SQLite's
    // integer overflow (it returns nothing), and the receipts are read one by one.
    for (let i = 0; i < 20; i += 1) insert.run(`wide-${i}`, 'u3', '9'.repeat(27), JAN_1, 'unsettled');
    reads.length = 0;
    const days = await billing.earningsByDay();
    expect(reads.map((r) => r.rows)).toEqual([60]);
    expect(days[0]).toMatchObject({ day: '2026-01-01', receipts: 40, unsettledWei: 10n * 10n ** 18n + 20n * (10n ** 27n - 1n) });
  });
});

/** A batch as an earlier pixeld stored it, before items were indexed by user and nonce. */
const OLD_BATCH_ITEMS = JSON.stringify([
  { user: '0x00000000000000000000000000000000000A11cE', nonce: '12', totalFeeWei: '5', requestsHash: '0xr', signature: '0xs', receipts: [{ jobId: 'job_x', proof: [] }] },
  { user: '0x0000000000000000000000000000000000000b0b', nonce: '3', totalFeeWei: '5', requestsHash: '0xr', signature: '0xs', receipts: [] },
]);

describe('sqlite schema upgrades', () => {
  it('indexes the items of batches written before the upgrade, so the signer learns of them', async () => {
    const file = path.join(tempDir(), 'old.sqlite');
    const old = new Database(file);
    for (const sql of MIGRATIONS.slice(0, 7)) old.exec(sql);
    old.prepare("INSERT INTO settlement_batches (id, state, items, created_ms) VALUES ('old', 'abandoned', ?, 1)").run(OLD_BATCH_ITEMS);
    old.exec('PRAGMA user_version = 7');
    old.close();

    const billing = sqliteBillingStore(openSqliteDatabase(file));
    expect((await billing.signedItemsAbove('0x00000000000000000000000000000000000a11ce', 9n)).map((r) => [r.batchId, r.item.nonce])).toEqual([['old', 12n]]);
    expect(await billing.signedItemsAbove('0x00000000000000000000000000000000000a11ce', 12n)).toEqual([]);
    expect((await billing.signedItemsAbove('0x0000000000000000000000000000000000000B0B', 2n)).map((r) => r.item.nonce)).toEqual([3n]);
  });
});

let pg: TestDatabase;
beforeAll(async () => {
  pg = await createTestDatabase();
});
afterAll(async () => {
  await pg?.drop();
});

describeBillingStoreConformance('postgres', async () => {
  const pool = await pg.pool();
  await truncateAll(pool);
  return { jobs: postgresJobStore(pool), billing: postgresBillingStore(pool) };
});

describe('postgres schema upgrades', () => {
  it('indexes the items of batches written before the upgrade, so the signer learns of them', async () => {
    const fresh = await createTestDatabase();
    const pool = createPostgresPool({ url: fresh.url, maxConnections: 2 });
    try {
      await migratePostgres(pool, POSTGRES_MIGRATIONS.slice(0, 2));
      await pool.query("INSERT INTO settlement_batches (id, state, items, created_ms) VALUES ('old', 'confirmed', $1, 1)", [OLD_BATCH_ITEMS]);
      expect((await migratePostgres(pool)).applied.map((m) => m.version)).toEqual(POSTGRES_MIGRATIONS.slice(2).map((m) => m.version));

      const billing = postgresBillingStore(pool);
      expect((await billing.signedItemsAbove('0x00000000000000000000000000000000000a11ce', 9n)).map((r) => [r.batchId, r.item.nonce])).toEqual([['old', 12n]]);
      expect(await billing.signedItemsAbove('0x00000000000000000000000000000000000a11ce', 12n)).toEqual([]);
      expect((await billing.signedItemsAbove('0x0000000000000000000000000000000000000B0B', 2n)).map((r) => r.item.nonce)).toEqual([3n]);
    } finally {
      await pool.end();
      await fresh.drop();
    }
  });
});

describe('postgres billing store across processes', () => {
  it('gives a free lock to exactly one of several processes asking at once', async () => {
    const pools = await Promise.all([pg.pool(), pg.pool(), pg.pool()]);
    await truncateAll(pools[0]!);
    const stores = pools.map((p) => postgresBillingStore(p));
    for (let round = 0; round < 5; round += 1) {
      const got = await Promise.all(stores.map((s, i) => s.tryLock(`settle-${round}`, `replica-${i}`, 1_000, 60_000)));
      expect(got.filter(Boolean)).toHaveLength(1);
      await Promise.all(stores.map((s, i) => s.unlock(`settle-${round}`, `replica-${i}`)));
    }
    await Promise.all(pools.map((p) => p.end()));
  });

  it('frees a lock the moment its holder’s connection dies, whatever the clocks say', async () => {
    const [poolA, poolB] = await Promise.all([pg.pool(), pg.pool()]);
    const a = postgresBillingStore(poolA!);
    const b = postgresBillingStore(poolB!);
    // A far-future clock on B and a one-millisecond TTL on A change nothing: the session holds the lock.
    expect(await a.tryLock('settlement', 'replica-a', 1_000, 1)).toBe(true);
    expect(await b.tryLock('settlement', 'replica-b', 10 ** 12, 1)).toBe(false);
    expect(await a.tryLock('settlement', 'replica-a', 2_000, 1)).toBe(true);
    // Replica A's connection is cut (a crash, a network split): PostgreSQL drops its lock with it.
    await poolB!.query(
      `SELECT pg_terminate_backend(pid) FROM pg_locks
       WHERE locktype = 'advisory' AND classid = $1 AND objid = hashtext('settlement')::oid AND granted`,
      [ADVISORY_LOCK.settlement],
    );
    await expect.poll(() => b.tryLock('settlement', 'replica-b', 3_000, 1)).toBe(true);
    // A learns it lost the lock at its next renewal, instead of settling on beside B.
    expect(await a.tryLock('settlement', 'replica-a', 3_000, 1)).toBe(false);
    await b.unlock('settlement', 'replica-b');
    await Promise.all([poolA!.end(), poolB!.end()]);
  });
});
