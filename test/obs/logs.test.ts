import { Writable } from 'node:stream';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { BackendError } from '../../src/backends/errors.js';
import type { ImageBackend } from '../../src/backends/types.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { createLogger, resolveLogFormat } from '../../src/obs/logger.js';
import { ControlledBackend } from '../helpers/controlled-backend.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/**
 * What the daemon's log says about requests and jobs: one line per request carrying its request id, one per
 * job transition carrying the job id (and the request id where a request caused it), prompts only when
 * log.prompts is on, and colour only when asked for.
 */

const MODEL = 'ctl-model';
const PROMPT = 'a lighthouse painted by a very particular person';

let daemon: TestDaemon | undefined;
afterEach(async () => {
  await daemon?.close();
  daemon = undefined;
});

interface StartOptions {
  log?: Partial<ConfigInput['log']>;
  jobs?: Partial<ConfigInput['jobs']>;
  now?: () => number;
  /** Leave the runner stopped until the test starts it. */
  noStart?: boolean;
}

async function start({ log = {}, jobs = {}, now, noStart }: StartOptions = {}) {
  const backend = new ControlledBackend('ctl', 4);
  daemon = await startTestDaemon({
    now,
    noStart,
    config: {
      backends: [{ id: 'ctl', type: 'reference', concurrency: 1 } as ConfigInput['backends'][number]],
      models: [{ id: MODEL, backend: 'ctl', capabilities: ['generation'], sizes: ['64x64'], maxN: 4 }],
      log: { level: 'debug', ...log },
      jobs,
    },
    backends: new Map([['ctl', backend]]),
  });
  return { backend, d: daemon };
}

async function submitAsync(d: TestDaemon, body: Record<string, unknown> = {}) {
  const res = await fetch(`${d.url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, size: '64x64', prompt: PROMPT, ...body }),
  });
  const { jobId } = (await res.json()) as { jobId: string };
  return { jobId, requestId: res.headers.get('x-request-id')! };
}

async function until<T>(read: () => T | undefined, what: string): Promise<T> {
  for (let i = 0; i < 250; i += 1) {
    const value = read();
    if (value !== undefined) return value;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const linesOf = (d: TestDaemon, jobId: string) => d.logs.filter((l) => l.jobId === jobId);

describe('request lines', () => {
  it('one info line per request: request id as in x-request-id, method, route pattern, path, status, ms, bytes, owner; no query string', async () => {
    const { d } = await start();
    const res = await fetch(`${d.url}/v1/jobs/job_0123456789abcdef0123456789abcdef?secret=hunter2`, { headers: { 'x-request-id': 'ticket-4711' } });
    expect(res.status).toBe(404);
    const line = await until(() => d.logs.find((l) => l.message === 'request' && l.requestId === 'ticket-4711'), 'the request line');
    expect(line).toMatchObject({
      level: 'info',
      requestId: res.headers.get('x-request-id'),
      method: 'GET',
      route: '/v1/jobs/:jobId',
      path: '/v1/jobs/job_0123456789abcdef0123456789abcdef',
      status: 404,
      ms: expect.any(Number),
      bytes: Number(res.headers.get('content-length')),
      owner: expect.any(String),
    });
    expect(JSON.stringify(d.logs)).not.toContain('hunter2');
  });

  it('a url result file is logged with :token in place of its token; health probes are at debug', async () => {
    const { backend, d } = await start();
    const { jobId } = await submitAsync(d, { response_format: 'url' });
    await (await backend.nextCall()).succeed();
    await until(() => d.logs.find((l) => l.jobId === jobId && l.message === 'job completed'), 'the completion');
    const poll = (await (await fetch(`${d.url}/v1/async/jobs/${jobId}`)).json()) as { data: { data: Array<{ url: string }> } };
    const fileUrl = new URL(poll.data.data[0]!.url);
    expect((await fetch(`${d.url}${fileUrl.pathname}`)).status).toBe(200);
    await fetch(`${d.url}/healthz`);
    const token = fileUrl.pathname.split('/')[4]!;
    const fileLine = await until(() => d.logs.find((l) => l.route === '/v1/files/:jobId/:token/:name'), 'the file request line');
    expect(fileLine.path).toBe(fileUrl.pathname.replace(token, ':token'));
    expect(JSON.stringify(d.logs)).not.toContain(token);
    const probe = await until(() => d.logs.find((l) => l.message === 'request' && l.route === '/healthz'), 'the probe line');
    expect(probe.level).toBe('debug');
  });

  it('log.requests: false writes no request lines', async () => {
    const { d } = await start({ log: { requests: false } });
    await fetch(`${d.url}/v1/models`);
    await fetch(`${d.url}/healthz`);
    await new Promise((r) => setTimeout(r, 50));
    expect(d.logs.filter((l) => l.message === 'request')).toEqual([]);
  });
});

describe('job transition lines', () => {
  it('queued (with the request id), started, completed — in order, each with the job id', async () => {
    const { backend, d } = await start();
    const { jobId, requestId } = await submitAsync(d, { n: 2 });
    await (await backend.nextCall()).succeed();
    await until(() => linesOf(d, jobId).find((l) => l.message === 'job completed'), 'the completion');
    const lines = linesOf(d, jobId).filter((l) => l.level !== 'debug');
    expect(lines.map((l) => l.message)).toEqual(['job queued', 'job started', 'job completed']);
    expect(lines[0]).toMatchObject({ requestId, model: MODEL, backendId: 'ctl', delivery: 'async', n: 2, owner: expect.any(String) });
    expect(lines[1]).toMatchObject({ attempt: 1, replica: expect.any(String), backendId: 'ctl' });
    expect(lines[2]).toMatchObject({ images: 2, ms: expect.any(Number) });
    // The request that queued it and its request line share the id: one jq select finds both.
    expect(d.logs.find((l) => l.message === 'request' && l.requestId === requestId)).toMatchObject({ status: 202 });
  });

  it('a retry names its error code; a failure logs its code and message', async () => {
    const { backend, d } = await start({ jobs: { maxAttempts: 2, retryBackoffMs: 10 } });
    const { jobId } = await submitAsync(d);
    (await backend.nextCall()).fail(new BackendError('ctl', 'unavailable', 'warming up'));
    (await backend.nextCall()).fail(new BackendError('ctl', 'bad_response', 'no image in the answer'));
    await until(() => linesOf(d, jobId).find((l) => l.message === 'job failed'), 'the failure');
    const lines = linesOf(d, jobId);
    expect(lines.map((l) => l.message)).toEqual(['job queued', 'job started', 'attempt failed; will retry', 'job started', 'job failed']);
    expect(lines[2]).toMatchObject({ level: 'warn', code: 'upstream_error', error: 'the backend is unavailable: warming up', attempt: 1, retryInMs: 10 });
    expect(lines[3]).toMatchObject({ attempt: 2 });
    expect(lines[4]).toMatchObject({ level: 'warn', code: 'upstream_error', error: 'the backend failed: no image in the answer', attempts: 2 });
  });

  it('a cancel is logged with the request that cancelled it', async () => {
    const { backend, d } = await start();
    const { jobId } = await submitAsync(d);
    await backend.nextCall();
    const res = await fetch(`${d.url}/v1/async/jobs/${jobId}/cancel`, { method: 'POST' });
    expect(res.status).toBe(200);
    const cancelled = await until(() => linesOf(d, jobId).find((l) => l.message === 'job cancelled'), 'the cancel');
    expect(cancelled).toMatchObject({ requestId: res.headers.get('x-request-id'), was: 'processing' });
    expect(linesOf(d, jobId).map((l) => l.message).filter((m) => m !== 'attempt aborted: job cancelled')).toEqual(['job queued', 'job started', 'job cancelled']);
  });

  it('a job whose lease ran out is logged as recovered by the sweep, then starts its next attempt', async () => {
    let skewMs = 0;
    const { backend, d } = await start({ jobs: { leaseMs: 60_000 }, now: () => Date.now() + skewMs });
    const { jobId } = await submitAsync(d);
    const stalled = await backend.nextCall();
    // As if this replica had stalled for ten minutes: the lease it holds is long past.
    skewMs = 10 * 60_000;
    await d.daemon.sweeper.sweep();
    await stalled.succeed();
    await (await backend.nextCall()).succeed();
    await until(() => linesOf(d, jobId).find((l) => l.message === 'job completed'), 'the completion');
    // The stalled attempt's late answer is dropped; the slot it frees lets the next attempt start meanwhile.
    const dropped = 'job finished after it was cancelled or re-leased; result dropped';
    const messages = linesOf(d, jobId).filter((l) => l.level !== 'debug').map((l) => l.message);
    expect(messages.filter((m) => m !== dropped)).toEqual(['job queued', 'job started', 'job recovered', 'job started', 'job completed']);
    expect(messages.indexOf(dropped)).toBeGreaterThan(messages.indexOf('job recovered'));
    const [recovered, second] = linesOf(d, jobId).filter((l) => ['job recovered', 'job started'].includes(String(l.message))).slice(1);
    expect(recovered).toMatchObject({ level: 'warn', outcome: 'requeued', cause: 'lease expired' });
    expect(second).toMatchObject({ attempt: 2 });
  });

  it('a job left processing by a crash is logged as recovered at the next start, then runs', async () => {
    const { backend, d } = await start({ noStart: true });
    const { jobId } = await submitAsync(d);
    // As if the last process had claimed it and died: the row says processing, nobody runs it.
    expect((await d.daemon.store.claimNext('ctl', 'the-crashed-process', Date.now(), 60_000))?.id).toBe(jobId);
    await d.daemon.start();
    await (await backend.nextCall()).succeed();
    await until(() => linesOf(d, jobId).find((l) => l.message === 'job completed'), 'the completion');
    const lines = linesOf(d, jobId).filter((l) => l.level !== 'debug');
    expect(lines.map((l) => l.message)).toEqual(['job queued', 'job recovered', 'job started', 'job completed']);
    expect(lines[1]).toMatchObject({ level: 'warn', outcome: 'requeued', cause: 'restart' });
    expect(lines[2]).toMatchObject({ attempt: 2 });
  });

  it('the backend\'s trace headers go into the job\'s completed line and each call\'s debug line', async () => {
    let calls = 0;
    const traced: ImageBackend = {
      id: 'ctl',
      type: 'traced',
      maxImagesPerCall: 1,
      rerunInterruptedJobs: true,
      async generate(options) {
        calls += 1;
        const png = await sharp({ create: { width: 64, height: 64, channels: 3, background: { r: calls * 60, g: 0, b: 0 } } }).png().toBuffer();
        return { images: [png], warnings: [], response: { timestampMs: Date.now(), modelId: options.model, headers: { 'x-request-id': `upstream-${calls}` } } };
      },
      async checkHealth() {},
    };
    daemon = await startTestDaemon({
      config: {
        backends: [{ id: 'ctl', type: 'reference', concurrency: 1 } as ConfigInput['backends'][number]],
        models: [{ id: MODEL, backend: 'ctl', capabilities: ['generation'], sizes: ['64x64'], maxN: 4 }],
        log: { level: 'debug' },
      },
      backends: new Map([['ctl', traced]]),
    });
    const { jobId } = await submitAsync(daemon, { n: 2 });
    const completed = await until(() => linesOf(daemon!, jobId).find((l) => l.message === 'job completed'), 'the completion');
    expect(completed.upstream).toEqual([{ 'x-request-id': 'upstream-1' }, { 'x-request-id': 'upstream-2' }]);
    const perCall = linesOf(daemon, jobId).filter((l) => l.message === 'backend call answered');
    expect(perCall).toEqual([
      expect.objectContaining({ level: 'debug', call: 1, n: 1, images: 1, ms: expect.any(Number), upstream: { 'x-request-id': 'upstream-1' } }),
      expect.objectContaining({ level: 'debug', call: 2, n: 1, images: 1, ms: expect.any(Number), upstream: { 'x-request-id': 'upstream-2' } }),
    ]);
  });

  it('the prompt is in no line by default, and in the queued line with log.prompts', async () => {
    const quiet = await start();
    const first = await submitAsync(quiet.d, { negative_prompt: 'no seagulls' });
    await (await quiet.backend.nextCall()).succeed();
    await until(() => linesOf(quiet.d, first.jobId).find((l) => l.message === 'job completed'), 'the completion');
    expect(JSON.stringify(quiet.d.logs)).not.toContain('lighthouse');
    expect(JSON.stringify(quiet.d.logs)).not.toContain('seagulls');
    await quiet.d.close();
    daemon = undefined;

    const told = await start({ log: { prompts: true } });
    const second = await submitAsync(told.d, { negative_prompt: 'no seagulls' });
    const queued = await until(() => linesOf(told.d, second.jobId).find((l) => l.message === 'job queued'), 'the queued line');
    expect(queued).toMatchObject({ prompt: PROMPT, negativePrompt: 'no seagulls' });
  });
});

describe('formats', () => {
  function capture(options: { format: 'json' | 'pretty'; colors?: boolean }) {
    const lines: string[] = [];
    const stream = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(...chunk.toString().split('\n').filter((l) => l !== ''));
        done();
      },
    });
    return { lines, logger: createLogger({ level: 'info', stream, ...options }) };
  }
  // eslint-disable-next-line no-control-regex
  const ANSI = /\u001b\[/;

  it('pretty: one readable line, key=value, no colour codes unless asked', () => {
    const plain = capture({ format: 'pretty' });
    plain.logger.info('job started', { jobId: 'job_1', attempt: 1, note: 'two words' });
    expect(plain.lines).toHaveLength(1);
    expect(plain.lines[0]).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z info job started jobId=job_1 attempt=1 note="two words"$/);
    expect(plain.lines[0]).not.toMatch(ANSI);

    const coloured = capture({ format: 'pretty', colors: true });
    coloured.logger.warn('attempt failed; will retry', { jobId: 'job_1' });
    expect(coloured.lines[0]).toMatch(ANSI);
    expect(coloured.lines[0]).toContain('attempt failed; will retry jobId=job_1');
  });

  it('json: one object per line, never coloured', () => {
    const json = capture({ format: 'json', colors: true });
    json.logger.info('request', { requestId: 'r1', status: 200 });
    expect(json.lines[0]).not.toMatch(ANSI);
    expect(JSON.parse(json.lines[0]!)).toMatchObject({ level: 'info', message: 'request', requestId: 'r1', status: 200, timestamp: expect.any(String) });
  });

  it('log.format auto is pretty on a terminal and JSON elsewhere', () => {
    expect(resolveLogFormat('auto', true)).toBe('pretty');
    expect(resolveLogFormat('auto', false)).toBe('json');
    expect(resolveLogFormat('json', true)).toBe('json');
    expect(resolveLogFormat('pretty', false)).toBe('pretty');
  });
});
