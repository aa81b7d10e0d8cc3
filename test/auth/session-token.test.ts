import { isAddress, Wallet } from 'ethers';
import { describe, expect, it } from 'vitest';
import { checkSessionToken, parseSessionToken, SessionTokenError } from '../../src/auth/session-token.js';
import { startTestDaemon } from '../helpers/daemon.js';
import { makeSessionToken } from '../helpers/session-token.js';

const user = new Wallet(Wallet.createRandom().privateKey);
const PROVIDER = '0x1234567890AbcdEF1234567890aBcdef12345678';
const check = (token: string, nowMs = Date.now()) =>
  checkSessionToken(parseSessionToken(token), { providerAddress: PROVIDER, nowMs, maxClockSkewMs: 60_000 });

describe('0G session tokens without the chain', () => {
  it('accepts an ephemeral token and a persistent one, with the provider in any letter case', async () => {
    expect(check(await makeSessionToken(user, { provider: PROVIDER.toLowerCase() }))).toBe(user.address);
    expect(check(await makeSessionToken(user, { provider: PROVIDER, tokenId: 3, expiresAt: 0 }))).toBe(user.address);
  });

  it('keeps the raw text exactly as sent, whitespace and key order included', async () => {
    const token = await makeSessionToken(user, { provider: PROVIDER });
    const parsed = parseSessionToken(token);
    expect(Buffer.from(token.slice('app-sk-'.length), 'base64').toString('utf8').startsWith(parsed.raw)).toBe(true);
  });

  it.each([
    ['another provider', { provider: '0x0000000000000000000000000000000000000009' }, /another provider/],
    ['an expired token', { provider: PROVIDER, timestamp: Date.now() - 7_200_000, expiresAt: Date.now() - 1 }, /expired/],
    ['an ephemeral token over 24 h', { provider: PROVIDER, expiresAt: Date.now() + 25 * 3_600_000 }, /24 hours/],
    ['an ephemeral token that never expires', { provider: PROVIDER, expiresAt: 0 }, /must expire/],
    ['a token from the future', { provider: PROVIDER, timestamp: Date.now() + 3_600_000 }, /future/],
  ])('refuses %s', async (_name, fields, message) => {
    const token = await makeSessionToken(user, fields);
    expect(() => check(token)).toThrow(message);
  });

  it('refuses a token whose text was altered after signing', async () => {
    const altered = await makeSessionToken(user, { provider: PROVIDER, generation: 0 }, (raw) => raw.replace('"generation":0', '"generation":1'));
    expect(() => check(altered)).toThrow(/does not match its address/);
    const spaced = await makeSessionToken(user, { provider: PROVIDER }, (raw) => raw.replace(',', ', '));
    expect(() => check(spaced)).toThrow(SessionTokenError);
  });

  it('refuses a token signed by someone else for this address', async () => {
    const mallory = new Wallet(Wallet.createRandom().privateKey);
    const forged = await makeSessionToken(mallory, { provider: PROVIDER, address: user.address });
    expect(() => check(forged)).toThrow(/does not match its address/);
  });

  it('refuses a token whose mixed-case address has a wrong EIP-55 checksum as a bad token, not an internal error', async () => {
    const token = await makeSessionToken(user, { provider: PROVIDER, address: withWrongChecksum(user.address) });
    expect(() => check(token)).toThrow(SessionTokenError);
    expect(() => check(token)).toThrow(/checksum/);
    // All lower case carries no checksum, and is the same address.
    expect(check(await makeSessionToken(user, { provider: PROVIDER, address: user.address.toLowerCase() }))).toBe(user.address);
  });

  it('refuses malformed tokens', () => {
    for (const bad of ['app-sk-', 'app-sk-!!!', `app-sk-${Buffer.from('{"a":1}').toString('base64')}`, `app-sk-${Buffer.from('not json|0x' + 'ab'.repeat(65)).toString('base64')}`]) {
      expect(() => check(bad)).toThrow(SessionTokenError);
    }
  });
});

describe('0G session tokens over HTTP', () => {
  it('answers a token whose address has a wrong EIP-55 checksum with 401 invalid_api_key, not 500', async () => {
    // The token is refused before the chain is asked, so an RPC nobody answers is enough.
    const d = await startTestDaemon({
      config: {
        auth: { mode: ['0g'] },
        chain: { rpcUrl: 'http://127.0.0.1:9', chainId: 31337, servingAddress: PROVIDER, rpcTimeoutMs: 1_000 },
        provider: { address: PROVIDER },
      },
    });
    try {
      const token = await makeSessionToken(user, { provider: PROVIDER, address: withWrongChecksum(user.address) });
      const res = await fetch(`${d.url}/v1/async/images/generations`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify({ prompt: 'p' }),
      });
      expect(res.status).toBe(401);
      expect(((await res.json()) as { error: unknown }).error).toMatchObject({ code: 'invalid_api_key', type: 'authentication_error' });
    } finally {
      await d.close();
    }
  });
});

/** The address with one letter's case flipped: still mixed case, so read as a (now wrong) EIP-55 checksum. */
function withWrongChecksum(address: string): string {
  const at = 2 + address.slice(2).search(/[a-fA-F]/);
  const letter = address[at]!;
  const flipped = `${address.slice(0, at)}${letter === letter.toUpperCase() ? letter.toLowerCase() : letter.toUpperCase()}${address.slice(at + 1)}`;
  expect(isAddress(flipped)).toBe(false);
  return flipped;
}
