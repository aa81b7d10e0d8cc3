import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Pool } from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { memoryRateLimitBuckets } from '../../src/auth/memory-rate-limit-buckets.js';
import { BlobNotFoundError } from '../../src/images/blob-store.js';
import { BLOB_CHUNK_BYTES, PostgresBlobStore } from '../../src/images/postgres-blob-store.js';
import { newJobId } from '../../src/jobs/model.js';
import { postgresJobStore } from '../../src/jobs/postgres/postgres-store.js';
import type { NewJob } from '../../src/jobs/store.js';
import { Sweeper } from '../../src/jobs/sweeper.js';
import { createLogger } from '../../src/obs/logger.js';
import { testConfig } from '../helpers/daemon.js';
import { createTestDatabase, truncateAll, type TestDatabase } from '../helpers/postgres.js';
import { describeBlobStoreConformance, listed, MULTI_CHUNK_BYTES, sha256Of, streamed } from './blob-store-conformance.js';
import { jobParams } from '../helpers/job-params.js';

/**
 * Image bytes in PostgreSQL (issue 14): the conformance suite, then what only shows with several replicas —
 * each a store on its own data dir — on one database: reading what another stored, storing the same bytes at
 * once, and sweeping them with a real PostgreSQL job store.
 */

let db: TestDatabase;
let pool: Pool;
beforeAll(async () => {
  db = await createTestDatabase();
  pool = await db.pool();
});
afterAll(async () => {
  await db?.drop();
});
beforeEach(() => truncateAll(pool));

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function dataDirOfReplica(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'pixeld-pg-blobs-'));
  dirs.push(dir);
  return dir;
}

async function replicaStore(options: { pool?: Pool; dataDir?: string; now?: () => number } = {}): Promise<PostgresBlobStore> {
  const blobs = new PostgresBlobStore({ pool: options.pool ?? pool, dataDir: options.dataDir ?? dataDirOfReplica(), minFreeBytes: 0, now: options.now ?? Date.now });
  await blobs.init();
  return blobs;
}

async function upload(blobs: PostgresBlobStore, bytes: Buffer): Promise<string> {
  const file = blobs.tempPath('.png');
  await writeFile(file, bytes);
  return file;
}

describeBlobStoreConformance('postgres', ({ dataDir, minFreeBytes }) => {
  const blobs = new PostgresBlobStore({ pool, dataDir, minFreeBytes, now: Date.now });
  return blobs.init().then(() => blobs);
});

describe('image bytes in PostgreSQL, across replicas', () => {
  it('a blob one replica stored is read by another, whose backends get a copy under its own data dir', async () => {
    const dirA = dataDirOfReplica();
    const dirB = dataDirOfReplica();
    const a = await replicaStore({ dataDir: dirA });
    const b = await replicaStore({ dataDir: dirB });
    const input = randomBytes(MULTI_CHUNK_BYTES);
    const output = randomBytes(40_000);
    await a.putFile(await upload(a, input));
    await a.putBuffer(output);

    expect((await b.read(sha256Of(output))).equals(output)).toBe(true);
    expect((await streamed(await b.openReadStream(sha256Of(output)))).equals(output)).toBe(true);
    expect((await streamed(await b.openReadStream(sha256Of(input)))).equals(input)).toBe(true);
    const copyB = await b.localPath(sha256Of(input));
    expect(copyB.startsWith(path.join(dirB, 'blobs'))).toBe(true);
    expect((await readFile(copyB)).equals(input)).toBe(true);
    // The upload itself stayed on A as its copy.
    expect((await a.localPath(sha256Of(input))).startsWith(path.join(dirA, 'blobs'))).toBe(true);
    expect((await pool.query('SELECT count(*)::int AS n FROM blob_chunks')).rows[0].n).toBe(Math.ceil(MULTI_CHUNK_BYTES / BLOB_CHUNK_BYTES) + 1);
  });

  it('storing stored bytes again refreshes stored_ms, never back in time, and leaves the chunks untouched', async () => {
    let clock = 1_000;
    const blobs = await replicaStore({ now: () => clock });
    const bytes = randomBytes(MULTI_CHUNK_BYTES);
    await blobs.putBuffer(bytes);
    const chunkVersions = async () => (await pool.query('SELECT idx, xmin::text AS version FROM blob_chunks ORDER BY idx')).rows;
    const storedMs = async () => (await pool.query('SELECT stored_ms FROM blobs')).rows[0].stored_ms as string;
    const before = await chunkVersions();
    expect(before).toHaveLength(3);
    clock = 5_000;
    await blobs.putFile(await upload(blobs, bytes));
    expect(await storedMs()).toBe('5000');
    // A replica whose clock lags behind does not shorten the grace period.
    await (await replicaStore({ now: () => 3_000 })).putBuffer(bytes);
    expect(await storedMs()).toBe('5000');
    expect(await chunkVersions()).toEqual(before);
  });

  it('replicas storing the same new blob at once all succeed, and it is stored once', async () => {
    const bytes = randomBytes(MULTI_CHUNK_BYTES);
    const replicas = [await replicaStore(), await replicaStore({ pool: await db.pool() }), await replicaStore({ pool: await db.pool() })];
    const results = await Promise.all([
      ...replicas.map((r) => r.putBuffer(bytes)),
      ...(await Promise.all(replicas.map((r) => upload(r, bytes)))).map((file, i) => replicas[i]!.putFile(file)),
    ]);
    for (const result of results) expect(result).toEqual({ sha256: sha256Of(bytes), bytes: MULTI_CHUNK_BYTES });
    const { rows } = await pool.query('SELECT (SELECT count(*)::int FROM blobs) AS blobs, (SELECT count(*)::int FROM blob_chunks) AS chunks');
    expect(rows[0]).toEqual({ blobs: 1, chunks: 3 });
    for (const r of replicas) expect((await r.read(sha256Of(bytes))).equals(bytes)).toBe(true);
  });

  it('streams a chunk at a time: a blob swept while it is read cuts the stream off', async () => {
    const blobs = await replicaStore();
    const bytes = randomBytes(4 * BLOB_CHUNK_BYTES);
    await blobs.putBuffer(bytes);
    const stream = await blobs.openReadStream(sha256Of(bytes));
    let received = 0;
    const read = (async () => {
      for await (const chunk of stream) {
        if (received === 0) {
          // Time enough for a stream that reads ahead to fetch every chunk; this one asks for one more at most.
          await sleep(200);
          await pool.query('DELETE FROM blobs');
        }
        received += (chunk as Buffer).length;
      }
    })();
    await expect(read).rejects.toBeInstanceOf(BlobNotFoundError);
    // The first chunk, and at most the one the stream had asked for before the delete.
    expect(received).toBeGreaterThan(0);
    expect(received).toBeLessThanOrEqual(2 * BLOB_CHUNK_BYTES);
  });
});

describe('the sweeper on PostgreSQL', () => {
  const silent = createLogger({ level: 'error', stream: new Writable({ write: (_chunk, _enc, done) => done() }) });
  const jobs = testConfig({ jobs: { orphanGraceMs: 10 * 60_000 } }).jobs;
  const sweeperOf = (blobs: PostgresBlobStore, now: () => number) =>
    new Sweeper({
      store: postgresJobStore(pool),
      blobs,
      rateLimitBuckets: memoryRateLimitBuckets(testConfig().rateLimits, now),
      interruptedJobPolicy: () => 'rerun',
      jobs,
      logger: silent,
      now,
    });
  const editJob = (inputSha256: string): NewJob => ({
    id: newJobId(),
    owner: 'alice',
    kind: 'edit',
    delivery: 'async',
    model: 'm',
    backendId: 'b1',
    params: jobParams(),
    inputs: [{ role: 'image', sha256: inputSha256, mediaType: 'image/png', bytes: 1, width: 1, height: 1 }],
    requestSha256: 'a'.repeat(64),
    pricePerImageWei: 0n,
    fingerprint: 'f'.repeat(64),
    idempotencyKey: undefined,
    baseUrl: 'http://x',
    createdMs: Date.now(),
  });

  it('deletes an unreferenced blob from the database and every replica\'s copy once past the grace period, and keeps a referenced one', async () => {
    const a = await replicaStore();
    const b = await replicaStore();
    const needed = randomBytes(MULTI_CHUNK_BYTES);
    const orphan = randomBytes(MULTI_CHUNK_BYTES);
    await a.putFile(await upload(a, needed));
    await a.putFile(await upload(a, orphan));
    await postgresJobStore(pool).create(editJob(sha256Of(needed)), 0);
    const orphanCopies = [await a.localPath(sha256Of(orphan)), await b.localPath(sha256Of(orphan))];
    const neededCopies = [await a.localPath(sha256Of(needed)), await b.localPath(sha256Of(needed))];

    // Within the grace period nothing goes: the job that will reference a fresh blob may not exist yet.
    expect((await sweeperOf(a, Date.now).sweep()).blobsDeleted).toBe(0);

    const later = () => Date.now() + 60 * 60_000;
    expect((await sweeperOf(a, later).sweep()).blobsDeleted).toBe(1);
    await expect(b.read(sha256Of(orphan))).rejects.toBeInstanceOf(BlobNotFoundError);
    expect(existsSync(orphanCopies[0]!)).toBe(false);
    // B's copy is B's to delete: its sweeper finds a copy whose row is gone.
    expect(existsSync(orphanCopies[1]!)).toBe(true);
    expect((await sweeperOf(b, later).sweep()).blobsDeleted).toBe(1);
    expect(existsSync(orphanCopies[1]!)).toBe(false);

    expect((await b.read(sha256Of(needed))).equals(needed)).toBe(true);
    for (const copy of neededCopies) expect((await readFile(copy)).equals(needed)).toBe(true);
    expect(await listed(a)).toEqual([sha256Of(needed)]);
  });

  it('keeps a blob stored again after it was listed: the delete checks stored_ms in the same statement', async () => {
    let clock = 1_000;
    const blobs = await replicaStore({ now: () => clock });
    const bytes = randomBytes(1000);
    await blobs.putBuffer(bytes);
    const cutoff = 2_000;
    // The sweeper listed the blob as stored at 1_000 and found no job referencing it; then a put came.
    clock = 3_000;
    await blobs.putBuffer(bytes);
    expect(await blobs.removeUnlessStoredAfter(sha256Of(bytes), cutoff)).toBe(false);
    expect((await blobs.read(sha256Of(bytes))).equals(bytes)).toBe(true);
    expect(await blobs.removeUnlessStoredAfter(sha256Of(bytes), 3_000)).toBe(true);
  });
});
