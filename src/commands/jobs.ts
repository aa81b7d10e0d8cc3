import { parseArgs } from 'node:util';
import { getAddress } from 'ethers';
import { leafHashOf } from '../billing/leaf.js';
import { STATUS_NAMES } from '../billing/settlement/types.js';
import type { BillingStore, ReceiptRecord, SettlementBatch } from '../billing/store.js';
import type { Config } from '../config/schema.js';
import { JOB_ID_PATTERN, type Job, type JobError, type JobStatus } from '../jobs/model.js';
import { openStores, StoreNotFoundError } from '../jobs/open-stores.js';
import type { WebhookDelivery, WebhookFormat } from '../webhooks/outbox.js';
import { printableUrl } from '../webhooks/webhook-url.js';
import { MAX_JOB_LIST_LIMIT, type JobEvent, type JobEventType, type JobStore } from '../jobs/store.js';
import {
  CommandError,
  commandOutput,
  EXIT_FAILED,
  EXIT_OK,
  EXIT_USAGE,
  formatWei,
  loadCommandConfig,
  OUTPUT_FLAGS,
  OUTPUT_USAGE,
  processIo,
  reportCommandError,
  type CommandIo,
  type OutputOptions,
} from './command-io.js';

/**
 * `pixeld jobs` (the newest jobs, filtered and paged) and `pixeld job <id>` (what happened to one job:
 * its timeline, attempts, images, receipt and settlement), to answer a user's question about a job. Both
 * only read the daemon's database, like `pixeld earnings`: safe while the daemon runs.
 */

export const JOBS_USAGE = `Usage: pixeld jobs [--status <s>[,<s>…]] [--user <owner>] [--model <id>] [--limit <n>] [--before <job id>]
                  [--json] [--quiet] [--config <file>]

The newest jobs first: id, created (UTC), status, model, backend, images asked/delivered, attempts, owner,
duration (created → finished) and the replica that ran it. The last line says how to see the next page.

  --status <list>     Only these statuses, comma-separated: pending, processing, completed, failed, cancelled
  --user <owner>      Only this owner: a user address (any case) or an API key's owner id
  --model <id>        Only this model
  --limit <n>         Jobs per page, 1–${MAX_JOB_LIST_LIMIT} (default 20)
  --before <job id>   The page after this job (older jobs), as the previous page's last line says
${OUTPUT_USAGE}
                      {"jobs":[{"id","createdMs","status","expired","model","backendId","kind","delivery","n",
                       "images","attempts","owner","durationMs","submittedBy","ranBy","error"}],"nextBefore"}
  -c, --config <file> Config file (default: $PIXELD_CONFIG, else config/pixeld.yaml)
`;

export const JOB_USAGE = `Usage: pixeld job <job id> [--show-prompt] [--json] [--quiet] [--config <file>]

What happened to one job: who asked for what, its timeline (times from its creation), each attempt and its
error, the images (still stored or expired), the signature and receipt, and the receipt's settlement.

  --show-prompt       Include the prompt and negative prompt (hidden by default: operators may not be
                      allowed to read them)
${OUTPUT_USAGE}
                      {"job","timeline","attempts","images","signature","receipt","settlement"}
  -c, --config <file> Config file (default: $PIXELD_CONFIG, else config/pixeld.yaml)
`;

const STATUSES: readonly JobStatus[] = ['pending', 'processing', 'completed', 'failed', 'cancelled'];
const DEFAULT_LIMIT = 20;

export interface JobsListOptions extends OutputOptions {
  configPath?: string | undefined;
  statuses?: JobStatus[] | undefined;
  owner?: string | undefined;
  model?: string | undefined;
  limit: number;
  /** A job id: list the jobs older than it. */
  before?: string | undefined;
}

export interface JobShowOptions extends OutputOptions {
  configPath?: string | undefined;
  jobId: string;
  showPrompt?: boolean | undefined;
}

/** One row of `pixeld jobs --json`; never the prompt. */
export interface JobListEntry {
  id: string;
  createdMs: number;
  status: JobStatus;
  /** The result files were deleted (TTL passed). */
  expired: boolean;
  model: string;
  backendId: string;
  kind: Job['kind'];
  delivery: Job['delivery'];
  n: number;
  /** Images delivered; null until the job completed. */
  images: number | null;
  attempts: number;
  owner: string;
  /** Created → finished; null while unfinished. */
  durationMs: number | null;
  submittedBy: string | null;
  ranBy: string | null;
  error: JobError | null;
}

/** What `pixeld jobs --json` prints. */
export interface JobsReport {
  jobs: JobListEntry[];
  /** The id to pass as --before for the next page; null on the last page. */
  nextBefore: string | null;
}

/** One attempt, as the job's history tells it. */
export interface AttemptReport {
  attempt: number;
  replica: string | null;
  startedMs: number;
  /** When the attempt ended; null while it runs. */
  endedMs: number | null;
  /** The event that ended it (succeeded, retry_scheduled, failed, released …), or `running`. */
  outcome: JobEventType | 'running';
  error: JobError | null;
}

/** What `pixeld job --json` prints (wei as decimal strings). */
export interface JobReport {
  job: JobListEntry & {
    size: string;
    quality: string;
    outputFormat: string;
    responseFormat: string;
    seed: number;
    idempotencyKey: boolean;
    pricePerImageWei: bigint;
    startedMs: number | null;
    finishedMs: number | null;
    expiresMs: number | null;
    resultsDeletedMs: number | null;
    /** An edit's uploaded images and mask, as received (their bytes are gone once the job finished). */
    inputs: Job['inputs'];
    /** Only with --show-prompt. */
    prompt?: string;
    negativePrompt?: string | null;
  };
  timeline: JobEvent[];
  attempts: AttemptReport[];
  images: Array<{ index: number; mediaType: string; width: number; height: number; bytes: number; sha256: string; stored: boolean }>;
  signature: { signingAddress: string; text: string } | null;
  receipt: {
    seq: bigint | null;
    feeWei: bigint;
    images: number;
    state: ReceiptRecord['state'];
    note: string | null;
    leaf: string[] | null;
    leafHash: string | null;
  } | null;
  settlement: {
    batchId: string;
    /** null when the batch's row is missing (the receipt names a batch the database no longer holds). */
    batchState: SettlementBatch['state'] | null;
    txHashes: string[];
    settledTx: string | null;
    block: number | null;
    settledMs: number | null;
    /** InferenceServing's status for the user's item (SUCCESS, PARTIAL …); null until the batch confirmed. */
    itemStatus: string | null;
  } | null;
  /** Where the job's end is announced and how its delivery went; null when the job has no webhook. */
  webhook: {
    /** Without its query, which may hold the receiver's token. */
    url: string;
    format: WebhookFormat;
    /** Empty until the job ends. */
    deliveries: WebhookDeliveryReport[];
  } | null;
}

/** One delivery of the job's end (times in unix ms; null where there is none yet). */
export interface WebhookDeliveryReport {
  /** The webhook-id every attempt sends. */
  id: string;
  event: WebhookDelivery['event'];
  state: WebhookDelivery['state'];
  attempts: number;
  createdMs: number;
  nextAttemptMs: number | null;
  lastAttemptMs: number | null;
  /** The receiver's HTTP status at the last attempt; null when it gave none. */
  lastStatus: number | null;
  lastError: string | null;
  /** When it was delivered or given up. */
  finishedMs: number | null;
}

async function openDatabase(config: Readonly<Config>): Promise<{ jobs: JobStore; billing: BillingStore; close: () => Promise<void> }> {
  try {
    const stores = await openStores(config, { mustExist: true });
    return { jobs: stores.jobs, billing: stores.billing, close: () => stores.close() };
  } catch (err) {
    if (err instanceof StoreNotFoundError) {
      throw new CommandError(`no daemon database at ${err.file}: has pixeld served with this config?`, EXIT_USAGE);
    }
    throw err;
  }
}

/** The job, or a clear error; `option` names the flag the id came from, if any. */
async function requireJob(jobs: JobStore, id: string, option?: string): Promise<Job> {
  const from = option === undefined ? '' : `${option}: `;
  if (!JOB_ID_PATTERN.test(id)) throw new CommandError(`${from}"${id}" is not a job id (job_ and 32 hex digits)`, EXIT_USAGE);
  const job = await jobs.get(id);
  if (job === undefined) {
    throw new CommandError(`${from}no job ${id} in this database (a wrong id, another provider's database, or deleted after jobs.recordRetentionMs)`, EXIT_FAILED);
  }
  return job;
}

function listEntry(job: Job): JobListEntry {
  return {
    id: job.id,
    createdMs: job.createdMs,
    status: job.status,
    expired: job.resultsDeletedMs !== undefined,
    model: job.model,
    backendId: job.backendId,
    kind: job.kind,
    delivery: job.delivery,
    n: job.params.n,
    images: job.result?.images.length ?? null,
    attempts: job.attempts,
    owner: job.owner,
    durationMs: job.finishedMs === undefined ? null : job.finishedMs - job.createdMs,
    submittedBy: job.submittedBy ?? null,
    ranBy: job.ranBy ?? null,
    error: job.error ?? null,
  };
}

export async function listJobsCommand(options: JobsListOptions, io: CommandIo): Promise<number> {
  const out = commandOutput(io, options);
  try {
    const config = loadCommandConfig(options.configPath, io.env);
    out.progress("opening the daemon's database");
    const db = await openDatabase(config);
    try {
      const before = options.before === undefined ? undefined : await requireJob(db.jobs, options.before, '--before');
      const jobs = await db.jobs.listJobs({
        statuses: options.statuses,
        owner: options.owner,
        model: options.model,
        before: before === undefined ? undefined : { createdMs: before.createdMs, id: before.id },
        limit: options.limit,
      });
      // A full page may have more behind it; a short one is the last.
      const nextBefore = jobs.length === options.limit ? jobs[jobs.length - 1]!.id : null;
      const entries = jobs.map(listEntry);
      out.result({ jobs: entries, nextBefore } satisfies JobsReport);
      if (entries.length === 0) {
        out.line(before === undefined ? 'No jobs match.' : `No jobs older than ${before.id} match.`);
        return EXIT_OK;
      }
      const rows = [['id', 'created (UTC)', 'status', 'model', 'backend', 'n/images', 'attempts', 'owner', 'duration', 'replica']];
      for (const e of entries) {
        rows.push([
          e.id,
          utc(e.createdMs),
          e.expired ? `${e.status}, expired` : e.status,
          e.model,
          e.backendId,
          `${e.n}/${e.images ?? '-'}`,
          String(e.attempts),
          shortOwner(e.owner),
          e.durationMs === null ? '-' : duration(e.durationMs),
          e.ranBy ?? e.submittedBy ?? '-',
        ]);
      }
      for (const line of alignColumns(rows)) out.line(line);
      out.line(
        nextBefore === null
          ? `${entries.length} job(s); no older ones match.`
          : `${entries.length} job(s). Next page: pixeld jobs ${nextPageArgs(options, nextBefore)}`,
      );
      return EXIT_OK;
    } finally {
      await db.close();
    }
  } catch (err) {
    return reportCommandError('jobs', err, io);
  }
}

export async function showJobCommand(options: JobShowOptions, io: CommandIo): Promise<number> {
  const out = commandOutput(io, options);
  try {
    const config = loadCommandConfig(options.configPath, io.env);
    out.progress("opening the daemon's database");
    const db = await openDatabase(config);
    try {
      const job = await requireJob(db.jobs, options.jobId);
      out.progress('reading its history, receipt and settlement');
      const events = await db.jobs.jobEvents(job.id);
      const receipt = await db.billing.getReceipt(job.id);
      const batch = receipt?.batchId === undefined ? undefined : await db.billing.getBatch(receipt.batchId);
      const deliveries = job.webhook === undefined ? [] : await db.jobs.webhookDeliveries(job.id);
      const report = jobReport(job, events, receipt, batch, deliveries, options.showPrompt === true);
      out.result(report);
      for (const line of describeJob(report)) out.line(line);
      return EXIT_OK;
    } finally {
      await db.close();
    }
  } catch (err) {
    return reportCommandError('job', err, io);
  }
}

/** The attempts the history records: each `started` to the event that ended it. */
export function attemptsOf(events: readonly JobEvent[]): AttemptReport[] {
  const ENDS: ReadonlySet<JobEventType> = new Set(['retry_scheduled', 'released', 'succeeded', 'failed', 'cancelled', 'interrupted', 'lease_expired']);
  const attempts: AttemptReport[] = [];
  let open: AttemptReport | undefined;
  for (const event of events) {
    if (event.type === 'started') {
      open = { attempt: event.attempt, replica: event.replica ?? null, startedMs: event.atMs, endedMs: null, outcome: 'running', error: null };
      attempts.push(open);
    } else if (open !== undefined && ENDS.has(event.type)) {
      open.endedMs = event.atMs;
      open.outcome = event.type;
      open.error = errorIn(event);
      open = undefined;
    }
  }
  return attempts;
}

function errorIn(event: JobEvent): JobError | null {
  const error = event.detail.error as JobError | undefined;
  return error === undefined ? null : error;
}

function jobReport(
  job: Job,
  events: JobEvent[],
  receipt: ReceiptRecord | undefined,
  batch: SettlementBatch | undefined,
  deliveries: WebhookDelivery[],
  showPrompt: boolean,
): JobReport {
  const stored = job.resultsDeletedMs === undefined;
  const itemResult = batch?.results?.find((r) => r.user.toLowerCase() === receipt?.user.toLowerCase());
  return {
    job: {
      ...listEntry(job),
      size: job.params.size,
      quality: job.params.quality,
      outputFormat: job.params.outputFormat,
      responseFormat: job.params.responseFormat,
      seed: job.params.seed,
      idempotencyKey: job.idempotencyKey !== undefined,
      pricePerImageWei: job.pricePerImageWei,
      startedMs: job.startedMs ?? null,
      finishedMs: job.finishedMs ?? null,
      expiresMs: job.expiresMs ?? null,
      resultsDeletedMs: job.resultsDeletedMs ?? null,
      inputs: job.inputs,
      ...(showPrompt ? { prompt: job.params.prompt, negativePrompt: job.params.negativePrompt ?? null } : {}),
    },
    timeline: events,
    attempts: attemptsOf(events),
    images: (job.result?.images ?? []).map((image, index) => ({
      index,
      mediaType: image.mediaType,
      width: image.width,
      height: image.height,
      bytes: image.bytes,
      sha256: image.sha256,
      stored,
    })),
    signature: job.signature === undefined ? null : { signingAddress: job.signature.signingAddress, text: job.signature.text },
    receipt:
      receipt === undefined
        ? null
        : {
            seq: receipt.seq ?? null,
            feeWei: receipt.feeWei,
            images: receipt.images,
            state: receipt.state,
            note: receipt.note ?? null,
            leaf: receipt.seq === undefined ? null : receipt.leaf,
            leafHash: receipt.seq === undefined ? null : leafHashOf(receipt.leaf),
          },
    settlement:
      receipt?.batchId === undefined
        ? null
        : {
            batchId: receipt.batchId,
            batchState: batch?.state ?? null,
            txHashes: batch?.txHashes ?? [],
            settledTx: receipt.settledTx ?? null,
            block: receipt.settledBlock ?? batch?.block ?? null,
            settledMs: receipt.settledMs ?? null,
            itemStatus: itemResult === undefined ? null : (STATUS_NAMES[itemResult.status] ?? `status ${itemResult.status}`),
          },
    webhook:
      job.webhook === undefined
        ? null
        : {
            url: printableUrl(job.webhook.url),
            format: job.webhook.format,
            deliveries: deliveries.map((d) => ({
              id: d.id,
              event: d.event,
              state: d.state,
              attempts: d.attempts,
              createdMs: d.createdMs,
              nextAttemptMs: d.nextAttemptMs ?? null,
              lastAttemptMs: d.lastAttemptMs ?? null,
              lastStatus: d.lastStatus ?? null,
              lastError: d.lastError ?? null,
              finishedMs: d.finishedMs ?? null,
            })),
          },
  };
}

function describeJob(r: JobReport): string[] {
  const { job } = r;
  const lines: string[] = [];
  const at = (ms: number) => offset(ms - job.createdMs);
  lines.push(`${job.id}  ${job.expired ? `${job.status}, results expired` : job.status}`);
  lines.push(`  owner        ${job.owner}`);
  lines.push(`  model        ${job.model} on backend ${job.backendId}, ${job.kind}, ${job.delivery}`);
  lines.push(
    `  asked for    ${job.n} × ${job.size}, quality ${job.quality}, ${job.outputFormat} as ${job.responseFormat}, seed ${job.seed}` +
      `, ${formatWei(job.pricePerImageWei)} per image`,
  );
  for (const input of job.inputs) {
    lines.push(`  input        ${input.role}, ${input.mediaType} ${input.width}×${input.height}, ${input.bytes} bytes, sha256 ${input.sha256}`);
  }
  lines.push(`  replicas     submitted to ${job.submittedBy ?? '(not recorded)'}, ran by ${job.ranBy ?? '(never ran)'}`);
  lines.push(`  idempotency  ${job.idempotencyKey ? 'an Idempotency-Key was sent' : 'no Idempotency-Key'}`);
  lines.push(
    `  created      ${utc(job.createdMs)} UTC` +
      (job.finishedMs === null ? '; not finished' : `; finished ${at(job.finishedMs)}`) +
      (job.startedMs !== null && job.finishedMs !== null ? ` (last attempt ran ${duration(job.finishedMs - job.startedMs)})` : ''),
  );
  if (job.error !== null) lines.push(`  error        ${job.error.code}: ${job.error.message}`);
  if (job.prompt !== undefined) {
    lines.push(`  prompt       ${JSON.stringify(job.prompt)}`);
    if (job.negativePrompt !== null && job.negativePrompt !== undefined) lines.push(`  negative     ${JSON.stringify(job.negativePrompt)}`);
  } else {
    lines.push('  prompt       (hidden; --show-prompt shows it)');
  }

  lines.push('', 'Timeline (from creation)');
  if (r.timeline.length === 0) lines.push('  no history recorded (the job predates job history)');
  const width = Math.max(0, ...r.timeline.map((e) => at(e.atMs).length));
  for (const event of r.timeline) lines.push(`  ${at(event.atMs).padStart(width)}  ${describeEvent(event, job.createdMs)}`);

  lines.push('', 'Attempts');
  if (r.attempts.length === 0) lines.push(job.attempts === 0 ? '  none: the job never ran' : `  ${job.attempts}, not in the history`);
  for (const a of r.attempts) {
    const span = a.endedMs === null ? `${at(a.startedMs)} → still running` : `${at(a.startedMs)} → ${at(a.endedMs)} (${duration(a.endedMs - a.startedMs)})`;
    const outcome = a.outcome === 'released' ? 'given back, not counted' : a.outcome.replace(/_/g, ' ');
    lines.push(`  #${a.attempt}  ${a.replica ?? '(replica not recorded)'}  ${span}  ${outcome}${a.error === null ? '' : `: ${a.error.code}: ${a.error.message}`}`);
  }

  lines.push('', 'Images');
  if (r.images.length === 0) lines.push('  none delivered');
  for (const image of r.images) {
    const where = image.stored ? (job.expiresMs === null ? 'stored' : `stored until ${utc(job.expiresMs)} UTC`) : `expired (deleted ${utc(job.resultsDeletedMs!)} UTC)`;
    lines.push(`  ${image.index}  ${image.mediaType}  ${image.width}×${image.height}  ${image.bytes} bytes  sha256 ${image.sha256}  ${where}`);
  }

  if (r.webhook !== null) {
    lines.push('', 'Webhook');
    lines.push(`  url          ${r.webhook.url} (${r.webhook.format === '0g' ? "0G's" : "theRouter's"} poll body)`);
    if (r.webhook.deliveries.length === 0) lines.push('  delivery     none yet: one is sent when the job ends');
    for (const d of r.webhook.deliveries) lines.push(...describeDelivery(d, at));
  }

  lines.push('', 'Signature and receipt');
  if (r.signature === null) lines.push('  not signed (only a completed job is)');
  else lines.push(`  signed by    ${r.signature.signingAddress}`, `  signed text  ${r.signature.text}`);
  if (r.receipt === null) {
    if (r.signature !== null) lines.push('  no receipt: the job cost nothing');
  } else {
    lines.push(
      `  receipt      seq ${r.receipt.seq ?? '(v1, none)'}, ${r.receipt.images} image(s), fee ${formatWei(r.receipt.feeWei)}, ${r.receipt.state}` +
        (r.receipt.note === null ? '' : ` (${r.receipt.note})`),
    );
    if (r.receipt.leafHash !== null) lines.push(`  leaf         ${r.receipt.leafHash}`);
  }

  lines.push('', 'Settlement');
  const s = r.settlement;
  if (s === null) {
    lines.push(r.receipt === null ? '  nothing to settle' : settlementPending(r.receipt.state));
  } else {
    lines.push(`  batch        ${s.batchId} (${s.batchState ?? 'not in the database'})${s.itemStatus === null ? '' : `, item ${s.itemStatus}`}`);
    const tx = s.settledTx ?? s.txHashes[s.txHashes.length - 1];
    if (tx !== undefined) lines.push(`  transaction  ${tx}${s.block === null ? ' (not mined yet)' : ` in block ${s.block}`}`);
    const replaced = s.txHashes.filter((h) => h !== tx);
    if (replaced.length > 0) lines.push(`  replaced     ${replaced.join(', ')}`);
    if (s.settledMs !== null) lines.push(`  settled      ${utc(s.settledMs)} UTC`);
  }
  return lines;
}

function describeDelivery(d: WebhookDeliveryReport, at: (ms: number) => string): string[] {
  const tries = `${d.attempts} attempt(s)`;
  const last = d.lastStatus === null ? (d.lastError ?? '') : `HTTP ${d.lastStatus}`;
  const lines = [`  delivery     ${d.id}  ${d.event}, queued ${at(d.createdMs)}`];
  if (d.state === 'delivered') {
    lines.push(`  status       delivered ${at(d.finishedMs!)} after ${tries}, ${last}`);
  } else if (d.state === 'failed') {
    lines.push(`  status       given up ${at(d.finishedMs!)} after ${tries}: ${d.lastError ?? 'no reason recorded'}`);
  } else {
    lines.push(`  status       pending, ${tries}` + (d.attempts === 0 ? '' : `; last ${at(d.lastAttemptMs!)}: ${d.lastError ?? last}`));
    if (d.nextAttemptMs !== null) lines.push(`  next         ${at(d.nextAttemptMs)} (${utc(d.nextAttemptMs)} UTC)`);
  }
  return lines;
}

function settlementPending(state: ReceiptRecord['state']): string {
  switch (state) {
    case 'offchain':
      return '  billed off chain (an API-key owner): never settled on chain';
    case 'unsettled':
      return '  not settled yet: the next settlement round takes it (pixeld settle runs one now)';
    default:
      return `  no batch (receipt ${state})`;
  }
}

function describeEvent(event: JobEvent, createdMs: number): string {
  const d = event.detail;
  const error = errorIn(event);
  const cause = error === null ? '' : `: ${error.code}: ${error.message}`;
  const on = event.replica === undefined ? '' : ` on ${event.replica}`;
  switch (event.type) {
    case 'queued':
      return `queued${event.replica === undefined ? '' : ` by ${event.replica}`}`;
    case 'started':
      return `attempt ${event.attempt} started${on}` + (typeof d.leaseExpiresMs === 'number' ? ` (lease to ${offset(d.leaseExpiresMs - createdMs)})` : '');
    case 'lease_renewal_refused':
      return `a lease renewal was refused${typeof d.status === 'string' ? ` (the job was ${d.status})` : ''}: that attempt stopped`;
    case 'retry_scheduled':
      return `attempt ${event.attempt} failed${cause}; retry no earlier than ${offset(Number(d.runAfterMs) - createdMs)}`;
    case 'released':
      return `attempt ${event.attempt} given back${on} (the replica stopped cleanly); not counted`;
    case 'succeeded':
      return `succeeded${on}: ${String(d.images)} image(s)${d.receiptSeq === undefined ? '' : `, receipt seq ${String(d.receiptSeq)}`}`;
    case 'failed':
      return `failed${cause}`;
    case 'cancelled':
      return `cancelled${cause}`;
    case 'interrupted':
      return `attempt ${event.attempt} interrupted${on}: the daemon stopped while running it`;
    case 'lease_expired':
      return `attempt ${event.attempt}'s lease expired${on}: the replica stopped answering`;
    case 'results_expired':
      return 'the result files were deleted (TTL passed)';
    default:
      return `${String(event.type)} ${JSON.stringify(d)}`;
  }
}

/** `2026-12-04 17:03:09` (UTC, to the second). */
function utc(ms: number): string {
  return new Date(ms).toISOString().slice(0, 19).replace('T', ' ');
}

/** A time relative to the job's creation; replicas' clocks may disagree a little, so it can be negative. */
function offset(ms: number): string {
  return ms < 0 ? `-${duration(-ms)}` : `+${duration(ms)}`;
}

function duration(ms: number): string {
  if (ms < 1_000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1_000).toFixed(1)} s`;
  const s = Math.round(ms / 1_000);
  if (s < 3_600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3_600)} h ${Math.floor((s % 3_600) / 60)} min`;
}

/** An address as 0x1234…abcd; another owner id cut at 16 characters. */
function shortOwner(owner: string): string {
  if (/^0x[0-9a-fA-F]{40}$/.test(owner)) return `${owner.slice(0, 6)}…${owner.slice(-4)}`;
  return owner.length <= 16 ? owner : `${owner.slice(0, 15)}…`;
}

function alignColumns(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
}

/** The same filters with --before the page's last job, quoted for a POSIX shell where needed. */
function nextPageArgs(options: JobsListOptions, before: string): string {
  const quote = (v: string) => (/^[\w.:@,/+-]+$/.test(v) ? v : `'${v.replace(/'/g, "'\\''")}'`);
  const args: string[] = [];
  if (options.statuses !== undefined) args.push('--status', options.statuses.join(','));
  if (options.owner !== undefined) args.push('--user', quote(options.owner));
  if (options.model !== undefined) args.push('--model', quote(options.model));
  if (options.limit !== DEFAULT_LIMIT) args.push('--limit', String(options.limit));
  if (options.configPath !== undefined) args.push('--config', quote(options.configPath));
  args.push('--before', before);
  return args.join(' ');
}

function parseStatuses(value: string): JobStatus[] {
  const statuses = value.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const unknown = statuses.filter((s) => !STATUSES.includes(s as JobStatus));
  if (statuses.length === 0 || unknown.length > 0) {
    throw new CommandError(`--status: ${unknown.length > 0 ? `unknown ${unknown.join(', ')}` : 'empty'}; one or more of ${STATUSES.join(', ')}`, EXIT_USAGE);
  }
  return statuses as JobStatus[];
}

function parseLimit(value: string | undefined): number {
  if (value === undefined) return DEFAULT_LIMIT;
  const limit = Number(value);
  if (!/^\d+$/.test(value) || limit < 1 || limit > MAX_JOB_LIST_LIMIT) {
    throw new CommandError(`--limit: "${value}" is not a whole number from 1 to ${MAX_JOB_LIST_LIMIT}`, EXIT_USAGE);
  }
  return limit;
}

/** Jobs record a user's address checksummed (EIP-55): one typed in one case finds them too. */
function parseOwner(value: string): string {
  if (!/^0x[0-9a-fA-F]{40}$/.test(value)) return value;
  try {
    return getAddress(value);
  } catch {
    throw new CommandError(`--user: ${value} is not a valid address (its mixed case is not its EIP-55 checksum)`, EXIT_USAGE);
  }
}

export async function runJobsCli(argv: string[], io: CommandIo = processIo()): Promise<number> {
  try {
    const { values } = parseArgs({
      args: argv,
      allowPositionals: false,
      options: {
        status: { type: 'string' },
        user: { type: 'string' },
        model: { type: 'string' },
        limit: { type: 'string' },
        before: { type: 'string' },
        config: { type: 'string', short: 'c' },
        ...OUTPUT_FLAGS,
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help) {
      io.stdout(JOBS_USAGE);
      return EXIT_OK;
    }
    return await listJobsCommand(
      {
        configPath: values.config,
        statuses: values.status === undefined ? undefined : parseStatuses(values.status),
        owner: values.user === undefined ? undefined : parseOwner(values.user),
        model: values.model,
        limit: parseLimit(values.limit),
        before: values.before,
        json: values.json,
        quiet: values.quiet,
      },
      io,
    );
  } catch (err) {
    return usageError('jobs', JOBS_USAGE, err, io);
  }
}

export async function runJobCli(argv: string[], io: CommandIo = processIo()): Promise<number> {
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        'show-prompt': { type: 'boolean' },
        config: { type: 'string', short: 'c' },
        ...OUTPUT_FLAGS,
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help) {
      io.stdout(JOB_USAGE);
      return EXIT_OK;
    }
    if (positionals.length !== 1) throw new CommandError(`give exactly one job id (got ${positionals.length})`, EXIT_USAGE);
    return await showJobCommand(
      { configPath: values.config, jobId: positionals[0]!, showPrompt: values['show-prompt'], json: values.json, quiet: values.quiet },
      io,
    );
  } catch (err) {
    return usageError('job', JOB_USAGE, err, io);
  }
}

/** A bad command line: the reason, then the usage. */
function usageError(command: string, usage: string, err: unknown, io: CommandIo): number {
  if (err instanceof CommandError) {
    io.stderr(`pixeld ${command}: ${err.message}\n\n${usage}`);
    return err.exitCode;
  }
  if (err instanceof TypeError && 'code' in err && String(err.code).startsWith('ERR_PARSE_ARGS')) {
    io.stderr(`pixeld ${command}: ${err.message}\n\n${usage}`);
    return EXIT_USAGE;
  }
  throw err;
}
