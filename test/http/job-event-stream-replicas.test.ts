import { copyFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { DEV_KEY_FILE } from '../../src/tee/dev-key.js';
import { ControlledBackend } from '../helpers/controlled-backend.js';
import { startTestDaemon, tempDir, type TestDaemon } from '../helpers/daemon.js';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';
import { openSse, type SseEvent } from '../helpers/sse.js';

/**
 * Job event streams across replicas on one PostgreSQL database: the front replica accepts jobs and runs
 * none (concurrency 0), the GPU replica runs them. A stream on the front sees the job's whole stored history
 * as the GPU replica writes it; progress is live, so only a stream on the replica running the job has it.
 */

let db: TestDatabase;
let front: TestDaemon;
let gpu: TestDaemon;
const backend = new ControlledBackend('gpu');

const config = (replicaId: string, concurrency: number): Partial<ConfigInput> => ({
  database: { url: db.url },
  server: { host: '127.0.0.1', port: 0, replicaId },
  backends: [{ id: 'gpu', type: 'reference', concurrency }],
  models: [{ id: 'img', backend: 'gpu', capabilities: ['generation'], sizes: ['64x64'] }],
});

beforeAll(async () => {
  db = await createTestDatabase();
  front = await startTestDaemon({ config: config('front', 0) });
  const gpuDir = tempDir();
  copyFileSync(path.join(front.dataDir, DEV_KEY_FILE), path.join(gpuDir, DEV_KEY_FILE));
  gpu = await startTestDaemon({ config: config('gpu-1', 1), dataDir: gpuDir, backends: new Map([['gpu', backend]]) });
});
afterAll(async () => {
  await front?.close();
  await gpu?.close();
  await db?.drop();
});

const json = (e: SseEvent | undefined) => JSON.parse(e!.data) as Record<string, any>;

describe('job event streams across replicas', () => {
  it('a stream on the replica that accepted the job follows it as another replica runs it', async () => {
    const res = await fetch(`${front.url}/v1/async/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'img', prompt: 'a quay', size: '64x64', partial_images: 1 }),
    });
    expect(res.status).toBe(202);
    const jobId = ((await res.json()) as { jobId: string }).jobId;
    const onFront = await openSse(`${front.url}/v1/async/jobs/${jobId}/events`);
    const onGpu = await openSse(`${gpu.url}/v1/async/jobs/${jobId}/events`);
    expect(json(await onFront.next())).toMatchObject({ type: 'queued', status: 'pending' });

    const call = await backend.nextCall();
    // The previews were asked for on the front replica, which does not run the job: the GPU asks for none.
    expect(call.options.onPartialImage).toBeUndefined();
    expect(json(await onFront.next())).toMatchObject({ type: 'started', status: 'processing' });
    expect((await onGpu.next())?.event).toBe('job.queued');
    expect((await onGpu.next())?.event).toBe('job.started');
    call.options.onProgress(55);
    expect(json(await onGpu.next())).toEqual({ job_id: jobId, percent: 55 });

    await call.succeed();
    const frontRest = await onFront.rest();
    // The front replica's runner never had the job: it has no progress to tell.
    expect(frontRest.map((e) => [e.event, e.id])).toEqual([['job.succeeded', '3']]);
    const poll = (await (await fetch(`${front.url}/v1/async/jobs/${jobId}`)).json()) as Record<string, unknown>;
    expect(json(frontRest[0]).poll).toEqual(poll);
    expect((await onGpu.rest()).map((e) => e.event)).toEqual(['job.succeeded']);
  });
});
