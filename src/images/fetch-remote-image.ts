import { lookup as systemLookup } from 'node:dns/promises';
import type { LookupAddress } from 'node:dns';
import { isIP, type LookupFunction } from 'node:net';
import ipaddr from 'ipaddr.js';
import { Agent, request } from 'undici';
import { PixeldError } from '../errors.js';

/**
 * Downloads a JSON edit's https `image_url` without letting a caller reach what only the daemon can reach
 * (SSRF): the GPU host's loopback services, the cloud metadata endpoint, the provider's private network.
 *
 * Each hop resolves its host once and refuses it unless every address it resolves to is public; the
 * connection then goes to the address that was checked, through a lookup that can only answer that address,
 * so a DNS server that answers differently the second time (rebinding) is never asked again. Redirects are
 * not followed by undici: each one is a new hop, resolved and checked again. TLS still verifies the
 * certificate against the host name.
 */

export interface FetchRemoteImageDeps {
  /** Every address of a host name, as `dns.promises.lookup(host, { all: true })` answers. Asked once per hop. */
  lookup: (hostname: string, options: { all: true }) => Promise<LookupAddress[]>;
  /** Whether an address may be connected to. */
  isAllowedAddress: (address: string) => boolean;
  /** Certificates to trust instead of Node's bundled CAs (PEM); undefined trusts the bundled ones. */
  ca: string | undefined;
}

/**
 * getaddrinfo runs on libuv's thread pool (4 threads), which file and crypto work share. A caller's host name
 * whose DNS never answers holds a thread until the system resolver gives up (seconds), long after our deadline
 * stopped waiting: unbounded, a burst of such names would stall every blob read and write. At most this many
 * caller-named lookups run at once; the others wait their turn.
 */
export const MAX_CONCURRENT_LOOKUPS = 2;

/** `lookup`, with at most `max` calls in flight; further calls start, in order, as earlier ones settle. */
export function boundedLookup(lookup: FetchRemoteImageDeps['lookup'], max: number): FetchRemoteImageDeps['lookup'] {
  let running = 0;
  const waiting: Array<() => void> = [];
  return async (hostname, options) => {
    // A settling call hands its slot straight to the next waiter, so no newcomer can slip in between.
    if (running >= max) await new Promise<void>((resolve) => waiting.push(resolve));
    else running += 1;
    try {
      return await lookup(hostname, options);
    } finally {
      const next = waiting.shift();
      if (next) next();
      else running -= 1;
    }
  };
}

/** The system resolver (bounded), shared by remote images and webhook deliveries: one budget of threads. */
export const systemHostLookup = boundedLookup(systemLookup, MAX_CONCURRENT_LOOKUPS);

/** The system resolver, public addresses only, Node's CAs: what the daemon runs with. */
export const SYSTEM_REMOTE_IMAGE_DEPS: FetchRemoteImageDeps = { lookup: systemHostLookup, isAllowedAddress: isPublicAddress, ca: undefined };

export interface FetchRemoteImageParameters {
  url: string;
  /** The request field the URL came from (`images[0]`, `mask`), for messages. */
  param: string;
  /** A larger body is refused, from its Content-Length or as soon as it passes this. */
  maxBytes: number;
  /** The whole download, every lookup and redirect included. */
  timeoutMs: number;
  maxRedirects: number;
  /** The caller went away: nobody will use the image, so the download stops (and its connection closes). */
  signal?: AbortSignal;
}

/** Only what is reachable on the public internet: IPv4 outside every special-purpose range, IPv6 global unicast. */
export function isPublicAddress(address: string): boolean {
  if (isIP(address) === 0) return false;
  const ip = ipaddr.parse(address);
  if (ip.kind() === 'ipv4') return ip.range() === 'unicast';
  // ipaddr.js calls everything outside its special ranges unicast, including the deprecated IPv4-compatible
  // ::a.b.c.d; the public internet is 2000::/3 only. IPv4-mapped ::ffff:a.b.c.d has its own range and is refused.
  return ip.range() === 'unicast' && ip.match(GLOBAL_UNICAST_IPV6);
}

const GLOBAL_UNICAST_IPV6 = ipaddr.IPv6.parseCIDR('2000::/3');
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);

export async function fetchRemoteImage(deps: FetchRemoteImageDeps, params: FetchRemoteImageParameters): Promise<Buffer> {
  const { param } = params;
  const deadline = AbortSignal.timeout(params.timeoutMs);
  const stop = params.signal === undefined ? deadline : AbortSignal.any([deadline, params.signal]);
  let url = httpsUrl(params.url, param);
  try {
    for (let redirects = 0; ; redirects++) {
      const address = await checkedAddress(deps, url, param, stop);
      const agent = new Agent({ connect: { ca: deps.ca, lookup: answerOnly(url.hostname, address) } });
      try {
        const response = await request(url, {
          dispatcher: agent,
          signal: stop,
          headers: { accept: 'image/png, image/jpeg, image/webp', 'user-agent': 'pixeld' },
        });
        if (REDIRECT_STATUSES.has(response.statusCode)) {
          await response.body.dump();
          const location = response.headers.location;
          if (typeof location !== 'string' || !URL.canParse(location, url)) {
            throw fetchFailed(param, url, `the server answered ${response.statusCode} without a usable Location`);
          }
          if (redirects === params.maxRedirects) throw fetchFailed(param, url, `more than ${params.maxRedirects} redirects`);
          url = httpsUrl(new URL(location, url).href, param);
          continue;
        }
        if (response.statusCode !== 200) {
          await response.body.dump();
          throw fetchFailed(param, url, `the server answered HTTP ${response.statusCode}`);
        }
        const declaredBytes = Number(response.headers['content-length']);
        if (declaredBytes > params.maxBytes) throw tooLarge(params);
        const chunks: Buffer[] = [];
        let receivedBytes = 0;
        for await (const chunk of response.body as AsyncIterable<Buffer>) {
          receivedBytes += chunk.length;
          if (receivedBytes > params.maxBytes) throw tooLarge(params);
          chunks.push(chunk);
        }
        return Buffer.concat(chunks, receivedBytes);
      } finally {
        // destroy, not close: a body cut short must not keep its connection (or the download) going.
        await agent.destroy();
      }
    }
  } catch (err) {
    if (err instanceof PixeldError) throw err;
    if (params.signal?.aborted) {
      throw new PixeldError('image_fetch_failed', `${param}.image_url: the download stopped, the request was closed`, { param, cause: err });
    }
    if (deadline.aborted) {
      throw new PixeldError('image_fetch_failed', `${param}.image_url was not downloaded within ${params.timeoutMs} ms`, {
        param,
        details: [`URL: ${printable(url)}`],
        cause: err,
      });
    }
    const code = (err as { code?: unknown }).code;
    throw fetchFailed(param, url, typeof code === 'string' ? `the connection failed (${code})` : 'the connection failed', err);
  }
}

function httpsUrl(text: string, param: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new PixeldError('invalid_image', `${param}.image_url must be an https URL or a base64 data: URL`, { param });
  }
  if (url.protocol !== 'https:') {
    throw new PixeldError('image_url_forbidden', `${param}.image_url must be an https URL or a base64 data: URL (not ${url.protocol})`, { param });
  }
  if (url.username !== '' || url.password !== '') {
    throw new PixeldError('image_url_forbidden', `${param}.image_url must not carry credentials`, { param });
  }
  return url;
}

/** A URL's host without IPv6 brackets, as it is looked up and allow-listed. */
export function hostOf(url: URL): string {
  return url.hostname.replace(/^\[(.*)\]$/, '$1');
}

/**
 * Every address of the URL's host, resolved once (an IP literal is its own address); a failed lookup throws
 * its error, an aborted one the deadline's reason. Shared with webhook deliveries (webhooks/webhook-url.ts),
 * which check the addresses against their own allow-list and connect through `answerOnly` the same way.
 */
export async function resolveHost(lookup: FetchRemoteImageDeps['lookup'], url: URL, deadline: AbortSignal): Promise<LookupAddress[]> {
  const host = hostOf(url);
  const family = isIP(host);
  if (family !== 0) return [{ address: host, family }];
  return untilAborted(lookup(host, { all: true }), deadline);
}

/** Resolves the URL's host once and returns the address to connect to, if every address it has is allowed. */
async function checkedAddress(deps: FetchRemoteImageDeps, url: URL, param: string, deadline: AbortSignal): Promise<LookupAddress> {
  const host = hostOf(url);
  let addresses: LookupAddress[];
  try {
    addresses = await resolveHost(deps.lookup, url, deadline);
  } catch (err) {
    if (deadline.aborted) throw err;
    throw fetchFailed(param, url, `its host ${host} does not resolve`, err);
  }
  const refused = addresses.filter((a) => !deps.isAllowedAddress(a.address));
  if (refused.length > 0 || addresses.length === 0) {
    // The addresses stay in the log: telling the caller which private address a name has would map the network for it.
    throw new PixeldError('image_url_forbidden', `${param}.image_url: ${host} is not a public internet address`, {
      param,
      details: [`URL: ${printable(url)}`, `Refused addresses: ${refused.map((a) => a.address).join(', ') || 'none resolved'}`],
    });
  }
  return addresses[0]!;
}

/** A lookup for undici's connector that can only give the address already checked, so nothing resolves twice. */
export function answerOnly(hostname: string, checked: LookupAddress): LookupFunction {
  return (name, options, callback) => {
    if (name !== hostname) {
      callback(Object.assign(new Error(`lookup of ${name} while fetching from ${hostname}`), { code: 'ENOTFOUND' }), '', 0);
    } else if (options.all === true) {
      callback(null, [checked]);
    } else {
      callback(null, checked.address, checked.family);
    }
  };
}

/** dns.lookup takes no signal, and the system resolver may take its time. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

function tooLarge(params: FetchRemoteImageParameters): PixeldError {
  return new PixeldError('payload_too_large', `${params.param} is larger than ${params.maxBytes} bytes`, { param: params.param });
}

function fetchFailed(param: string, url: URL, reason: string, cause?: unknown): PixeldError {
  const causeLine = cause instanceof Error ? [`Cause: ${cause.message}`] : [];
  return new PixeldError('image_fetch_failed', `${param}.image_url could not be downloaded: ${reason}`, { param, details: [`URL: ${printable(url)}`, ...causeLine], cause });
}

/** Without the query, which may hold a signed URL's token, for logs. */
function printable(url: URL): string {
  return `${url.origin}${url.pathname}`;
}
