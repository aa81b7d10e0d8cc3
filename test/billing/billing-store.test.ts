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
