import { createHash } from 'node:crypto';
import { rmSync } from 'node:fs';
import { hostname } from 'node:os';
import pg from 'pg';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { POSTGRES_MIGRATIONS } from '../../src/jobs/postgres/migrations.js';
import { startTestDaemon, tempDir, type TestDaemon } from '../helpers/daemon.js';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';

/**
 * The whole daemon on PostgreSQL (database.url): it migrates an empty database at start, runs a paid job end
 * to end through the HTTP API — admission, claim, completion with its numbered receipt and signature — and a
 * restarted daemon on the same database finds everything where it was.
 */

const PRICE = 2_000_000_000_000_000n;
const API_KEY = 'sk-postgres-router';

let db: TestDatabase;
let sql: pg.Client;
beforeAll(async () => {
  db = await createTestDatabase();
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
});
afterAll(async () => {
  await sql?.end();
  await db?.drop();
});

function config(): Partial<ConfigInput> {
  return {
    database: { url: db.url },
    auth: { mode: 'api-key', apiKeys: [{ owner: 'router-pg', sha256: createHash('sha256').update(API_KEY).digest('hex') }] },
    backends: [{ id: 'gpu', type: 'reference', concurrency: 2, latencyMsPerImage: 0 }],
    models: [{ id: 'paid', backend: 'gpu', capabilities: ['generation'], sizes: ['64x64'], maxN: 4, pricePerImageWei: PRICE.toString() }],
  };
}

const auth = { authorization: `Bearer ${API_KEY}` };

async function submit(d: TestDaemon, body: Record<string, unknown>, headers: Record<string, string> = {}) {
  const res = await fetch(`${d.url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...auth, ...headers },
    body: JSON.stringify({ model: 'paid', size: '64x64', ...body }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

async function waitDone(d: TestDaemon, jobId: string): Promise<Record<string, any>> {
  for (let i = 0; i < 20; i += 1) {
    const res = await fetch(`${d.url}/v1/async/jobs/${jobId}?wait=5`, { headers: auth });
    const body = (await res.json()) as Record<string, any>;
    if (body.status === 'completed' || body.status === 'failed') return body;
  }
  throw new Error(`job ${jobId} did not finish`);
}

async function signatureOf(d: TestDaemon, jobId: string): Promise<Record<string, any>> {
  const res = await fetch(`${d.url}/v1/proxy/signature/${jobId}`);
  expect(res.status).toBe(200);
  return (await res.json()) as Record<string, any>;
}

describe('the daemon on PostgreSQL', () => {
  it('migrates at start, runs paid jobs end to end with numbered receipts, and keeps them across a restart', async () => {
    const dataDir = tempDir('pixeld-pg-daemon-');
    let d: TestDaemon | undefined = await startTestDaemon({ config: config(), dataDir });
    try {
      expect(d.logs.map((l) => l.message)).toEqual(
        expect.arrayContaining([
          ...POSTGRES_MIGRATIONS.map((m) => `database: applied migration ${m.version} (${m.name})`),
          expect.stringMatching(new RegExp(`^database: postgres at postgres://postgres@127\\.0\\.0\\.1:5432/${db.name}, schema ${POSTGRES_MIGRATIONS.length}$`)),
        ]),
      );

      const first = await submit(d, { prompt: 'a lighthouse', n: 2 }, { 'idempotency-key': 'pg-1' });
      expect(first.status).toBe(202);
      const jobId = first.body.jobId as string;
      const done = await waitDone(d, jobId);
      expect(done.status).toBe('completed');
      expect(done.data.data).toHaveLength(2);
      expect((await sharp(Buffer.from(done.data.data[0].b64_json, 'base64')).metadata()).format).toBe('png');

      // The same Idempotency-Key gives the same job.
      const replay = await submit(d, { prompt: 'a lighthouse', n: 2 }, { 'idempotency-key': 'pg-1' });
      expect(replay.body.jobId).toBe(jobId);

      const signature = await signatureOf(d, jobId);
      expect(signature.receipt).toMatchObject({ job: jobId, user: 'router-pg', seq: '1', images: 2, fee_wei: (2n * PRICE).toString() });
      expect(await d.daemon.billing.getReceipt(jobId)).toMatchObject({ state: 'offchain', seq: 1n, feeWei: 2n * PRICE, images: 2 });

      // What the daemon wrote is in PostgreSQL's tables, with its types.
      const job = await sql.query(
        'SELECT status, images_requested, images_delivered, price_per_image_wei::text AS price, submitted_by, ran_by FROM jobs WHERE id = $1',
        [jobId],
      );
      // On an ephemeral port the replica is named after the host and the process.
      const replica = `${hostname()}:pid-${process.pid}`;
      expect(job.rows).toEqual([
        { status: 'completed', images_requested: 2, images_delivered: 2, price: PRICE.toString(), submitted_by: replica, ran_by: replica },
      ]);
      expect((await sql.query('SELECT id, signer FROM replicas')).rows).toEqual([{ id: replica, signer: d.daemon.tee.address }]);
      const seq = await sql.query("SELECT last_seq::text AS last FROM receipt_sequences WHERE owner = 'router-pg'");
      expect(seq.rows).toEqual([{ last: '1' }]);

      const second = await submit(d, { prompt: 'a fox', n: 1 });
      expect((await waitDone(d, second.body.jobId as string)).status).toBe('completed');
      expect((await signatureOf(d, second.body.jobId as string)).receipt.seq).toBe('2');

      await d.close();
      d = undefined;
      // A new daemon on the same database and data dir: nothing to migrate, the jobs and numbers go on.
      d = await startTestDaemon({ config: config(), dataDir });
      expect(d.logs.some((l) => String(l.message).startsWith('database: applied migration'))).toBe(false);
      const again = await waitDone(d, jobId);
      expect(again.data.data).toHaveLength(2);
      expect((await signatureOf(d, jobId)).receipt.seq).toBe('1');
      const third = await submit(d, { prompt: 'a heron', n: 1 });
      expect((await waitDone(d, third.body.jobId as string)).status).toBe('completed');
      expect((await signatureOf(d, third.body.jobId as string)).receipt.seq).toBe('3');
      expect(await d.daemon.billing.earningsByDay()).toEqual([expect.objectContaining({ receipts: 3, images: 4, offchainWei: 4n * PRICE })]);
    } finally {
      await d?.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
