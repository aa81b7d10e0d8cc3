import type { LookupAddress } from 'node:dns';
import { afterEach, describe, expect, it } from 'vitest';
import { PixeldError, type ErrorCode } from '../../src/errors.js';
import { boundedLookup, fetchRemoteImage, isPublicAddress, type FetchRemoteImageDeps, type FetchRemoteImageParameters } from '../../src/images/fetch-remote-image.js';
import {
  allowTestHost,
  startRemoteImageHost,
  stubResolver,
  TEST_CA,
  TEST_HOST_ADDRESS,
  testRemoteImageDeps as deps,
  type RemoteImageHost,
} from '../helpers/remote-image-host.js';

/**
 * limits.fetchRemoteImages: https image_urls downloaded from public addresses only, every hop resolved once
 * and checked, the connection made to the address checked. All hosts are https servers on loopback behind a
 * resolver stub (test/helpers/remote-image-host.ts); only these tests let their address pass for public.
 */

const hosts: RemoteImageHost[] = [];
async function startServer(handler: Parameters<typeof startRemoteImageHost>[0]): Promise<RemoteImageHost> {
  const host = await startRemoteImageHost(handler);
  hosts.push(host);
  return host;
}
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.close()));
});

const IMAGE_BYTES = Buffer.from('not decoded by the fetcher; any bytes do');

function params(url: string, overrides: Partial<FetchRemoteImageParameters> = {}): FetchRemoteImageParameters {
  return { url, param: 'images[0]', maxBytes: 1024 * 1024, timeoutMs: 5_000, maxRedirects: 3, ...overrides };
}

async function refusal(promise: Promise<unknown>): Promise<{ code: ErrorCode; status: number; message: string; param: string | null }> {
  const err = await promise.then(
    () => {
      throw new Error('expected a refusal');
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PixeldError);
  const { code, status, message, param } = err as PixeldError;
  return { code, status, message, param };
}

describe('isPublicAddress', () => {
  const notPublic = [
    ['127.0.0.1', 'loopback'],
    ['127.255.0.9', 'loopback'],
    ['10.1.2.3', 'private 10/8'],
    ['172.16.0.1', 'private 172.16/12'],
    ['172.31.255.254', 'private 172.16/12'],
    ['192.168.1.1', 'private 192.168/16'],
    ['169.254.169.254', 'link-local (cloud metadata)'],
    ['100.64.0.1', 'CGNAT 100.64/10'],
    ['100.127.255.254', 'CGNAT 100.64/10'],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'this network 0/8'],
    ['255.255.255.255', 'broadcast'],
    ['192.0.2.10', 'documentation'],
    ['198.51.100.7', 'documentation'],
    ['203.0.113.9', 'documentation'],
    ['198.18.0.1', 'benchmarking'],
    ['240.0.0.1', 'reserved'],
    ['::1', 'IPv6 loopback'],
    ['::', 'IPv6 unspecified'],
    ['fc00::1', 'unique local fc00::/7'],
    ['fd12:3456::1', 'unique local fc00::/7'],
    ['fe80::1', 'link-local fe80::/10'],
    ['fec0::1', 'site-local (deprecated)'],
    ['ff02::1', 'IPv6 multicast'],
    ['::ffff:127.0.0.1', 'IPv4-mapped loopback'],
    ['::ffff:10.0.0.1', 'IPv4-mapped private'],
    ['::ffff:8.8.8.8', 'IPv4-mapped (never what a resolver gives for a public host)'],
    ['::127.0.0.1', 'IPv4-compatible (deprecated)'],
    ['64:ff9b::7f00:1', 'NAT64 of 127.0.0.1'],
    ['2002:7f00:1::1', '6to4 of 127.0.0.1'],
    ['2001::1', 'Teredo'],
    ['2001:db8::1', 'IPv6 documentation'],
    ['4000::1', 'outside global unicast 2000::/3'],
    ['images.example.test', 'not an address'],
    ['', 'empty'],
  ] as const;
  it.each(notPublic)('%s (%s) is not public', (address) => {
    expect(isPublicAddress(address)).toBe(false);
  });

  it.each(['8.8.8.8', '1.1.1.1', '93.184.216.34', '11.0.0.1', '172.32.0.1', '100.128.0.1', '2606:4700:4700::1111', '2001:4860:4860::8888', '2a00:1450::1'])(
    '%s is public',
    (address) => {
      expect(isPublicAddress(address)).toBe(true);
    },
  );
});

describe('fetchRemoteImage', () => {
  it('downloads from a host that resolves to an allowed address, with the host name as Host and for TLS', async () => {
    const server = await startServer((_req, res) => res.end(IMAGE_BYTES));
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    const bytes = await fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}/cat.png?sig=abc`));
    expect(bytes).toEqual(IMAGE_BYTES);
    expect(server.requests).toEqual([{ host: `images.example.test:${server.port}`, path: '/cat.png?sig=abc' }]);
    expect(resolver.calls).toEqual(['images.example.test']);
  });

  it('checks the certificate against the host name, not the address it connects to', async () => {
    const server = await startServer((_req, res) => res.end(IMAGE_BYTES));
    const resolver = stubResolver({ 'images.other.test': [TEST_HOST_ADDRESS] });
    const err = await refusal(fetchRemoteImage(deps(resolver), params(`https://images.other.test:${server.port}/cat.png`)));
    expect(err).toMatchObject({ code: 'image_fetch_failed', status: 400, param: 'images[0]' });
    expect(err.message).toContain('ERR_TLS_CERT_ALTNAME_INVALID');
    expect(server.requests).toEqual([]);
  });

  // Every range issue 13 names, against the real check: the test server behind the name is never reached.
  it.each(['127.0.0.1', '10.0.0.1', '172.16.5.4', '192.168.0.10', '169.254.169.254', '100.64.1.1', '224.0.0.251', '::1', 'fc00::5', 'fd00::1', 'fe80::1', '::ffff:127.0.0.1', '0.0.0.0'])(
    'refuses a host resolving to %s without connecting',
    async (address) => {
      const server = await startServer((_req, res) => res.end(IMAGE_BYTES));
      const resolver = stubResolver({ 'images.example.test': [address] });
      const err = await refusal(fetchRemoteImage(deps(resolver, isPublicAddress), params(`https://images.example.test:${server.port}/cat.png`)));
      expect(err).toMatchObject({ code: 'image_url_forbidden', status: 400, param: 'images[0]' });
      expect(err.message).toContain('images.example.test');
      expect(err.message).not.toContain(address);
      expect(server.connections).toBe(0);
    },
  );

  it.each([
    'https://127.0.0.1/cat.png',
    'https://2130706433/cat.png',
    'https://0x7f.1/cat.png',
    'https://[::1]/cat.png',
    'https://[::ffff:127.0.0.1]/cat.png',
    'https://0.0.0.0/cat.png',
    'https://169.254.169.254/latest/meta-data/',
    'https://[fe80::1]/cat.png',
  ])('refuses the address literal in %s without a lookup', async (url) => {
    const resolver = stubResolver({});
    const err = await refusal(fetchRemoteImage(deps(resolver, isPublicAddress), params(url)));
    expect(err.code).toBe('image_url_forbidden');
    expect(resolver.calls).toEqual([]);
  });

  it('refuses a host with a public and a private address', async () => {
    const server = await startServer((_req, res) => res.end(IMAGE_BYTES));
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS, '10.0.0.7'] });
    const err = await refusal(fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}/cat.png`)));
    expect(err.code).toBe('image_url_forbidden');
    expect(server.connections).toBe(0);
  });

  it('connects to the address it checked: a resolver answering differently the second time is never asked again', async () => {
    const server = await startServer((_req, res) => res.end(IMAGE_BYTES));
    // Rebinding: public first, then loopback. 127.0.0.2 is refused by the check and has no server listening,
    // so a second lookup at connect time would fail the download.
    const resolver = stubResolver({ 'images.example.test': [[TEST_HOST_ADDRESS], ['127.0.0.2']] });
    const bytes = await fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}/cat.png`));
    expect(bytes).toEqual(IMAGE_BYTES);
    expect(resolver.calls).toEqual(['images.example.test']);
    expect(server.connections).toBe(1);
  });

  it('follows a redirect to another allowed host, resolving and checking each hop', async () => {
    const server = await startServer((req, res) => {
      if (req.url === '/moved') res.writeHead(302, { location: `https://cdn.example.test:${server.port}/cat.png` }).end();
      else res.end(IMAGE_BYTES);
    });
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS], 'cdn.example.test': [TEST_HOST_ADDRESS] });
    const bytes = await fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}/moved`));
    expect(bytes).toEqual(IMAGE_BYTES);
    expect(resolver.calls).toEqual(['images.example.test', 'cdn.example.test']);
    expect(server.requests.map((r) => r.host)).toEqual([`images.example.test:${server.port}`, `cdn.example.test:${server.port}`]);
  });

  it('refuses a redirect to a private address', async () => {
    const server = await startServer((_req, res) => res.writeHead(301, { location: 'https://internal.example.test/admin' }).end());
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS], 'internal.example.test': ['10.20.30.40'] });
    const err = await refusal(fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}/cat.png`)));
    expect(err.code).toBe('image_url_forbidden');
    expect(err.message).toContain('internal.example.test');
    expect(server.requests).toHaveLength(1);
  });

  it('refuses a redirect to an address literal', async () => {
    const server = await startServer((_req, res) => res.writeHead(307, { location: 'https://[::1]:9/' }).end());
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    expect((await refusal(fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}/cat.png`)))).code).toBe(
      'image_url_forbidden',
    );
  });

  it('refuses a redirect to http', async () => {
    const server = await startServer((_req, res) => res.writeHead(302, { location: `http://images.example.test:${server.port}/cat.png` }).end());
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    const err = await refusal(fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}/cat.png`)));
    expect(err.code).toBe('image_url_forbidden');
    expect(err.message).toContain('http:');
    expect(server.requests).toHaveLength(1);
  });

  it('reports a redirect without a usable Location', async () => {
    const server = await startServer((req, res) => res.writeHead(302, req.url === '/bad' ? { location: 'https://[bad' } : {}).end());
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    for (const path of ['/bad', '/none']) {
      const err = await refusal(fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}${path}`)));
      expect(err).toMatchObject({ code: 'image_fetch_failed', message: expect.stringContaining('without a usable Location') });
    }
  });

  it('gives up after limits.remoteImageMaxRedirects redirects', async () => {
    const server = await startServer((req, res) => res.writeHead(302, { location: `${req.url}x` }).end());
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    const err = await refusal(fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}/r`, { maxRedirects: 2 })));
    expect(err).toMatchObject({ code: 'image_fetch_failed', status: 400 });
    expect(err.message).toContain('more than 2 redirects');
    expect(server.requests.map((r) => r.path)).toEqual(['/r', '/rx', '/rxx']);
    expect(resolver.calls).toHaveLength(3);
  });

  it('refuses a body whose Content-Length is above the limit', async () => {
    const server = await startServer((_req, res) => res.writeHead(200, { 'content-length': 2048 }).end(Buffer.alloc(2048)));
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    const err = await refusal(fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}/big.png`, { maxBytes: 1024 })));
    expect(err).toMatchObject({ code: 'payload_too_large', status: 413, param: 'images[0]' });
  });

  it('cuts off a body without Content-Length as soon as it passes the limit', async () => {
    const CHUNK = Buffer.alloc(16 * 1024);
    let written = 0;
    let closedEarly: Promise<boolean> = Promise.resolve(false);
    const server = await startServer((_req, res) => {
      closedEarly = new Promise((resolve) => res.on('close', () => resolve(!res.writableFinished)));
      // Endless chunked body: only the fetcher can stop it.
      const pump = () => {
        if (res.destroyed) return;
        written += CHUNK.length;
        if (res.write(CHUNK)) setImmediate(pump);
        else res.once('drain', pump);
      };
      pump();
    });
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    const err = await refusal(fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}/endless.png`, { maxBytes: 100 * 1024 })));
    expect(err).toMatchObject({ code: 'payload_too_large', status: 413 });
    expect(await closedEarly).toBe(true);
    expect(written).toBeLessThan(16 * 1024 * 1024);
  });

  it('times out a server that never finishes, within limits.remoteImageTimeoutMs', async () => {
    const server = await startServer((_req, res) => {
      res.writeHead(200);
      res.write(IMAGE_BYTES.subarray(0, 4));
    });
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    const started = Date.now();
    const err = await refusal(fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}/slow.png`, { timeoutMs: 300 })));
    expect(err.code).toBe('image_fetch_failed');
    expect(err.message).toContain('within 300 ms');
    expect(Date.now() - started).toBeLessThan(3_000);
  });

  it('stops a download when its caller goes away (signal), closing the connection long before the timeout', async () => {
    let closed: Promise<boolean> = new Promise(() => undefined);
    const server = await startServer((_req, res) => {
      closed = new Promise((resolve) => res.on('close', () => resolve(!res.writableFinished)));
      res.writeHead(200);
      res.write(IMAGE_BYTES.subarray(0, 4));
    });
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    const gone = new AbortController();
    setTimeout(() => gone.abort(), 200);
    const started = Date.now();
    const err = await refusal(
      fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}/slow.png`, { timeoutMs: 10_000, signal: gone.signal })),
    );
    expect(err).toMatchObject({ code: 'image_fetch_failed', param: 'images[0]' });
    expect(err.message).toContain('the request was closed');
    expect(await closed).toBe(true);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('times out a resolver that never answers', async () => {
    const deps_: FetchRemoteImageDeps = { lookup: () => new Promise(() => {}), isAllowedAddress: allowTestHost, ca: TEST_CA };
    const err = await refusal(fetchRemoteImage(deps_, params('https://images.example.test/cat.png', { timeoutMs: 200 })));
    expect(err.code).toBe('image_fetch_failed');
    expect(err.message).toContain('within 200 ms');
  });

  it('reports a host that does not resolve, a non-200 answer, and refuses credentials and other schemes', async () => {
    const server = await startServer((_req, res) => res.writeHead(404).end('gone'));
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    const nowhere = await refusal(fetchRemoteImage(deps(resolver), params('https://nowhere.example.test/cat.png')));
    expect(nowhere).toMatchObject({ code: 'image_fetch_failed', message: expect.stringContaining('does not resolve') });
    const missing = await refusal(fetchRemoteImage(deps(resolver), params(`https://images.example.test:${server.port}/cat.png`)));
    expect(missing).toMatchObject({ code: 'image_fetch_failed', message: expect.stringContaining('HTTP 404') });
    for (const url of [`https://user:pw@images.example.test:${server.port}/cat.png`, 'http://images.example.test/cat.png', 'ftp://images.example.test/cat.png', 'file:///etc/passwd']) {
      expect((await refusal(fetchRemoteImage(deps(resolver), params(url)))).code).toBe('image_url_forbidden');
    }
    expect((await refusal(fetchRemoteImage(deps(resolver), params('not a url')))).code).toBe('invalid_image');
    expect(server.requests).toHaveLength(1);
  });
});

describe('boundedLookup', () => {
  it('runs at most max lookups at once; the others start in order as earlier ones settle, failed ones too', async () => {
    const started: string[] = [];
    const pending = new Map<string, { resolve: (a: LookupAddress[]) => void; reject: (e: Error) => void }>();
    const lookup = boundedLookup(
      (hostname) =>
        new Promise<LookupAddress[]>((resolve, reject) => {
          started.push(hostname);
          pending.set(hostname, { resolve, reject });
        }),
      2,
    );
    const tick = () => new Promise((r) => setImmediate(r));
    const answers = ['a', 'b', 'c', 'd'].map((h) => lookup(h, { all: true }).catch((e: Error) => e.message));
    await tick();
    expect(started).toEqual(['a', 'b']);
    pending.get('a')!.reject(new Error('ENOTFOUND a'));
    await tick();
    expect(started).toEqual(['a', 'b', 'c']);
    // A newcomer waits behind d, which was first in line.
    const late = lookup('e', { all: true });
    pending.get('b')!.resolve([{ address: '93.184.216.34', family: 4 }]);
    await tick();
    expect(started).toEqual(['a', 'b', 'c', 'd']);
    pending.get('c')!.resolve([]);
    pending.get('d')!.resolve([]);
    await tick();
    expect(started).toEqual(['a', 'b', 'c', 'd', 'e']);
    pending.get('e')!.resolve([]);
    expect(await Promise.all(answers)).toEqual(['ENOTFOUND a', [{ address: '93.184.216.34', family: 4 }], [], []]);
    expect(await late).toEqual([]);
  });
});
