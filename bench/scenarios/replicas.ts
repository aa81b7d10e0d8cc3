import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Wallet } from 'ethers';
import pg from 'pg';
import { Agent, request } from 'undici';
import { DEV_KEY_FILE } from '../../src/tee/dev-key.js';
import { cannon, sleep, startChildDaemon, UNLIMITED_RATES, type ChildDaemon } from '../harness.js';
import { percentile, type BenchRow, type BenchScenario } from '../table.js';

/**
 * Issue 14's replica benchmark: jobs/s through 1, 2 and 3 `pixeld serve` processes (built, as `npm start`
 * runs them) sharing one PostgreSQL database and nothing else, on the reference backend with a fixed time
 * per image. Each replica has its own backend slots, so the ideal is linear: k × concurrency ÷ latency.
 *
 * For each k, on a fresh database: clients keep 2 jobs per backend slot outstanding, each submitting to
 * replica i mod k and long-polling (?wait=30) the job on replica i+1 mod k — so every result is read from a
 * replica that did not accept the job (with one replica: the same one). Then poll capacity, polling a
 * pending job while nothing runs: autocannon at each replica alone, then at all of them at once.
 *
 * The database's part of each job, two ways, over the job run only: PostgreSQL's own account of the time its
 * sessions spent inside statements in the run's database (the change in pg_stat_database.active_time,
 * PostgreSQL 14+: wall time, lock waits included), per job and as a share of the submit → result time; and
 * the CPU of the PostgreSQL backends serving that database against the replicas' CPU (utime + stime from
 * /proc, same machine). pg_stat_statements would split the time by statement but needs
 * shared_preload_libraries, which a shared server may not have.
 */

/** A router calling with an API key, paying per image: every completion writes a numbered, signed receipt. */
const API_KEY = 'sk-bench-replicas';
const AUTH = { authorization: `Bearer ${API_KEY}` };
const PRICE_WEI = '1000000000000';
const ADMIN_URL = process.env.PIXELD_BENCH_POSTGRES_URL ?? process.env.PIXELD_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const LATENCY_MS = 500;
const CONCURRENCY = 4;
/** Jobs per replica in each run: about ten seconds of ideal work. */
const JOBS_PER_REPLICA = 80;
const POLL_SECONDS = 3;
const POLL_CONNECTIONS = 20;
/** A good fit for shared-nothing replicas: 3 replicas deliver at least 2.7× one. */
const SCALING_TARGET = 0.9;
const REPLICA_COUNTS = [1, 2, 3];
/** How long the replicas idle before pg_stat_database is read, so every session has handed its counts in. */
const STATS_SETTLE_MS = 2_500;

interface RunResult {
  replicas: number;
  jobs: number;
  completed: number;
  seconds: number;
  jobsPerSecond: number;
  /** Submit → the polling client holds the completed body. */
  latencyMs: number[];
  pollsDuringJobs: number;
  failures: string[];
  /** autocannon polling a pending job on each replica alone, the others idle. */
  pollsPerSecondAlone: number[];
  /** The same against every replica at once. */
  pollsPerSecondTogether: number[];
  pollFailures: number;
  daemonCpuMsPerJob: number;
  /** CPU of the PostgreSQL backends serving the run's database. */
  databaseCpuMsPerJob: number;
  /** Backends that ended during the run: their CPU is missing from databaseCpuMsPerJob. */
  sessionsEnded: number;
  databaseActiveMsPerJob: number;
  transactionsPerJob: number;
  /** What the database's active sessions were doing when sampled during the run. */
  waits: WaitSamples;
  ranBy: Record<string, number>;
}

export const replicasScenario: BenchScenario = {
  name: 'replicas',
  async run(): Promise<BenchRow[]> {
    const results: RunResult[] = [];
    for (const k of REPLICA_COUNTS) results.push(await runReplicas(k));
    return rows(results);
  },
};

async function admin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: ADMIN_URL });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** user + system CPU time of a process so far, in ms (Linux /proc, clock ticks of 10 ms). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  // After "pid (comm) ": state is field 0, utime 11, stime 12.
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

async function runReplicas(k: number): Promise<RunResult> {
  const name = `pixeld_bench_${randomBytes(5).toString('hex')}`;
  await admin((c) => c.query(`CREATE DATABASE ${name}`));
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  const root = mkdtempSync(path.join(tmpdir(), 'pixeld-bench-replicas-'));
  const teeKey = Wallet.createRandom().privateKey;
  const daemons: ChildDaemon[] = [];
  try {
    for (let i = 0; i < k; i += 1) {
      // One provider signs with one key: every replica's data dir gets the same dev key file.
      const dataDir = path.join(root, `r${i + 1}`);
      mkdirSync(dataDir);
      writeFileSync(path.join(dataDir, DEV_KEY_FILE), `${teeKey}\n`, { mode: 0o600 });
      daemons.push(
        await startChildDaemon(
          {
            database: { url: url.toString() },
            auth: { mode: 'api-key', apiKeys: [{ owner: 'bench-router', sha256: createHash('sha256').update(API_KEY).digest('hex') }] },
            rateLimits: UNLIMITED_RATES,
            jobs: { sweepIntervalMs: 60_000 },
            backends: [
              { id: 'ref', type: 'reference', concurrency: CONCURRENCY, latencyMsPerImage: LATENCY_MS, maxQueuedJobs: 100_000 },
              { id: 'hold', type: 'reference', concurrency: 1, latencyMsPerImage: 600_000 },
            ],
            models: [
              { id: 'ref-model', backend: 'ref', capabilities: ['generation'], sizes: ['64x64'], maxN: 1, maxInFlight: 100_000, pricePerImageWei: PRICE_WEI },
              { id: 'hold-model', backend: 'hold', capabilities: ['generation'], sizes: ['64x64'], maxN: 1 },
            ],
          },
          { PIXELD_DATA_DIR: dataDir, PIXELD_REPLICA_ID: `r${i + 1}` },
        ),
      );
    }
    const stats = new pg.Client({ connectionString: ADMIN_URL });
    await stats.connect();
    try {
      const dbBefore = await databaseStats(stats, name);
      const backendsBefore = await backendCpu(stats, name);
      const cpuBefore = daemons.map((d) => cpuMs(d.pid));
      const sampler = sampleWaits(url.toString(), name);
      const jobs = await runJobs(daemons, JOBS_PER_REPLICA * k);
      const waits = await sampler.stop();
      const daemonCpuMs = daemons.reduce((sum, d, i) => sum + cpuMs(d.pid) - cpuBefore[i]!, 0);
      const backendsAfter = await backendCpu(stats, name);
      const dbAfter = await databaseStats(stats, name);
      let databaseCpuMs = 0;
      for (const [pid, ms] of backendsAfter) databaseCpuMs += ms - (backendsBefore.get(pid) ?? 0);
      const sessionsEnded = [...backendsBefore.keys()].filter((pid) => !backendsAfter.has(pid)).length;
      const ranBy = await completedByReplica(url.toString());
      const polls = await pollCapacity(daemons);
      const per = (n: number) => n / Math.max(1, jobs.completed);
      return {
        replicas: k,
        ...jobs,
        ...polls,
        daemonCpuMsPerJob: per(daemonCpuMs),
        databaseCpuMsPerJob: per(databaseCpuMs),
        sessionsEnded,
        databaseActiveMsPerJob: per(dbAfter.activeMs - dbBefore.activeMs),
        transactionsPerJob: per(dbAfter.commits - dbBefore.commits),
        waits,
        ranBy,
      };
    } finally {
      await stats.end();
    }
  } finally {
    await Promise.all(daemons.map((d) => d.stop()));
    rmSync(root, { recursive: true, force: true });
    await admin((c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
  }
}

/**
 * pg_stat_database's time in statements and commits for the run's database. A session hands its counts in
 * when it has been idle for a second (PostgreSQL 15) or ends: read after the replicas have idled a while.
 */
async function databaseStats(c: pg.Client, name: string): Promise<{ activeMs: number; commits: number }> {
  await new Promise((r) => setTimeout(r, STATS_SETTLE_MS));
  await c.query('SELECT pg_stat_clear_snapshot()');
  const { rows } = await c.query<{ active: number | null; commits: string }>(
    'SELECT active_time AS active, xact_commit::text AS commits FROM pg_stat_database WHERE datname = $1',
    [name],
  );
  return { activeMs: Number(rows[0]?.active ?? Number.NaN), commits: Number(rows[0]?.commits ?? Number.NaN) };
}

/**
 * Samples pg_stat_activity every 50 ms: each active session of the run's database counts once per sample,
 * under its wait event (`Lock:advisory`, `Lock:transactionid`, `LWLock:NotifyQueue`, …) or `running` when
 * it waits on nothing. Where statement time goes, without pg_stat_statements.
 */
function sampleWaits(url: string, name: string): { stop(): Promise<WaitSamples> } {
  const counts = new Map<string, number>();
  /** Lock waits by the statement waiting. */
  const lockedOn = new Map<string, number>();
  let total = 0;
  let stopped = false;
  const c = new pg.Client({ connectionString: url, application_name: 'pixeld-bench-sampler' });
  const loop = (async () => {
    await c.connect();
    while (!stopped) {
      const { rows } = await c.query<{ w: string; q: string }>(
        `SELECT coalesce(wait_event_type || ':' || wait_event, 'running') AS w, left(regexp_replace(query, '\\s+', ' ', 'g'), 48) AS q
         FROM pg_stat_activity
         WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid() AND application_name <> 'pixeld-bench-sampler'`,
        [name],
      );
      for (const { w, q } of rows) {
        counts.set(w, (counts.get(w) ?? 0) + 1);
        if (w.startsWith('Lock:')) lockedOn.set(`${w} in "${q.trim()}…"`, (lockedOn.get(`${w} in "${q.trim()}…"`) ?? 0) + 1);
      }
      total += rows.length;
      await sleep(50);
    }
    await c.end();
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      const shares = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]).map(([w, n]): [string, number] => [w, n / Math.max(1, total)]);
      return { events: shares(counts), lockedStatements: shares(lockedOn) };
    },
  };
}

/** CPU ms so far of each PostgreSQL backend connected to the run's database, by pid. */
async function backendCpu(c: pg.Client, name: string): Promise<Map<number, number>> {
  const { rows } = await c.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE datname = $1', [name]);
  const cpu = new Map<number, number>();
  for (const { pid } of rows) {
    try {
      cpu.set(pid, cpuMs(pid));
    } catch {
      // ended between the query and the read
    }
  }
  return cpu;
}

async function completedByReplica(url: string): Promise<Record<string, number>> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const { rows } = await c.query<{ ran_by: string; n: string }>(
      "SELECT coalesce(ran_by, '?') AS ran_by, count(*)::text AS n FROM jobs WHERE status = 'completed' GROUP BY 1 ORDER BY 1",
    );
    return Object.fromEntries(rows.map((r) => [r.ran_by, Number(r.n)]));
  } finally {
    await c.end();
  }
}

async function runJobs(
  daemons: ChildDaemon[],
  jobs: number,
): Promise<Pick<RunResult, 'jobs' | 'completed' | 'seconds' | 'jobsPerSecond' | 'latencyMs' | 'pollsDuringJobs' | 'failures'>> {
  const k = daemons.length;
  const clients = 2 * CONCURRENCY * k;
  const agent = new Agent({ connections: clients * 2, keepAliveTimeout: 60_000 });
  const latencyMs: number[] = [];
  const failures: string[] = [];
  let polls = 0;
  let next = 0;
  const client = async () => {
    for (let i = next++; i < jobs; i = next++) {
      const to = daemons[i % k]!;
      const on = daemons[(i + 1) % k]!;
      const started = performance.now();
      const submitted = await request(`${to.url}/v1/async/images/generations`, {
        dispatcher: agent,
        method: 'POST',
        headers: { 'content-type': 'application/json', ...AUTH },
        body: JSON.stringify({ model: 'ref-model', prompt: `replica bench ${i}`, size: '64x64' }),
      });
      const { jobId } = (await submitted.body.json()) as { jobId?: string };
      if (submitted.statusCode !== 202 || jobId === undefined) {
        failures.push(`submit answered ${submitted.statusCode}`);
        continue;
      }
      for (;;) {
        const res = await request(`${on.url}/v1/async/jobs/${jobId}?wait=30`, { dispatcher: agent, headers: AUTH });
        const body = (await res.body.json()) as { status?: string };
        polls += 1;
        if (body.status === 'completed') {
          latencyMs.push(performance.now() - started);
          break;
        }
        if (body.status !== 'pending' && body.status !== 'processing') {
          failures.push(`job ${jobId} ended ${String(body.status)} (HTTP ${res.statusCode})`);
          break;
        }
      }
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: clients }, client));
  const seconds = (performance.now() - started) / 1000;
  await agent.close();
  return { jobs, completed: latencyMs.length, seconds, jobsPerSecond: latencyMs.length / seconds, latencyMs, pollsDuringJobs: polls, failures };
}

/**
 * Polls of a pending job, autocannon at every replica at once. The job waits on the `hold` backend (one
 * slot per replica, ten minutes an image) behind one job per replica that holds its slot: nothing runs while
 * the polls are measured, and what the machine does is answer them.
 */
async function pollCapacity(daemons: ChildDaemon[]): Promise<Pick<RunResult, 'pollsPerSecondAlone' | 'pollsPerSecondTogether' | 'pollFailures'>> {
  const submit = async (prompt: string) => {
    const res = await request(`${daemons[0]!.url}/v1/async/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...AUTH },
      body: JSON.stringify({ model: 'hold-model', prompt, size: '64x64' }),
    });
    const { jobId } = (await res.body.json()) as { jobId?: string };
    if (res.statusCode !== 202 || jobId === undefined) throw new Error(`hold submit answered ${res.statusCode}`);
    return jobId;
  };
  const status = async (id: string) => {
    const res = await request(`${daemons[0]!.url}/v1/async/jobs/${id}`, { headers: AUTH });
    return ((await res.body.json()) as { status?: string }).status;
  };
  const holders: string[] = [];
  for (let i = 0; i < daemons.length; i += 1) holders.push(await submit(`hold slot ${i}`));
  const pending = await submit('the polled one');
  const path = `/v1/async/jobs/${pending}`;
  // Once every replica's slot is taken (a runner claims within its idle poll), the polled job stays pending.
  for (const deadline = Date.now() + 10_000; ; await sleep(100)) {
    const states = await Promise.all(holders.map(status));
    if (states.every((s) => s === 'processing')) break;
    if (Date.now() > deadline) throw new Error(`the hold jobs did not all start: ${states.join(', ')}`);
  }
  const load = (d: ChildDaemon) => cannon({ url: `${d.url}${path}`, headers: AUTH, connections: POLL_CONNECTIONS, duration: POLL_SECONDS });
  const alone = [];
  for (const d of daemons) alone.push(await load(d));
  const together = daemons.length > 1 ? await Promise.all(daemons.map(load)) : alone;
  if ((await status(pending)) !== 'pending') throw new Error('the polled job left pending while it was polled');
  return {
    pollsPerSecondAlone: alone.map((r) => r.requestsPerSecond),
    pollsPerSecondTogether: together.map((r) => r.requestsPerSecond),
    pollFailures: [...alone, ...(daemons.length > 1 ? together : [])].reduce((sum, r) => sum + r.failures, 0),
  };
}

/** Shares of the active sessions sampled: by wait event, and lock waits by the statement waiting. */
interface WaitSamples {
  events: Array<[string, number]>;
  lockedStatements: Array<[string, number]>;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

function rows(results: RunResult[]): BenchRow[] {
  const one = results.find((r) => r.replicas === 1)!;
  const out: BenchRow[] = [];
  for (const r of results) {
    const scenario = `replicas on PostgreSQL, ${r.replicas} × reference (${CONCURRENCY} slots, ${LATENCY_MS} ms an image), ${r.jobs} jobs`;
    const ideal = (r.replicas * CONCURRENCY * 1000) / LATENCY_MS;
    const failed = r.failures.length > 0 ? `; ${r.failures.length} failed: ${r.failures.slice(0, 3).join('; ')}` : '';
    const sorted = [...r.latencyMs].sort((a, b) => a - b);
    const p50 = percentile(sorted, 50);
    const cpuShare = r.databaseCpuMsPerJob / (r.databaseCpuMsPerJob + r.daemonCpuMsPerJob);
    out.push(
      {
        scenario,
        figure: 'jobs/s',
        value: r.jobsPerSecond,
        unit: '/s',
        target: 'info',
        pass: null,
        note:
          `${((r.jobsPerSecond / ideal) * 100).toFixed(1)} % of the ideal ${ideal}/s; ${r.completed} of ${r.jobs} completed in ${r.seconds.toFixed(1)} s; ` +
          `submit → result p50 ${p50.toFixed(0)} ms, p99 ${percentile(sorted, 99).toFixed(0)} ms; ` +
          `ran by ${Object.entries(r.ranBy).map(([id, n]) => `${id} ${n}`).join(', ')}; ${r.pollsDuringJobs} long-polls, ${r.replicas > 1 ? 'each on a replica that did not accept the job' : 'on the one replica'}${failed}`,
      },
      {
        scenario,
        figure: 'polls/s per replica (pending job, one replica at a time)',
        value: mean(r.pollsPerSecondAlone),
        unit: '/s',
        target: 'info',
        pass: null,
        note:
          `autocannon, ${POLL_CONNECTIONS} connections for ${POLL_SECONDS} s to each replica in turn while the others idle: ` +
          `${r.pollsPerSecondAlone.map((p) => p.toFixed(0)).join(', ')} /s${r.pollFailures > 0 ? `; ${r.pollFailures} polls failed` : ''}`,
      },
      ...(r.replicas > 1
        ? [
            {
              scenario,
              figure: 'polls/s, all replicas at once (sum)',
              value: r.pollsPerSecondTogether.reduce((a, b) => a + b, 0),
              unit: '/s',
              target: 'info',
              pass: null,
              note:
                `${r.pollsPerSecondTogether.map((p) => p.toFixed(0)).join(' + ')} /s: the replicas, PostgreSQL and the load generators share ` +
                "this machine's cores, so this is the machine's limit, not the replicas'",
            },
          ]
        : []),
      {
        scenario,
        figure: 'database time per job',
        value: r.databaseActiveMsPerJob,
        unit: 'ms',
        target: 'info',
        pass: null,
        note:
          `PostgreSQL's active_time (wall time inside statements, lock waits included, summed over sessions) in ${r.transactionsPerJob.toFixed(1)} commits a job: ` +
          `${((r.databaseActiveMsPerJob / p50) * 100).toFixed(1)} % of the p50 submit → result time; ` +
          `active sessions sampled every 50 ms were ${r.waits.events.slice(0, 4).map(([w, share]) => `${w} ${(share * 100).toFixed(0)} %`).join(', ') || 'never seen'}` +
          `${r.waits.lockedStatements.length > 0 ? `; most lock waits: ${r.waits.lockedStatements.slice(0, 3).map(([w, share]) => `${w} ${(share * 100).toFixed(0)} %`).join(', ')}` : ''}`,
      },
      {
        scenario,
        figure: "database's share of CPU per job",
        value: cpuShare * 100,
        unit: '%',
        target: 'info',
        pass: null,
        note:
          `PostgreSQL backends ${r.databaseCpuMsPerJob.toFixed(1)} ms, the replicas ${r.daemonCpuMsPerJob.toFixed(1)} ms of CPU a job (utime + stime from /proc)` +
          `${r.sessionsEnded > 0 ? `; ${r.sessionsEnded} database sessions ended during the run and their CPU is missing` : ''}`,
      },
    );
  }
  for (const r of results.filter((x) => x.replicas > 1)) {
    const ratio = r.jobsPerSecond / one.jobsPerSecond;
    out.push({
      scenario: `replicas on PostgreSQL, scaling ${r.replicas} ÷ 1`,
      figure: 'jobs/s ratio',
      value: ratio,
      unit: '×',
      target: `≥ ${(SCALING_TARGET * r.replicas).toFixed(1)}×`,
      pass: r.failures.length === 0 && one.failures.length === 0 && ratio >= SCALING_TARGET * r.replicas,
      note: `${((ratio / r.replicas) * 100).toFixed(0)} % of linear`,
    });
  }
  return out;
}
