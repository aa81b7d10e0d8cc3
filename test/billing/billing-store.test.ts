import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { postgresBillingStore } from '../../src/billing/postgres-billing-store.js';
import { sqliteBillingStore } from '../../src/billing/sqlite-billing-store.js';
import { postgresJobStore } from '../../src/jobs/postgres/postgres-store.js';
import { openSqliteDatabase } from '../../src/jobs/sqlite/database.js';
import { sqliteJobStore } from '../../src/jobs/sqlite/sqlite-store.js';
import { tempDir } from '../helpers/daemon.js';
import { createTestDatabase, truncateAll, type TestDatabase } from '../helpers/postgres.js';
import { describeBillingStoreConformance } from './billing-store-conformance.js';

/** The billing store's verbs on both stores: the embedded SQLite file and PostgreSQL (this file's own database). */

describeBillingStoreConformance('sqlite', async () => {
  const db = openSqliteDatabase(path.join(tempDir(), 'pixeld.sqlite'));
  return { jobs: sqliteJobStore(db), billing: sqliteBillingStore(db) };
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

describe('postgres billing store across processes', () => {
  it('gives a free lock to exactly one of several processes asking at once', async () => {
    const pools = await Promise.all([pg.pool(), pg.pool(), pg.pool()]);
    await truncateAll(pools[0]!);
    const stores = pools.map((p) => postgresBillingStore(p));
    for (let round = 0; round < 5; round += 1) {
      const got = await Promise.all(stores.map((s, i) => s.tryLock(`settle-${round}`, `replica-${i}`, 1_000, 60_000)));
      expect(got.filter(Boolean)).toHaveLength(1);
    }
    await Promise.all(pools.map((p) => p.end()));
  });
});
