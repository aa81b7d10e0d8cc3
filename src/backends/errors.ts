/**
 * How a backend call failed, in the terms the runner needs: may the same call be tried again, and what
 * should the caller read. Messages that come from the upstream are sanitised first: model servers echo
 * user input and internal paths.
 */

export type BackendFailureKind =
  /** Could not reach the backend, or it said it is temporarily unable (502/503/504, connection reset). */
  | 'unavailable'
  /** The backend refused this request (4xx): retrying the same request cannot help. */
  | 'rejected'
  /** The backend answered 2xx with something that is not a usable result. */
  | 'bad_response'
  /** The backend blocked the prompt or image on safety grounds: the user's error. */
  | 'moderation'
  /** The attempt deadline passed. */
  | 'timeout';

export interface BackendErrorOptions {
  status?: number;
  retryAfterMs?: number;
  details?: string[];
  cause?: unknown;
}

export class BackendError extends Error {
  override readonly name = 'BackendError';
  readonly kind: BackendFailureKind;
  readonly backendId: string;
  readonly status: number | undefined;
  readonly retryAfterMs: number | undefined;
  readonly details: string[];

  constructor(backendId: string, kind: BackendFailureKind, message: string, options: BackendErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.backendId = backendId;
    this.kind = kind;
    this.status = options.status;
    this.retryAfterMs = options.retryAfterMs;
    this.details = options.details ?? [];
  }

  /** Transient failures are retried by the runner; everything else fails the job at once. */
  get retryable(): boolean {
    return this.kind === 'unavailable';
  }
}

const MAX_UPSTREAM_MESSAGE_CHARS = 300;

/**
 * Makes an upstream error text safe to show a caller: one line, bounded, without long base64 runs or
 * absolute file paths that model servers like to include.
 */
export function sanitizeUpstreamMessage(text: string): string {
  let clean = text
    .replace(/[\r\n\t]+/g, ' ')
    .replace(/[A-Za-z0-9+/=]{120,}/g, '[data]')
    .replace(/(?:\/[\w.-]+){2,}/g, '[path]')
    .replace(/\s{2,}/g, ' ')
    .trim();
  if (clean.length > MAX_UPSTREAM_MESSAGE_CHARS) clean = `${clean.slice(0, MAX_UPSTREAM_MESSAGE_CHARS)}…`;
  return clean === '' ? 'no message' : clean;
}
