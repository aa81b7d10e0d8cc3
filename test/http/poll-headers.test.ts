import { afterEach, describe, expect, it } from 'vitest';
import { ControlledBackend } from '../helpers/controlled-backend.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

let daemon: TestDaemon | undefined;
afterEach(async () => {
  await daemon?.close();
  daemon = undefined;
});

describe('poll headers', () => {
  it('tells unfinished pollers when to come back in whole seconds (Retry-After) and unrounded (retry-after-ms)', async () => {
    const backend = new ControlledBackend('ctl');
    daemon = await startTestDaemon({
      config: {
        backends: [{ id: 'ctl', type: 'reference', concurrency: 1 }],
        models: [{ id: 'ctl-model', backend: 'ctl', capabilities: ['generation'], sizes: ['64x64'] }],
      },
      backends: new Map([['ctl', backend]]),
    });
    const submit = async () => {
      const res = await fetch(`${daemon!.url}/v1/async/images/generations`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'ctl-model', prompt: 'x', size: '64x64' }),
      });
      return ((await res.json()) as { jobId: string }).jobId;
    };
    const running = await submit();
    const call = await backend.nextCall();
    const queued = await submit();
    for (const [id, path] of [[running, '/v1/async/jobs/'], [queued, '/v1/jobs/']] as const) {
      const res = await fetch(`${daemon.url}${path}${id}`);
      const seconds = Number(res.headers.get('retry-after'));
      const ms = Number(res.headers.get('retry-after-ms'));
      expect(seconds).toBeGreaterThanOrEqual(1);
      expect(ms).toBeGreaterThanOrEqual(100);
      expect(ms).toBeLessThanOrEqual(seconds * 1000);
    }
    await call.succeed();
    await daemon.daemon.service.waitForEnd(running, 5_000);
    const done = await fetch(`${daemon.url}/v1/async/jobs/${running}`);
    expect(done.headers.get('retry-after-ms')).toBeNull();
    expect(done.headers.get('content-type')).toBe('application/json; charset=utf-8');
    expect(Number(done.headers.get('content-length'))).toBe((await done.arrayBuffer()).byteLength);
  });
});
