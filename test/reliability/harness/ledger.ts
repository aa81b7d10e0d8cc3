import path from 'node:path';
import Database from 'better-sqlite3';

/**
 * The daemon's books read straight from its SQLite file, and the invariants every reliability scenario
 * checks against what the clients were told: no accepted job lost, none duplicated, none left unfinished,
 * every failure with a reason, and exactly one receipt per completed job for exactly the images delivered.
 */

export interface JobRow {
  id: string;
  owner: string;
  status: 'pending' | 'processing' | 'completed' | 'failed' | 'cancelled';
  delivery: 'sync' | 'async';
  attempts: number;
  idempotencyKey: string | null;
  n: number;
  pricePerImageWei: bigint;
  imagesDelivered: number;
  imageSha256: string[];
  errorCode: string | undefined;
  errorMessage: string | undefined;
  startedMs: number | null;
}

export interface ReceiptRow {
  jobId: string;
  user: string;
  images: number;
  feeWei: bigint;
  state: string;
  imageSha256: string[];
}

export interface Ledger {
  jobs: JobRow[];
  receipts: ReceiptRow[];
}

/**
 * Reads every job and receipt. Opened read-write so that, after a SIGKILL, SQLite recovers the WAL exactly
 * as the next daemon start would; nothing is written.
 */
export function readLedger(dataDir: string): Ledger {
  const db = new Database(path.join(dataDir, 'pixeld.sqlite'), { fileMustExist: true });
  db.pragma('busy_timeout = 5000');
  try {
    const jobs = (
      db
        .prepare(
          `SELECT id, owner, status, delivery, attempts, idempotency_key, params, price_per_image_wei, result, error, started_ms
           FROM jobs ORDER BY seq`,
        )
        .all() as Array<Record<string, unknown>>
    ).map((r): JobRow => {
      const result = r.result === null ? undefined : (JSON.parse(String(r.result)) as { images: Array<{ sha256: string }> });
      const error = r.error === null ? undefined : (JSON.parse(String(r.error)) as { code?: string; message?: string });
      return {
        id: String(r.id),
        owner: String(r.owner),
        status: r.status as JobRow['status'],
        delivery: r.delivery as JobRow['delivery'],
        attempts: Number(r.attempts),
        idempotencyKey: r.idempotency_key === null ? null : String(r.idempotency_key),
        n: (JSON.parse(String(r.params)) as { n: number }).n,
        pricePerImageWei: BigInt(String(r.price_per_image_wei)),
        imagesDelivered: result?.images.length ?? 0,
        imageSha256: result?.images.map((i) => i.sha256) ?? [],
        errorCode: error?.code,
        errorMessage: error?.message,
        startedMs: r.started_ms === null ? null : Number(r.started_ms),
      };
    });
    const receipts = (db.prepare('SELECT job_id, user, images, fee_wei, state, receipt FROM receipts').all() as Array<Record<string, unknown>>).map(
      (r): ReceiptRow => ({
        jobId: String(r.job_id),
        user: String(r.user),
        images: Number(r.images),
        feeWei: BigInt(String(r.fee_wei)),
        state: String(r.state),
        imageSha256: (JSON.parse(String(r.receipt)) as { image_sha256: string[] }).image_sha256,
      }),
    );
    return { jobs, receipts };
  } finally {
    db.close();
  }
}

export interface LedgerCheck {
  /** Jobs a client was told exist (202/200 with a job id) that the daemon no longer has. */
  lost: string[];
  /** Idempotency keys with more than one job, and jobs that no client submitted. */
  duplicated: string[];
  /** Jobs still pending or processing (only counted when `finished` is required). */
  unfinished: string[];
  /** Failed or cancelled jobs without an error code and message. */
  failedWithoutReason: string[];
  /** Every way a receipt can disagree with the job it bills; one entry per problem. */
  receiptsWrong: string[];
  completed: number;
  failed: number;
  imagesDelivered: number;
  receiptImages: number;
}

export interface CheckOptions {
  /** Job ids the daemon acknowledged, by the Idempotency-Key they were submitted with. */
  acknowledged: ReadonlyMap<string, string>;
  /** Every Idempotency-Key any client sent (acknowledged or not: a submit cut by a crash may still exist). */
  keysSent: ReadonlySet<string>;
  /** Require every job to have ended. */
  finished: boolean;
}

export function checkLedger(ledger: Ledger, options: CheckOptions): LedgerCheck {
  const byId = new Map(ledger.jobs.map((j) => [j.id, j]));
  const byKey = new Map<string, JobRow[]>();
  const duplicated: string[] = [];
  for (const job of ledger.jobs) {
    if (job.idempotencyKey === null || !options.keysSent.has(job.idempotencyKey)) {
      duplicated.push(`${job.id}: no Idempotency-Key a client sent (${job.idempotencyKey})`);
      continue;
    }
    const list = byKey.get(job.idempotencyKey) ?? [];
    list.push(job);
    byKey.set(job.idempotencyKey, list);
  }
  for (const [key, list] of byKey) if (list.length > 1) duplicated.push(`key ${key}: ${list.length} jobs (${list.map((j) => j.id).join(', ')})`);

  const lost: string[] = [];
  for (const [key, id] of options.acknowledged) {
    const job = byId.get(id);
    if (!job) lost.push(`${id} (key ${key}) is gone`);
    else if (job.idempotencyKey !== key) lost.push(`${id} was acknowledged for key ${key} but holds ${job.idempotencyKey}`);
  }

  const unfinished = options.finished
    ? ledger.jobs.filter((j) => j.status === 'pending' || j.status === 'processing').map((j) => `${j.id}: ${j.status}`)
    : [];
  const failedWithoutReason = ledger.jobs
    .filter((j) => (j.status === 'failed' || j.status === 'cancelled') && !(j.errorCode && j.errorMessage))
    .map((j) => `${j.id}: ${j.status} without a reason`);

  const receiptsWrong: string[] = [];
  const receiptByJob = new Map<string, ReceiptRow>();
  for (const r of ledger.receipts) {
    if (receiptByJob.has(r.jobId)) receiptsWrong.push(`${r.jobId}: more than one receipt`);
    receiptByJob.set(r.jobId, r);
    const job = byId.get(r.jobId);
    if (!job) receiptsWrong.push(`${r.jobId}: receipt for a job that does not exist`);
    else if (job.status !== 'completed') receiptsWrong.push(`${r.jobId}: receipt for a ${job.status} job`);
  }
  for (const job of ledger.jobs) {
    if (job.status !== 'completed') continue;
    const r = receiptByJob.get(job.id);
    const owed = job.pricePerImageWei * BigInt(job.imagesDelivered);
    if (owed === 0n) {
      if (r) receiptsWrong.push(`${job.id}: receipt for a free job`);
      continue;
    }
    if (!r) {
      receiptsWrong.push(`${job.id}: completed with ${job.imagesDelivered} images and no receipt`);
      continue;
    }
    if (r.images !== job.imagesDelivered) receiptsWrong.push(`${job.id}: receipt for ${r.images} images, ${job.imagesDelivered} delivered`);
    if (r.feeWei !== owed) receiptsWrong.push(`${job.id}: fee ${r.feeWei}, owed ${owed}`);
    if (r.user !== job.owner) receiptsWrong.push(`${job.id}: receipt bills ${r.user}, job of ${job.owner}`);
    if (r.imageSha256.join() !== job.imageSha256.join()) receiptsWrong.push(`${job.id}: receipt names other images than the job delivered`);
  }

  const completed = ledger.jobs.filter((j) => j.status === 'completed');
  return {
    lost,
    duplicated,
    unfinished,
    failedWithoutReason,
    receiptsWrong,
    completed: completed.length,
    failed: ledger.jobs.filter((j) => j.status === 'failed' || j.status === 'cancelled').length,
    imagesDelivered: completed.reduce((n, j) => n + j.imagesDelivered, 0),
    receiptImages: ledger.receipts.reduce((n, r) => n + r.images, 0),
  };
}
