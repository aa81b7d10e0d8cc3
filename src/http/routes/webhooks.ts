import { Router } from 'express';
import type { AppDeps } from '../app.js';

/**
 * `GET /v1/webhooks/secret`: the caller's own webhook signing secret, to verify the deliveries of their jobs
 * (Standard Webhooks). Authenticated like every /v1 route; each owner only ever sees their own.
 */
export function webhookRoutes(deps: AppDeps): Router {
  const router = Router();
  router.get('/v1/webhooks/secret', (req, res) => {
    res.setHeader('Cache-Control', 'no-store');
    res.json({ object: 'webhook_secret', owner: req.owner, secret: deps.webhooks.secretFor(req.owner) });
  });
  return router;
}
