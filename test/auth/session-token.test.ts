import { Wallet } from 'ethers';
import { describe, expect, it } from 'vitest';
import { checkSessionToken, parseSessionToken, SessionTokenError } from '../../src/auth/session-token.js';
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

  it('refuses malformed tokens', () => {
    for (const bad of ['app-sk-', 'app-sk-!!!', `app-sk-${Buffer.from('{"a":1}').toString('base64')}`, `app-sk-${Buffer.from('not json|0x' + 'ab'.repeat(65)).toString('base64')}`]) {
      expect(() => check(bad)).toThrow(SessionTokenError);
    }
  });
});
