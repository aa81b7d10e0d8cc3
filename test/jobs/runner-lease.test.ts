import { afterEach, describe, expect, it } from 'vitest';
import { ControlledBackend } from '../helpers/controlled-backend.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/**
 * A running job's lease is short and renewed while its attempt runs (jobs.leaseMs): a live runner keeps
 * its job however long the backend takes, a dead one loses it a lease later, and a runner whose lease was
 * taken stops instead of finishing a job that is no longer its own.
 */

const LEASE_MS = 300;
let d: TestDaemon | undefined;
afterEach(async () => {
  await d?.close();
  d = undefined;
});

async function start(backend: ControlledBackend): Promise<TestDaemon> {
  return startTestDaemon({
    config: {
      jobs: { leaseMs: LEASE_MS, retryBackoffMs: 10, sweepIntervalMs: 3_600_000 },
      backends: [{ id: 'gpu', type: 'reference', concurrency: 1, latencyMsPerImage: 0 }],
      models: [{ id: 'img', backend: 'gpu', capabilities: ['generation'], sizes: ['64x64'], maxN: 1 }],
    },
    backends: new Map([['gpu', backend]]),
  });
}

async function submit(daemon: TestDaemon): Promise<string> {
  const res = await fetch(`${daemon.url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'img', prompt: 'a lock', size: '64x64' }),
  });
  return ((await res.json()) as { jobId: string }).jobId;
}

describe('job leases', () => {
  it('keeps a job whose backend takes many leases’ time: the running attempt renews it', async () => {
    const backend = new ControlledBackend('gpu');
    d = await start(backend);
    const jobId = await submit(d);
    const call = await backend.nextCall();
    await new Promise((r) => setTimeout(r, 4 * LEASE_MS));
    expect((await d.daemon.sweeper.sweep()).leasesRequeued).toBe(0);
    const running = (await d.daemon.store.get(jobId))!;
    expect(running.leaseExpiresMs! - Date.now()).toBeGreaterThan(0);
    await call.succeed();
    await expect.poll(async () => (await d!.daemon.store.get(jobId))!.status).toBe('completed');
    expect((await d.daemon.store.get(jobId))!.attempts).toBe(1);
  });

  it('gives a dead runner’s job back to the queue about a lease after its last renewal, with no sweep due', async () => {
    const backend = new ControlledBackend('gpu');
    d = await start(backend);
    const busy = await submit(d);
    const held = await backend.nextCall(); // the only slot is taken: the live runner claims nothing else
    const orphanId = await submit(d);
    // A runner that claimed it and died at once: it never renews.
    const orphan = (await d.daemon.store.claimNext('gpu', 'dead-replica', Date.now(), LEASE_MS))!;
    expect(orphan.id).toBe(orphanId);
    await expect.poll(async () => (await d!.daemon.store.get(orphanId))!.status, { timeout: 3_000 }).toBe('pending');
    await held.succeed();
    await (await backend.nextCall()).succeed();
    await expect.poll(async () => (await d!.daemon.store.get(orphanId))!).toMatchObject({ status: 'completed', attempts: 2 });
    expect((await d.daemon.store.get(busy))!.status).toBe('completed');
  });

  it('stops an attempt whose lease was taken over, and the job completes once, on its next attempt', async () => {
    const backend = new ControlledBackend('gpu');
    d = await start(backend);
    const jobId = await submit(d);
    const first = await backend.nextCall();
    // As if the runner had stalled past its lease: the sweeper hands the job back to the queue.
    await d.daemon.store.recoverExpiredLeases(() => 'rerun', 3, Date.now() + 60_000, Date.now() + 3_600_000);
    await expect.poll(() => backend.aborted, { timeout: 3_000 }).toContain(first.options.prompt);
    const second = await backend.nextCall();
    await second.succeed();
    await expect.poll(async () => (await d!.daemon.store.get(jobId))!.status).toBe('completed');
    expect((await d.daemon.store.get(jobId))!.attempts).toBe(2);
    expect(d.daemon.runner.counters.jobsCompleted).toBe(1);
  });
});
