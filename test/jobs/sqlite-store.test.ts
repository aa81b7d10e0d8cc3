import path from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { sqliteBillingStore } from '../../src/billing/sqlite-billing-store.js';
import { newJobId } from '../../src/jobs/model.js';
import { MIGRATIONS, openSqliteDatabase } from '../../src/jobs/sqlite/database.js';
import { sqliteJobStore } from '../../src/jobs/sqlite/sqlite-store.js';
import { tempDir } from '../helpers/daemon.js';
import { describeJobStoreConformance } from './store-conformance.js';

describeJobStoreConformance('sqlite', async () => sqliteJobStore(openSqliteDatabase(path.join(tempDir(), 'jobs.sqlite'))));

describe('sqlite job store', () => {
  it('keeps jobs across close and reopen of the same file', async () => {
    const file = path.join(tempDir(), 'jobs.sqlite');
    const first = sqliteJobStore(openSqliteDatabase(file));
    const id = newJobId();
    await first.create(
      {
        id,
        owner: 'o',
        kind: 'generation',
        delivery: 'async',
        model: 'm',
        backendId: 'b',
        params: { prompt: 'persist', n: 1, size: '64x64', quality: 'high', responseFormat: 'b64_json', outputFormat: 'png', outputCompression: undefined, background: 'auto', seed: 3, negativePrompt: undefined, numInferenceSteps: undefined, guidanceScale: undefined, user: undefined },
        inputs: [],
        requestSha256: '0'.repeat(64),
        pricePerImageWei: 5n,
        fingerprint: '1'.repeat(64),
        idempotencyKey: undefined,
        baseUrl: 'http://x',
        createdMs: 5,
      },
      0,
    );
    await first.close();
    const second = sqliteJobStore(openSqliteDatabase(file));
    expect((await second.get(id))!.params.prompt).toBe('persist');
    await second.close();
  });
});

describe('sqlite schema upgrades', () => {
  it('moves v1 receipts into the sequenced receipts table unchanged, where they can be voided', async () => {
    const file = path.join(tempDir(), 'old.sqlite');
    const old = new Database(file);
    // Schema 4, with one unsettled v1 receipt and a used nonce.
    for (const sql of MIGRATIONS.slice(0, 4)) old.exec(sql);
    old.exec(`INSERT INTO receipts (job_id, user, provider, fee_wei, images, created, leaf, receipt, state)
       VALUES ('job_${'a'.repeat(32)}', '0xU', '0xP', '7', 1, 100, '[]', '{"version":1}', 'unsettled');
     INSERT INTO settlement_nonces VALUES ('0xU', '3');
     PRAGMA user_version = 4;`);
    old.close();

    const db = openSqliteDatabase(file);
    const billing = sqliteBillingStore(db);
    const [receipt] = await billing.unsettledReceipts('0xU', 10);
    expect(receipt).toMatchObject({ jobId: `job_${'a'.repeat(32)}`, feeWei: 7n, seq: undefined, state: 'unsettled', receipt: { version: 1 } });
    await billing.markUnbillable([{ jobId: receipt!.jobId, state: 'void', note: 'v1' }]);
    expect(await billing.getReceipt(receipt!.jobId)).toMatchObject({ state: 'void', note: 'v1' });
    expect(db.prepare("SELECT name FROM sqlite_master WHERE name = 'settlement_nonces'").get()).toBeUndefined();
    db.close();
  });
});
