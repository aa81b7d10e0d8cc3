import { copyFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { configSchema } from '../../src/config/schema.js';
import { DEV_KEY_FILE } from '../../src/tee/dev-key.js';
import { ControlledBackend } from '../helpers/controlled-backend.js';
import { startTestDaemon, tempDir, type TestDaemon } from '../helpers/daemon.js';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';

/**
 * Two replicas on one database where only one runs the model: the other (`concurrency: 0`) accepts and
 * answers for it. What crosses between them is only the database: the job row, the image bytes, and the
 * NOTIFY that wakes a long-poll, a sync caller, or the runner on the other side.
 */

let db: TestDatabase;
let front: TestDaemon; // accepts jobs, runs none
let gpu: TestDaemon; // runs them
const backend = new ControlledBackend('gpu');

const config = (replicaId: string, concurrency: number): Partial<ConfigInput> => ({
  database: { url: db.url },
  server: { host: '127.0.0.1', port: 0, replicaId },
  backends: [{ id: 'gpu', type: 'reference', concurrency, latencyMsPerImage: 0 }],
  models: [{ id: 'img', backend: 'gpu', capabilities: ['generation'], sizes: ['64x64'], maxN: 2 }],
});

beforeAll(async () => {
  db = await createTestDatabase();
  front = await startTestDaemon({ config: config('front', 0) });
  // Replicas sign with one key: the GPU replica gets the front's dev key file.
  const gpuDir = tempDir();
  copyFileSync(path.join(front.dataDir, DEV_KEY_FILE), path.join(gpuDir, DEV_KEY_FILE));
  gpu = await startTestDaemon({ config: config('gpu-1', 1), dataDir: gpuDir, backends: new Map([['gpu', backend]]) });
});
afterAll(async () => {
  await front?.close();
  await gpu?.close();
  await db?.drop();
});

async function submitAsync(d: TestDaemon): Promise<string> {
  const res = await fetch(`${d.url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'img', prompt: 'a quay', size: '64x64' }),
  });
  expect(res.status).toBe(202);
  return ((await res.json()) as { jobId: string }).jobId;
}

describe('replicas that run different backends', () => {
  it('refuses concurrency 0 without a shared database: nothing would ever run the jobs', () => {
    const result = configSchema.safeParse({
      backends: [{ id: 'gpu', type: 'reference', concurrency: 0 }],
      models: [{ id: 'm', backend: 'gpu', capabilities: ['generation'], sizes: ['64x64'] }],
    });
    expect(result.success).toBe(false);
    expect(JSON.stringify(result.error?.issues)).toMatch(/another replica runs this backend/);
  });

  it('runs a job accepted by one replica on the other, and wakes the first one’s long-poll within a second', async () => {
    const jobId = await submitAsync(front);
    const poll = fetch(`${front.url}/v1/async/jobs/${jobId}?wait=20`).then(async (res) => ({ at: Date.now(), body: (await res.json()) as any }));
    const call = await backend.nextCall();
    await new Promise((r) => setTimeout(r, 300)); // the long-poll is waiting on the front replica
    await call.succeed();
    const { at, body } = await poll;
    expect(body.status).toBe('completed');
    // The image bytes came from the database: the front replica never had them on its disk.
    expect(body.data.data[0].b64_json.length).toBeGreaterThan(100);
    const job = (await gpu.daemon.store.get(jobId))!;
    expect(job).toMatchObject({ submittedBy: 'front', ranBy: 'gpu-1' });
    // Woken by the GPU replica's NOTIFY, not by the front replica's next re-read of the job.
    expect(at - job.finishedMs!).toBeLessThan(1_000);
  });

  it('answers a sync request on the replica that does not run the model', async () => {
    const answer = fetch(`${front.url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'img', prompt: 'a pier', size: '64x64', n: 2 }),
    });
    await (await backend.nextCall()).succeed();
    const res = await answer;
    expect(res.status).toBe(200);
    expect(((await res.json()) as { data: unknown[] }).data).toHaveLength(2);
  });

  it('stops the attempt on the GPU replica when the job is cancelled through the other', async () => {
    const jobId = await submitAsync(front);
    const call = await backend.nextCall();
    const res = await fetch(`${front.url}/v1/async/jobs/${jobId}/cancel`, { method: 'POST' });
    expect(res.status).toBe(200);
    await expect.poll(() => backend.aborted).toContain(call.options.prompt);
    expect((await gpu.daemon.store.get(jobId))!.status).toBe('cancelled');
  });

  it('counts in each replica’s metrics only what that replica did', async () => {
    expect(front.daemon.runner.counters.attemptsStarted).toBe(0);
    expect(gpu.daemon.runner.counters.jobsCompleted).toBe(2);
  });
});
