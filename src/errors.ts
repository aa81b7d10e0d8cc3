/**
 * Every failure a caller can see has a stable code. One table maps each code to its HTTP status, the
 * OpenAI error `type`, and whether retrying the same request could ever help (`x-should-retry`).
 * Codes are documented in docs/errors.md; a test checks the two agree.
 */

export type ErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'permission_error'
  | 'not_found_error'
  | 'conflict_error'
  | 'rate_limit_error'
  | 'server_error'
  | 'upstream_error'
  | 'image_generation_user_error'
  | 'insufficient_storage'
  | 'insufficient_credits';

interface CodeInfo {
  status: number;
  type: ErrorType;
  /** true when the very same request may succeed later (the OpenAI SDK then retries it). */
  retryable: boolean;
}

export const ERROR_CODES = {
  invalid_request: { status: 400, type: 'invalid_request_error', retryable: false },
  invalid_json: { status: 400, type: 'invalid_request_error', retryable: false },
  invalid_multipart: { status: 400, type: 'invalid_request_error', retryable: false },
  unsupported_media_type: { status: 415, type: 'invalid_request_error', retryable: false },
  payload_too_large: { status: 413, type: 'invalid_request_error', retryable: false },
  invalid_image: { status: 400, type: 'invalid_request_error', retryable: false },
  image_too_large: { status: 400, type: 'invalid_request_error', retryable: false },
  image_url_forbidden: { status: 400, type: 'invalid_request_error', retryable: false },
  image_fetch_failed: { status: 400, type: 'invalid_request_error', retryable: false },
  invalid_mask: { status: 400, type: 'invalid_request_error', retryable: false },
  mask_size_mismatch: { status: 400, type: 'invalid_request_error', retryable: false },
  too_many_images: { status: 400, type: 'invalid_request_error', retryable: false },
  invalid_size: { status: 400, type: 'invalid_request_error', retryable: false },
  invalid_n: { status: 400, type: 'invalid_request_error', retryable: false },
  prompt_too_long: { status: 400, type: 'invalid_request_error', retryable: false },
  unsupported_parameter: { status: 400, type: 'invalid_request_error', retryable: false },
  model_not_found: { status: 404, type: 'invalid_request_error', retryable: false },
  model_capability_mismatch: { status: 400, type: 'invalid_request_error', retryable: false },
  moderation_blocked: { status: 400, type: 'image_generation_user_error', retryable: false },
  not_found: { status: 404, type: 'not_found_error', retryable: false },
  job_not_found: { status: 404, type: 'not_found_error', retryable: false },
  job_expired: { status: 404, type: 'not_found_error', retryable: false },
  job_not_cancellable: { status: 409, type: 'conflict_error', retryable: false },
  idempotency_key_reused: { status: 409, type: 'conflict_error', retryable: false },
  invalid_api_key: { status: 401, type: 'authentication_error', retryable: false },
  invalid_admin_token: { status: 401, type: 'authentication_error', retryable: false },
  forbidden: { status: 403, type: 'permission_error', retryable: false },
  insufficient_credits: { status: 402, type: 'insufficient_credits', retryable: false },
  chain_unavailable: { status: 503, type: 'server_error', retryable: true },
  database_unavailable: { status: 503, type: 'server_error', retryable: true },
  model_price_mismatch: { status: 503, type: 'server_error', retryable: false },
  model_busy: { status: 429, type: 'rate_limit_error', retryable: true },
  queue_full: { status: 429, type: 'rate_limit_error', retryable: true },
  rate_limit_exceeded: { status: 429, type: 'rate_limit_error', retryable: true },
  no_tee: { status: 501, type: 'server_error', retryable: false },
  settlement_off: { status: 501, type: 'server_error', retryable: false },
  attestation_failed: { status: 503, type: 'server_error', retryable: true },
  upstream_error: { status: 502, type: 'upstream_error', retryable: false },
  upstream_timeout: { status: 504, type: 'upstream_error', retryable: false },
  job_cancelled: { status: 409, type: 'conflict_error', retryable: false },
  shutting_down: { status: 503, type: 'server_error', retryable: true },
  insufficient_storage: { status: 507, type: 'insufficient_storage', retryable: true },
  internal_error: { status: 500, type: 'server_error', retryable: false },
} as const satisfies Record<string, CodeInfo>;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface PixeldErrorOptions {
  param?: string | null;
  /** Readable lines for logs and the CLI (`Status: 502`, `URL: …`); never sent to clients. */
  details?: string[];
  cause?: unknown;
  /** Seconds the caller should wait before retrying (429, 503). */
  retryAfterSeconds?: number;
  /** Extra headers for the HTTP response (rate-limit counters and the like). */
  headers?: Record<string, string>;
}

export class PixeldError extends Error {
  override readonly name: string = 'PixeldError';
  readonly code: ErrorCode;
  readonly param: string | null;
  readonly details: string[];
  readonly retryAfterSeconds: number | undefined;
  readonly headers: Record<string, string>;

  constructor(code: ErrorCode, message: string, options: PixeldErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.code = code;
    this.param = options.param ?? null;
    this.details = options.details ?? [];
    this.retryAfterSeconds = options.retryAfterSeconds;
    this.headers = options.headers ?? {};
  }

  get status(): number {
    return ERROR_CODES[this.code].status;
  }

  get type(): ErrorType {
    return ERROR_CODES[this.code].type;
  }

  get retryable(): boolean {
    return ERROR_CODES[this.code].retryable;
  }

  /** The OpenAI error body: all four keys always present. */
  toBody(): { error: { message: string; type: ErrorType; param: string | null; code: ErrorCode } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export function invalid(message: string, param: string | null = null, code: ErrorCode = 'invalid_request'): PixeldError {
  return new PixeldError(code, message, { param });
}

/** Walks an error's cause chain; used to find the first error of a given kind. */
export function* walkCauses(err: unknown): Generator<unknown> {
  let current: unknown = err;
  const seen = new Set<unknown>();
  while (current !== undefined && current !== null && !seen.has(current)) {
    seen.add(current);
    yield current;
    current = current instanceof Error ? current.cause : undefined;
  }
}
