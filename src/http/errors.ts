import type { IncomingMessage } from 'node:http';
import type { ErrorRequestHandler, RequestHandler, Response } from 'express';
import { PixeldError } from '../errors.js';
import { storageError } from '../images/blob-store.js';
import type { Logger } from '../obs/logger.js';

/**
 * Writes any error in the OpenAI shape, with the status, retry hints and headers its code calls for.
 * A refusal that comes before the body has all arrived (too large, unauthenticated, rate-limited, cut
 * off) closes the connection: kept open, Node would read and drop the rest of the body, however large.
 */
export function sendError(res: Response, err: PixeldError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  if (bodyStillArriving(res.req)) res.setHeader('Connection', 'close');
  for (const [name, value] of Object.entries(err.headers)) res.setHeader(name, value);
  res.setHeader('x-should-retry', err.retryable ? 'true' : 'false');
  if (err.retryAfterSeconds !== undefined) res.setHeader('Retry-After', String(err.retryAfterSeconds));
  res.status(err.status).json(err.toBody());
}

/** Whatever escaped a route: our own errors as they are, body-parser style errors as 4xx, the rest as 500. */
export function errorHandler(logger: Logger): ErrorRequestHandler {
  return (err: unknown, req, res, _next) => {
    sendError(res, toPixeldError(err, logger, req.requestId));
  };
}

export function toPixeldError(err: unknown, logger: Logger, requestId: string | undefined): PixeldError {
  if (err instanceof PixeldError) return err;
  // A full disk under any write (an upload, a job row) is the caller's 507, not a 500.
  const storage = storageError(err);
  if (storage instanceof PixeldError) return storage;
  const status = (err as { status?: unknown; statusCode?: unknown })?.status ?? (err as { statusCode?: unknown })?.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    if (status === 413) return new PixeldError('payload_too_large', 'the request body is too large');
    return new PixeldError('invalid_request', (err as Error).message || 'bad request');
  }
  logger.error('unhandled error', { requestId, error: (err as Error)?.stack ?? String(err) });
  return new PixeldError('internal_error', 'internal error; the operator can find details in the log under this request id', {
    cause: err,
  });
}

export const notFoundHandler: RequestHandler = (req, res) => {
  sendError(res, new PixeldError('not_found', `no route for ${req.method} ${req.path}`));
};

/** The request announced a body (a length or chunks) that has not fully arrived. */
function bodyStillArriving(req: IncomingMessage): boolean {
  if (req.complete) return false;
  return req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0;
}
