import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import type { ImageBackend } from '../src/backends/types.js';
import { configSchema, type Config, type ConfigInput } from '../src/config/schema.js';
import { createDaemon, type Daemon } from '../src/main.js';
import { Writable } from 'node:stream';
import { createLogger } from '../src/obs/logger.js';

/** The repository root (bench/..). */
export const ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface BenchDaemon {
  url: string;
  daemon: Daemon;
  config: Config;
  close(): Promise<void>;
}

/**
 * A daemon in this process, on a temp dir and an ephemeral loopback port, built as test/helpers/daemon.ts
 * builds it (createDaemon + start + listen) but logging as production does (info, JSON lines) into a sink:
 * the test helper logs at debug and parses every line into an array, which would be measured too.
 */
export async function startBenchDaemon(input: Omit<ConfigInput, 'dataDir'>, backends?: ReadonlyMap<string, ImageBackend>): Promise<BenchDaemon> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'pixeld-bench-'));
  const config = configSchema.parse({
    ...input,
    dataDir,
    server: { host: '127.0.0.1', port: 0, ...(input.server ?? {}) },
    jobs: { sweepIntervalMs: 3_600_000, ...(input.jobs ?? {}) },
  });
  const daemon = await createDaemon({ config, logger: createLogger({ level: 'info', stream: discard() }), backends });
  await daemon.start();
  const server = await daemon.listen();
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    daemon,
    config,
    async close() {
      await daemon.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

function discard(): Writable {
  return new Writable({
    write(_chunk, _encoding, done) {
      done();
    },
  });
}

/** No per-owner limits in the way: every bench client is the one anonymous owner (auth.mode none). */
export const UNLIMITED_RATES = { requestsPerMinute: 10_000_000, imagesPerMinute: 10_000_000 };

export interface CannonResult {
  requestsPerSecond: number;
  latencyP50Ms: number;
  latencyP99Ms: number;
  /** Responses with a status other than 2xx, and transport errors. */
  failures: number;
  total: number;
  bytesPerSecond: number;
}

export type CannonOptions = autocannon.Options;

/**
 * autocannon as a promise, in a worker thread of its own (its HTTP parser is JavaScript: on the daemon's
 * event loop it would take the time being measured); counts non-2xx answers and errors as failures.
 */
export async function cannon(options: CannonOptions): Promise<CannonResult> {
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    autocannon({ workers: 1, ...options }, (err, res) => (err ? reject(err) : resolve(res)));
  });
  return {
    requestsPerSecond: result.requests.average,
    latencyP50Ms: result.latency.p50,
    latencyP99Ms: result.latency.p99,
    failures: result.non2xx + result.errors + result.timeouts,
    total: result.requests.total,
    bytesPerSecond: result.throughput.average,
  };
}

/** Rounds of equal length: mean rate, median p50, worst p99, all failures. */
export function mergeRounds(rounds: CannonResult[]): CannonResult {
  const mean = (f: (r: CannonResult) => number) => rounds.reduce((s, r) => s + f(r), 0) / rounds.length;
  const p50s = rounds.map((r) => r.latencyP50Ms).sort((a, b) => a - b);
  return {
    requestsPerSecond: mean((r) => r.requestsPerSecond),
    latencyP50Ms: p50s[Math.floor(p50s.length / 2)]!,
    latencyP99Ms: Math.max(...rounds.map((r) => r.latencyP99Ms)),
    failures: rounds.reduce((s, r) => s + r.failures, 0),
    total: rounds.reduce((s, r) => s + r.total, 0),
    bytesPerSecond: mean((r) => r.bytesPerSecond),
  };
}

/** Resident set size of a process, and its peak since start (or since `resetPeakRss`), in bytes. */
export function readRss(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

/** What /proc counts CPU time in (USER_HZ, 100 on Linux): 10 ms. */
const MS_PER_CLOCK_TICK = 10;

/**
 * CPU time used so far, user and system, in ms: by a whole process (all its threads), or with `tid` by one
 * of its threads. To 10 ms: measure over seconds.
 */
export function cpuTimeMs(pid: number, tid?: number): number {
  const stat = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'utf8');
  // The fields after the command name, which may hold spaces; utime and stime are the 14th and 15th of all.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * MS_PER_CLOCK_TICK;
}

/** Resets VmHWM to the current RSS (Linux clear_refs "5"); false where the kernel does not allow it. */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

export interface ChildDaemon {
  url: string;
  pid: number;
  dataDir: string;
  stop(): Promise<void>;
}

/**
 * What `npm start` (package.json) and the Docker image set for the daemon: glibc hands blocks of 1 MiB and
 * more straight back to the system when freed, instead of keeping multi-MB image buffers in its heap.
 */
export const PRODUCTION_ALLOCATOR_ENV = { MALLOC_MMAP_THRESHOLD_: String(1024 * 1024) };

/**
 * The node flag `npm start` and the Docker image run the daemon with: V8 starts its old generation at 128 MB,
 * so a sync answer's ~16 MB of short-lived buffers does not set off a full collection every other request
 * (the default start is ~50 MB against a ~28 MB live heap).
 */
export const PRODUCTION_NODE_ARGS = ['--initial-old-space-size=128'];

/**
 * `node dist/cli.js serve --config …` in its own process, as `npm start` and the Docker image run it (no
 * TypeScript loader, their node flag and allocator setting), so its memory and its garbage collector are its own. `npm run bench` builds dist/
 * first. Resolves once it logs that it is listening.
 */
export async function startChildDaemon(input: Omit<ConfigInput, 'dataDir'>, env: NodeJS.ProcessEnv = {}): Promise<ChildDaemon> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'pixeld-bench-child-'));
  const configFile = path.join(dataDir, 'pixeld.json');
  const config = {
    ...input,
    dataDir,
    server: { host: '127.0.0.1', port: 0, ...(input.server ?? {}) },
    // info, as in production: the listening line below is logged at info.
    log: { level: 'info' },
  };
  writeFileSync(configFile, JSON.stringify(config, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)));
  const child = spawn(process.execPath, [...PRODUCTION_NODE_ARGS, ...childNodeArgs(), 'dist/cli.js', 'serve', '--config', configFile], {
    cwd: ROOT,
    env: { ...process.env, NODE_ENV: 'development', ...PRODUCTION_ALLOCATOR_ENV, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const m = /pixeld listening on (http:\/\/[\d.]+:\d+)/.exec(out);
      if (m) resolve(m[1]!);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`child daemon exited with ${code}: ${out.slice(-2000)}`)));
    setTimeout(() => reject(new Error(`child daemon did not start: ${out.slice(-2000)}`)), 30_000).unref();
  });
  child.stdout!.resume();
  child.stderr!.resume();
  return {
    url,
    pid: child.pid!,
    dataDir,
    async stop() {
      await stopChild(child);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Extra node flags for child daemons, from BENCH_DAEMON_NODE_ARGS: `BENCH_DAEMON_NODE_ARGS="--cpu-prof
 * --cpu-prof-dir=prof" npm run bench memory` profiles the daemon alone (NODE_OPTIONS refuses --cpu-prof).
 */
function childNodeArgs(): string[] {
  return (process.env.BENCH_DAEMON_NODE_ARGS ?? '').split(/\s+/).filter((arg) => arg !== '');
}

export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export interface FakeBackendProcess {
  /** Base URL including /v1. */
  url: string;
  origin: string;
  pid: number;
  stop(): Promise<void>;
}

/** bench/fake-backend.ts in its own process: the noisy (~2.6 MB per 1024² PNG) OpenAI-flavoured fake. */
export async function startFakeBackendProcess(): Promise<FakeBackendProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'bench/fake-backend.ts'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  const { url, origin } = await new Promise<{ url: string; origin: string }>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const line = out.split('\n')[0];
      if (out.includes('\n') && line) resolve(JSON.parse(line) as { url: string; origin: string });
    });
    child.once('exit', (code) => reject(new Error(`fake backend exited with ${code}`)));
  });
  child.stdout!.resume();
  return { url, origin, pid: child.pid!, stop: () => stopChild(child) };
}
