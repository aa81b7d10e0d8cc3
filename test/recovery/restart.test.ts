import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import sharp from 'sharp';
import { afterEach, describe, expect, it, onTestFailed } from 'vitest';
import { stringify as toYaml } from 'yaml';

/**
 * Restart recovery against the real program: `pixeld serve` runs as a child process on a temp data dir,
 * is killed (SIGKILL: a crash; SIGTERM: a graceful stop) while a job runs, and is started again on the
 * same data dir. Nothing here reaches into the daemon: only HTTP, the exit status, and (once the child
 * is gone) the SQLite file.
 */

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const CLI = path.join(REPO, 'src', 'cli.ts');
const MODEL = 'reference-image-1';

/** Every child started by a test, so afterEach can kill what a failing test left running. */
const children = new Set<DaemonProcess>();
const dirs: string[] = [];

afterEach(async () => {
  for (const child of children) await child.kill('SIGKILL');
  children.clear();
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

interface BackendOptions {
  latencyMsPerImage: number;
  rerunInterruptedJobs?: boolean;
}

class DaemonProcess {
  url = '';
  output = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;

  constructor(
    readonly name: string,
    private readonly proc: ChildProcess,
  ) {
    proc.stdout!.setEncoding('utf8').on('data', (s: string) => (this.output += s));
    proc.stderr!.setEncoding('utf8').on('data', (s: string) => (this.output += s));
    this.exited = once(proc, 'exit').then(([code, signal]) => {
      this.exitInfo = { code: code as number | null, signal: signal as NodeJS.Signals | null };
      return this.exitInfo;
    });
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  /** The last lines the child wrote, for failure messages. */
  tail(lines = 40): string {
    return `--- ${this.name} (pid ${this.proc.pid}) output ---\n${this.output.split('\n').slice(-lines).join('\n')}`;
  }

  /** Resolves with the listening URL once the child logged it and /healthz answers. */
  async ready(timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!this.running) throw new Error(`${this.name} exited during start-up (${JSON.stringify(this.exitInfo)})\n${this.tail()}`);
      const match = /pixeld listening on (http:\/\/[^\s"]+)/.exec(this.output);
      if (match) {
        this.url = match[1]!;
        try {
          const res = await fetch(`${this.url}/healthz`);
          if (res.ok) return;
        } catch {
          // not accepting connections yet
        }
      }
      await sleep(50);
    }
    throw new Error(`${this.name} was not healthy within ${timeoutMs} ms\n${this.tail()}`);
  }

  async kill(signal: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.running) this.proc.kill(signal);
    return this.exited;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A data dir and a config file writer for it; the daemon is started from the repo root. */
function setup(): { dataDir: string; writeConfig(backend: BackendOptions): string } {
  const root = mkdtempSync(path.join(tmpdir(), 'pixeld-restart-'));
  dirs.push(root);
  const dataDir = path.join(root, 'data');
  let version = 0;
  return {
    dataDir,
    writeConfig(backend) {
      version += 1;
      const file = path.join(root, `pixeld-${version}.yaml`);
      const config = {
        log: { level: 'info' },
        backends: [{ id: 'reference', type: 'reference', concurrency: 1, ...backend }],
        models: [{ id: MODEL, backend: 'reference', capabilities: ['generation', 'edit'], sizes: ['256x256'], maxN: 2 }],
      };
      writeFileSync(file, toYaml(config));
      return file;
    },
  };
}

/** Starts `pixeld serve` the way an operator would (through tsx instead of a build), on an ephemeral port. */
async function startDaemon(name: string, configFile: string, dataDir: string): Promise<DaemonProcess> {
  const proc = spawn(process.execPath, ['--import', 'tsx', CLI, 'serve', '--config', configFile], {
    cwd: REPO,
    env: {
      ...process.env,
      // The daemon logs the port it got; 0 avoids racing other tests for a "free" port.
      PORT: '0',
      HOST: '127.0.0.1',
      PIXELD_DATA_DIR: dataDir,
      PIXELD_CONFIG: '',
      PIXELD_LOG_LEVEL: 'info',
      PIXELD_PUBLIC_BASE_URL: '',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const child = new DaemonProcess(name, proc);
  children.add(child);
  onTestFailed(() => {
    console.error(child.tail(200));
  });
  await child.ready();
  return child;
}

interface PollBody {
  jobId: string;
  status: 'pending' | 'processing' | 'completed' | 'failed';
  errorMessage?: string;
  errorCode?: string;
  data?: { data: Array<{ b64_json?: string }>; size: string; output_format: string };
}

async function submit(daemon: DaemonProcess, prompt: string): Promise<string> {
  const res = await fetch(`${daemon.url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt, size: '256x256', n: 1 }),
  });
  const text = await res.text();
  if (res.status !== 202) throw new Error(`submit answered ${res.status}: ${text}\n${daemon.tail()}`);
  const body = JSON.parse(text) as { jobId: string; status: string };
  expect(body.status).toBe('pending');
  return body.jobId;
}

async function poll(daemon: DaemonProcess, id: string, waitSeconds = 0): Promise<PollBody> {
  const res = await fetch(`${daemon.url}/v1/async/jobs/${id}${waitSeconds > 0 ? `?wait=${waitSeconds}` : ''}`);
  const text = await res.text();
  if (res.status !== 200) throw new Error(`poll of ${id} answered ${res.status}: ${text}\n${daemon.tail()}`);
  return JSON.parse(text) as PollBody;
}

async function waitForStatus(daemon: DaemonProcess, id: string, status: PollBody['status'], timeoutMs = 10_000): Promise<PollBody> {
  const deadline = Date.now() + timeoutMs;
  let last: PollBody | undefined;
  while (Date.now() < deadline) {
    last = await poll(daemon, id);
    if (last.status === status) return last;
    await sleep(25);
  }
  throw new Error(`job ${id} did not become ${status} within ${timeoutMs} ms (last: ${last?.status})\n${daemon.tail()}`);
}

/** Long-polls until the job is completed or failed. */
async function waitForEnd(daemon: DaemonProcess, id: string, timeoutMs = 15_000): Promise<PollBody> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const body = await poll(daemon, id, 5);
    if (body.status === 'completed' || body.status === 'failed') return body;
    if (Date.now() > deadline) throw new Error(`job ${id} still ${body.status} after ${timeoutMs} ms\n${daemon.tail()}`);
  }
}

async function expectPngResult(body: PollBody): Promise<void> {
  expect(body.status, JSON.stringify(body).slice(0, 500)).toBe('completed');
  const images = body.data?.data ?? [];
  expect(images).toHaveLength(1);
  const bytes = Buffer.from(images[0]!.b64_json!, 'base64');
  expect(bytes.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  const meta = await sharp(bytes).metadata();
  expect(meta.format).toBe('png');
  expect([meta.width, meta.height]).toEqual([256, 256]);
  // Decoding every pixel proves the file is whole, not just its header.
  const { info } = await sharp(bytes).raw().toBuffer({ resolveWithObject: true });
  expect(info.width * info.height).toBe(256 * 256);
}

/** Stops the daemon with SIGTERM, expects a quick clean exit, then reads the job table it left behind. */
async function stopAndReadJobs(daemon: DaemonProcess, dataDir: string): Promise<Array<{ id: string; status: string; attempts: number }>> {
  const started = Date.now();
  const exit = await daemon.kill('SIGTERM');
  expect(exit, daemon.tail()).toEqual({ code: 0, signal: null });
  expect(Date.now() - started, daemon.tail()).toBeLessThan(5_000);
  const db = new Database(path.join(dataDir, 'pixeld.sqlite'), { readonly: true });
  try {
    return db.prepare('SELECT id, status, attempts FROM jobs ORDER BY seq').all() as Array<{ id: string; status: string; attempts: number }>;
  } finally {
    db.close();
  }
}

/** Matches the runner's start-up log line about recovered jobs, and returns its counts. */
function recoveryCounts(daemon: DaemonProcess): { requeued: number; failed: number; cancelled?: number } | undefined {
  for (const line of daemon.output.split('\n')) {
    if (!line.includes('recovered jobs interrupted')) continue;
    const parsed = JSON.parse(line) as { requeued: number; failed: number; cancelled: number };
    return parsed.cancelled > 0
      ? { requeued: parsed.requeued, failed: parsed.failed, cancelled: parsed.cancelled }
      : { requeued: parsed.requeued, failed: parsed.failed };
  }
  return undefined;
}

/** Submits three jobs to a slow daemon and returns once the first one is running (the others wait). */
async function submitThreeAndWaitForFirstRunning(daemon: DaemonProcess): Promise<{ running: string; pending: string[] }> {
  const ids: string[] = [];
  for (const prompt of ['a lighthouse', 'a harbour at night', 'three gulls']) ids.push(await submit(daemon, prompt));
  const [running, ...pending] = ids as [string, ...string[]];
  await waitForStatus(daemon, running, 'processing');
  for (const id of pending) expect((await poll(daemon, id)).status).toBe('pending');
  return { running, pending };
}

describe('restart recovery (real child process)', () => {
  it('after SIGKILL, re-runs the interrupted job and keeps the pending ones; all complete with PNGs', async () => {
    const { dataDir, writeConfig } = setup();
    const first = await startDaemon('first run', writeConfig({ latencyMsPerImage: 3_000 }), dataDir);
    const { running, pending } = await submitThreeAndWaitForFirstRunning(first);

    const killed = await first.kill('SIGKILL');
    expect(killed.signal).toBe('SIGKILL');

    const second = await startDaemon('after crash', writeConfig({ latencyMsPerImage: 20 }), dataDir);
    expect(recoveryCounts(second), second.tail()).toEqual({ requeued: 1, failed: 0 });
    for (const id of [running, ...pending]) await expectPngResult(await waitForEnd(second, id));

    const rows = await stopAndReadJobs(second, dataDir);
    expect(rows.map((r) => r.id)).toEqual([running, ...pending]);
    expect(rows.filter((r) => r.status !== 'completed')).toEqual([]);
    // The interrupted job ran twice (the crashed attempt and the re-run); the waiting ones once.
    expect(rows.map((r) => r.attempts)).toEqual([2, 1, 1]);
  });

  it('with rerunInterruptedJobs: false, fails the interrupted job with a clear message and still runs the pending ones', async () => {
    const { dataDir, writeConfig } = setup();
    const first = await startDaemon('first run', writeConfig({ latencyMsPerImage: 3_000, rerunInterruptedJobs: false }), dataDir);
    const { running, pending } = await submitThreeAndWaitForFirstRunning(first);

    await first.kill('SIGKILL');

    const second = await startDaemon('after crash', writeConfig({ latencyMsPerImage: 20, rerunInterruptedJobs: false }), dataDir);
    expect(recoveryCounts(second), second.tail()).toEqual({ requeued: 0, failed: 1 });
    const failed = await poll(second, running);
    expect(failed.status).toBe('failed');
    expect(failed.errorMessage).toMatch(/daemon stopped while running this job/);
    expect(failed.errorMessage).toMatch(/cannot safely run it again/);
    expect(failed.data).toBeUndefined();
    for (const id of pending) await expectPngResult(await waitForEnd(second, id));

    const rows = await stopAndReadJobs(second, dataDir);
    expect(rows.map((r) => [r.id, r.status])).toEqual([
      [running, 'failed'],
      ...pending.map((id) => [id, 'completed']),
    ]);
  });

  it('SIGTERM while a job runs exits 0 at once; the job goes back to the queue without spending an attempt', async () => {
    const { dataDir, writeConfig } = setup();
    const first = await startDaemon('first run', writeConfig({ latencyMsPerImage: 3_000 }), dataDir);
    const id = await submit(first, 'a lighthouse');
    await waitForStatus(first, id, 'processing');

    // The running attempt is aborted, not waited for: far less than the 3 s the job would take.
    const started = Date.now();
    const exit = await first.kill('SIGTERM');
    const stopMs = Date.now() - started;
    expect(exit, first.tail()).toEqual({ code: 0, signal: null });
    expect(stopMs, first.tail()).toBeLessThan(2_500);
    expect(first.output).toMatch(/received SIGTERM; shutting down/);
    expect(first.output).toMatch(/attempt aborted: shutting down/);

    const second = await startDaemon('after SIGTERM', writeConfig({ latencyMsPerImage: 20 }), dataDir);
    // A clean stop left nothing processing: there is nothing to recover, the job is simply pending.
    expect(recoveryCounts(second), second.tail()).toBeUndefined();
    await expectPngResult(await waitForEnd(second, id));

    const rows = await stopAndReadJobs(second, dataDir);
    expect(rows).toEqual([{ id, status: 'completed', attempts: 1 }]);
  });

  it('SIGTERM answers a waiting sync caller 503 shutting_down (retryable) and cancels its job', async () => {
    const { dataDir, writeConfig } = setup();
    const first = await startDaemon('sync at SIGTERM', writeConfig({ latencyMsPerImage: 3_000 }), dataDir);
    const answer = fetch(`${first.url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'waiting caller', size: '256x256' }),
    });
    await sleep(300);
    expect((await first.kill('SIGTERM')).code, first.tail()).toBe(0);
    const res = await answer;
    expect(res.status).toBe(503);
    expect(res.headers.get('x-should-retry')).toBe('true');
    expect(res.headers.get('retry-after')).toBeTruthy();
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('shutting_down');
    const second = await startDaemon('after sync SIGTERM', writeConfig({ latencyMsPerImage: 20 }), dataDir);
    const rows = await stopAndReadJobs(second, dataDir);
    expect(rows.map((r) => r.status)).toEqual(['cancelled']);
  });

  it('after SIGKILL, a sync job whose caller was waiting is cancelled, not run for nobody', async () => {
    const { dataDir, writeConfig } = setup();
    const first = await startDaemon('sync at SIGKILL', writeConfig({ latencyMsPerImage: 3_000 }), dataDir);
    const answer = fetch(`${first.url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'orphaned caller', size: '256x256' }),
    }).catch((err: unknown) => err);
    const asyncId = await submit(first, 'queued behind it');
    await sleep(300);
    await first.kill('SIGKILL');
    expect(await answer).toBeInstanceOf(Error);
    const second = await startDaemon('after sync SIGKILL', writeConfig({ latencyMsPerImage: 20 }), dataDir);
    expect(recoveryCounts(second), second.tail()).toEqual({ requeued: 0, failed: 0, cancelled: 1 });
    await expectPngResult(await waitForEnd(second, asyncId));
    const rows = await stopAndReadJobs(second, dataDir);
    expect(rows.map((r) => r.status).sort()).toEqual(['cancelled', 'completed']);
  });

  it('an idle daemon exits 0 quickly on SIGTERM and keeps finished jobs readable after a restart', async () => {
    const { dataDir, writeConfig } = setup();
    const config = writeConfig({ latencyMsPerImage: 0 });
    const first = await startDaemon('first run', config, dataDir);
    const id = await submit(first, 'a lighthouse');
    const done = await waitForEnd(first, id);
    await expectPngResult(done);

    const rows = await stopAndReadJobs(first, dataDir);
    expect(rows).toEqual([{ id, status: 'completed', attempts: 1 }]);

    const second = await startDaemon('second run', config, dataDir);
    expect(recoveryCounts(second)).toBeUndefined();
    const again = await poll(second, id);
    expect(again.status).toBe('completed');
    expect(again.data?.data[0]?.b64_json).toBe(done.data?.data[0]?.b64_json);
    await stopAndReadJobs(second, dataDir);
  });
});
