import { createHmac } from 'node:crypto';
import { Webhook } from 'standardwebhooks';
import { teeDerivedSecret } from '../tee/derived-secret.js';
import type { TeeKeyProvider } from '../tee/key-provider.js';

/**
 * Per-owner webhook secrets (Standard Webhooks' `whsec_<base64>`), derived rather than stored: each owner's
 * secret is an HMAC of the owner id under a secret derived from the TEE key (teeDerivedSecret). So every
 * replica holding the key derives the same secrets, a restart keeps them, nothing secret sits on disk, and
 * knowing one owner's secret says nothing of another's.
 */

const PROVIDER_KEY_TEXT = 'pixeld webhook signing key v1';

export class WebhookSecrets {
  private constructor(private readonly providerKey: Buffer) {}

  static fromTeeKey(tee: Pick<TeeKeyProvider, 'signer'>): WebhookSecrets {
    return new WebhookSecrets(teeDerivedSecret(tee, PROVIDER_KEY_TEXT));
  }

  /** The owner's secret, `whsec_` and 32 bytes in base64. */
  secretFor(owner: string): string {
    return `whsec_${createHmac('sha256', this.providerKey).update(`owner:${owner}`).digest('base64')}`;
  }

  /**
   * The Standard Webhooks headers for one attempt: the delivery's id (the same on every attempt), the attempt's
   * time, and `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under the owner's secret.
   */
  headersFor(owner: string, id: string, atMs: number, body: Buffer): Record<string, string> {
    return {
      'webhook-id': id,
      'webhook-timestamp': String(Math.floor(atMs / 1000)),
      'webhook-signature': new Webhook(this.secretFor(owner)).sign(id, new Date(atMs), body),
    };
  }
}
