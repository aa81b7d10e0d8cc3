import express, { Router, type Request, type RequestHandler, type Response } from 'express';
import sharp from 'sharp';
import { bearerTokenOf } from '../../auth/admin-token.js';
import { TokenBuckets } from '../../auth/token-buckets.js';
import { PixeldError } from '../../errors.js';
import { BlobNotFoundError } from '../../images/blob-store.js';
import { isExpired, JOB_ID_PATTERN } from '../../jobs/model.js';
import type { AppDeps } from '../app.js';
import { clientKeyOf } from '../client-address.js';
import { loadDashboardAssets } from '../dashboard/assets.js';
import { dashboardPage, loginPage } from '../dashboard/page.js';
import { clearSessionCookie, dashboardSessions, sessionCookieOf, setSessionCookie } from '../dashboard/session.js';
import { dashboardState } from '../dashboard/state.js';

/**
 * The operator's dashboard, behind the admin token: `GET /dashboard` (the page, or the login form),
 * `POST /dashboard/login` (the token → a session cookie), `POST /dashboard/logout`, `GET /dashboard/api/state`
 * (what the page polls), `GET /dashboard/thumbs/:id/:index` (a result image, small) and the page's own
 * script and stylesheet under `/dashboard/assets/`. A session cookie or `Authorization: Bearer <admin token>`
 * opens everything but the assets, which hold no data.
 */

/** Wrong tokens (login form or bearer header) one client may present a minute before it is refused for a while. */
export const WRONG_TOKENS_PER_MINUTE = 10;
/** Thumbnails fit in a square this many pixels wide. */
export const THUMBNAIL_PX = 96;

/**
 * Narrower than helmet's CSP for the API: nothing but the dashboard's own files and the JSON it polls, no
 * inline script or style, and no framing at all.
 */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join('; ');

export function dashboardRoutes(deps: AppDeps): Router {
  const router = Router();
  const assets = loadDashboardAssets();
  const sessions = dashboardSessions(deps.admin.token, deps.admin.dashboardSecret);
  const wrongTokens = new TokenBuckets(WRONG_TOKENS_PER_MINUTE, deps.now);
  const placeholder = sharp({ create: { width: THUMBNAIL_PX, height: THUMBNAIL_PX, channels: 3, background: '#d8dbe0' } }).webp().toBuffer();

  router.use('/dashboard', (_req, res, next) => {
    res.setHeader('Content-Security-Policy', DASHBOARD_CSP);
    res.setHeader('X-Frame-Options', 'DENY');
    res.setHeader('Referrer-Policy', 'no-referrer');
    next();
  });

  /** Seconds a client that presented too many wrong tokens lately must wait before its next one is checked. */
  const waitSeconds = (req: Request): number | undefined => {
    const client = clientKeyOf(req.ip);
    return wrongTokens.tokens(client) >= 1 ? undefined : wrongTokens.secondsUntil(client, 1);
  };
  const spendWrongToken = (req: Request) => {
    wrongTokens.take(clientKeyOf(req.ip), 1);
    deps.logger.warn('dashboard: wrong admin token', { requestId: req.requestId, client: clientKeyOf(req.ip) });
  };

  /** Whether the request is the operator's: a valid session cookie, or the admin token as a bearer header. */
  const isAdmin = (req: Request): boolean => {
    const bearer = bearerTokenOf(req);
    if (bearer !== undefined) {
      const retryAfterSeconds = waitSeconds(req);
      if (retryAfterSeconds !== undefined) {
        throw new PixeldError('rate_limit_exceeded', `too many wrong admin tokens from this address: try again in ${retryAfterSeconds} s`, {
          retryAfterSeconds,
        });
      }
      if (deps.admin.token.matches(bearer)) return true;
      spendWrongToken(req);
      return false;
    }
    const cookie = sessionCookieOf(req);
    return cookie !== undefined && sessions !== undefined && sessions.verify(cookie, deps.now());
  };

  const requireDashboardAdmin: RequestHandler = (req, _res, next) => {
    if (sessions === undefined) {
      next(new PixeldError('invalid_admin_token', 'the dashboard is closed: set admin.tokenSha256 or admin.tokenEnv to open it'));
      return;
    }
    if (isAdmin(req)) {
      next();
      return;
    }
    next(new PixeldError('invalid_admin_token', 'log in at /dashboard, or send Authorization: Bearer <admin token>'));
  };

  const sendHtml = (res: Response, status: number, html: string) => {
    res.status(status).setHeader('Cache-Control', 'no-store');
    res.type('html').send(html);
  };
  const closedMessage = 'The dashboard is closed: no admin token is configured. Set admin.tokenSha256 or admin.tokenEnv and restart.';

  router.get('/dashboard', (req, res) => {
    if (sessions === undefined) return sendHtml(res, 401, loginPage(assets, { error: closedMessage, closed: true }));
    if (isAdmin(req)) return sendHtml(res, 200, dashboardPage(assets));
    const wrongBearer = bearerTokenOf(req) !== undefined;
    sendHtml(res, wrongBearer ? 401 : 200, loginPage(assets, wrongBearer ? { error: 'Wrong admin token.' } : {}));
  });

  router.post('/dashboard/login', express.urlencoded({ extended: false, limit: '4kb', parameterLimit: 10 }), (req, res) => {
    if (sessions === undefined) return sendHtml(res, 401, loginPage(assets, { error: closedMessage, closed: true }));
    // Only the form logs in; anything else is no guess at the token, so it spends none of the client's.
    if (!req.is('application/x-www-form-urlencoded')) {
      throw new PixeldError('unsupported_media_type', 'log in with the form: Content-Type application/x-www-form-urlencoded, field token');
    }
    const retryAfterSeconds = waitSeconds(req);
    if (retryAfterSeconds !== undefined) {
      res.setHeader('Retry-After', String(retryAfterSeconds));
      return sendHtml(res, 429, loginPage(assets, { error: `Too many wrong tokens from this address: try again in ${retryAfterSeconds} s.` }));
    }
    const token = (req.body as Record<string, unknown> | undefined)?.token;
    if (typeof token !== 'string' || token === '' || !deps.admin.token.matches(token)) {
      spendWrongToken(req);
      return sendHtml(res, 401, loginPage(assets, { error: 'Wrong admin token.' }));
    }
    setSessionCookie(req, res, sessions.issue(deps.now()));
    deps.logger.info('dashboard: logged in', { requestId: req.requestId, client: clientKeyOf(req.ip) });
    res.redirect(303, '/dashboard');
  });

  router.post('/dashboard/logout', (req, res) => {
    clearSessionCookie(req, res);
    res.redirect(303, '/dashboard');
  });

  router.get('/dashboard/assets/:name', (req, res) => {
    const asset = assets.byName.get(String(req.params.name));
    if (!asset) throw new PixeldError('not_found', `no dashboard asset ${String(req.params.name)}`);
    res.setHeader('Cache-Control', 'public, max-age=31536000, immutable');
    res.type(asset.contentType).send(asset.body);
  });

  router.get('/dashboard/api/state', requireDashboardAdmin, async (_req, res) => {
    const state = await dashboardState(deps);
    res.setHeader('Cache-Control', 'no-store');
    res.json(state);
  });

  router.get('/dashboard/thumbs/:id/:index', requireDashboardAdmin, async (req, res) => {
    const id = String(req.params.id);
    const index = Number(req.params.index);
    const job = JOB_ID_PATTERN.test(id) ? await deps.admin.store.get(id) : undefined;
    if (!job) throw new PixeldError('job_not_found', `no job ${id}`);
    const image = job.status === 'completed' && Number.isInteger(index) ? job.result?.images[index] : undefined;
    if (!image) throw new PixeldError('not_found', `job ${id} has no result image ${String(req.params.index)}`);
    // A result the sweeper removed (or is about to) is a grey box: the page lists expired jobs too.
    const bytes = isExpired(job, deps.now()) ? undefined : await deps.blobs.read(image.sha256).catch(missingAsUndefined);
    const thumbnail = bytes
      ? await sharp(bytes).resize(THUMBNAIL_PX, THUMBNAIL_PX, { fit: 'inside' }).webp({ quality: 70 }).toBuffer()
      : await placeholder;
    res.setHeader('Cache-Control', bytes ? 'private, max-age=86400' : 'no-store');
    res.type('image/webp').send(thumbnail);
  });

  return router;
}

function missingAsUndefined(err: unknown): undefined {
  if (err instanceof BlobNotFoundError) return undefined;
  throw err;
}
