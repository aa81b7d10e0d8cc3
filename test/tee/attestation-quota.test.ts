import http from 'node:http';
import { Writable } from 'node:stream';
import { Wallet } from 'ethers';
import { afterAll, describe, expect, it } from 'vitest';
import { PixeldError } from '../../src/errors.js';
import { clientKeyOf } from '../../src/http/client-address.js';
import { createLogger } from '../../src/obs/logger.js';
import { AttestationService, SAME_NONCE_REUSE_MS } from '../../src/tee/attestation.js';
import type { TeeKeyProvider } from '../../src/tee/key-provider.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/**
 * The fresh-nonce attestation allowance (issue 12 §7): quoting is slow and serialised, so all clients
 * together get `tee.freshReportsPerMinute`; each client gets a quarter of it, so one client cannot use it up
 * for everyone; and the same nonce asked again soon is answered with the same report, with no new quote.
 */

/** A TEE whose quotes are counted (and fail while `failing`). */
function countingTee() {
  const wallet = Wallet.createRandom();
  const tee = {
    quotes: 0,
    failing: false,
    mode: 'dstack',
    teeLabel: 'dstack',
    insecure: false,
    keySource: 'test',
    address: wallet.address,
    signatureChain: [],
    info: async () => undefined,
    quote: async (reportData: Buffer) => {
      tee.quotes += 1;
      if (tee.failing) throw new Error('the quoting device is busy');
      return { quote: Buffer.concat([Buffer.from('quote:'), reportData]), quoteProvider: 'test', eventLog: undefined };
    },
  };
  return tee;
}

function service(freshReportsPerMinute: number, tee = countingTee(), now = () => 0, freshReportsPerClientPerMinute?: number) {
  return new AttestationService({
    freshReportsPerClientPerMinute,
    key: tee as unknown as TeeKeyProvider,
    providerAddress: '0x1111111111111111111111111111111111111111',
    modelIds: ['m'],
    cachedReportTtlMs: 60_000,
    freshReportsPerMinute,
    logger: createLogger({ level: 'error', stream: new Writable({ write: (_chunk, _encoding, done) => done() }) }),
    now,
  });
}

const nonce = (i: number) => i.toString(16).padStart(64, '0');

async function refusal(report: Promise<unknown>): Promise<PixeldError> {
  const err = await report.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof PixeldError)) throw new Error(`not refused: ${String(err)}`);
  return err;
}

describe('fresh attestation reports', () => {
  it('one client using up its share does not stop another client', async () => {
    const attestation = service(8);
    await attestation.report(nonce(1), 'alice');
    await attestation.report(nonce(2), 'alice');
    const refused = await refusal(attestation.report(nonce(3), 'alice'));
    expect(refused.code).toBe('rate_limit_exceeded');
    expect(refused.retryAfterSeconds).toBeGreaterThanOrEqual(1);
    expect((await attestation.report(nonce(4), 'bob')).request_nonce).toBe(nonce(4));
  });

  it('gives each client tee.freshReportsPerClientPerMinute when it is set', async () => {
    const attestation = service(30, countingTee(), () => 0, 3);
    for (let i = 0; i < 3; i += 1) await attestation.report(nonce(i), 'alice');
    expect((await refusal(attestation.report(nonce(3), 'alice'))).message).toMatch(/at most 3 fresh attestation reports a minute per client/);
  });

  it('all clients together still get no more than freshReportsPerMinute', async () => {
    const attestation = service(4);
    for (const [i, client] of ['a', 'b', 'c', 'd'].entries()) await attestation.report(nonce(i), client);
    expect((await refusal(attestation.report(nonce(4), 'e'))).code).toBe('rate_limit_exceeded');
  });

  it('answers the same nonce again with the same report, with no new quote and no allowance spent, for a while', async () => {
    let now = 0;
    const tee = countingTee();
    const attestation = service(4, tee, () => now);
    const first = await attestation.report(nonce(7), 'alice');
    // Alice's one report a minute is spent, yet the same nonce (in any letter case) is answered, from anyone.
    expect(await attestation.report(nonce(7), 'alice')).toBe(first);
    expect(await attestation.report(nonce(7).toUpperCase(), 'bob')).toBe(first);
    expect(tee.quotes).toBe(1);
    now += SAME_NONCE_REUSE_MS;
    const later = await attestation.report(nonce(7), 'carol');
    expect(later).not.toBe(first);
    expect(tee.quotes).toBe(2);
  });

  it('does not keep a failed quote for the nonce', async () => {
    const tee = countingTee();
    const attestation = service(8, tee);
    tee.failing = true;
    expect((await refusal(attestation.report(nonce(5), 'alice'))).code).toBe('attestation_failed');
    tee.failing = false;
    expect((await attestation.report(nonce(5), 'alice')).request_nonce).toBe(nonce(5));
  });
});

describe('client keys', () => {
  it('are the IPv4 address, or the /64 of an IPv6 one', () => {
    expect(clientKeyOf('203.0.113.9')).toBe('203.0.113.9');
    expect(clientKeyOf('::ffff:203.0.113.9')).toBe('203.0.113.9');
    expect(clientKeyOf('2001:db8:1:2:3:4:5:6')).toBe('2001:db8:1:2::/64');
    expect(clientKeyOf('2001:0DB8:0001:0002::ffff')).toBe('2001:db8:1:2::/64');
    expect(clientKeyOf('2001:db8:1:3::1')).toBe('2001:db8:1:3::/64');
    expect(clientKeyOf('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(clientKeyOf(undefined)).toBe('unknown');
  });
});

describe('over HTTP', () => {
  let d: TestDaemon | undefined;
  afterAll(async () => {
    await d?.close();
  });

  /** GET a fresh report from the given loopback source address (127.0.0.0/8 is all local). */
  function freshReport(url: string, from: string, n: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const req = http.get(`${url}/v1/attestation/report?nonce=${nonce(n)}`, { localAddress: from, agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
    });
  }

  it('a client that asks until it is refused leaves fresh reports for another', async () => {
    d = await startTestDaemon({ config: { tee: { freshReportsPerMinute: 8 } } });
    let asked = 0;
    while ((await freshReport(d.url, '127.0.0.1', asked)) === 200) {
      asked += 1;
      expect(asked).toBeLessThanOrEqual(8);
    }
    expect(asked).toBe(2);
    expect(await freshReport(d.url, '127.0.0.2', 100)).toBe(200);
  });
});
