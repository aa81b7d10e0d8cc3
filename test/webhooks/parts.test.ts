import { Wallet } from 'ethers';
import { describe, expect, it } from 'vitest';
import { Webhook } from 'standardwebhooks';
import { configSchema } from '../../src/config/schema.js';
import { isAllowListEntry, webhookAddressPolicy } from '../../src/webhooks/allow-list.js';
import { retryDelayMs } from '../../src/webhooks/delivery-worker.js';
import { WebhookSecrets } from '../../src/webhooks/secrets.js';

/** The webhooks' parts on their own: the allow-list, the retry schedule, the secrets and signatures. */

describe('webhooks.allowPrivate', () => {
  it('accepts CIDRs, addresses and host names, and names a bad entry at start-up', () => {
    for (const ok of ['10.0.0.0/8', 'fd00::/8', '192.168.1.20', '::1', 'hooks.internal', 'Hooks.Example.COM']) expect(isAllowListEntry(ok)).toBe(true);
    for (const bad of ['10.0.0.0/33', '10.0.0/8', 'http://x', 'a b', '', '-bad.example']) expect(isAllowListEntry(bad)).toBe(false);
    const parsed = configSchema.safeParse({
      backends: [{ id: 'b', type: 'reference' }],
      models: [{ id: 'm', backend: 'b', capabilities: ['generation'], sizes: ['256x256'] }],
      webhooks: { allowPrivate: ['10.0.0.0/33'], ownerUrls: { router: 'http://hooks.example.com/x' } },
    });
    expect(parsed.success).toBe(false);
    const issues = parsed.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    expect(issues).toEqual([
      'webhooks.allowPrivate.0: must be a CIDR (10.0.0.0/8, fd00::/8), an IP address, or a host name',
      'webhooks.ownerUrls.router: must be an https URL',
    ]);
  });

  it('lets public addresses through, and private ones only when a listed network holds them or the host is listed', () => {
    const none = webhookAddressPolicy([]);
    expect(none.allows('hooks.example.com', '93.184.216.34')).toBe(true);
    expect(none.allows('hooks.example.com', '2606:2800:220:1:248:1893:25c8:1946')).toBe(true);
    for (const address of ['127.0.0.1', '10.1.2.3', '169.254.169.254', '::1', 'fd00::5', '::ffff:10.1.2.3', '100.64.0.1']) {
      expect(none.allows('hooks.example.com', address)).toBe(false);
    }
    const listed = webhookAddressPolicy(['10.20.0.0/16', 'fd00:1::/32', '192.168.1.20', 'Hooks.Internal']);
    expect(listed.allows('x', '10.20.3.4')).toBe(true);
    expect(listed.allows('x', '::ffff:10.20.3.4')).toBe(true);
    expect(listed.allows('x', '10.21.0.1')).toBe(false);
    expect(listed.allows('x', 'fd00:1:2::9')).toBe(true);
    expect(listed.allows('x', 'fd00:2::9')).toBe(false);
    expect(listed.allows('x', '192.168.1.20')).toBe(true);
    expect(listed.allows('x', '192.168.1.21')).toBe(false);
    expect(listed.allows('hooks.internal', '127.0.0.1')).toBe(true);
    expect(listed.allows('other.internal', '127.0.0.1')).toBe(false);
  });
});

describe('retryDelayMs', () => {
  const config = { firstRetryDelayMs: 5_000, maxRetryDelayMs: 3_600_000 };
  it('doubles from firstRetryDelayMs up to the cap, jittered between half and all of it', () => {
    expect([1, 2, 3, 4].map((n) => retryDelayMs(n, config, 0.999_999))).toEqual([5_000, 10_000, 20_000, 40_000]);
    expect([1, 2, 3, 4].map((n) => retryDelayMs(n, config, 0))).toEqual([2_500, 5_000, 10_000, 20_000]);
    expect(retryDelayMs(12, config, 0.5)).toBe(2_700_000);
    expect(retryDelayMs(200, config, 0)).toBe(1_800_000);
  });
});

describe('WebhookSecrets', () => {
  const key = new Wallet(`0x${'22'.repeat(32)}`);
  it('derives one whsec_ secret per owner from the TEE key: stable across instances, different per owner and per key', () => {
    const a = WebhookSecrets.fromTeeKey({ signer: key });
    const again = WebhookSecrets.fromTeeKey({ signer: new Wallet(key.privateKey) });
    const other = WebhookSecrets.fromTeeKey({ signer: new Wallet(`0x${'33'.repeat(32)}`) });
    expect(a.secretFor('router-x')).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    expect(again.secretFor('router-x')).toBe(a.secretFor('router-x'));
    expect(a.secretFor('router-y')).not.toBe(a.secretFor('router-x'));
    expect(other.secretFor('router-x')).not.toBe(a.secretFor('router-x'));
  });

  it('signs per Standard Webhooks: the library verifies it under the owner’s secret only', () => {
    const secrets = WebhookSecrets.fromTeeKey({ signer: key });
    const body = Buffer.from('{"jobId":"job_1","status":"completed"}');
    const now = Date.now();
    const headers = secrets.headersFor('router-x', 'msg_abc', now, body);
    expect(headers).toEqual({ 'webhook-id': 'msg_abc', 'webhook-timestamp': String(Math.floor(now / 1000)), 'webhook-signature': expect.stringMatching(/^v1,[A-Za-z0-9+/]{43}=$/) });
    expect(new Webhook(secrets.secretFor('router-x')).verify(body.toString(), headers)).toEqual({ jobId: 'job_1', status: 'completed' });
    expect(() => new Webhook(secrets.secretFor('router-y')).verify(body.toString(), headers)).toThrow();
    expect(() => new Webhook(secrets.secretFor('router-x')).verify(body.toString().replace('completed', 'failed'), headers)).toThrow();
  });
});
