import { afterEach, describe, expect, it } from 'vitest';
import type { JobStore } from '../../src/jobs/store.js';
import { ControlledBackend } from '../helpers/controlled-backend.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/** Holds the store's completion (where the job is signed and written) until the test opens the gate. */
function gateCompletions(store: JobStore): () => void {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const complete = store.complete.bind(store);
  store.complete = async (...args) => {
    await gate;
    return complete(...args);
  };
  return open;
}

let daemon: TestDaemon | undefined;
afterEach(async () => {
  await daemon?.close();
  daemon = undefined;
});

async function submit(url: string, prompt: string): Promise<string> {
  const res = await fetch(`${url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'ctl-model', prompt, size: '64x64' }),
  });
  return ((await res.json()) as { jobId: string }).jobId;
}

describe('runner call slots', () => {
  it('starts the next backend call as soon as the backend answers, while the last job is still being signed', async () => {
    const backend = new ControlledBackend('ctl');
    daemon = await startTestDaemon({
      config: {
        backends: [{ id: 'ctl', type: 'reference', concurrency: 1 }],
        models: [{ id: 'ctl-model', backend: 'ctl', capabilities: ['generation'], sizes: ['64x64'] }],
      },
      backends: new Map([['ctl', backend]]),
    });
    const open = gateCompletions(daemon.daemon.store);
    const first = await submit(daemon.url, 'first');
    const second = await submit(daemon.url, 'second');
    await (await backend.nextCall()).succeed();
    // concurrency 1: the second call can only start once the first call's slot is free.
    const call = await backend.nextCall();
    expect(call.options.prompt).toBe('second');
    expect((await daemon.daemon.store.get(first))?.status).toBe('processing');
    open();
    await call.succeed();
    for (const id of [first, second]) {
      const job = await daemon.daemon.service.waitForEnd(id, 5_000);
      expect(job?.status).toBe('completed');
    }
  });

  it('keeps at most `concurrency` calls running when a job needs several calls', async () => {
    const backend = new ControlledBackend('ctl', 1);
    daemon = await startTestDaemon({
      config: {
        backends: [{ id: 'ctl', type: 'reference', concurrency: 1, maxImagesPerCall: 1 }],
        models: [{ id: 'ctl-model', backend: 'ctl', capabilities: ['generation'], sizes: ['64x64'] }],
      },
      backends: new Map([['ctl', backend]]),
    });
    const res = await fetch(`${daemon.url}/v1/async/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'ctl-model', prompt: 'two calls', size: '64x64', n: 2 }),
    });
    const { jobId } = (await res.json()) as { jobId: string };
    const other = await submit(daemon.url, 'other');
    const a = await backend.nextCall();
    expect(a.options.prompt).toBe('two calls');
    await a.succeed();
    // The slot goes back; either the job's second call or the other job's call takes it, never both.
    const b = await backend.nextCall();
    await new Promise((r) => setTimeout(r, 300));
    expect(backend.calls).toHaveLength(2);
    await b.succeed();
    await (await backend.nextCall()).succeed();
    for (const id of [jobId, other]) expect((await daemon.daemon.service.waitForEnd(id, 5_000))?.status).toBe('completed');
  });
});
