import type { LookupAddress } from 'node:dns';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isPublicAddress, type FetchRemoteImageDeps } from '../../src/images/fetch-remote-image.js';

/**
 * Remote image hosts for limits.fetchRemoteImages tests, all on loopback: https servers on 127.0.0.1 with a
 * self-signed certificate for *.example.test (test/fixtures/remote-images, made with `openssl req -x509
 * -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500 -subj /CN=images.example.test
 * -addext subjectAltName=DNS:*.example.test -addext basicConstraints=critical,CA:TRUE`), and a resolver
 * stub mapping test names to addresses. Only tests let 127.0.0.1 pass for public, through the
 * isAllowedAddress dependency; the daemon has no such setting.
 */

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/remote-images');
export const TEST_CA = readFileSync(path.join(FIXTURES, 'cert.pem'), 'utf8');
const KEY = readFileSync(path.join(FIXTURES, 'key.pem'), 'utf8');

/** Where every test host listens. */
export const TEST_HOST_ADDRESS = '127.0.0.1';

/** The loopback test host stands in for a public one; every other address gets the real check. */
export const allowTestHost = (address: string): boolean => address === TEST_HOST_ADDRESS || isPublicAddress(address);

export interface StubResolver {
  lookup: FetchRemoteImageDeps['lookup'];
  /** Every name asked for, in order. */
  calls: string[];
}

/**
 * Answers each name from the table, ENOTFOUND for others. A list of lists is one answer per call, the last
 * repeating (a rebinding DNS server).
 */
export function stubResolver(table: Record<string, string[] | string[][]>): StubResolver {
  const calls: string[] = [];
  const lookup = async (hostname: string): Promise<LookupAddress[]> => {
    const answers = table[hostname];
    const earlierCalls = calls.filter((c) => c === hostname).length;
    calls.push(hostname);
    if (answers === undefined) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' });
    const perCall = answers.length > 0 && Array.isArray(answers[0]) ? (answers as string[][]) : [answers as string[]];
    const addresses = perCall[Math.min(earlierCalls, perCall.length - 1)]!;
    return addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
  return { lookup, calls };
}

/** The fetcher's dependencies for tests: the stub resolver, the test CA, and the test host allowed. */
export function testRemoteImageDeps(resolver: StubResolver, isAllowedAddress = allowTestHost): FetchRemoteImageDeps {
  return { lookup: resolver.lookup, isAllowedAddress, ca: TEST_CA };
}

export interface RemoteImageHost {
  port: number;
  /** Host header and path of every request received. */
  requests: Array<{ host: string | undefined; path: string | undefined }>;
  /** TCP connections accepted (a refused URL must not even open one). */
  connections: number;
  close(): Promise<void>;
}

export async function startRemoteImageHost(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<RemoteImageHost> {
  const server: Server = createServer({ key: KEY, cert: TEST_CA }, (req, res) => {
    host.requests.push({ host: req.headers.host, path: req.url });
    handler(req, res);
  });
  const host: RemoteImageHost = {
    port: 0,
    requests: [],
    connections: 0,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  server.on('connection', () => host.connections++);
  await new Promise<void>((resolve) => server.listen(0, TEST_HOST_ADDRESS, resolve));
  host.port = (server.address() as AddressInfo).port;
  return host;
}
