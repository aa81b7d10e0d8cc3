import { newJobId } from '../src/jobs/model.js';
import type { JobStore } from '../src/jobs/store.js';
import type { TeeKeyProvider } from '../src/tee/key-provider.js';
import { signJob } from '../src/tee/receipt.js';

export interface CompletedJobParams {
  store: JobStore;
  tee: Pick<TeeKeyProvider, 'signer' | 'address' | 'teeLabel'>;
  provider: string;
  user: string;
  pricePerImageWei: bigint;
  /** Makes the request and image hashes distinct. */
  index: number;
  /** Called around the completion alone (the transaction that writes job, receipt and sequence number). */
  onComplete?: (complete: () => Promise<boolean>) => Promise<boolean>;
}

/**
 * A one-image job for `user` taken through the store as the runner does — created, claimed, completed with
 * its receipt signed inside the completion — without a backend: what the billing benchmarks need many of.
 */
export async function completedJob(p: CompletedJobParams): Promise<string> {
  const id = newJobId();
  await p.store.create(
    {
      id,
      owner: p.user,
      kind: 'generation',
      delivery: 'async',
      model: 'm',
      backendId: 'b',
      params: { prompt: 'p', n: 1, size: '64x64', quality: 'high', responseFormat: 'b64_json', outputFormat: 'png', outputCompression: undefined, background: 'auto', seed: p.index, negativePrompt: undefined, numInferenceSteps: undefined, guidanceScale: undefined, user: undefined },
      inputs: [],
      requestSha256: p.index.toString(16).padStart(64, '0'),
      pricePerImageWei: p.pricePerImageWei,
      fingerprint: '0'.repeat(64),
      idempotencyKey: undefined,
      baseUrl: 'http://bench',
      createdMs: Date.now(),
    },
    0,
  );
  const claimed = (await p.store.claimNext('b', 'bench', Date.now(), 60_000))!;
  const imageSha = (p.index + 1).toString(16).padStart(64, '0');
  const created = Math.floor(Date.now() / 1000);
  const result = { created, images: [{ sha256: imageSha, mediaType: 'image/png' as const, bytes: 1, width: 64, height: 64 }], size: '64x64', quality: 'high' as const, outputFormat: 'png' as const, background: 'opaque' as const, fileToken: '0'.repeat(32), warnings: [] };
  const sign = (seq: bigint) =>
    signJob(p.tee, { seq, provider: p.provider, job: id, model: 'm', user: p.user, requestSha256: claimed.requestSha256, imageSha256: [imageSha], pricePerImageWei: p.pricePerImageWei, feeWei: p.pricePerImageWei, created });
  const complete = () => p.store.complete(id, claimed.leaseToken, result, { seqFloor: 0n, sign }, Date.now(), Date.now() + 3_600_000);
  await (p.onComplete ? p.onComplete(complete) : complete());
  return id;
}
