import { createHash } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Wallet } from 'ethers';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { DEV_KEY_FILE } from '../../src/tee/dev-key.js';
import { startTestDaemon, tempDir, type TestDaemon } from '../helpers/daemon.js';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';

/**
 * Image bytes across replicas (issue 14): two daemons on one PostgreSQL database, each with its own data dir,
 * as two GPU nodes run them. Replica A runs the jobs; replica B's runner is stopped, so whatever B serves of a
 * result, or whatever input it accepted, crossed over through the database.
 */

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

const running: TestDaemon[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((d) => d.close()));
});

/** Both replicas sign with one key, as an operator copies it to every node in tee.mode dev. */
async function startReplicas(): Promise<{ a: TestDaemon; b: TestDaemon }> {
  const teeKey = Wallet.createRandom().privateKey;
  const start = async (replicaId: string, runsJobs: boolean) => {
    const dataDir = tempDir(`pixeld-${replicaId}-`);
    writeFileSync(path.join(dataDir, DEV_KEY_FILE), `${teeKey}\n`, { mode: 0o600 });
    const config: Partial<ConfigInput> = {
      database: { url: db.url },
      server: { replicaId },
      backends: [{ id: 'gpu', type: 'reference', concurrency: 2, latencyMsPerImage: 0 }],
      models: [{ id: 'ref', backend: 'gpu', capabilities: ['generation', 'edit'], sizes: ['64x64'], maxN: 2 }],
    };
    const d = await startTestDaemon({ config, dataDir, noStart: !runsJobs });
    running.push(d);
    return d;
  };
  return { a: await start('replica-a', true), b: await start('replica-b', false) };
}

async function waitDone(d: TestDaemon, jobId: string): Promise<Record<string, any>> {
  for (let i = 0; i < 20; i += 1) {
    const body = (await (await fetch(`${d.url}/v1/async/jobs/${jobId}?wait=5`)).json()) as Record<string, any>;
    if (body.status === 'completed' || body.status === 'failed') return body;
  }
  throw new Error(`job ${jobId} did not finish`);
}

async function submitGeneration(d: TestDaemon, body: Record<string, unknown>): Promise<string> {
  const res = await fetch(`${d.url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'ref', size: '64x64', ...body }),
  });
  expect(res.status).toBe(202);
  return ((await res.json()) as { jobId: string }).jobId;
}

const sha256Of = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

describe('replicas on one PostgreSQL database', () => {
  it('a job completed on one replica is served by another, as b64_json and from its /v1/files links', async () => {
    const { a, b } = await startReplicas();

    const b64Job = await submitGeneration(a, { prompt: 'a lighthouse', n: 2 });
    const onA = await waitDone(a, b64Job);
    expect(onA.status).toBe('completed');
    const onB = (await (await fetch(`${b.url}/v1/async/jobs/${b64Job}`)).json()) as Record<string, any>;
    expect(onB.status).toBe('completed');
    const images = onB.data.data.map((d: { b64_json: string }) => Buffer.from(d.b64_json, 'base64'));
    expect(images.map((i: Buffer) => i.toString('base64'))).toEqual(onA.data.data.map((d: { b64_json: string }) => d.b64_json));
    const signature = (await (await fetch(`${b.url}/v1/signature/${b64Job}`)).json()) as { receipt: { image_sha256: string[] } };
    expect(images.map(sha256Of)).toEqual(signature.receipt.image_sha256);

    const urlJob = await submitGeneration(a, { prompt: 'a fox', response_format: 'url' });
    const link = new URL(((await waitDone(a, urlJob)).data.data[0] as { url: string }).url);
    expect(link.origin).toBe(a.url);
    const fromA = await fetch(link);
    const fromB = await fetch(`${b.url}${link.pathname}`);
    expect(fromB.status).toBe(200);
    expect(fromB.headers.get('content-type')).toBe('image/png');
    const bytesFromB = Buffer.from(await fromB.arrayBuffer());
    expect(bytesFromB.equals(Buffer.from(await fromA.arrayBuffer()))).toBe(true);
    expect(Number(fromB.headers.get('content-length'))).toBe(bytesFromB.length);
    // The image bytes are in the database, not in either data dir.
    const stored = sha256Of(bytesFromB);
    for (const d of [a, b]) expect(existsSync(path.join(d.dataDir, 'blobs', stored.slice(0, 2), stored))).toBe(false);
  });

  it('an edit accepted by one replica runs on another, whose backend reads the input copied out of the database', async () => {
    const { a, b } = await startReplicas();
    const input = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#1a5e9c' } }).png().toBuffer();
    const form = new FormData();
    form.append('model', 'ref');
    form.append('prompt', 'make it winter');
    form.append('size', '64x64');
    form.append('image', new Blob([new Uint8Array(input)], { type: 'image/png' }), 'photo.png');
    const res = await fetch(`${b.url}/v1/async/images/edits`, { method: 'POST', body: form });
    expect(res.status).toBe(202);
    const jobId = ((await res.json()) as { jobId: string }).jobId;

    const done = await waitDone(a, jobId);
    expect(done).toMatchObject({ status: 'completed' });
    expect((await sharp(Buffer.from(done.data.data[0].b64_json, 'base64')).metadata()).format).toBe('png');
    const job = (await a.daemon.store.get(jobId))!;
    expect({ submittedBy: job.submittedBy, ranBy: job.ranBy }).toEqual({ submittedBy: 'replica-b', ranBy: 'replica-a' });
    const inputSha = sha256Of(input);
    expect(existsSync(path.join(a.dataDir, 'blobs', inputSha.slice(0, 2), inputSha))).toBe(true);
  });
});
