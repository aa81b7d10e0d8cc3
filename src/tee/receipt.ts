import { getBytes, hashMessage, keccak256, recoverAddress, toUtf8Bytes } from 'ethers';
import type { TeeKeyProvider } from './key-provider.js';

/**
 * What the TEE key signs for every completed job (tee.md §3), built the same way here and in the
 * verifier: the 0G-compatible text, and the self-describing receipt that also binds the job, model,
 * provider, user, count, fee and — since v2 — the receipt's place in the user's sequence. Both are
 * EIP-191 personal_sign over their UTF-8 text.
 *
 * The sequence number is what makes a receipt impossible to charge twice without trusting the disk: a
 * settlement's nonce is the highest sequence it covers, and the contract refuses any nonce at or below
 * the account's, so a receipt at or below the on-chain nonce can never be paid again (billing.md).
 * v1 receipts (no sequence) are still verified but never settled.
 */

export type TeeLabel = 'tdx' | 'dstack' | 'INSECURE-DEV';

export interface ReceiptFields {
  tee: TeeLabel;
  provider: string;
  signer: string;
  job: string;
  model: string;
  user: string;
  /** The receipt's place among the user's receipts, strictly increasing; undefined only in v1 receipts. */
  seq: bigint | undefined;
  requestSha256: string;
  imageSha256: string[];
  pricePerImageWei: bigint;
  feeWei: bigint;
  /** Unix seconds. */
  created: number;
}

/** The receipt as served in JSON: amounts as decimal strings (wei does not fit a JS number). */
export interface ReceiptJson {
  version: 1 | 2;
  tee: TeeLabel;
  provider: string;
  signer: string;
  job: string;
  model: string;
  user: string;
  /** Decimal; absent in v1. */
  seq?: string;
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
    f.seq === undefined ? 'image-receipt/1' : 'image-receipt/2',
    `tee:${f.tee}`,
    `provider:${f.provider}`,
    `signer:${f.signer}`,
    `job:${f.job}`,
    `model:${f.model}`,
    `user:${f.user}`,
    ...(f.seq === undefined ? [] : [`seq:${f.seq.toString()}`]),
    `request_sha256:${f.requestSha256}`,
    `images:${f.imageSha256.length}`,
    `image_sha256:${f.imageSha256.join(',')}`,
    `price_per_image_wei:${f.pricePerImageWei.toString()}`,
    `fee_wei:${f.feeWei.toString()}`,
    `created:${f.created}`,
  ].join('\n');
}

/** The receipt's fields read back from its JSON form (for the verifier). */
export function receiptFieldsOf(r: ReceiptJson): ReceiptFields {
  return {
    tee: r.tee,
    provider: r.provider,
    signer: r.signer,
    job: r.job,
    model: r.model,
    user: r.user,
    seq: r.seq === undefined ? undefined : BigInt(r.seq),
    requestSha256: r.request_sha256,
    imageSha256: r.image_sha256,
    pricePerImageWei: BigInt(r.price_per_image_wei),
    feeWei: BigInt(r.fee_wei),
    created: r.created,
  };
}

const TEXT_LABELS = ['tee', 'provider', 'signer', 'job', 'model', 'user', 'seq', 'request_sha256', 'images', 'image_sha256', 'price_per_image_wei', 'fee_wei', 'created'] as const;
const DECIMAL = /^(0|[1-9][0-9]*)$/;

/**
 * The fields of a signed receipt text, read from the text alone (what billing trusts: the JSON beside it
 * and the database columns may have been edited). Undefined unless the text is exactly what receiptText
 * would write for those fields.
 */
export function parseReceiptText(text: string): ReceiptFields | undefined {
  const [head, ...lines] = text.split('\n');
  const version = head === 'image-receipt/1' ? 1 : head === 'image-receipt/2' ? 2 : undefined;
  if (version === undefined) return undefined;
  const labels = TEXT_LABELS.filter((l) => version === 2 || l !== 'seq');
  if (lines.length !== labels.length) return undefined;
  const values = new Map<string, string>();
  for (const [i, line] of lines.entries()) {
    const colon = line.indexOf(':');
    if (colon < 0 || line.slice(0, colon) !== labels[i]) return undefined;
    values.set(labels[i]!, line.slice(colon + 1));
  }
  const get = (label: string) => values.get(label)!;
  const numbers = ['images', 'price_per_image_wei', 'fee_wei', 'created', ...(version === 2 ? ['seq'] : [])];
  if (!numbers.every((l) => DECIMAL.test(get(l)))) return undefined;
  const tee = get('tee');
  if (tee !== 'tdx' && tee !== 'dstack' && tee !== DEV_TAG) return undefined;
  const fields: ReceiptFields = {
    tee,
    provider: get('provider'),
    signer: get('signer'),
    job: get('job'),
    model: get('model'),
    user: get('user'),
    seq: version === 2 ? BigInt(get('seq')) : undefined,
    requestSha256: get('request_sha256'),
    imageSha256: get('image_sha256') === '' ? [] : get('image_sha256').split(','),
    pricePerImageWei: BigInt(get('price_per_image_wei')),
    feeWei: BigInt(get('fee_wei')),
    created: Number(get('created')),
  };
  return receiptText(fields) === text ? fields : undefined;
}

/**
 * Signs a completed job: synchronous, because the receipt's sequence number is taken inside the job
 * store's completion transaction and the signature must be made before that transaction commits.
 */
export function signJob(key: Pick<TeeKeyProvider, 'signer' | 'address' | 'teeLabel'>, fields: Omit<ReceiptFields, 'tee' | 'signer' | 'seq'> & { seq: bigint }): JobSignature {
  const full: ReceiptFields = { ...fields, tee: key.teeLabel, signer: key.address };
  const text = zeroGText(full.tee, full.requestSha256, full.imageSha256);
  const rText = receiptText(full);
  return {
    signingAddress: key.address,
    text,
    signature: key.signer.signMessageSync(text),
    receipt: {
      version: 2,
      tee: full.tee,
      provider: full.provider,
      signer: full.signer,
      job: full.job,
      model: full.model,
      user: full.user,
      seq: fields.seq.toString(),
      request_sha256: full.requestSha256,
      images: full.imageSha256.length,
      image_sha256: full.imageSha256,
      price_per_image_wei: full.pricePerImageWei.toString(),
      fee_wei: full.feeWei.toString(),
      created: full.created,
      text: rText,
      signature: key.signer.signMessageSync(rText),
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
