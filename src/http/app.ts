import { randomUUID } from 'node:crypto';
import express, { type Express } from 'express';
import helmet from 'helmet';
import type { ModelCatalog } from '../backends/catalog.js';
import type { Config } from '../config/schema.js';
import type { BlobStore } from '../images/blob-store.js';
import type { JobService } from '../jobs/service.js';
import type { Logger } from '../obs/logger.js';
import type { Readiness } from '../obs/readiness.js';
import type { AttestationService } from '../tee/attestation.js';
import { cors } from './cors.js';
import type { Base64Images } from './render.js';
import { errorHandler, notFoundHandler } from './errors.js';
import { authenticate, type Authenticators } from '../auth/authenticate.js';
import type { OwnerRateLimiter } from '../auth/rate-limiter.js';
import type { BillingAdmission } from '../billing/admission.js';
import type { BillingStore } from '../billing/store.js';
import type { ServingAccount } from '../chain/get-account.js';
import type { PriceGuard } from '../chain/price-guard.js';
import { adminRoutes, type AdminDeps } from './routes/admin.js';
import { attestationRoutes } from './routes/attestation.js';
import { billingRoutes } from './routes/billing.js';
import { dashboardRoutes } from './routes/dashboard.js';
import { imageRoutes } from './routes/images.js';
import { jobEventStreamRoutes } from './routes/job-event-stream.js';
import { jobRoutes } from './routes/jobs.js';
import { metricsRoutes } from './routes/metrics.js';
import type { DaemonMetrics } from '../obs/metrics.js';
import { serviceInfoRoutes } from './routes/service-info.js';
import { webhookRoutes } from './routes/webhooks.js';
import type { WebhookOutbox } from '../webhooks/outbox.js';
import type { Webhooks } from '../webhooks/webhooks.js';

declare module 'express-serve-static-core' {
  interface Request {
    /** Echoed as x-request-id on every response and written into every log line about this request. */
    requestId: string;
    /** Who is calling; every job records it and only its owner may read it. */
    owner: string;
    /** A 0G caller's on-chain account (as last read, within auth.chainCacheMs); undefined otherwise. */
    account?: ServingAccount | undefined;
  }
}

export interface AppDeps {
  config: Readonly<Config>;
  catalog: ModelCatalog;
  service: JobService;
  blobs: BlobStore;
  /** Base64 text of result images, cached for polls that read a finished job again. */
  base64Images: Base64Images;
  readiness: Readiness;
  attestation: AttestationService;
  auth: Authenticators;
  rateLimiter: OwnerRateLimiter;
  billing: BillingStore;
  admission: BillingAdmission;
  /** Refuses 0G-billed work for models priced above what the chain advertises; undefined without 0G auth. */
  priceGuard: PriceGuard | undefined;
  logger: Logger;
  now: () => number;
  startedAtSeconds: number;
  /** The admin token and what /v1/admin/* reads and drives. */
  admin: AdminDeps;
  /** The Prometheus registry `GET /metrics` serves, and the HTTP histogram each request is observed in. */
  metrics: DaemonMetrics;
  /** Submits' webhook URLs, checked; owners' signing secrets. */
  webhooks: Webhooks;
  /** The outbox, read by polls for the `webhook` field. */
  webhookOutbox: WebhookOutbox;
}

const REQUEST_ID = /^[\w.:-]{1,128}$/;
/** Routes polled by probes, scrapers and the open dashboard page (every 5 s), logged at debug. */
const PROBE_ROUTES = new Set(['/healthz', '/readyz', '/metrics', '/dashboard/api/state']);

export function createApp(deps: AppDeps): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', deps.config.server.trustProxy);
  app.set('etag', false);

  // winston formats a line (timestamp, JSON) before its transports drop it by level: only build a
  // request line when it will be written. Probes and scrapes come every few seconds: debug, not info.
  const logRequests = deps.config.log.requests && deps.logger.isInfoEnabled();
  const logProbes = deps.config.log.requests && deps.logger.isDebugEnabled();
  app.use((req, res, next) => {
    const incoming = req.headers['x-request-id'];
    // A UUIDv4 of our own, the form theRouter documents for the ids its users quote in support tickets.
    req.requestId = typeof incoming === 'string' && REQUEST_ID.test(incoming) ? incoming : randomUUID();
    res.setHeader('x-request-id', req.requestId);
    const started = Date.now();
    res.on('finish', () => {
      const ms = Date.now() - started;
      const route = routeLabel(req);
      deps.metrics.observeRequest(req.method, route, res.statusCode, ms);
      const probe = PROBE_ROUTES.has(route);
      if (probe ? logProbes : logRequests) deps.logger.log(probe ? 'debug' : 'info', 'request', requestLine(req, res, route, ms));
    });
    next();
  });

  // An API, not a site: helmet's defaults (no sniffing, no framing, a strict CSP for any HTML) fit; url
  // results are images other origins may embed, hence a cross-origin resource policy.
  app.use(helmet({ crossOriginResourcePolicy: { policy: 'cross-origin' } }));
  app.use(cors(deps.config.server.corsOrigins));
  // Open: the catalogue and health, attestation, and signatures (0G's SDK fetches those without
  // credentials; the unguessable job id is the capability), and url-result files (unguessable token).
  app.use(serviceInfoRoutes(deps));
  app.use(attestationRoutes(deps));
  // Everything below needs a caller.
  app.use(['/v1/images', '/v1/proxy/images', '/v1/async', '/v1/jobs', '/v1/user', '/v1/receipts', '/v1/webhooks'], authenticate(deps.auth));
  app.use(imageRoutes(deps));
  app.use(jobRoutes(deps));
  app.use(jobEventStreamRoutes(deps));
  app.use(webhookRoutes(deps));
  app.use(billingRoutes(deps));
  // The provider's own routes: the admin token, never a caller's credentials.
  app.use(adminRoutes(deps));
  app.use(metricsRoutes(deps));
  // The operator's pages: the admin token (or a session made from it), with a CSP of their own.
  app.use(dashboardRoutes(deps));
  app.use(notFoundHandler);
  app.use(errorHandler(deps.logger));
  return app;
}

/**
 * The matched route's pattern (`/v1/jobs/:id`), never the raw path: job ids and file tokens would make a
 * label value per request. Requests no route answered (refused by auth before routing, 404s) are `unmatched`.
 */
function routeLabel(req: express.Request): string {
  const route = (req as { route?: { path?: unknown } }).route;
  if (route === undefined || route.path === undefined) return 'unmatched';
  const path = Array.isArray(route.path) ? route.path.map(String).join('|') : String(route.path);
  return `${req.baseUrl}${path}`;
}

/**
 * One request's log fields. The path never carries its query string (a caller may put anything there) nor
 * a file token (the capability to fetch a url result): a `:token` segment of the route stays `:token`.
 */
function requestLine(req: express.Request, res: express.Response, route: string, ms: number): Record<string, unknown> {
  const length = res.getHeader('content-length');
  return {
    requestId: req.requestId,
    method: req.method,
    route,
    path: route.includes(':token') ? withoutToken(req.path, route) : req.path,
    status: res.statusCode,
    ms,
    bytes: length === undefined ? undefined : Number(length),
    owner: req.owner,
  };
}

function withoutToken(path: string, route: string): string {
  const pattern = route.split('/');
  return path
    .split('/')
    .map((segment, i) => (pattern[i] === ':token' ? ':token' : segment))
    .join('/');
}
