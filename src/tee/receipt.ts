import { getBytes, hashMessage, keccak256, recoverAddress, toUtf8Bytes } from 'ethers';
import type { TeeKeyProvider } from './key-provider.js';

/**
 * What the TEE key signs for every completed job (tee.md §3), built the same way here and in the
 * verifier: the 0G-compatible text, and the self-describing receipt v1 that also binds the job, model,
 * provider, user, count and fee. Both are EIP-191 personal_sign over their UTF-8 text.
 */

export type TeeLabel = 'tdx' | 'dstack' | 'INSECURE-DEV';

export interface ReceiptFields {
  tee: TeeLabel;
  provider: string;
  signer: string;
  job: string;
  model: string;
  user: string;
  requestSha256: string;
  imageSha256: string[];
  pricePerImageWei: bigint;
  feeWei: bigint;
  /** Unix seconds. */
  created: number;
}

/** The receipt as served in JSON: amounts as decimal strings (wei does not fit a JS number). */
export interface ReceiptJson {
  version: 1;
  tee: TeeLabel;
  provider: string;
  signer: string;
  job: string;
  model: string;
  user: string;
  request_sha256: string;
  images: number;
  image_sha256: string[];
  price_per_image_wei: string;
  fee_wei: string;
  created: number;
  text: string;
  signature: string;
}

export interface JobSignature {
  signingAddress: string;
  /** 0G's text: `sha256(request):sha256(img0),sha256(img1),…` (tagged INSECURE-DEV in dev mode). */
  text: string;
  signature: string;
  receipt: ReceiptJson;
}

const DEV_TAG = 'INSECURE-DEV';

export function zeroGText(tee: TeeLabel, requestSha256: string, imageSha256: string[]): string {
  const text = `${requestSha256}:${imageSha256.join(',')}`;
  return tee === DEV_TAG ? `${DEV_TAG}:${text}` : text;
}

export function receiptText(f: ReceiptFields): string {
  return [
    'image-receipt/1',
    `tee:${f.tee}`,
    `provider:${f.provider}`,
    `signer:${f.signer}`,
    `job:${f.job}`,
    `model:${f.model}`,
    `user:${f.user}`,
    `request_sha256:${f.requestSha256}`,
    `images:${f.imageSha256.length}`,
    `image_sha256:${f.imageSha256.join(',')}`,
    `price_per_image_wei:${f.pricePerImageWei.toString()}`,
    `fee_wei:${f.feeWei.toString()}`,
    `created:${f.created}`,
  ].join('\n');
}

/** The receipt's fields read back from its JSON form (for the verifier and for billing). */
export function receiptFieldsOf(r: ReceiptJson): ReceiptFields {
  return {
    tee: r.tee,
    provider: r.provider,
    signer: r.signer,
    job: r.job,
    model: r.model,
    user: r.user,
    requestSha256: r.request_sha256,
    imageSha256: r.image_sha256,
    pricePerImageWei: BigInt(r.price_per_image_wei),
    feeWei: BigInt(r.fee_wei),
    created: r.created,
  };
}

export async function signJob(key: TeeKeyProvider, fields: Omit<ReceiptFields, 'tee' | 'signer'>): Promise<JobSignature> {
  const full: ReceiptFields = { ...fields, tee: key.teeLabel, signer: key.address };
  const text = zeroGText(full.tee, full.requestSha256, full.imageSha256);
  const rText = receiptText(full);
  const [signature, receiptSignature] = await Promise.all([key.signer.signMessage(text), key.signer.signMessage(rText)]);
  return {
    signingAddress: key.address,
    text,
    signature,
    receipt: {
      version: 1,
      tee: full.tee,
      provider: full.provider,
      signer: full.signer,
      job: full.job,
      model: full.model,
      user: full.user,
      request_sha256: full.requestSha256,
      images: full.imageSha256.length,
      image_sha256: full.imageSha256,
      price_per_image_wei: full.pricePerImageWei.toString(),
      fee_wei: full.feeWei.toString(),
      created: full.created,
      text: rText,
      signature: receiptSignature,
    },
  };
}

/** The check 0G's SDK makes: the EIP-191 signer of `text`. */
export function recoverTextSigner(text: string, signature: string): string {
  return recoverAddress(hashMessage(text), signature);
}

/** 0G's legacy quote header: personal_sign over the 32 bytes keccak256(body). */
export async function signQuoteBody(key: TeeKeyProvider, body: string): Promise<string> {
  return key.signer.signMessage(getBytes(keccak256(toUtf8Bytes(body))));
}
