import { beforeEach, describe, expect, it } from 'vitest';
import { newJobId, type JobResult } from '../../src/jobs/model.js';
import { QueueFullError, type JobStore, type NewJob, type ReceiptSigning, type RecoveredJobs } from '../../src/jobs/store.js';
import type { JobSignature } from '../../src/tee/receipt.js';
import { jobParams } from '../helpers/job-params.js';

/** The replica name the stores are driven as. */
const REPLICA = 'replica-1';

/**
 * The behaviour every JobStore implementation must have. Each implementation's test file calls this
 * with a factory that returns a fresh, empty store.
 */
export function describeJobStoreConformance(name: string, open: () => Promise<JobStore>): void {
  describe(`JobStore conformance: ${name}`, () => {
    let store: JobStore;
    beforeEach(async () => {
      store = await open();
      return () => store.close();
    });

    const T0 = 1_000_000;
    const newJob = (over: Partial<NewJob> = {}): NewJob => ({
      id: newJobId(),
      owner: 'alice',
      kind: 'generation',
      delivery: 'async',
      model: 'm',
      backendId: 'b1',
      params: jobParams({ n: 2 }),
      inputs: [],
      requestSha256: 'a'.repeat(64),
      pricePerImageWei: 1_000_000_000_000_000n,
      fingerprint: 'f'.repeat(64),
      idempotencyKey: undefined,
      baseUrl: 'http://x',
      createdMs: T0,
      ...over,
    });
    const SIGNATURE: JobSignature = {
      signingAddress: '0x0000000000000000000000000000000000000001',
      text: 'a:b',
      signature: '0x00',
      receipt: {
        version: 2,
        tee: 'INSECURE-DEV',
        provider: '0x0000000000000000000000000000000000000002',
        signer: '0x0000000000000000000000000000000000000001',
        job: `job_${'0'.repeat(32)}`,
        model: 'm',
        user: 'alice',
        seq: '1',
        request_sha256: 'a',
        images: 1,
        image_sha256: ['b'],
        price_per_image_wei: '1000000000000000000000',
        fee_wei: '1000000000000000000000',
        created: 1,
        text: 'image-receipt/2',
        signature: '0x00',
      },
    };
    const SIGNING: ReceiptSigning = { seqFloor: 0n, sign: () => SIGNATURE };
    const result = (shas: string[]): JobResult => ({
      created: 1,
      images: shas.map((sha256) => ({ sha256, mediaType: 'image/png', bytes: 10, width: 64, height: 64 })),
      size: '64x64',
      quality: 'high',
      outputFormat: 'png',
      background: 'opaque',
      fileToken: 't'.repeat(32),
      warnings: [],
    });

    it('creates a pending job and reads it back whole', async () => {
      const job = newJob({ idempotencyKey: 'k' });
      const { job: created, created: isNew } = await store.create(job, 60_000);
      expect(isNew).toBe(true);
      expect(created).toMatchObject({ ...job, status: 'pending', attempts: 0, runAfterMs: T0, updatedMs: T0 });
      expect(await store.get(job.id)).toEqual(created);
      expect(await store.get(newJobId())).toBeUndefined();
    });

    it('returns the earlier job for a known idempotency key, per owner, within its TTL', async () => {
      const first = newJob({ idempotencyKey: 'k' });
      await store.create(first, 60_000);
      const replay = await store.create(newJob({ idempotencyKey: 'k', createdMs: T0 + 10 }), 60_000);
      expect(replay.created).toBe(false);
      expect(replay.job.id).toBe(first.id);
      expect((await store.create(newJob({ idempotencyKey: 'k', owner: 'bob' }), 60_000)).created).toBe(true);
      const afterTtl = await store.create(newJob({ idempotencyKey: 'k', createdMs: T0 + 60_001 }), 60_000);
      expect(afterTtl.created).toBe(true);
      expect(afterTtl.job.id).not.toBe(first.id);
    });

    it('counts jobs by status and model', async () => {
      expect(await store.countByStatusAndModel()).toEqual([]);
      const a = newJob();
      await store.create(a, 0);
      await store.create(newJob(), 0);
      await store.create(newJob({ model: 'm2', backendId: 'b2' }), 0);
      const claimed = await store.claimNext('b1', REPLICA, T0 + 1, 1000);
      expect(claimed!.id).toBe(a.id);
      expect(await store.countByStatusAndModel()).toEqual([
        { status: 'pending', model: 'm', count: 1 },
        { status: 'pending', model: 'm2', count: 1 },
        { status: 'processing', model: 'm', count: 1 },
      ]);
    });

    it('claims FIFO per backend, honours runAfterMs, and counts the queue', async () => {
      const a = newJob();
      const b = newJob();
      const other = newJob({ backendId: 'b2' });
      await store.create(a, 0);
      await store.create(b, 0);
      await store.create(other, 0);
      expect(await store.countPending('b1')).toBe(2);
      expect(await store.countAhead((await store.get(b.id))!)).toBe(1);
      const claimed = await store.claimNext('b1', REPLICA, T0 + 1, 1000);
      expect(claimed).toMatchObject({ id: a.id, status: 'processing', attempts: 1, startedMs: T0 + 1, leaseExpiresMs: T0 + 1001 });
      expect(claimed!.leaseToken).toMatch(/^[0-9a-f]{32}$/);
      expect(await store.countAhead((await store.get(b.id))!)).toBe(0);
      expect(await store.retryLater(a.id, claimed!.leaseToken, { code: 'upstream_error', message: 'x' }, T0 + 500, T0 + 2)).toBe(true);
      // a is back but not runnable yet; b goes first.
      expect((await store.claimNext('b1', REPLICA, T0 + 3, 1000))!.id).toBe(b.id);
      expect(await store.claimNext('b1', REPLICA, T0 + 4, 1000)).toBeUndefined();
      const again = await store.claimNext('b1', REPLICA, T0 + 500, 1000);
      expect(again).toMatchObject({ id: a.id, attempts: 2 });
    });

    it('records the replica that accepted a job and the one running its latest attempt', async () => {
      const job = newJob({ submittedBy: 'replica-a' });
      expect((await store.create(job, 0)).job).toMatchObject({ submittedBy: 'replica-a', ranBy: undefined });
      const first = (await store.claimNext('b1', 'replica-b', T0, 1000))!;
      expect(first).toMatchObject({ submittedBy: 'replica-a', ranBy: 'replica-b' });
      await store.retryLater(job.id, first.leaseToken, { code: 'upstream_error', message: 'x' }, T0, T0 + 1);
      expect(await store.claimNext('b1', 'replica-c', T0 + 2, 1000)).toMatchObject({ id: job.id, ranBy: 'replica-c', attempts: 2 });
      expect((await store.get(job.id))!.ranBy).toBe('replica-c');
    });

    it('refuses a job over its backend queue bound or its model cap, inside the insert', async () => {
      const limits = { maxPendingForBackend: 2, maxUnfinishedForModel: 3 };
      await store.create(newJob(), 0, undefined, limits);
      await store.create(newJob(), 0, undefined, limits);
      await expect(store.create(newJob(), 0, undefined, limits)).rejects.toBeInstanceOf(QueueFullError);
      // Another backend's queue is its own; the model's cap counts pending and processing jobs of every backend.
      await store.create(newJob({ backendId: 'b2' }), 0, undefined, limits);
      await store.claimNext('b1', REPLICA, T0, 1000);
      await expect(store.create(newJob(), 0, undefined, limits)).rejects.toMatchObject({ name: 'ModelBusyError', limit: 3 });
      expect(await store.countUnfinishedForModel('m')).toBe(3);
      // Another model is not held back by this one's cap, and a finished job frees its place.
      expect((await store.create(newJob({ model: 'm2' }), 0, undefined, limits)).created).toBe(true);
      const running = (await store.claimNext('b1', REPLICA, T0, 1000))!;
      await store.fail(running.id, running.leaseToken, { code: 'upstream_error', message: 'x' }, T0 + 1, T0 + 100);
      expect((await store.create(newJob(), 0, undefined, limits)).created).toBe(true);
      // An Idempotency-Key replay is answered before any bound: it adds no job.
      const keyed = newJob({ idempotencyKey: 'k', model: 'm3', backendId: 'b3' });
      await store.create(keyed, 60_000, undefined, { maxUnfinishedForModel: 1 });
      const replay = await store.create({ ...keyed, id: newJobId() }, 60_000, undefined, { maxUnfinishedForModel: 1 });
      expect(replay).toMatchObject({ created: false, job: { id: keyed.id } });
    });

    it('only the current lease holder may complete, fail or retry', async () => {
      const job = newJob();
      await store.create(job, 0);
      const claimed = (await store.claimNext('b1', REPLICA, T0, 1000))!;
      expect(await store.complete(job.id, 'wrong', result(['s1']), SIGNING, T0 + 5, T0 + 100)).toBe(false);
      expect(await store.fail(job.id, 'wrong', { code: 'upstream_error', message: 'x' }, T0 + 5, T0 + 100)).toBe(false);
      expect(await store.retryLater(job.id, 'wrong', { code: 'upstream_error', message: 'x' }, T0, T0)).toBe(false);
      expect(await store.extendLease(job.id, 'wrong', T0 + 9999, T0 + 1)).toBe(false);
      expect(await store.extendLease(job.id, claimed.leaseToken, T0 + 9999, T0 + 1)).toBe(true);
      expect(await store.complete(job.id, claimed.leaseToken, result(['s1']), SIGNING, T0 + 5, T0 + 100)).toBe(true);
      const done = (await store.get(job.id))!;
      expect(done).toMatchObject({ status: 'completed', finishedMs: T0 + 5, expiresMs: T0 + 100, leaseToken: undefined });
      expect(done.result).toEqual(result(['s1']));
      expect(done.signature).toEqual(SIGNATURE);
      expect(done.pricePerImageWei).toBe(1_000_000_000_000_000n);
      // A finished job cannot be completed twice.
      expect(await store.complete(job.id, claimed.leaseToken, result(['s2']), SIGNING, T0 + 6, T0 + 100)).toBe(false);
    });

    it('numbers each owner’s completions strictly upwards, above the floor, signing only under a live lease', async () => {
      const seqs = new Map<string, bigint[]>();
      // Each receipt names its owner and number, as the runner's do (a store may refuse a number twice).
      const signing = (owner: string, floor: bigint): ReceiptSigning => ({
        seqFloor: floor,
        sign: (seq) => {
          seqs.set('last', [...(seqs.get('last') ?? []), seq]);
          return { ...SIGNATURE, receipt: { ...SIGNATURE.receipt, user: owner, seq: seq.toString() } };
        },
      });
      const run = async (owner: string, floor: bigint, lease?: string) => {
        const job = newJob({ owner });
        await store.create(job, 0);
        const claimed = (await store.claimNext('b1', REPLICA, T0, 1000))!;
        return store.complete(job.id, lease ?? claimed.leaseToken, result(['s']), signing(owner, floor), T0 + 1, T0 + 100);
      };
      await run('alice', 0n);
      await run('alice', 0n);
      await run('bob', 0n);
      expect(await run('alice', 0n, 'stale-lease')).toBe(false);
      await run('alice', 10n);
      await run('alice', 3n);
      // Not signed at all under the stale lease; alice 1, 2, then above the floor 10, then on from 11.
      expect(seqs.get('last')).toEqual([1n, 2n, 1n, 11n, 12n]);
    });

    it('cancels pending and processing jobs, after which the runner cannot write', async () => {
      const pending = newJob();
      const running = newJob();
      await store.create(running, 0);
      await store.create(pending, 0);
      const claimed = (await store.claimNext('b1', REPLICA, T0, 1000))!;
      expect((await store.cancel(pending.id, T0 + 1, T0 + 50))!.status).toBe('cancelled');
      const cancelled = (await store.cancel(running.id, T0 + 2, T0 + 50))!;
      expect(cancelled).toMatchObject({ status: 'cancelled', error: { code: 'job_cancelled' } });
      expect(await store.complete(running.id, claimed.leaseToken, result(['s']), SIGNING, T0 + 3, T0 + 50)).toBe(false);
      expect((await store.get(running.id))!.status).toBe('cancelled');
      // Cancelling a finished job changes nothing.
      expect((await store.cancel(running.id, T0 + 4, T0 + 60))!.finishedMs).toBe(T0 + 2);
    });

    it('recovers interrupted jobs by policy and by attempts used', async () => {
      const rerun = newJob();
      const refuse = newJob({ backendId: 'b2' });
      const exhausted = newJob();
      for (const j of [rerun, refuse, exhausted]) await store.create(j, 0);
      await store.claimNext('b1', REPLICA, T0, 1000);
      await store.claimNext('b2', REPLICA, T0, 1000);
      const third = (await store.claimNext('b1', REPLICA, T0, 1000))!;
      await store.retryLater(third.id, third.leaseToken, { code: 'upstream_error', message: 'x' }, T0, T0);
      await store.claimNext('b1', REPLICA, T0, 1000); // exhausted: attempt 2
      const outcome = await store.recoverInterrupted(REPLICA, (job) => (job.backendId === 'b2' ? 'fail' : 'rerun'), 2, T0 + 10, T0 + 99);
      expect(inOrder(outcome)).toEqual(inOrder({ requeued: [rerun.id], failed: [refuse.id, exhausted.id], cancelled: [] }));
      expect((await store.get(rerun.id))!).toMatchObject({ status: 'pending', leaseToken: undefined });
      expect((await store.get(refuse.id))!).toMatchObject({ status: 'failed', error: { code: 'upstream_error' } });
      expect((await store.get(refuse.id))!.error!.message).toContain('cannot safely run it again');
      expect((await store.get(exhausted.id))!.error!.message).toContain('all 2 attempts');
    });

    it('cancels unfinished sync jobs at recovery: their callers are gone', async () => {
      const waiting = newJob({ delivery: 'sync' });
      const running = newJob({ delivery: 'sync' });
      const asyncJob = newJob();
      await store.create(running, 0);
      await store.create(waiting, 0);
      await store.create(asyncJob, 0);
      await store.claimNext('b1', REPLICA, T0, 1000);
      const outcome = await store.recoverInterrupted(REPLICA, () => 'rerun', 3, T0 + 10, T0 + 99);
      expect(inOrder(outcome)).toEqual(inOrder({ requeued: [], failed: [], cancelled: [waiting.id, running.id] }));
      for (const id of [waiting.id, running.id]) {
        expect(await store.get(id)).toMatchObject({ status: 'cancelled', error: { code: 'job_cancelled' } });
      }
      expect((await store.get(asyncJob.id))!.status).toBe('pending');
    });

    it('releases a claim without spending the attempt', async () => {
      const job = newJob();
      await store.create(job, 0);
      const claimed = (await store.claimNext('b1', REPLICA, T0, 1000))!;
      expect(await store.releaseClaim(job.id, 'wrong', T0 + 1)).toBe(false);
      expect(await store.releaseClaim(job.id, claimed.leaseToken, T0 + 1)).toBe(true);
      expect(await store.get(job.id)).toMatchObject({ status: 'pending', attempts: 0, leaseToken: undefined });
    });

    it('counts unfinished jobs per model across owners and backends', async () => {
      await store.create(newJob({ model: 'x' }), 0);
      await store.create(newJob({ model: 'x', owner: 'bob', backendId: 'b2' }), 0);
      const done = newJob({ model: 'x' });
      await store.create(done, 0);
      await store.create(newJob({ model: 'y' }), 0);
      expect(await store.countUnfinishedForModel('x')).toBe(3);
      await store.cancel(done.id, T0 + 1, T0 + 2);
      expect(await store.countUnfinishedForModel('x')).toBe(2);
      expect(await store.countUnfinishedForModel('z')).toBe(0);
    });

    it('re-queues or fails jobs whose lease ran out, as their backend’s policy and their attempts left say', async () => {
      const outOfAttempts = newJob();
      const unsafe = newJob({ backendId: 'b2' });
      const again = newJob({ backendId: 'b3' });
      for (const job of [outOfAttempts, unsafe, again]) await store.create(job, 0);
      for (const backend of ['b1', 'b2', 'b3']) await store.claimNext(backend, REPLICA, T0, 100);
      const policy = (job: { backendId: string }) => (job.backendId === 'b2' ? 'fail' : 'rerun') as 'fail' | 'rerun';
      expect(await store.recoverExpiredLeases(policy, 2, T0 + 50, T0 + 999)).toEqual({ requeued: [], failed: [] });
      expect(inOrder(await store.recoverExpiredLeases(() => 'rerun', 2, T0 + 101, T0 + 999))).toEqual(
        inOrder({ requeued: [outOfAttempts.id, unsafe.id, again.id], failed: [] }),
      );
      for (const backend of ['b1', 'b2', 'b3']) await store.claimNext(backend, REPLICA, T0 + 102, 100);
      // outOfAttempts goes on to its third attempt; the others are on their second.
      await store.retryLater(outOfAttempts.id, (await store.get(outOfAttempts.id))!.leaseToken!, { code: 'upstream_error', message: 'x' }, T0 + 103, T0 + 103);
      await store.claimNext('b1', REPLICA, T0 + 103, 100);
      expect(inOrder(await store.recoverExpiredLeases(policy, 3, T0 + 250, T0 + 999))).toEqual(
        inOrder({ requeued: [again.id], failed: [outOfAttempts.id, unsafe.id] }),
      );
      expect(await store.get(outOfAttempts.id)).toMatchObject({ status: 'failed', error: { message: expect.stringMatching(/lease ran out.*all 3 attempts/) } });
      expect(await store.get(unsafe.id)).toMatchObject({ status: 'failed', error: { message: expect.stringMatching(/cannot safely run it again/) } });
      expect(await store.get(again.id)).toMatchObject({ status: 'pending', attempts: 2, leaseToken: undefined });
    });

    it('tracks which blobs are needed: inputs until the job ends, outputs until it expires', async () => {
      const job = newJob({
        kind: 'edit',
        inputs: [{ role: 'image', sha256: 'in1', mediaType: 'image/png', bytes: 1, width: 1, height: 1 }],
      });
      await store.create(job, 0);
      expect(await store.isBlobReferenced('in1')).toBe(true);
      const claimed = (await store.claimNext('b1', REPLICA, T0, 1000))!;
      await store.complete(job.id, claimed.leaseToken, result(['out1', 'out2']), SIGNING, T0 + 5, T0 + 100);
      expect(await store.isBlobReferenced('in1')).toBe(false);
      expect(await store.isBlobReferenced('out1')).toBe(true);
      expect(await store.expireResults(T0 + 99, 10)).toEqual([]);
      expect(await store.expireResults(T0 + 100, 10)).toEqual([job.id]);
      expect(await store.isBlobReferenced('out1')).toBe(false);
      expect((await store.get(job.id))!.resultsDeletedMs).toBe(T0 + 100);
      expect(await store.expireResults(T0 + 200, 10)).toEqual([]);
    });

    it('deletes finished records past retention, never unfinished ones', async () => {
      const old = newJob();
      const open = newJob();
      await store.create(old, 0);
      await store.create(open, 0);
      const claimed = (await store.claimNext('b1', REPLICA, T0, 1000))!;
      await store.fail(old.id, claimed.leaseToken, { code: 'upstream_error', message: 'x' }, T0 + 1, T0 + 2);
      expect(await store.deleteFinishedBefore(T0 + 1, 10)).toBe(0);
      expect(await store.deleteFinishedBefore(T0 + 2, 10)).toBe(1);
      expect(await store.get(old.id)).toBeUndefined();
      expect(await store.get(open.id)).toBeDefined();
    });

    it('reports recent run time per delivered image, newest first', async () => {
      for (const [ms, images] of [
        [400, 2],
        [300, 1],
      ] as const) {
        const job = newJob();
        await store.create(job, 0);
        const claimed = (await store.claimNext('b1', REPLICA, T0, 10_000))!;
        const shas = Array.from({ length: images }, (_, i) => `s${ms}${i}`);
        await store.complete(job.id, claimed.leaseToken, result(shas), SIGNING, T0 + ms, T0 + 9999);
      }
      expect(await store.recentPerImageMs('b1', 10)).toEqual([200, 300]);
      expect(await store.recentPerImageMs('b2', 10)).toEqual([]);
    });

    /** Runs one job of backend b1 to completion: created, started and finished at the given times. */
    const completeAt = async (createdMs: number, startedMs: number, finishedMs: number, images = 1, over: Partial<NewJob> = {}) => {
      const job = newJob({ createdMs, ...over });
      await store.create(job, 0);
      const claimed = (await store.claimNext(job.backendId, REPLICA, startedMs, 60_000))!;
      expect(claimed.id).toBe(job.id);
      const shas = Array.from({ length: images }, (_, i) => `${job.id}-${i}`);
      expect(await store.complete(job.id, claimed.leaseToken, result(shas), SIGNING, finishedMs, finishedMs + 99_999)).toBe(true);
      return job.id;
    };
    const failAt = async (createdMs: number, finishedMs: number) => {
      const job = newJob({ createdMs });
      await store.create(job, 0);
      const claimed = (await store.claimNext('b1', REPLICA, createdMs, 60_000))!;
      await store.fail(job.id, claimed.leaseToken, { code: 'upstream_error', message: 'x' }, finishedMs, finishedMs + 99_999);
      return job.id;
    };

    it('lists jobs newest first, by status, owner and model', async () => {
      // Two jobs created in the same millisecond: the id breaks the tie, descending.
      const oldest = await failAt(T0, T0 + 1);
      const [tieLow, tieHigh] = [`job_${'1'.repeat(32)}`, `job_${'2'.repeat(32)}`];
      await store.create(newJob({ id: tieHigh, createdMs: T0 + 10 }), 0);
      await store.create(newJob({ id: tieLow, createdMs: T0 + 10 }), 0);
      const bobs = newJob({ owner: 'bob', model: 'm2', backendId: 'b2', createdMs: T0 + 20 });
      await store.create(bobs, 0);
      const newest = newJob({ createdMs: T0 + 30 });
      await store.create(newest, 0);

      const ids = async (filter: Parameters<JobStore['listJobs']>[0]) => (await store.listJobs(filter)).map((j) => j.id);
      expect(await ids({ limit: 10 })).toEqual([newest.id, bobs.id, tieHigh, tieLow, oldest]);
      expect(await ids({ limit: 2 })).toEqual([newest.id, bobs.id]);
      expect(await ids({ statuses: ['failed'], limit: 10 })).toEqual([oldest]);
      expect(await ids({ statuses: ['failed', 'pending'], owner: 'alice', limit: 10 })).toEqual([newest.id, tieHigh, tieLow, oldest]);
      expect(await ids({ owner: 'bob', limit: 10 })).toEqual([bobs.id]);
      expect(await ids({ model: 'm2', limit: 10 })).toEqual([bobs.id]);
      expect(await ids({ model: 'm2', owner: 'alice', limit: 10 })).toEqual([]);
      expect(await ids({ statuses: [], limit: 10 })).toEqual([]);
      // Whole jobs, as get() reads them.
      expect((await store.listJobs({ owner: 'bob', limit: 1 }))[0]).toEqual(await store.get(bobs.id));
      await expect(store.listJobs({ limit: 0 })).rejects.toThrow(/from 1 to 500/);
      await expect(store.listJobs({ limit: 501 })).rejects.toThrow(/from 1 to 500/);
    });

    it('pages through jobs with a (createdMs, id) cursor without gaps or repeats', async () => {
      const created: string[] = [];
      // Seven jobs over three milliseconds, several sharing one: ties fall across page boundaries.
      for (const ms of [T0, T0, T0 + 1, T0 + 1, T0 + 1, T0 + 2, T0 + 2]) {
        const job = newJob({ createdMs: ms });
        await store.create(job, 0);
        created.push(job.id);
      }
      const all = (await store.listJobs({ limit: 500 })).map((j) => j.id);
      expect(new Set(all)).toEqual(new Set(created));
      const seen: string[] = [];
      let before: { createdMs: number; id: string } | undefined;
      for (;;) {
        const page = await store.listJobs({ limit: 2, before });
        if (page.length === 0) break;
        expect(page.length).toBeLessThanOrEqual(2);
        seen.push(...page.map((j) => j.id));
        const last = page[page.length - 1]!;
        before = { createdMs: last.createdMs, id: last.id };
      }
      expect(seen).toEqual(all);
      // The same walk within one status and owner.
      const statusPage = await store.listJobs({ statuses: ['pending'], owner: 'alice', limit: 3, before: { createdMs: T0 + 1, id: all[3]! } });
      expect(statusPage.map((j) => j.id)).toEqual(all.slice(4, 7));
    });

    it('buckets finished jobs by finish time, with every bucket of the window present', async () => {
      const BUCKET = 1000;
      const since = T0 + 500; // not on a bucket edge: the first bucket starts at T0
      const now = T0 + 3_200;
      await completeAt(T0, T0 + 100, since - 1); // before the window
      await completeAt(T0, T0 + 100, since, 2); // on its first millisecond
      await failAt(T0, T0 + 999); // the last millisecond of the first bucket
      await completeAt(T0, T0 + 500, T0 + 1000, 3); // the first millisecond of the second bucket
      const toCancel = newJob();
      await store.create(toCancel, 0);
      await store.cancel(toCancel.id, T0 + 1999, T0 + 5000);
      await completeAt(T0 + 3000, T0 + 3100, now); // the window's last millisecond
      await completeAt(T0 + 3000, T0 + 3100, now + 1); // after it
      await store.create(newJob(), 0); // unfinished: never counted

      const activity = await store.jobActivity(since, now, BUCKET);
      expect(activity).toEqual([
        {
          startMs: T0,
          succeeded: 1,
          failed: 1,
          cancelled: 0,
          images: 2,
          runMs: { p50: 400, p95: 400, max: 400 },
          totalMs: { p50: 500, p95: 500, max: 500 },
        },
        {
          startMs: T0 + 1000,
          succeeded: 1,
          failed: 0,
          cancelled: 1,
          images: 3,
          runMs: { p50: 500, p95: 500, max: 500 },
          totalMs: { p50: 1000, p95: 1000, max: 1000 },
        },
        { startMs: T0 + 2000, succeeded: 0, failed: 0, cancelled: 0, images: 0, runMs: null, totalMs: null },
        {
          startMs: T0 + 3000,
          succeeded: 1,
          failed: 0,
          cancelled: 0,
          images: 1,
          runMs: { p50: 100, p95: 100, max: 100 },
          totalMs: { p50: 200, p95: 200, max: 200 },
        },
      ]);
      // A window inside one bucket is that one bucket; nothing finished: zeros.
      expect(await store.jobActivity(T0 + 2100, T0 + 2200, BUCKET)).toEqual([
        { startMs: T0 + 2000, succeeded: 0, failed: 0, cancelled: 0, images: 0, runMs: null, totalMs: null },
      ]);
      await expect(store.jobActivity(now, since, BUCKET)).rejects.toThrow(/after now/);
      await expect(store.jobActivity(since, now, 0)).rejects.toThrow(/bucket of at least 1 ms/);
      await expect(store.jobActivity(0, 20_000_000, 1)).rejects.toThrow(/at most 10000/);
    });

    it('records every transition of a job in its history, numbered in order, with attempt and replica', async () => {
      const job = newJob({ submittedBy: 'replica-a', params: jobParams({ n: 2, prompt: 'a secret prompt' }) });
      await store.create(job, 0);
      const first = (await store.claimNext('b1', 'replica-b', T0 + 1, 1000))!;
      expect(await store.extendLease(job.id, 'stale', T0 + 5000, T0 + 2)).toBe(false);
      const busy = { code: 'upstream_timeout', message: 'the backend did not answer in time' } as const;
      await store.retryLater(job.id, first.leaseToken, busy, T0 + 10, T0 + 3);
      const second = (await store.claimNext('b1', 'replica-c', T0 + 10, 1000))!;
      await store.releaseClaim(job.id, second.leaseToken, T0 + 11);
      const third = (await store.claimNext('b1', 'replica-c', T0 + 12, 1000))!;
      await store.complete(job.id, third.leaseToken, result(['o1', 'o2']), SIGNING, T0 + 20, T0 + 100);
      await store.expireResults(T0 + 100, 10);

      const events = await store.jobEvents(job.id);
      expect(events).toEqual([
        { seq: 1, atMs: T0, type: 'queued', attempt: 0, replica: 'replica-a', detail: {} },
        { seq: 2, atMs: T0 + 1, type: 'started', attempt: 1, replica: 'replica-b', detail: { leaseExpiresMs: T0 + 1001 } },
        { seq: 3, atMs: T0 + 2, type: 'lease_renewal_refused', attempt: 1, replica: 'replica-b', detail: { status: 'processing' } },
        { seq: 4, atMs: T0 + 3, type: 'retry_scheduled', attempt: 1, replica: 'replica-b', detail: { error: busy, runAfterMs: T0 + 10 } },
        { seq: 5, atMs: T0 + 10, type: 'started', attempt: 2, replica: 'replica-c', detail: { leaseExpiresMs: T0 + 1010 } },
        { seq: 6, atMs: T0 + 11, type: 'released', attempt: 2, replica: 'replica-c', detail: {} },
        { seq: 7, atMs: T0 + 12, type: 'started', attempt: 2, replica: 'replica-c', detail: { leaseExpiresMs: T0 + 1012 } },
        { seq: 8, atMs: T0 + 20, type: 'succeeded', attempt: 2, replica: 'replica-c', detail: { images: 2, receiptSeq: '1' } },
        { seq: 9, atMs: T0 + 100, type: 'results_expired', attempt: 2, replica: 'replica-c', detail: {} },
      ]);
      expect(JSON.stringify(events)).not.toContain('secret');
      expect(await store.jobEvents(newJobId())).toEqual([]);
      // A write refused for a lost lease records nothing: only transitions that happened are history.
      expect(await store.fail(job.id, third.leaseToken, busy, T0 + 200, T0 + 300)).toBe(false);
      expect(await store.jobEvents(job.id)).toHaveLength(9);
    });

    it('records failures and cancellations with their errors, and forgets the history with the job', async () => {
      const failing = newJob();
      const waiting = newJob();
      await store.create(failing, 0);
      await store.create(waiting, 0);
      const claimed = (await store.claimNext('b1', REPLICA, T0 + 1, 1000))!;
      const broken = { code: 'upstream_error', message: 'the backend crashed' } as const;
      await store.fail(failing.id, claimed.leaseToken, broken, T0 + 2, T0 + 3);
      await store.cancel(waiting.id, T0 + 4, T0 + 5);
      expect((await store.jobEvents(failing.id)).map((e) => [e.type, e.attempt, e.detail])).toEqual([
        ['queued', 0, {}],
        ['started', 1, { leaseExpiresMs: T0 + 1001 }],
        ['failed', 1, { error: broken }],
      ]);
      // Never run: no attempt and no replica.
      expect((await store.jobEvents(waiting.id)).slice(1)).toEqual([
        { seq: 2, atMs: T0 + 4, type: 'cancelled', attempt: 0, replica: undefined, detail: { error: { code: 'job_cancelled', message: 'cancelled by the caller' } } },
      ]);
      // Cancelling a finished job is no transition.
      await store.cancel(waiting.id, T0 + 6, T0 + 7);
      expect(await store.jobEvents(waiting.id)).toHaveLength(2);
      expect(await store.deleteFinishedBefore(T0 + 10, 10)).toBe(2);
      expect(await store.jobEvents(failing.id)).toEqual([]);
      expect(await store.jobEvents(waiting.id)).toEqual([]);
    });

    it('records why recovery re-queued or failed a job: a restart, an expired lease, a sync caller gone', async () => {
      const rerun = newJob();
      const refused = newJob({ backendId: 'b2' });
      const sync = newJob({ delivery: 'sync', backendId: 'b3' });
      const stalled = newJob({ backendId: 'b4' });
      for (const j of [rerun, refused, sync, stalled]) await store.create(j, 0);
      for (const backend of ['b1', 'b2']) await store.claimNext(backend, REPLICA, T0 + 1, 60_000);
      await store.claimNext('b4', 'replica-old', T0 + 1, 10);
      await store.recoverExpiredLeases(() => 'rerun', 3, T0 + 20, T0 + 999);
      await store.recoverInterrupted(REPLICA, (job) => (job.backendId === 'b2' ? 'fail' : 'rerun'), 3, T0 + 30, T0 + 999);
      const tail = async (id: string) => (await store.jobEvents(id)).slice(2).map(({ seq, type, attempt, replica, detail }) => ({ seq, type, attempt, replica, detail }));
      expect(await tail(stalled.id)).toEqual([{ seq: 3, type: 'lease_expired', attempt: 1, replica: 'replica-old', detail: {} }]);
      expect(await tail(rerun.id)).toEqual([{ seq: 3, type: 'interrupted', attempt: 1, replica: REPLICA, detail: {} }]);
      expect(await tail(refused.id)).toEqual([
        { seq: 3, type: 'interrupted', attempt: 1, replica: REPLICA, detail: {} },
        {
          seq: 4,
          type: 'failed',
          attempt: 1,
          replica: REPLICA,
          detail: { error: { code: 'upstream_error', message: 'the daemon stopped while running this job, and this backend cannot safely run it again' } },
        },
      ]);
      const syncEvents = await store.jobEvents(sync.id);
      expect(syncEvents.map((e) => e.type)).toEqual(['queued', 'cancelled']);
      expect(syncEvents[1]!.detail).toMatchObject({ error: { code: 'job_cancelled', message: expect.stringContaining('daemon restarted') } });
    });

    describe('webhook outbox', () => {
      const HOOK = { url: 'https://hooks.example.com/pixeld', format: '0g' as const };

      it('writes one pending delivery with the terminal transition of a job that has a webhook, none for others', async () => {
        const plain = newJob();
        const completed = newJob({ webhook: HOOK });
        const failed = newJob({ webhook: { url: 'https://hooks.example.com/b', format: 'therouter' } });
        const cancelled = newJob({ webhook: HOOK, owner: 'bob' });
        for (const job of [plain, completed, failed]) await store.create(job, 0);
        await store.create(cancelled, 0);
        expect((await store.get(completed.id))!.webhook).toEqual(HOOK);
        expect((await store.get(plain.id))!.webhook).toBeUndefined();
        // Claiming and running write nothing: only a job's end does.
        const c1 = (await store.claimNext('b1', REPLICA, T0, 1000))!;
        const c2 = (await store.claimNext('b1', REPLICA, T0, 1000))!;
        const c3 = (await store.claimNext('b1', REPLICA, T0, 1000))!;
        expect([c1.id, c2.id, c3.id]).toEqual([plain.id, completed.id, failed.id]);
        expect(await store.webhookDeliveries(completed.id)).toEqual([]);
        await store.complete(plain.id, c1.leaseToken, result(['s']), SIGNING, T0 + 1, T0 + 100);
        await store.complete(completed.id, c2.leaseToken, result(['s']), SIGNING, T0 + 2, T0 + 100);
        await store.fail(failed.id, c3.leaseToken, { code: 'upstream_error', message: 'x' }, T0 + 3, T0 + 100);
        await store.cancel(cancelled.id, T0 + 4, T0 + 100);
        // A cancel of a finished job is no transition: no second delivery.
        await store.cancel(completed.id, T0 + 5, T0 + 100);

        expect(await store.webhookDeliveries(plain.id)).toEqual([]);
        const [done] = await store.webhookDeliveries(completed.id);
        expect(done).toEqual({
          id: expect.stringMatching(/^msg_[0-9a-f]{32}$/),
          jobId: completed.id,
          event: 'job.completed',
          owner: 'alice',
          url: HOOK.url,
          format: '0g',
          state: 'pending',
          attempts: 0,
          createdMs: T0 + 2,
          nextAttemptMs: T0 + 2,
          lastAttemptMs: undefined,
          lastStatus: undefined,
          lastError: undefined,
          finishedMs: undefined,
        });
        expect(await store.webhookDeliveries(failed.id)).toEqual([
          expect.objectContaining({ event: 'job.failed', format: 'therouter', url: 'https://hooks.example.com/b' }),
        ]);
        expect(await store.webhookDeliveries(cancelled.id)).toEqual([expect.objectContaining({ event: 'job.cancelled', owner: 'bob' })]);
        const ids = new Set([done!.id, ...(await store.webhookDeliveries(failed.id)).map((d) => d.id)]);
        expect(ids.size).toBe(2);
      });

      it('writes the delivery of a job a recovery fails or cancels', async () => {
        const interrupted = newJob({ webhook: HOOK });
        const sync = newJob({ webhook: HOOK, delivery: 'sync' });
        await store.create(interrupted, 0);
        await store.claimNext('b1', REPLICA, T0, 1000);
        await store.create(sync, 0);
        await store.recoverInterrupted(REPLICA, () => 'fail', 3, T0 + 10, T0 + 100);
        expect(await store.webhookDeliveries(interrupted.id)).toEqual([expect.objectContaining({ event: 'job.failed', createdMs: T0 + 10 })]);
        expect(await store.webhookDeliveries(sync.id)).toEqual([expect.objectContaining({ event: 'job.cancelled' })]);
      });

      it('leases due deliveries to one worker at a time, takes them back when the lease runs out, and records attempts', async () => {
        const job = newJob({ webhook: HOOK });
        await store.create(job, 0);
        const claimed = (await store.claimNext('b1', REPLICA, T0, 1000))!;
        await store.complete(job.id, claimed.leaseToken, result(['s']), SIGNING, T0 + 10, T0 + 100);

        expect(await store.claimWebhookDeliveries(T0 + 9, 1000, 10)).toEqual([]);
        const [first] = await store.claimWebhookDeliveries(T0 + 10, 1000, 10);
        expect(first).toMatchObject({ jobId: job.id, state: 'pending', leaseToken: expect.any(String) });
        // Leased: nobody else gets it until the lease runs out (a worker that died mid-attempt).
        expect(await store.claimWebhookDeliveries(T0 + 500, 1000, 10)).toEqual([]);
        const [again] = await store.claimWebhookDeliveries(T0 + 1011, 1000, 10);
        expect(again!.id).toBe(first!.id);
        expect(again!.leaseToken).not.toBe(first!.leaseToken);
        // The first worker lost its lease: its outcome is not written.
        expect(await store.recordWebhookAttempt(first!.id, first!.leaseToken, { state: 'delivered', status: 200 }, T0 + 1012)).toBe(false);

        const retry = { state: 'pending' as const, status: 503, error: 'the receiver answered HTTP 503', nextAttemptMs: T0 + 5000 };
        expect(await store.recordWebhookAttempt(again!.id, again!.leaseToken, retry, T0 + 1020)).toBe(true);
        expect((await store.webhookDeliveries(job.id))[0]).toMatchObject({
          state: 'pending',
          attempts: 1,
          lastAttemptMs: T0 + 1020,
          lastStatus: 503,
          lastError: 'the receiver answered HTTP 503',
          nextAttemptMs: T0 + 5000,
          finishedMs: undefined,
        });
        expect(await store.claimWebhookDeliveries(T0 + 4999, 1000, 10)).toEqual([]);
        const [third] = await store.claimWebhookDeliveries(T0 + 5000, 1000, 10);
        expect(third!.id).toBe(first!.id);
        expect(await store.recordWebhookAttempt(third!.id, third!.leaseToken, { state: 'delivered', status: 204 }, T0 + 5001)).toBe(true);
        expect((await store.webhookDeliveries(job.id))[0]).toMatchObject({
          state: 'delivered',
          attempts: 2,
          lastStatus: 204,
          lastError: undefined,
          nextAttemptMs: undefined,
          finishedMs: T0 + 5001,
        });
        // Delivered is final: never taken again, and its lease token writes nothing more.
        expect(await store.claimWebhookDeliveries(T0 + 99_999, 1000, 10)).toEqual([]);
        expect(await store.recordWebhookAttempt(third!.id, third!.leaseToken, { state: 'failed', status: undefined, error: 'x' }, T0 + 6000)).toBe(false);
      });

      it('takes due deliveries oldest first up to the limit, records giving up, and forgets them with the job', async () => {
        const jobs = [newJob({ webhook: HOOK }), newJob({ webhook: HOOK }), newJob({ webhook: HOOK })];
        for (const job of jobs) await store.create(job, 0);
        for (const [i, job] of [...jobs].reverse().entries()) await store.cancel(job.id, T0 + 10 + i, T0 + 100);
        const taken = await store.claimWebhookDeliveries(T0 + 100, 1000, 2);
        expect(taken.map((d) => d.jobId)).toEqual([jobs[2]!.id, jobs[1]!.id]);
        const gaveUp = { state: 'failed' as const, status: undefined, error: 'no answer within 10000 ms' };
        expect(await store.recordWebhookAttempt(taken[0]!.id, taken[0]!.leaseToken, gaveUp, T0 + 200)).toBe(true);
        expect((await store.webhookDeliveries(jobs[2]!.id))[0]).toMatchObject({
          state: 'failed',
          attempts: 1,
          lastStatus: undefined,
          lastError: 'no answer within 10000 ms',
          nextAttemptMs: undefined,
          finishedMs: T0 + 200,
        });
        expect(await store.deleteFinishedBefore(T0 + 1000, 10)).toBe(3);
        for (const job of jobs) expect(await store.webhookDeliveries(job.id)).toEqual([]);
        expect(await store.claimWebhookDeliveries(T0 + 99_999, 1000, 10)).toEqual([]);
      });

      it('counts the deliveries still pending: due, leased or waiting for a retry, not delivered or given up', async () => {
        expect(await store.countPendingWebhookDeliveries()).toBe(0);
        const jobs = [newJob({ webhook: HOOK }), newJob({ webhook: HOOK }), newJob({ webhook: HOOK }), newJob()];
        for (const job of jobs) await store.create(job, 0);
        // Waiting jobs have no delivery yet; a job without a webhook never has one.
        expect(await store.countPendingWebhookDeliveries()).toBe(0);
        for (const job of jobs) await store.cancel(job.id, T0 + 10, T0 + 100);
        expect(await store.countPendingWebhookDeliveries()).toBe(3);
        const [delivered, gaveUp, retried] = await store.claimWebhookDeliveries(T0 + 10, 1000, 10);
        expect(await store.countPendingWebhookDeliveries()).toBe(3);
        await store.recordWebhookAttempt(delivered!.id, delivered!.leaseToken, { state: 'delivered', status: 200 }, T0 + 20);
        await store.recordWebhookAttempt(gaveUp!.id, gaveUp!.leaseToken, { state: 'failed', status: 410, error: 'gone' }, T0 + 20);
        const retry = { state: 'pending' as const, status: 503, error: 'the receiver answered HTTP 503', nextAttemptMs: T0 + 5000 };
        await store.recordWebhookAttempt(retried!.id, retried!.leaseToken, retry, T0 + 20);
        expect(await store.countPendingWebhookDeliveries()).toBe(1);
        const [again] = await store.claimWebhookDeliveries(T0 + 5000, 1000, 10);
        await store.recordWebhookAttempt(again!.id, again!.leaseToken, { state: 'delivered', status: 204 }, T0 + 5001);
        expect(await store.countPendingWebhookDeliveries()).toBe(0);
      });
    });

    it('summarises run and total times as nearest-rank percentiles of the jobs that succeeded', async () => {
      // Twenty jobs in one bucket, run times 10..200 ms and totals 1010..1200 ms, finished out of order.
      const runs = Array.from({ length: 20 }, (_, i) => (i + 1) * 10);
      const order = [7, 19, 0, 13, 4, 16, 2, 11, 18, 5, 9, 1, 15, 8, 3, 17, 6, 14, 10, 12];
      for (const i of order) {
        const finished = T0 + 5_000 + i;
        await completeAt(finished - runs[i]! - 1000, finished - runs[i]!, finished);
      }
      // A slow failure does not move the success percentiles.
      await failAt(T0, T0 + 5_500);
      const [bucket] = await store.jobActivity(T0 + 5_000, T0 + 5_999, 10_000);
      // n = 20: p50 is the 10th smallest, p95 the 19th.
      expect(bucket).toEqual({
        startMs: T0,
        succeeded: 20,
        failed: 1,
        cancelled: 0,
        images: 20,
        runMs: { p50: 100, p95: 190, max: 200 },
        totalMs: { p50: 1100, p95: 1190, max: 1200 },
      });
      // n = 21 after one more: p50 the 11th, p95 the 20th (⌈19.95⌉).
      await completeAt(T0 + 5_000, T0 + 5_000 + 995, T0 + 5_000 + 995 + 5);
      const [again] = await store.jobActivity(T0 + 5_000, T0 + 5_999, 10_000);
      expect(again!.runMs).toEqual({ p50: 100, p95: 190, max: 200 });
      expect(again!.totalMs).toEqual({ p50: 1100, p95: 1190, max: 1200 });
    });
  });
}

/** A recovery's id lists with each list sorted: the order jobs are recovered in is not part of the contract. */
function inOrder(recovered: RecoveredJobs & { cancelled?: string[] }): Record<string, string[]> {
  return Object.fromEntries(Object.entries(recovered).map(([k, ids]: [string, string[]]) => [k, [...ids].sort()]));
}
