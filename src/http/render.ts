import { readFile } from 'node:fs/promises';
import { PixeldError } from '../errors.js';
import type { BlobStore } from '../images/blob-store.js';
import { formatOf } from '../images/sniff.js';
import { isExpired, type Job, type JobResult } from '../jobs/model.js';

/**
 * The bodies this daemon answers with: the OpenAI ImagesResponse, and the two async job shapes that
 * routers poll (0G's and theRouter's). A job's response is rebuilt from its stored result on each read.
 */

export interface ImagesResponse {
  created: number;
  data: Array<{ b64_json: string } | { url: string }>;
  background: 'transparent' | 'opaque';
  output_format: 'png' | 'jpeg' | 'webp';
  size: string;
  quality: 'low' | 'medium' | 'high';
}

export function fileUrl(job: Job, result: JobResult, index: number): string {
  const image = result.images[index]!;
  return `${job.baseUrl}/v1/files/${job.id}/${result.fileToken}/${index}.${formatOf(image.mediaType)}`;
}

export async function renderImagesResponse(job: Job, blobs: BlobStore, nowMs: number): Promise<ImagesResponse> {
  const result = job.result;
  if (job.status !== 'completed' || result === undefined) throw new Error(`job ${job.id} has no result`);
  if (isExpired(job, nowMs)) throw expiredError(job);
  const data: ImagesResponse['data'] = [];
  for (const [index, image] of result.images.entries()) {
    if (job.params.responseFormat === 'url') {
      data.push({ url: fileUrl(job, result, index) });
      continue;
    }
    let bytes: Buffer;
    try {
      bytes = await readFile(blobs.pathOf(image.sha256));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw expiredError(job);
      throw err;
    }
    data.push({ b64_json: bytes.toString('base64') });
  }
  return {
    created: result.created,
    data,
    background: result.background,
    output_format: result.outputFormat,
    size: result.size,
    quality: result.quality,
  };
}

export function expiredError(job: Job): PixeldError {
  return new PixeldError('job_expired', `job ${job.id} has expired; its result was deleted`);
}

/** 0G's poll shape: four statuses; a cancelled job reads as failed with its reason. */
export function zeroGStatus(job: Job): 'pending' | 'processing' | 'completed' | 'failed' {
  return job.status === 'cancelled' ? 'failed' : job.status;
}

export function zeroGPollBody(job: Job, response: ImagesResponse | undefined, progress?: number): Record<string, unknown> {
  const body: Record<string, unknown> = {
    jobId: job.id,
    status: zeroGStatus(job),
    createdAt: new Date(job.createdMs).toISOString(),
    updatedAt: new Date(job.updatedMs).toISOString(),
  };
  if (job.status === 'processing' && progress !== undefined) body.progress = progress;
  if (job.status === 'failed' || job.status === 'cancelled') {
    body.errorMessage = job.error?.message ?? 'failed';
    body.errorCode = job.error?.code ?? 'internal_error';
  }
  if (response) body.data = response;
  if (job.result && job.result.images.length < job.params.n) {
    body.imagesRequested = job.params.n;
    body.imagesDelivered = job.result.images.length;
  }
  // What the backend could not honour (an ignored mask, a shared seed): the OpenAI body has no place for it.
  if (job.result && job.result.warnings.length > 0) body.warnings = job.result.warnings;
  return body;
}

export type TheRouterStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'expired';

export function theRouterStatus(job: Job, nowMs: number): TheRouterStatus {
  switch (job.status) {
    case 'pending':
      return 'queued';
    case 'processing':
      return 'running';
    case 'completed':
      return isExpired(job, nowMs) ? 'expired' : 'succeeded';
    case 'failed':
      return 'failed';
    case 'cancelled':
      return 'cancelled';
  }
}

export function theRouterJobBody(job: Job, nowMs: number, response: ImagesResponse | undefined, progress?: number): Record<string, unknown> {
  const body: Record<string, unknown> = {
    id: job.id,
    object: 'image.job',
    status: theRouterStatus(job, nowMs),
    model: job.model,
    created_at: Math.floor(job.createdMs / 1000),
    updated_at: Math.floor(job.updatedMs / 1000),
    poll_url: `${job.baseUrl}/v1/jobs/${job.id}`,
  };
  if (job.status === 'processing' && progress !== undefined) body.progress = progress;
  if (job.status === 'failed' || job.status === 'cancelled') {
    body.error = { code: job.error?.code ?? 'internal_error', message: job.error?.message ?? 'failed' };
  }
  if (response) body.result = response;
  if (job.result && job.result.warnings.length > 0) body.warnings = job.result.warnings;
  return body;
}
