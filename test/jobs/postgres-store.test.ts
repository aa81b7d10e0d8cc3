import type { Pool } from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { newJobId, type JobResult } from '../../src/jobs/model.js';
import { migratePostgres, POSTGRES_MIGRATIONS } from '../../src/jobs/postgres/migrations.js';
import { createPostgresPool } from '../../src/jobs/postgres/pool.js';
import { postgresJobStore } from '../../src/jobs/postgres/postgres-store.js';
import { JobSignals } from '../../src/jobs/job-signals.js';
import { listenForJobSignals } from '../../src/jobs/postgres/job-notifications.js';
import { InsufficientBalanceError, ModelBusyError, QueueFullError, type JobStore, type NewJob } from '../../src/jobs/store.js';
import type { JobSignature } from '../../src/tee/receipt.js';
import { createTestDatabase, truncateAll, type TestDatabase } from '../helpers/postgres.js';
import { describeJobStoreConformance } from './store-conformance.js';
import { jobParams } from '../helpers/job-params.js';

/** The replica name the stores are driven as. */
const REPLICA = 'replica-1';

/** The PostgreSQL job store: the conformance suite, then what only shows with several processes on one database. */

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

describeJobStoreConformance('postgres', async () => {
  const pool = await db.pool();
  await truncateAll(pool);
  return postgresJobStore(pool);
});

const PRICE = 1_000_000_000_000_000n;

function newJob(over: Partial<NewJob> = {}): NewJob {
  return {
    id: newJobId(),
    owner: '0x00000000000000000000000000000000000000a1',
    kind: 'generation',
    delivery: 'async',
    model: 'm',
    backendId: 'gpu',
    params: jobParams({ n: 2 }),
    inputs: [],
    requestSha256: 'a'.repeat(64),
    pricePerImageWei: PRICE,
    fingerprint: 'f'.repeat(64),
    idempotencyKey: undefined,
    baseUrl: 'http://x',
    createdMs: 1_000,
    ...over,
  };
}

const result = (sha: string): JobResult => ({
  created: 1,
  images: [{ sha256: sha, mediaType: 'image/png', bytes: 10, width: 64, height: 64 }],
  size: '64x64',
  quality: 'high',
  outputFormat: 'png',
  background: 'opaque',
  fileToken: 't'.repeat(32),
  warnings: [],
});

/** A paid 0G receipt for `owner` numbered `seq`: the completion writes it as an unsettled receipt row. */
const signatureFor = (jobId: string, owner: string, seq: bigint): JobSignature => ({
  signingAddress: '0x0000000000000000000000000000000000000001',
  text: `receipt ${jobId} ${seq}`,
  signature: '0x00',
  receipt: {
    version: 2,
    tee: 'INSECURE-DEV',
    provider: '0x0000000000000000000000000000000000000002',
    signer: '0x0000000000000000000000000000000000000001',
    job: jobId,
    model: 'm',
    user: owner,
    seq: seq.toString(),
    request_sha256: 'a'.repeat(64),
    images: 1,
    image_sha256: ['b'],
    price_per_image_wei: PRICE.toString(),
    fee_wei: PRICE.toString(),
    created: 1,
    text: 'image-receipt/2',
    signature: '0x00',
  },
});

describe('postgres job store across processes (two pools on one database)', () => {
  let poolA: Pool;
  let poolB: Pool;
  let a: JobStore;
  let b: JobStore;
  beforeEach(async () => {
    poolA = await db.pool();
    poolB = await db.pool();
    await truncateAll(poolA);
    a = postgresJobStore(poolA);
    b = postgresJobStore(poolB);
    return async () => {
      await a.close();
      await b.close();
    };
  });

  it('never hands one job to two claimers (FOR UPDATE SKIP LOCKED)', async () => {
    const ids = new Set<string>();
    for (let i = 0; i < 60; i += 1) {
      const job = newJob();
      ids.add(job.id);
      await a.create(job, 0);
    }
    const claimed: string[] = [];
    // Eight claimers per store, all at once, until the queue is empty.
    const claimer = async (store: JobStore) => {
      for (;;) {
        const job = await store.claimNext('gpu', REPLICA, 2_000, 60_000);
        if (!job) return;
        claimed.push(job.id);
      }
    };
    await Promise.all([...Array.from({ length: 8 }, () => claimer(a)), ...Array.from({ length: 8 }, () => claimer(b))]);
    expect(claimed).toHaveLength(60);
    expect(new Set(claimed)).toEqual(ids);
    for (const id of ids) expect((await a.get(id))!.attempts).toBe(1);
  });

  it('never leases one webhook delivery to two workers at once (FOR UPDATE SKIP LOCKED)', async () => {
    const ids = new Set<string>();
    for (let i = 0; i < 40; i += 1) {
      const job = newJob({ webhook: { url: 'https://hooks.example.com/x', format: '0g' } });
      await a.create(job, 0);
      await a.cancel(job.id, 2_000, 9_000);
      ids.add(job.id);
    }
    const taken: string[] = [];
    // Six workers per process, all at once, each taking two at a time until nothing is due.
    const worker = async (store: JobStore) => {
      for (;;) {
        const batch = await store.claimWebhookDeliveries(3_000, 60_000, 2);
        if (batch.length === 0) return;
        taken.push(...batch.map((d) => d.jobId));
      }
    };
    await Promise.all([...Array.from({ length: 6 }, () => worker(a)), ...Array.from({ length: 6 }, () => worker(b))]);
    expect(taken).toHaveLength(40);
    expect(new Set(taken)).toEqual(ids);
  });

  it('numbers one owner’s concurrent completions from two processes 1…n, each once, in the order they commit', async () => {
    const owner = '0x00000000000000000000000000000000000000b2';
    const claims: Array<{ id: string; token: string }> = [];
    for (let i = 0; i < 24; i += 1) {
      const job = newJob({ owner });
      await a.create(job, 0);
      const c = (await a.claimNext('gpu', REPLICA, 2_000, 60_000))!;
      claims.push({ id: c.id, token: c.leaseToken });
    }
    // Signing happens under the owner's sequence row lock: its order is the order numbers are given out.
    const signed: bigint[] = [];
    const outcomes = await Promise.all(
      claims.map(({ id, token }, i) =>
        (i % 2 === 0 ? a : b).complete(
          id,
          token,
          result(`s${i}`),
          {
            seqFloor: 0n,
            sign: (seq) => {
              signed.push(seq);
              return signatureFor(id, owner, seq);
            },
          },
          3_000,
          9_000,
        ),
      ),
    );
    expect(outcomes.every(Boolean)).toBe(true);
    expect(signed).toEqual(Array.from({ length: 24 }, (_, i) => BigInt(i + 1)));
    const { rows } = await poolA.query<{ seq: string }>('SELECT seq::text AS seq FROM receipts WHERE owner = $1 ORDER BY receipts.seq', [owner]);
    expect(rows.map((r) => r.seq)).toEqual(Array.from({ length: 24 }, (_, i) => String(i + 1)));
  });

  it('gives no number away when signing fails: the completion rolls back whole', async () => {
    const owner = '0x00000000000000000000000000000000000000c3';
    const job = newJob({ owner });
    await a.create(job, 0);
    const claimed = (await a.claimNext('gpu', REPLICA, 2_000, 60_000))!;
    const failing = {
      seqFloor: 0n,
      sign: () => {
        throw new Error('TEE unavailable');
      },
    };
    await expect(a.complete(job.id, claimed.leaseToken, result('x'), failing, 3_000, 9_000)).rejects.toThrow('TEE unavailable');
    expect((await a.get(job.id))!.status).toBe('processing');
    let seen = 0n;
    const ok = { seqFloor: 0n, sign: (seq: bigint) => ((seen = seq), signatureFor(job.id, owner, seq)) };
    expect(await b.complete(job.id, claimed.leaseToken, result('x'), ok, 3_001, 9_000)).toBe(true);
    expect(seen).toBe(1n);
  });

  it('admits one owner’s concurrent submits from two processes only as far as the budget goes', async () => {
    const owner = '0x00000000000000000000000000000000000000d4';
    // Room for exactly three jobs of two images, after one unsettled receipt of one image.
    const first = newJob({ owner, params: { ...newJob().params, n: 1 } });
    await a.create(first, 0);
    const claimed = (await a.claimNext('gpu', REPLICA, 2_000, 60_000))!;
    await a.complete(first.id, claimed.leaseToken, result('r'), { seqFloor: 0n, sign: (seq) => signatureFor(first.id, owner, seq) }, 3_000, 9_000);
    const reservation = { budgetWei: 7n * PRICE, balanceBlock: 100 };
    const attempts = await Promise.allSettled(
      Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? a : b).create(newJob({ owner }), 0, reservation)),
    );
    const admitted = attempts.filter((r) => r.status === 'fulfilled');
    const refused = attempts.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(admitted).toHaveLength(3);
    expect(refused).toHaveLength(7);
    for (const r of refused) expect(r.reason).toBeInstanceOf(InsufficientBalanceError);
    const { rows } = await poolA.query<{ n: string }>("SELECT COUNT(*) AS n FROM jobs WHERE owner = $1 AND status = 'pending'", [owner]);
    expect(Number(rows[0]!.n)).toBe(3);
  });

  it('counts receipts settled after the balance was read, and not those settled before', async () => {
    const owner = '0x00000000000000000000000000000000000000e5';
    const done = newJob({ owner, params: { ...newJob().params, n: 1 } });
    await a.create(done, 0);
    const claimed = (await a.claimNext('gpu', REPLICA, 2_000, 60_000))!;
    await a.complete(done.id, claimed.leaseToken, result('q'), { seqFloor: 0n, sign: (seq) => signatureFor(done.id, owner, seq) }, 3_000, 9_000);
    await poolA.query("UPDATE receipts SET state = 'settled', settled_block = 50 WHERE job_id = $1", [done.id]);
    // Read at block 40: the balance still holds the settled fee, so it counts; read at block 60, it does not.
    const two = () => newJob({ owner });
    await expect(a.create(two(), 0, { budgetWei: 2n * PRICE, balanceBlock: 40 })).rejects.toBeInstanceOf(InsufficientBalanceError);
    expect((await a.create(two(), 0, { budgetWei: 2n * PRICE, balanceBlock: 60 })).created).toBe(true);
  });

  it('gives one job for one Idempotency-Key sent to two processes at once', async () => {
    const outcomes = await Promise.all(
      Array.from({ length: 6 }, (_, i) => (i % 2 === 0 ? a : b).create(newJob({ idempotencyKey: 'same-key' }), 60_000)),
    );
    expect(outcomes.filter((o) => o.created)).toHaveLength(1);
    expect(new Set(outcomes.map((o) => o.job.id)).size).toBe(1);
  });

  it('holds a model’s cap and a backend’s queue bound against concurrent submits from two processes', async () => {
    const modelCap = await Promise.allSettled(
      Array.from({ length: 12 }, (_, i) => (i % 2 === 0 ? a : b).create(newJob({ model: 'capped' }), 0, undefined, { maxUnfinishedForModel: 4 })),
    );
    expect(modelCap.filter((r) => r.status === 'fulfilled')).toHaveLength(4);
    for (const r of modelCap) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(ModelBusyError);
    const queueBound = await Promise.allSettled(
      Array.from({ length: 12 }, (_, i) => (i % 2 === 0 ? a : b).create(newJob({ backendId: 'small' }), 0, undefined, { maxPendingForBackend: 5 })),
    );
    expect(queueBound.filter((r) => r.status === 'fulfilled')).toHaveLength(5);
    for (const r of queueBound) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(QueueFullError);
    expect(await a.countUnfinishedForModel('capped')).toBe(4);
    expect(await b.countPending('small')).toBe(5);
  });

  it('recovers at start only the restarting replica’s jobs; another replica’s running jobs are left to their lease', async () => {
    const mineRunning = newJob();
    const theirsRunning = newJob();
    const mySync = newJob({ delivery: 'sync', submittedBy: 'replica-a', backendId: 'other' });
    const theirSync = newJob({ delivery: 'sync', submittedBy: 'replica-b', backendId: 'other' });
    for (const job of [mineRunning, theirsRunning, mySync, theirSync]) await a.create(job, 0);
    await a.claimNext('gpu', 'replica-a', 2_000, 60_000);
    await b.claimNext('gpu', 'replica-b', 2_000, 60_000);
    const outcome = await a.recoverInterrupted('replica-a', () => 'rerun', 3, 3_000, 9_000);
    expect(outcome).toEqual({ requeued: [mineRunning.id], failed: [], cancelled: [mySync.id] });
    expect((await a.get(mineRunning.id))!.status).toBe('pending');
    expect((await a.get(theirsRunning.id))!).toMatchObject({ status: 'processing', ranBy: 'replica-b' });
    expect((await a.get(mySync.id))!.status).toBe('cancelled');
    expect((await a.get(theirSync.id))!.status).toBe('pending');
    // replica-b died instead of restarting: its lease runs out and the job goes back to the queue.
    expect(await a.recoverExpiredLeases(() => 'rerun', 3, 2_000 + 60_001, 9_000)).toEqual({ requeued: [theirsRunning.id], failed: [] });
    expect((await a.get(theirsRunning.id))!.status).toBe('pending');
  });

  it('tells every listening process when a job is queued, cancelled or finished, on commit', async () => {
    const signals = new JobSignals();
    const heard: string[] = [];
    signals.onQueued((backendId) => heard.push(`queued ${backendId}`));
    signals.onCancelled((id) => heard.push(`cancelled ${id}`));
    const listener = listenForJobSignals({ url: db.url, signals });
    await listener.ready;
    try {
      const done = newJob();
      const finished = (id: string) => signals.untilFinished(id, AbortSignal.timeout(5_000));
      // Written through the other process's pool: only the database connects the two.
      let heardDone = finished(done.id);
      await b.create(done, 0);
      const claimed = (await b.claimNext('gpu', REPLICA, 2_000, 60_000))!;
      await b.complete(done.id, claimed.leaseToken, result('n'), { seqFloor: 0n, sign: (seq) => signatureFor(done.id, done.owner, seq) }, 3_000, 9_000);
      await heardDone;
      const cancelled = newJob({ backendId: 'gpu-2' });
      heardDone = finished(cancelled.id);
      await b.create(cancelled, 0);
      await b.cancel(cancelled.id, 3_000, 9_000);
      await heardDone;
      await expect.poll(() => heard).toEqual(['queued gpu', 'queued gpu-2', `cancelled ${cancelled.id}`]);
      // A rolled-back transition tells nobody.
      const rolledBack = newJob({ owner: '0x00000000000000000000000000000000000000f6' });
      await b.create(rolledBack, 0);
      const lease = (await b.claimNext('gpu', REPLICA, 2_000, 60_000))!;
      const failing = { seqFloor: 0n, sign: () => { throw new Error('no TEE'); } };
      const notHeard = finished(rolledBack.id).then(() => 'heard', () => 'silent');
      await expect(b.complete(rolledBack.id, lease.leaseToken, result('z'), failing, 3_000, 9_000)).rejects.toThrow('no TEE');
      expect(await Promise.race([notHeard, new Promise((r) => setTimeout(() => r('silent'), 300))])).toBe('silent');
    } finally {
      await listener.close();
    }
  });

  it('stores amounts beyond 2^64 exactly', async () => {
    const big = 2n ** 200n + 7n;
    const job = newJob({ pricePerImageWei: big });
    await a.create(job, 0);
    expect((await b.get(job.id))!.pricePerImageWei).toBe(big);
  });

  it('keeps a prompt with a NUL character (JSON as text, not JSONB)', async () => {
    const job = newJob({ params: { ...newJob().params, prompt: 'a\u0000b' } });
    await a.create(job, 0);
    expect((await b.get(job.id))!.params.prompt).toBe('a\u0000b');
  });
});

describe('postgres migrations', () => {
  it('applies each migration once when two processes migrate the same new database at the same time', async () => {
    const fresh = await createTestDatabase();
    const pools = [0, 1, 2].map(() => createPostgresPool({ url: fresh.url, maxConnections: 2 }));
    try {
      const results = await Promise.all(pools.map((p) => migratePostgres(p)));
      const appliedBy = results.map((r) => r.applied.length);
      expect(appliedBy.sort()).toEqual([0, 0, POSTGRES_MIGRATIONS.length]);
      for (const r of results) expect(r.to).toBe(POSTGRES_MIGRATIONS.length);
      const { rows } = await pools[0]!.query<{ version: number }>('SELECT version FROM schema_migrations ORDER BY version');
      expect(rows.map((r) => r.version)).toEqual(POSTGRES_MIGRATIONS.map((m) => m.version));
      // Again later: nothing to do.
      expect(await migratePostgres(pools[1]!)).toMatchObject({ from: POSTGRES_MIGRATIONS.length, applied: [] });
    } finally {
      await Promise.all(pools.map((p) => p.end()));
      await fresh.drop();
    }
  });

  it('numbers migrations 1…n in order', () => {
    expect(POSTGRES_MIGRATIONS.map((m) => m.version)).toEqual(POSTGRES_MIGRATIONS.map((_, i) => i + 1));
  });

  it('refuses a database written by a newer pixeld, and a failed migration leaves the version before it', async () => {
    const fresh = await createTestDatabase();
    const pool = createPostgresPool({ url: fresh.url, maxConnections: 2 });
    try {
      const broken = [...POSTGRES_MIGRATIONS, { version: POSTGRES_MIGRATIONS.length + 1, name: 'broken', sql: 'CREATE TABLE jobs (x int)' }];
      await expect(migratePostgres(pool, broken)).rejects.toThrow(/migration \d+ \(broken\) failed/);
      expect(await migratePostgres(pool)).toMatchObject({ from: POSTGRES_MIGRATIONS.length, applied: [] });
      await pool.query("INSERT INTO schema_migrations (version, name) VALUES (999, 'from the future')");
      await expect(migratePostgres(pool)).rejects.toThrow(/newer pixeld \(schema 999/);
    } finally {
      await pool.end();
      await fresh.drop();
    }
  });
});
