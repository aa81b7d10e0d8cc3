import { Router, type RequestHandler } from 'express';
import { requireAdmin } from '../../auth/admin-token.js';
import type { AppDeps } from '../app.js';

/**
 * `GET /metrics`: the daemon's Prometheus metrics (text format), behind the admin token unless
 * `metrics.access` is `open`.
 */
export function metricsRoutes(deps: AppDeps): Router {
  const router = Router();
  const guard: RequestHandler[] = deps.config.metrics.access === 'admin' ? [requireAdmin(deps.admin.token)] : [];
  router.get('/metrics', ...guard, async (_req, res) => {
    const text = await deps.metrics.registry.metrics();
    res.setHeader('Cache-Control', 'no-store');
    res.type(deps.metrics.registry.contentType).send(text);
  });
  return router;
}
