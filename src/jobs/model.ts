import { randomBytes } from 'node:crypto';
import type { ImageSize } from '../backends/types.js';
import type { ModelConfig } from '../config/schema.js';
import type { ErrorCode } from '../errors.js';
import type { InputImageInfo } from '../images/inspect-input.js';
import type { JobSignature } from '../tee/receipt.js';
import type { WebhookFormat } from '../webhooks/outbox.js';

/**
 * A job's life: pending → processing → completed | failed | cancelled. A processing job whose attempt
 * fails transiently goes back to pending with a later `runAfterMs`. "Expired" is not a state: it is a
 * finished job whose result files are gone (`resultsDeletedMs` set), and each API shape reports it its way.
 */
export type JobStatus = 'pending' | 'processing' | 'completed' | 'failed' | 'cancelled';
export const TERMINAL_STATUSES: readonly JobStatus[] = ['completed', 'failed', 'cancelled'];

export type JobKind = 'generation' | 'edit';
export type OutputFormat = 'png' | 'jpeg' | 'webp';
export type MediaType = 'image/png' | 'image/jpeg' | 'image/webp';

export interface JobParams {
  prompt: string;
  n: number;
  /** Resolved from `auto` at submit time. */
  size: ImageSize;
  quality: 'low' | 'medium' | 'high';
  responseFormat: 'b64_json' | 'url';
  outputFormat: OutputFormat;
  /** 0–100, used when an image has to be (re-)encoded as jpeg or webp. */
  outputCompression: number | undefined;
  background: 'transparent' | 'opaque' | 'auto';
  /** Seed of image 0; image i uses seed + i. Chosen at random when the caller sent none. */
  seed: number;
  negativePrompt: string | undefined;
  numInferenceSteps: number | undefined;
  guidanceScale: number | undefined;
  user: string | undefined;
}

/** JSON drops undefined keys; stores call this so a read-back job has every params key, as written. */
export function reviveParams(stored: JobParams): JobParams {
  return {
    ...stored,
    outputCompression: stored.outputCompression ?? undefined,
    negativePrompt: stored.negativePrompt ?? undefined,
    numInferenceSteps: stored.numInferenceSteps ?? undefined,
    guidanceScale: stored.guidanceScale ?? undefined,
    user: stored.user ?? undefined,
  };
}

export interface StoredImage {
  sha256: string;
  mediaType: MediaType;
  bytes: number;
  width: number;
  height: number;
}

export interface JobInput extends StoredImage {
  role: 'image' | 'mask';
}

export interface JobResult {
  /** Unix seconds, the `created` of the OpenAI response. */
  created: number;
  images: StoredImage[];
  size: string;
  quality: 'low' | 'medium' | 'high';
  outputFormat: OutputFormat;
  background: 'transparent' | 'opaque';
  /** Random token naming the result's files in `url` responses; unguessable and separate from the job id. */
  fileToken: string;
  warnings: string[];
}

export interface JobError {
  code: ErrorCode;
  message: string;
}

export interface Job {
  id: string;
  /** Who submitted it: a user address or an API key's owner id (`anonymous` without auth). */
  owner: string;
  kind: JobKind;
  /** `sync`: a caller waits on the open connection; nobody is left to receive it after a restart. */
  delivery: 'sync' | 'async';
  model: string;
  backendId: string;
  status: JobStatus;
  params: JobParams;
  inputs: JobInput[];
  /** sha256 of the raw request body exactly as received. */
  requestSha256: string;
  /** The model's price when the job was accepted; the fee is this × delivered images. */
  pricePerImageWei: bigint;
  /** sha256 over the request's meaning (fields and image hashes), for Idempotency-Key comparison. */
  fingerprint: string;
  idempotencyKey: string | undefined;
  /** Base URL the caller reached us on, for `url` results. */
  baseUrl: string;
  createdMs: number;
  updatedMs: number;
  /** Earliest time a runner may claim it (backoff after a transient failure). */
  runAfterMs: number;
  startedMs: number | undefined;
  finishedMs: number | undefined;
  /** Attempts started so far. */
  attempts: number;
  leaseToken: string | undefined;
  leaseExpiresMs: number | undefined;
  error: JobError | undefined;
  result: JobResult | undefined;
  /** The TEE key's signatures over request and images; kept after the result expires. */
  signature: JobSignature | undefined;
  /** When the result files are due for deletion (finished + TTL). */
  expiresMs: number | undefined;
  /** Set once the sweeper deleted the result files: the job has expired. */
  resultsDeletedMs: number | undefined;
  /** The replica that accepted the job (where a sync caller waits); undefined on jobs from before replicas. */
  submittedBy: string | undefined;
  /** The replica running the job, or that ran its last attempt; undefined until claimed. */
  ranBy: string | undefined;
  /** Where the job's end is announced (checked at submit), in which poll shape; undefined: nowhere. */
  webhook: JobWebhook | undefined;
}

export interface JobWebhook {
  url: string;
  format: WebhookFormat;
}

/** ≥ 128 random bits, hex only: 0G's SDK puts ids into URLs unencoded. */
export function newJobId(): string {
  return `job_${randomBytes(16).toString('hex')}`;
}

export function newToken(): string {
  return randomBytes(16).toString('hex');
}

export function isTerminal(status: JobStatus): boolean {
  return TERMINAL_STATUSES.includes(status);
}

export function isExpired(job: Job, nowMs: number): boolean {
  return job.resultsDeletedMs !== undefined || (job.expiresMs !== undefined && job.expiresMs <= nowMs);
}

export const JOB_ID_PATTERN = /^job_[0-9a-f]{32}$/;

/** An uploaded image that passed validation, still in the temp dir. */
export interface PreparedInput {
  tmpPath: string;
  sha256: string;
  bytes: number;
  info: InputImageInfo;
}

/** A validated image request, ready to become a job. */
export interface ImageJobRequest {
  kind: JobKind;
  model: ModelConfig;
  params: JobParams;
  images: PreparedInput[];
  mask: PreparedInput | undefined;
  requestSha256: string;
  /** The request's meaning, for comparing Idempotency-Key retries (multipart boundaries differ per retry). */
  fingerprint: string;
}
