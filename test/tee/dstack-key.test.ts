import { randomBytes } from 'node:crypto';
import { DstackClient } from '@phala/dstack-sdk';
import { SigningKey, computeAddress, concat, getBytes, keccak256, recoverAddress, toUtf8Bytes, verifyMessage } from 'ethers';
import { afterEach, describe, expect, it } from 'vitest';
import { openDstackKeyProvider } from '../../src/tee/dstack-key.js';
import { TeeError } from '../../src/tee/key-provider.js';
import { FAKE_KMS_ROOT_ADDRESS, startFakeDstackAgent, type FakeDstackAgent } from '../fakes/dstack-guest-agent.js';

const KEY_PATH = 'pixeld/signing/v1';

const agents: FakeDstackAgent[] = [];
async function agent(options: Parameters<typeof startFakeDstackAgent>[0] = {}): Promise<FakeDstackAgent> {
  const a = await startFakeDstackAgent(options);
  agents.push(a);
  return a;
}

afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.close()));
});

/** Recover the signer of a dstack 65-byte r‖s‖recid signature over a keccak256 digest. */
function recoverDstackSigner(digest: string, sigHex: string): string {
  const sig = Buffer.from(sigHex, 'hex');
  expect(sig.length).toBe(65);
  return recoverAddress(digest, {
    r: `0x${sig.subarray(0, 32).toString('hex')}`,
    s: `0x${sig.subarray(32, 64).toString('hex')}`,
    yParity: sig[64] as 0 | 1,
  });
}

describe('dstack key provider', () => {
  it('derives the same signer across restarts of the agent with the same app secret', async () => {
    const first = await agent({ appSecret: 'app-one' });
    const a = await openDstackKeyProvider({ endpoint: first.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    await first.close();

    const restarted = await agent({ appSecret: 'app-one' });
    const b = await openDstackKeyProvider({ endpoint: restarted.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    expect(b.address).toBe(a.address);
    expect(b.address).toMatch(/^0x[0-9a-fA-F]{40}$/);

    const otherApp = await agent({ appSecret: 'app-two' });
    const c = await openDstackKeyProvider({ endpoint: otherApp.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    expect(c.address).not.toBe(a.address);

    const otherPath = await openDstackKeyProvider({ endpoint: restarted.socketPath, keyPath: 'pixeld/signing/v2', journalDir: '/tmp' });
    expect(otherPath.address).not.toBe(a.address);
  });

  it('asks the agent for the configured path with purpose "signing" and describes itself as dstack', async () => {
    const fake = await agent();
    const provider = await openDstackKeyProvider({ endpoint: fake.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    expect(fake.requests.map((r) => r.rpc)).toEqual(['GetKey']);
    expect(fake.requests[0]!.body).toEqual({ path: KEY_PATH, purpose: 'signing', algorithm: 'secp256k1' });
    expect(provider).toMatchObject({
      mode: 'dstack',
      teeLabel: 'dstack',
      insecure: false,
      keySource: `dstack-kms:${KEY_PATH}`,
    });
  });

  it('signs with the derived key', async () => {
    const fake = await agent();
    const provider = await openDstackKeyProvider({ endpoint: fake.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    const derivedKeyHex = (fake.requests[0]!.response as { key: string }).key;
    expect(provider.address).toBe(computeAddress(`0x${derivedKeyHex}`));
    const signature = await provider.signer.signMessage('hello');
    expect(verifyMessage('hello', signature)).toBe(provider.address);
  });

  it('exposes the signature chain as the hex the agent sent, chaining to the KMS root', async () => {
    const fake = await agent();
    const provider = await openDstackKeyProvider({ endpoint: fake.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    const sent = fake.requests[0]!.response as { key: string; signature_chain: string[] };
    expect(provider.signatureChain).toEqual(sent.signature_chain);
    expect(provider.signatureChain).toHaveLength(2);
    for (const sig of provider.signatureChain) expect(sig).toMatch(/^[0-9a-f]{130}$/);

    const [appSig, kmsSig] = provider.signatureChain as [string, string];
    const derivedPubHex = new SigningKey(`0x${sent.key}`).compressedPublicKey.slice(2);
    const appAddress = recoverDstackSigner(keccak256(toUtf8Bytes(`signing:${derivedPubHex}`)), appSig);
    expect(appAddress).toBe(fake.appAddress);
    // The KMS signs the app key's compressed public key; recover it from the app signature to check that.
    const appPubkey = SigningKey.recoverPublicKey(keccak256(toUtf8Bytes(`signing:${derivedPubHex}`)), {
      r: `0x${appSig.slice(0, 64)}`,
      s: `0x${appSig.slice(64, 128)}`,
      yParity: Number.parseInt(appSig.slice(128), 16) as 0 | 1,
    });
    const kmsDigest = keccak256(
      concat([toUtf8Bytes('dstack-kms-issued:'), Buffer.from(fake.appId, 'hex'), getBytes(SigningKey.computePublicKey(appPubkey, true))]),
    );
    expect(recoverDstackSigner(kmsDigest, kmsSig)).toBe(FAKE_KMS_ROOT_ADDRESS);
  });

  it('sends exactly the 64 report-data bytes as hex and returns the quote carrying them', async () => {
    const fake = await agent();
    const provider = await openDstackKeyProvider({ endpoint: fake.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    // Bytes that are not valid UTF-8 would be mangled by any string round trip.
    const reportData = Buffer.concat([Buffer.from([0xff, 0xfe, 0x00, 0x80]), randomBytes(60)]);

    const result = await provider.quote(reportData);

    const quoteRequest = fake.requests.find((r) => r.rpc === 'GetQuote')!;
    expect(quoteRequest.body).toEqual({ report_data: reportData.toString('hex') });
    expect(result).toBeDefined();
    expect(Buffer.isBuffer(result!.quote)).toBe(true);
    expect(result!.quote.length).toBeGreaterThan(1020);
    expect(result!.quote.readUInt16LE(0)).toBe(4);
    expect(result!.quote.subarray(568, 632).equals(reportData)).toBe(true);
    expect(result!.quoteProvider).toBe('dstack-guest-agent');
    const events = JSON.parse(result!.eventLog!) as Array<{ imr: number; event: string }>;
    expect(events.some((e) => e.imr === 3 && e.event === 'compose-hash')).toBe(true);
  });

  it('rejects report data that is not a 64-byte Buffer without calling the agent', async () => {
    const fake = await agent();
    const provider = await openDstackKeyProvider({ endpoint: fake.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    await expect(provider.quote(randomBytes(63))).rejects.toBeInstanceOf(TeeError);
    await expect(provider.quote(randomBytes(65))).rejects.toThrow(/exactly 64 bytes/);
    await expect(provider.quote('a'.repeat(64) as unknown as Buffer)).rejects.toBeInstanceOf(TeeError);
    expect(fake.requests.filter((r) => r.rpc === 'GetQuote')).toHaveLength(0);
  });

  it('returns the agent Info with tcb_info parsed, fetched once', async () => {
    const fake = await agent();
    const provider = await openDstackKeyProvider({ endpoint: fake.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    const info = await provider.info();
    expect(info).toMatchObject({ app_id: fake.appId, app_name: 'pixeld' });
    expect(info!.compose_hash).toMatch(/^[0-9a-f]{64}$/);
    const tcb = info!.tcb_info as { mrtd: string; compose_hash: string; event_log: unknown[] };
    expect(typeof tcb).toBe('object');
    expect(tcb.compose_hash).toBe(info!.compose_hash);
    expect(tcb.event_log.length).toBeGreaterThan(0);

    (info as Record<string, unknown>).app_id = 'tampered';
    const again = await provider.info();
    expect(again!.app_id).toBe(fake.appId);
    expect(fake.requests.filter((r) => r.rpc === 'Info')).toHaveLength(1);
  });

  it('does not cache a failed Info', async () => {
    const fake = await agent();
    const provider = await openDstackKeyProvider({ endpoint: fake.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    fake.failNext('Info', 'agent hiccup');
    await expect(provider.info()).rejects.toBeInstanceOf(TeeError);
    await expect(provider.info()).resolves.toMatchObject({ app_id: fake.appId });
  });

  it('fails with TeeError naming the socket when the agent is not there', async () => {
    const fake = await agent();
    const socketPath = fake.socketPath;
    await fake.close();
    const opening = openDstackKeyProvider({ endpoint: socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    await expect(opening).rejects.toBeInstanceOf(TeeError);
    await expect(opening).rejects.toThrow(socketPath);
  });

  it('fails with TeeError when the agent goes away after start-up', async () => {
    const fake = await agent();
    const provider = await openDstackKeyProvider({ endpoint: fake.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    await fake.close();
    const quoting = provider.quote(randomBytes(64));
    await expect(quoting).rejects.toBeInstanceOf(TeeError);
    await expect(quoting).rejects.toThrow(/GetQuote failed/);
    await expect(provider.info()).rejects.toBeInstanceOf(TeeError);
  });

  it('turns agent errors into TeeError and recovers on the next call', async () => {
    const fake = await agent();
    const provider = await openDstackKeyProvider({ endpoint: fake.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    fake.failNext('GetQuote', 'quote service unavailable');
    await expect(provider.quote(randomBytes(64))).rejects.toThrow(/quote service unavailable/);
    await expect(provider.quote(randomBytes(64))).resolves.toBeDefined();
  });

  it('fails start-up with TeeError when GetKey fails', async () => {
    const fake = await agent();
    fake.failNext('GetKey', 'kms unreachable');
    await expect(openDstackKeyProvider({ endpoint: fake.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' })).rejects.toBeInstanceOf(TeeError);
  });

  it('works over the simulator-style http endpoint too', async () => {
    const fake = await agent({ tcp: true, appSecret: 'app-one' });
    const viaUrl = await openDstackKeyProvider({ endpoint: fake.url!, keyPath: KEY_PATH, journalDir: '/tmp' });
    const viaSocket = await openDstackKeyProvider({ endpoint: fake.socketPath, keyPath: KEY_PATH, journalDir: '/tmp' });
    expect(viaUrl.address).toBe(viaSocket.address);
    const reportData = randomBytes(64);
    const result = await viaUrl.quote(reportData);
    expect(result!.quote.subarray(568, 632).equals(reportData)).toBe(true);
  });

  it('uses an injected client', async () => {
    const fake = await agent();
    const client = new DstackClient(fake.socketPath);
    const provider = await openDstackKeyProvider({ endpoint: '/nonexistent/dstack.sock', keyPath: KEY_PATH, journalDir: '/tmp' }, { client });
    expect(provider.address).toMatch(/^0x/);
    expect(fake.requests).toHaveLength(1);
  });
});
