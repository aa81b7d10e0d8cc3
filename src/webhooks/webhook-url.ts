import type { LookupAddress } from 'node:dns';
import { Agent, request } from 'undici';
import { answerOnly, hostOf, resolveHost, systemHostLookup, type FetchRemoteImageDeps } from '../images/fetch-remote-image.js';
import type { WebhookAddressPolicy } from './allow-list.js';

/**
 * Where a webhook may be sent, and sending it, with the remote images' SSRF guard (images/fetch-remote-image.ts):
 * https only, no credentials in the URL, the host resolved once and refused unless every address it has is
 * public or allow-listed (webhooks.allowPrivate), the connection made to the address that was checked, and a
 * redirect never followed (it reads as a failed attempt). Checked when a submit names the URL and again at
 * every attempt, since what a name resolves to can change.
 */

export interface WebhookNetDeps {
  lookup: FetchRemoteImageDeps['lookup'];
  policy: WebhookAddressPolicy;
  /** Certificates to trust instead of Node's bundled CAs (PEM); undefined trusts the bundled ones. */
  ca: string | undefined;
}

export const systemWebhookNet = (policy: WebhookAddressPolicy): WebhookNetDeps => ({ lookup: systemHostLookup, policy, ca: undefined });

/** Why a webhook URL may not be used: refused for good (`refused`), or its host did not resolve this time. */
export class WebhookUrlError extends Error {
  override readonly name = 'WebhookUrlError';
  constructor(
    message: string,
    readonly kind: 'refused' | 'unresolved',
  ) {
    super(message);
  }
}

export const MAX_WEBHOOK_URL_CHARS = 2048;

/** The URL, if its form is one a webhook may have (https, no credentials, not too long). */
export function parseWebhookUrl(text: string): URL {
  if (text.length > MAX_WEBHOOK_URL_CHARS) throw new WebhookUrlError(`webhook_url must be at most ${MAX_WEBHOOK_URL_CHARS} characters`, 'refused');
  if (!URL.canParse(text)) throw new WebhookUrlError('webhook_url must be an absolute https URL', 'refused');
  const url = new URL(text);
  if (url.protocol !== 'https:') throw new WebhookUrlError(`webhook_url must be an https URL (not ${url.protocol})`, 'refused');
  if (url.username !== '' || url.password !== '') throw new WebhookUrlError('webhook_url must not carry credentials', 'refused');
  return url;
}

/** Resolves the URL's host once and returns the address to connect to, if every address it has may be reached. */
export async function checkedWebhookAddress(deps: WebhookNetDeps, url: URL, deadline: AbortSignal): Promise<LookupAddress> {
  const host = hostOf(url);
  let addresses: LookupAddress[];
  try {
    addresses = await resolveHost(deps.lookup, url, deadline);
  } catch (err) {
    if (deadline.aborted) throw err;
    throw new WebhookUrlError(`webhook_url: its host ${host} does not resolve`, 'unresolved');
  }
  if (addresses.length === 0) throw new WebhookUrlError(`webhook_url: its host ${host} does not resolve`, 'unresolved');
  // Which private address a name has is not told: that would map the provider's network for the caller.
  if (addresses.some((a) => !deps.policy.allows(host, a.address))) {
    throw new WebhookUrlError(`webhook_url: ${host} is not a public internet address`, 'refused');
  }
  return addresses[0]!;
}

export interface WebhookPost {
  url: string;
  body: Buffer;
  headers: Record<string, string>;
  /** The whole attempt: lookup, connection, and the receiver's answer. */
  timeoutMs: number;
  /** Aborts the attempt (the daemon is stopping). */
  signal: AbortSignal;
}

/** POSTs the body once, to the checked address; resolves with the receiver's status (its body is discarded). */
export async function postWebhook(deps: WebhookNetDeps, post: WebhookPost): Promise<number> {
  const deadline = AbortSignal.any([AbortSignal.timeout(post.timeoutMs), post.signal]);
  const url = parseWebhookUrl(post.url);
  const address = await checkedWebhookAddress(deps, url, deadline);
  const agent = new Agent({ connect: { ca: deps.ca, lookup: answerOnly(url.hostname, address) } });
  try {
    const response = await request(url, {
      method: 'POST',
      dispatcher: agent,
      signal: deadline,
      headers: { 'content-type': 'application/json', 'user-agent': 'pixeld', ...post.headers },
      body: post.body,
    });
    await response.body.dump();
    return response.statusCode;
  } finally {
    await agent.destroy();
  }
}

/** Without the query, which may hold the receiver's token, for logs. */
export function printableUrl(text: string): string {
  if (!URL.canParse(text)) return '(not a URL)';
  const url = new URL(text);
  return `${url.origin}${url.pathname}`;
}
