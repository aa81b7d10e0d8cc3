import type { Pool } from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { newJobId } from '../../src/jobs/model.js';
import { postgresJobStore } from '../../src/jobs/postgres/postgres-store.js';
import { ReplicaPresence, SignerMismatchError, type ReplicaPresenceOptions } from '../../src/jobs/postgres/replica-presence.js';
import type { JobStore, NewJob } from '../../src/jobs/store.js';
import { createTestDatabase, truncateAll, type TestDatabase } from '../helpers/postgres.js';
import { jobParams } from '../helpers/job-params.js';

/** The replicas table: who is alive, one signer for all, and the sync jobs nobody can answer any more. */

const SIGNER = '0x00000000000000000000000000000000000000aa';

let db: TestDatabase;
let pool: Pool;
let store: JobStore;
beforeAll(async () => {
  db = await createTestDatabase();
  pool = await db.pool();
  store = postgresJobStore(pool);
});
afterAll(async () => {
  await db?.drop();
});
beforeEach(async () => {
  await truncateAll(pool);
});

let clock = 1_000_000;
const presence = (id: string, over: Partial<ReplicaPresenceOptions> = {}) =>
  new ReplicaPresence({
    pool,
    info: { id, version: '0.1.0', signer: SIGNER, backends: ['gpu'] },
    now: () => clock,
    heartbeatMs: 60_000, // beats are driven by hand below
    silentAfterMs: 30_000,
    resultTtlMs: 3_600_000,
    onError: (err) => {
      throw err;
    },
    ...over,
  });

const job = (over: Partial<NewJob>): NewJob => ({
  id: newJobId(),
  owner: 'alice',
  kind: 'generation',
  delivery: 'sync',
  model: 'm',
  backendId: 'gpu',
  params: jobParams(),
  inputs: [],
  requestSha256: 'a'.repeat(64),
  pricePerImageWei: 0n,
  fingerprint: 'f'.repeat(64),
  idempotencyKey: undefined,
  baseUrl: 'http://x',
  createdMs: clock,
  ...over,
});

describe('replica presence (PostgreSQL)', () => {
  it('lists the live replicas and refuses one that signs with another key', async () => {
    const a = presence('replica-a');
    const b = presence('replica-b');
    await a.start();
    await b.start();
    expect((await a.live()).map((r) => r.id)).toEqual(['replica-a', 'replica-b']);
    const stranger = presence('replica-c', { info: { id: 'replica-c', version: '0.1.0', signer: '0x00000000000000000000000000000000000000bb', backends: [] } });
    await expect(stranger.start()).rejects.toBeInstanceOf(SignerMismatchError);
    expect((await a.live()).map((r) => r.id)).toEqual(['replica-a', 'replica-b']);
    // A replica long gone does not hold the key choice forever.
    clock += 31_000;
    await a.beat();
    expect((await a.live()).map((r) => r.id)).toEqual(['replica-a']);
    await a.stop();
    await b.stop();
  });

  it('cancels the sync jobs of a replica gone silent, and nothing else', async () => {
    const a = presence('replica-a');
    const b = presence('replica-b');
    await a.start();
    await b.start();
    const orphanPending = job({ submittedBy: 'replica-b' });
    const orphanRunning = job({ submittedBy: 'replica-b' });
    const asyncOfB = job({ submittedBy: 'replica-b', delivery: 'async' });
    const syncOfA = job({ submittedBy: 'replica-a' });
    for (const j of [orphanRunning, orphanPending, asyncOfB, syncOfA]) await store.create(j, 0);
    await store.claimNext('gpu', 'replica-a', clock, 600_000);
    // b is SIGKILLed: it never beats again. 29 s later it still counts as alive.
    clock += 29_000;
    await a.beat();
    expect((await store.get(orphanPending.id))!.status).toBe('pending');
    clock += 2_000;
    await a.beat();
    for (const orphan of [orphanPending, orphanRunning]) {
      expect(await store.get(orphan.id)).toMatchObject({ status: 'cancelled', error: { code: 'job_cancelled' } });
    }
    // The job's history says so, with the replica that was running it when it had one.
    const history = await store.jobEvents(orphanRunning.id);
    expect(history.map((e) => e.type)).toEqual(['queued', 'started', 'cancelled']);
    expect(history[2]).toMatchObject({ atMs: clock, attempt: 1, replica: 'replica-a', detail: { error: { code: 'job_cancelled' } } });
    // An async job is polled for, from anywhere; a live replica's sync job has its caller.
    expect((await store.get(asyncOfB.id))!.status).toBe('pending');
    expect((await store.get(syncOfA.id))!.status).toBe('pending');
    await a.stop();
  });

  it('cancels its own unfinished sync jobs when it stops: their callers were answered 503', async () => {
    const a = presence('replica-a');
    await a.start();
    const mine = job({ submittedBy: 'replica-a' });
    const theirs = job({ submittedBy: 'replica-b' });
    await store.create(mine, 0);
    await store.create(theirs, 0);
    await a.stop();
    expect((await store.get(mine.id))!.status).toBe('cancelled');
    expect((await store.get(theirs.id))!.status).toBe('pending');
    expect(await a.live()).toEqual([]);
  });
});
