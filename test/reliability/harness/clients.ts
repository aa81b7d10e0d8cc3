import { createHash, randomBytes } from 'node:crypto';
import { receiptFieldsOf, receiptText, recoverTextSigner, type ReceiptJson } from '../../../src/tee/receipt.js';
import { sleep } from './mode.js';

/**
 * Router-like clients of the async API (0G shape): each submits with an Idempotency-Key, long-polls until
 * the job ends, and checks what it received — the images, the receipt signed over exactly those images and
 * the fee for exactly that many. A request cut off by a daemon crash is sent again, unchanged, once the
 * daemon answers again: the Idempotency-Key makes that safe, and the suite checks it stayed so.
 */

export interface LogicalJob {
  key: string;
  /** The exact body bytes; a retry sends the same ones. */
  body: string;
  n: number;
  /** Authorization header value, if the daemon needs one. */
  auth: string | undefined;
  /** The owner the daemon should record (the user's address, or `anonymous`). */
  owner: string;
  cancel: boolean;
  jobId?: string;
  /** 202 (created) or 200 (an Idempotency-Key replay after a cut-off submit). */
  submitStatus?: number;
  outcome?:
    | { status: 'completed'; imageSha256: string[]; feeHeader: string | null }
    | { status: 'failed'; errorCode: string; errorMessage: string };
}

export interface ClientStats {
  requests: number;
  /** Requests that failed at the network level (the daemon was killed under them) and were sent again. */
  networkRetries: number;
  /** Submits answered 200: the job already existed (its first submit was cut off). */
  idempotentReplays: number;
  cancelsAccepted: number;
  /** Receipt problems seen from the outside; one entry per problem. */
  receiptsWrong: string[];
  /** Answers that are not allowed for a well-formed request (5xx other than 503, unexpected 4xx). */
  unexpected: string[];
}

export interface ClientsOptions {
  /** The daemon's URL now, or undefined while it is down (between a kill and the restart). */
  url: () => string | undefined;
  /** The address the receipts must be signed by. */
  signer: string;
  pricePerImageWei: bigint;
  model: string;
  /** Seconds of each long poll. */
  waitSeconds?: number;
}

export function newLogicalJob(random: () => number, owner: string, auth: string | undefined, model: string, cancelShare: number): LogicalJob {
  const n = 1 + Math.floor(random() * 4);
  const key = `rel-${randomBytes(12).toString('hex')}`;
  const body = JSON.stringify({ model, prompt: `reliability ${key}`, size: '64x64', n });
  return { key, body, n, auth, owner, cancel: random() < cancelShare };
}

export class Clients {
  readonly stats: ClientStats = { requests: 0, networkRetries: 0, idempotentReplays: 0, cancelsAccepted: 0, receiptsWrong: [], unexpected: [] };

  constructor(private readonly options: ClientsOptions) {}

  /** One HTTP exchange against whichever daemon is up, retried across crashes until it gets an answer. */
  private async exchange(method: 'GET' | 'POST', path: string, headers: Record<string, string>, body?: string): Promise<Response> {
    for (;;) {
      const base = this.options.url();
      if (base === undefined) {
        await sleep(50);
        continue;
      }
      this.stats.requests += 1;
      try {
        const res = await fetch(`${base}${path}`, { method, headers, body });
        // Read the body now: a daemon killed mid-answer must count as a network failure, not half a JSON.
        const buffer = await res.arrayBuffer();
        return new Response(buffer, { status: res.status, headers: res.headers });
      } catch {
        this.stats.networkRetries += 1;
        await sleep(50);
      }
    }
  }

  /** Submits, maybe cancels, polls to the end and checks the receipt. Resolves with the job filled in. */
  async run(job: LogicalJob): Promise<LogicalJob> {
    const headers: Record<string, string> = { 'content-type': 'application/json', 'idempotency-key': job.key };
    if (job.auth) headers.authorization = job.auth;
    for (;;) {
      const res = await this.exchange('POST', '/v1/async/images/generations', headers, job.body);
      if (res.status === 202 || res.status === 200) {
        job.jobId = ((await res.json()) as { jobId: string }).jobId;
        job.submitStatus = res.status;
        if (res.status === 200) this.stats.idempotentReplays += 1;
        break;
      }
      const text = await res.text();
      // A daemon stopping, or a momentarily full queue, asks to come back; anything else is a finding.
      if (res.status === 503 || res.status === 429) {
        await sleep(100);
        continue;
      }
      this.stats.unexpected.push(`submit ${job.key}: ${res.status} ${text.slice(0, 200)}`);
      return job;
    }
    const auth: Record<string, string> = job.auth ? { authorization: job.auth } : {};
    if (job.cancel) {
      const res = await this.exchange('POST', `/v1/async/jobs/${job.jobId}/cancel`, auth);
      if (res.status === 200) this.stats.cancelsAccepted += 1;
      else if (res.status !== 409) this.stats.unexpected.push(`cancel ${job.jobId}: ${res.status} ${(await res.text()).slice(0, 200)}`);
    }
    for (;;) {
      const res = await this.exchange('GET', `/v1/async/jobs/${job.jobId}?wait=${this.options.waitSeconds ?? 20}`, auth);
      if (res.status !== 200) {
        const text = await res.text();
        if (res.status === 503) {
          await sleep(100);
          continue;
        }
        this.stats.unexpected.push(`poll ${job.jobId}: ${res.status} ${text.slice(0, 200)}`);
        return job;
      }
      const body = (await res.json()) as {
        status: string;
        errorCode?: string;
        errorMessage?: string;
        data?: { data: Array<{ b64_json: string }> };
      };
      if (body.status === 'completed') {
        const imageSha256 = (body.data?.data ?? []).map((d) => createHash('sha256').update(Buffer.from(d.b64_json, 'base64')).digest('hex'));
        job.outcome = { status: 'completed', imageSha256, feeHeader: res.headers.get('x-receipt-fee-wei') };
        await this.checkReceipt(job);
        return job;
      }
      if (body.status === 'failed') {
        job.outcome = { status: 'failed', errorCode: body.errorCode ?? '', errorMessage: body.errorMessage ?? '' };
        if (!body.errorCode || !body.errorMessage) this.stats.unexpected.push(`${job.jobId}: failed without a reason`);
        await this.checkNoSignature(job);
        return job;
      }
    }
  }

  /** The receipt served for the job must bill exactly the images this client received, signed by the TEE key. */
  private async checkReceipt(job: LogicalJob): Promise<void> {
    const outcome = job.outcome as Extract<LogicalJob['outcome'], { status: 'completed' }>;
    const wrong = (what: string): void => {
      this.stats.receiptsWrong.push(`${job.jobId}: ${what}`);
    };
    const res = await this.exchange('GET', `/v1/signature/${job.jobId}`, {});
    if (res.status !== 200) return wrong(`signature answered ${res.status}`);
    const sig = (await res.json()) as { text: string; signature: string; signing_address: string; receipt: ReceiptJson };
    const r = sig.receipt;
    const delivered = outcome.imageSha256.length;
    if (delivered === 0) wrong('completed with no image');
    if (r.images !== delivered) wrong(`receipt for ${r.images} images, ${delivered} received`);
    if (r.image_sha256.join() !== outcome.imageSha256.join()) wrong('receipt hashes other bytes than those received');
    if (BigInt(r.fee_wei) !== this.options.pricePerImageWei * BigInt(delivered)) wrong(`fee ${r.fee_wei} for ${delivered} images`);
    if (outcome.feeHeader !== r.fee_wei) wrong(`X-Receipt-Fee-Wei ${outcome.feeHeader} but the receipt says ${r.fee_wei}`);
    if (r.job !== job.jobId) wrong(`receipt names job ${r.job}`);
    if (r.user !== job.owner) wrong(`receipt bills ${r.user}, not ${job.owner}`);
    if (r.model !== this.options.model) wrong(`receipt names model ${r.model}`);
    if (r.text !== receiptText(receiptFieldsOf(r))) wrong('receipt text does not match its fields');
    if (recoverTextSigner(r.text, r.signature) !== this.options.signer) wrong('receipt not signed by the TEE key');
    if (recoverTextSigner(sig.text, sig.signature) !== this.options.signer) wrong('0G signature not by the TEE key');
    if (!sig.text.endsWith(outcome.imageSha256.join(','))) wrong('0G signed text names other images');
  }

  /** A job that failed delivered nothing and is signed for nothing. */
  private async checkNoSignature(job: LogicalJob): Promise<void> {
    const res = await this.exchange('GET', `/v1/signature/${job.jobId}`, {});
    if (res.status !== 404) this.stats.receiptsWrong.push(`${job.jobId}: failed, yet its signature answered ${res.status}`);
  }
}

/** Runs `jobs` through `clients` concurrent workers; resolves when every job has ended. */
export async function runWorkers(clients: Clients, jobs: LogicalJob[], workers: number): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: workers }, async () => {
      while (next < jobs.length) {
        const job = jobs[next]!;
        next += 1;
        await clients.run(job);
      }
    }),
  );
}
