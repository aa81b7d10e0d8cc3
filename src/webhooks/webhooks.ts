import type { Config } from '../config/schema.js';
import { PixeldError } from '../errors.js';
import type { JobWebhook } from '../jobs/model.js';
import type { WebhookFormat } from './outbox.js';
import type { WebhookSecrets } from './secrets.js';
import { checkedWebhookAddress, parseWebhookUrl, WebhookUrlError, type WebhookNetDeps } from './webhook-url.js';

/** What the HTTP layer needs of webhooks: the URL a submit's job announces its end to, and owners' secrets. */
export class Webhooks {
  constructor(
    private readonly deps: { secrets: WebhookSecrets; net: WebhookNetDeps; config: Config['webhooks'] },
  ) {}

  /**
   * The job's webhook: the submit's `webhook_url`, checked now (400 naming the field when refused, so a
   * caller learns at once, not a day of retries later), else the URL configured for the owner. The body
   * takes the shape of the poll the submit points to.
   */
  async forSubmit(owner: string, webhookUrl: string | undefined, format: WebhookFormat): Promise<JobWebhook | undefined> {
    if (webhookUrl === undefined) {
      const configured = this.deps.config.ownerUrls[owner];
      return configured === undefined ? undefined : { url: configured, format };
    }
    try {
      const url = parseWebhookUrl(webhookUrl);
      await checkedWebhookAddress(this.deps.net, url, AbortSignal.timeout(this.deps.config.attemptTimeoutMs));
      return { url: url.href, format };
    } catch (err) {
      if (err instanceof WebhookUrlError) throw new PixeldError('invalid_request', err.message, { param: 'webhook_url' });
      if ((err as { name?: unknown }).name === 'TimeoutError') {
        throw new PixeldError('invalid_request', `webhook_url: its host was not resolved within ${this.deps.config.attemptTimeoutMs} ms`, {
          param: 'webhook_url',
        });
      }
      throw err;
    }
  }

  /** The owner's signing secret (`whsec_…`): only ever served to the owner's own credentials. */
  secretFor(owner: string): string {
    return this.deps.secrets.secretFor(owner);
  }
}
