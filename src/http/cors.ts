import type { RequestHandler } from 'express';

/** Headers a browser client needs to read from our responses. */
const EXPOSED = [
  'ZG-Res-Key',
  'X-Receipt-Signature',
  'X-Receipt-Signer',
  'X-Receipt-Fee-Wei',
  'X-Job-Id',
  'X-Request-Id',
  'Retry-After',
  'X-RateLimit-Limit',
  'X-RateLimit-Remaining',
  'X-RateLimit-Limit-Images',
  'X-RateLimit-Remaining-Images',
  'ZG-Quote-Signature',
].join(', ');

/**
 * CORS, closed by default: only origins listed in `server.corsOrigins` (or `*`) get CORS headers, so a
 * web page elsewhere cannot use a visitor's browser to call the daemon. Routers call server to server and
 * need none of this.
 */
export function cors(allowedOrigins: readonly string[]): RequestHandler {
  const any = allowedOrigins.includes('*');
  const allowed = new Set(allowedOrigins);
  return (req, res, next) => {
    const origin = req.headers.origin;
    if (origin === undefined || (!any && !allowed.has(origin))) {
      next();
      return;
    }
    res.setHeader('Access-Control-Allow-Origin', any ? '*' : origin);
    if (!any) res.append('Vary', 'Origin');
    res.setHeader('Access-Control-Expose-Headers', EXPOSED);
    if (req.method === 'OPTIONS' && req.headers['access-control-request-method'] !== undefined) {
      res.setHeader('Access-Control-Allow-Methods', 'GET, POST, OPTIONS');
      res.setHeader('Access-Control-Allow-Headers', 'Authorization, Content-Type, Idempotency-Key, Prefer, X-Request-Id');
      res.setHeader('Access-Control-Max-Age', '600');
      res.status(204).end();
      return;
    }
    next();
  };
}
