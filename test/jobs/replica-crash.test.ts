import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChildDaemon } from '../reliability/harness/child-daemon.js';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';
import { completionLogs, replicaSet, type ReplicaSet } from '../helpers/replicas.js';
import {
  ADMIN_TOKEN,
  b64Image,
  expectOneReceiptEach,
  expectReceiptNumbersContiguous,
  jobRows,
  pollUntilEnd,
  replicaConfig,
  showLogsOnFailure,
  submit,
  type JobRow,
} from './replica-fixture.js';

/**
 * A replica SIGKILLed while it runs jobs (issue 14): nothing tells the others it died, so its jobs wait out
 * the lease it last renewed, then a live replica's sweeper puts them back and a live replica runs them.
 * Three `pixeld serve` processes on one PostgreSQL database: two that live (a, b) and one that dies (doomed).
 */

/** The doomed replica's slow jobs: long enough to be killed mid-run. */
const DOOMED_SLOW = { concurrency: 2, latencyMsPerImage: 4_000 };
/**
 * Every replica's lease (jobs.leaseMs, renewed every third of it while an attempt runs; expired ones are
 * looked for every half lease): short, so the test waits little, yet long enough that a replica started
 * after the kill is up before the dead one's runs out.
 */
const JOBS = { leaseMs: 10_000 };
/** Longest lease this file waits out. */
const MAX_LEASE_WAIT_MS = 15_000;
/** After a lease runs out, a live replica notices within half a lease. */
const NOTICE_MS = JOBS.leaseMs / 2;

let db: TestDatabase;
let sql: pg.Client;
let set: ReplicaSet;
let a: ChildDaemon;
let b: ChildDaemon;
let doomed: ChildDaemon;

beforeAll(async () => {
  db = await createTestDatabase();
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  set = replicaSet({ databaseUrl: db.url, env: { PIXELD_TEST_ADMIN_TOKEN: ADMIN_TOKEN } });
  [a, b, doomed] = await Promise.all([
    set.start('a', replicaConfig({ jobs: JOBS })),
    set.start('b', replicaConfig({ jobs: JOBS })),
    set.start('doomed', replicaConfig({ jobs: JOBS, slow: DOOMED_SLOW })),
  ]);
}, 60_000);

afterAll(async () => {
  await set?.close();
  await sql?.end();
  await db?.drop();
});

describe('a replica SIGKILLed mid-run (child processes on one PostgreSQL database)', () => {
  it('its jobs run again on the live replicas once its lease has run out, each completed and billed once', async () => {
    showLogsOnFailure(set);
    const ids: string[] = [];
    // Sent to the doomed replica and the others alike; the doomed one's runner hears of its own submits first.
    for (const [i, r] of [doomed, doomed, a, b, doomed, a, b, doomed].entries()) ids.push((await submit(r, { model: 'slow', prompt: `slow ${i}` })).jobId);
    let dying: JobRow[] = [];
    for (const deadline = Date.now() + 15_000; dying.length < 2 && Date.now() < deadline; ) {
      dying = [...(await jobRows(sql, ids)).values()].filter((r) => r.status === 'processing' && r.ran_by === 'doomed');
      if (dying.length < 2) await new Promise((r) => setTimeout(r, 50));
    }
    expect(dying.map((r) => r.attempts), 'the doomed replica running two slow jobs').toEqual([1, 1]);
    expect((await doomed.kill('SIGKILL')).signal).toBe('SIGKILL');
    const killedAt = Date.now();
    const leaseEndOf = new Map(dying.map((r) => [r.id, Number(r.lease_expires_ms)]));
    const leaseEnds = Math.min(...leaseEndOf.values());
    expect(Math.max(...leaseEndOf.values()) - killedAt, "the dead replica's lease must be short enough to wait for here").toBeLessThan(MAX_LEASE_WAIT_MS);

    // A replica starting now recovers only its own jobs: the dead one's stay its own until their lease runs out.
    const late = await set.start('late', replicaConfig({ jobs: JOBS }));
    expect(late.output).not.toMatch(/recovered jobs interrupted/);
    const still = await jobRows(sql, dying.map((r) => r.id));
    expect(Date.now(), 'the late replica was up before the lease ran out').toBeLessThan(leaseEnds);
    for (const row of still.values()) {
      expect({ status: row.status, ran_by: row.ran_by, attempts: row.attempts }, row.id).toEqual({ status: 'processing', ran_by: 'doomed', attempts: 1 });
    }

    const live = [a, b, late];
    const ends = await Promise.all(ids.map((id, i) => pollUntilEnd(live[i % live.length]!, id, MAX_LEASE_WAIT_MS + NOTICE_MS + 20_000)));
    for (const end of ends) b64Image(end);
    const rows = await jobRows(sql, ids);
    for (const id of ids) {
      const row = rows.get(id)!;
      expect(row.status, id).toBe('completed');
      if (leaseEndOf.has(id)) {
        // Run again by a live replica, and only once the dead one's lease had ended.
        expect(row.attempts, id).toBe(2);
        expect(['a', 'b', 'late'], id).toContain(row.ran_by);
        expect(Number(row.started_ms), id).toBeGreaterThanOrEqual(leaseEndOf.get(id)!);
      } else {
        expect(row.attempts, id).toBe(1);
      }
    }
    // Completed once each: one replica logged each completion (the dead one none of those it died running)…
    const logged = await completionLogs(set.replicas.values(), ids);
    for (const id of ids) expect(logged.get(id), id).toEqual([rows.get(id)!.ran_by]);
    // …and billed once each, the owner's numbers without a gap or a repeat.
    await expectOneReceiptEach(sql, ids);
    await expectReceiptNumbersContiguous(sql);
  }, 60_000);
});
