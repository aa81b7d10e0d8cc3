import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Quote } from '@phala/dcap-qvl';
import { keccak256, SigningKey, toUtf8Bytes, Wallet, type HDNodeWallet } from 'ethers';
import { afterEach, describe, expect, it } from 'vitest';
import { KmsChainError, kmsRootOfKeyProvider, recoverKmsChain } from '../../src/tee/dstack-kms-chain.js';
import { parseEventLog, replayEventLog } from '../../src/tee/dstack-event-log.js';
import type { TeeKeyProvider } from '../../src/tee/key-provider.js';
import { verifyJob, type VerificationReport } from '../../src/tee/verifier.js';
import type { VerifiedTdxQuote, verifyTdxQuote } from '../../src/tee/verify-quote.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/**
 * The chain's message formats follow dstack's guest agent and KMS (see src/tee/dstack-kms-chain.ts). No
 * published capture carries a GetKey answer, so the keys and the chain here are BUILT for the test: a KMS
 * root, an app key and the daemon's derived key, signed in dstack's formats. The event log is dstack's
 * real tdx-lite capture with its key-provider event rewritten to name our KMS root, and the quote that
 * capture's with RTMR3 and report_data spliced to match (Intel's signature stood in for).
 */

const DSTACK = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/dstack');
const LITE = JSON.parse(readFileSync(path.join(DSTACK, 'tdx-lite-getquote.json'), 'utf8')) as { quote: string; event_log: string };
const LITE_QUOTE = Buffer.from(LITE.quote, 'hex');
const APP_ID = '86b0e55f2fa8e4fb69d890f14f54d5612707646e';
const OTHER_APP_ID = '3763bc34552cf3a27ff71ad5f7a90471562a1a2d';

const compressed = (w: HDNodeWallet | Wallet) => SigningKey.computePublicKey(w.signingKey.publicKey, true).slice(2);

function sign65(key: HDNodeWallet | Wallet, message: Uint8Array): string {
  const s = key.signingKey.sign(keccak256(message));
  return Buffer.concat([Buffer.from(s.r.slice(2), 'hex'), Buffer.from(s.s.slice(2), 'hex'), Buffer.from([s.v - 27])]).toString('hex');
}

function chainFor(opts: { root: HDNodeWallet; app: HDNodeWallet; derived: HDNodeWallet; appId: string; purpose?: string }): string[] {
  const c0 = sign65(opts.app, toUtf8Bytes(`${opts.purpose ?? 'signing'}:${compressed(opts.derived)}`));
  const c1 = sign65(opts.root, Buffer.concat([Buffer.from('dstack-kms-issued:'), Buffer.from(opts.appId, 'hex'), Buffer.from(compressed(opts.app), 'hex')]));
  return [c0, c1];
}

/** The real event log with key-provider naming `rootKey` (or left as captured: a P-256 KMS id). */
function eventLogNaming(rootKey: string | undefined): string {
  const events = JSON.parse(LITE.event_log) as Array<{ event: string; event_payload: string }>;
  if (rootKey !== undefined) {
    events.find((e) => e.event === 'key-provider')!.event_payload = Buffer.from(JSON.stringify({ name: 'kms', id: rootKey })).toString('hex');
  }
  return JSON.stringify(events);
}

/** The capture's quote with RTMR3 (bytes 520..568) set to the log's replay and our report_data (568..632). */
function quoteFor(eventLog: string) {
  const rtmr3 = Buffer.from(replayEventLog(parseEventLog(eventLog))[3], 'hex');
  return (reportData: Buffer) => {
    const q = Buffer.from(LITE_QUOTE);
    rtmr3.copy(q, 520);
    reportData.copy(q, 568);
    return q;
  };
}

const parsingOnly: typeof verifyTdxQuote = async (quote): Promise<VerifiedTdxQuote> => {
  const td = Quote.parse(quote).report.asTd10()!;
  const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
  return { status: 'UpToDate', advisoryIds: [], reportData: Buffer.from(td.reportData), mrTd: hex(td.mrTd), rtMr0: hex(td.rtMr0), rtMr1: hex(td.rtMr1), rtMr2: hex(td.rtMr2), rtMr3: hex(td.rtMr3), collateralSource: 'offline' };
};

let daemons: TestDaemon[] = [];
afterEach(async () => {
  for (const d of daemons) await d.close();
  daemons = [];
});

async function verifyWith(opts: { derived: HDNodeWallet; chain: string[]; eventLog: string; expectedKmsRoot?: string }): Promise<VerificationReport> {
  const tee: TeeKeyProvider = {
    mode: 'dstack',
    teeLabel: 'dstack',
    insecure: false,
    keySource: 'dstack-kms:pixeld/signing/v1',
    address: opts.derived.address,
    signer: opts.derived,
    journalDir: '/nonexistent',
    signatureChain: opts.chain,
    async info() {
      return undefined;
    },
    async quote(reportData) {
      return { quote: quoteFor(opts.eventLog)(reportData), quoteProvider: 'test-sample', eventLog: opts.eventLog };
    },
  };
  const d = await startTestDaemon({
    tee,
    config: {
      provider: { address: '0x1111111111111111111111111111111111111111' },
      models: [{ id: 'm', backend: 'reference', capabilities: ['generation'], sizes: ['64x64'], pricePerImageWei: '1' }],
      backends: [{ id: 'reference', type: 'reference', latencyMsPerImage: 0 }],
    },
  });
  daemons.push(d);
  const bodyText = '{"prompt":"kms","n":1,"size":"64x64"}';
  const res = await fetch(`${d.url}/v1/images/generations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: bodyText });
  expect(res.status).toBe(200);
  const body = (await res.json()) as { data: Array<{ b64_json: string }> };
  return verifyJob({
    baseUrl: d.url,
    jobId: res.headers.get('zg-res-key')!,
    requestBody: Buffer.from(bodyText),
    images: body.data.map((i) => Buffer.from(i.b64_json, 'base64')),
    verifyQuote: parsingOnly,
    expectedKmsRoot: opts.expectedKmsRoot,
  });
}

const kms = (r: VerificationReport) => r.checks.find((c) => c.name === 'kms chain');
const failed = (r: VerificationReport) => r.checks.filter((c) => !c.ok).map((c) => c.name);

describe('recoverKmsChain', () => {
  it('recovers the app key and the KMS root from a chain in dstack’s formats', () => {
    const [root, app, derived] = [Wallet.createRandom(), Wallet.createRandom(), Wallet.createRandom()];
    const got = recoverKmsChain({ chain: chainFor({ root, app, derived, appId: APP_ID }), purpose: 'signing', derivedPublicKey: derived.signingKey.publicKey, appId: APP_ID });
    expect(got).toEqual({ appPublicKey: compressed(app), kmsRootPublicKey: compressed(root), kmsRootAddress: root.address });
    // Another app id, purpose or derived key recovers a different, meaningless root.
    const chain = chainFor({ root, app, derived, appId: APP_ID });
    expect(recoverKmsChain({ chain, purpose: 'signing', derivedPublicKey: derived.signingKey.publicKey, appId: OTHER_APP_ID }).kmsRootAddress).not.toBe(root.address);
    expect(recoverKmsChain({ chain, purpose: 'ethereum', derivedPublicKey: derived.signingKey.publicKey, appId: APP_ID }).appPublicKey).not.toBe(compressed(app));
    expect(() => recoverKmsChain({ chain: chain.slice(0, 1), purpose: 'signing', derivedPublicKey: derived.signingKey.publicKey, appId: APP_ID })).toThrow(KmsChainError);
  });

  it('reads a secp256k1 KMS root from a key-provider event, and not the P-256 id of the real capture', () => {
    const root = Wallet.createRandom();
    expect(kmsRootOfKeyProvider(JSON.stringify({ name: 'kms', id: compressed(root) }))).toBe(compressed(root));
    const captured = JSON.parse(LITE.event_log) as Array<{ event: string; event_payload: string }>;
    const payload = Buffer.from(captured.find((e) => e.event === 'key-provider')!.event_payload, 'hex').toString('utf8');
    expect(kmsRootOfKeyProvider(payload)).toBeUndefined();
  });
});

describe('verifyJob: the dstack KMS signature chain (built chain, real event log rewritten)', () => {
  it('passes when the chain leads from the attested key through this app to the measured KMS root', async () => {
    const [root, app, derived] = [Wallet.createRandom(), Wallet.createRandom(), Wallet.createRandom()];
    const report = await verifyWith({ derived, chain: chainFor({ root, app, derived, appId: APP_ID }), eventLog: eventLogNaming(compressed(root)) });
    expect(failed(report)).toEqual([]);
    expect(kms(report)).toEqual({
      name: 'kms chain',
      ok: true,
      detail: `KMS root ${root.address} (the KMS root in the measured key-provider event) issued app ${APP_ID} the key that derived ${derived.address}`,
    });
  });

  it('fails when the key was derived for another app', async () => {
    const [root, app, derived] = [Wallet.createRandom(), Wallet.createRandom(), Wallet.createRandom()];
    const report = await verifyWith({ derived, chain: chainFor({ root, app, derived, appId: OTHER_APP_ID }), eventLog: eventLogNaming(compressed(root)) });
    expect(failed(report)).toEqual(['kms chain']);
    expect(kms(report)?.detail).toMatch(new RegExp(`^the key was not derived for app ${APP_ID} by the trusted KMS: the chain leads to root 0x[0-9a-fA-F]{40}, the KMS root in the measured key-provider event is ${root.address}$`));
  });

  it('fails when the chain is for another derived key', async () => {
    const [root, app, derived, other] = [Wallet.createRandom(), Wallet.createRandom(), Wallet.createRandom(), Wallet.createRandom()];
    const report = await verifyWith({ derived, chain: chainFor({ root, app, derived: other, appId: APP_ID }), eventLog: eventLogNaming(compressed(root)) });
    expect(failed(report)).toEqual(['kms chain']);
  });

  it('fails against another expected KMS root, and passes the right one when the log names none (the real capture’s P-256 id)', async () => {
    const [root, app, derived] = [Wallet.createRandom(), Wallet.createRandom(), Wallet.createRandom()];
    const chain = chainFor({ root, app, derived, appId: APP_ID });
    const wrong = await verifyWith({ derived, chain, eventLog: eventLogNaming(compressed(root)), expectedKmsRoot: Wallet.createRandom().address });
    expect(failed(wrong)).toEqual(['kms chain']);

    const unnamed = await verifyWith({ derived, chain, eventLog: eventLogNaming(undefined) });
    expect(failed(unnamed)).toEqual(['kms chain']);
    expect(kms(unnamed)?.detail).toMatch(/nothing trusted names the KMS/);

    const given = await verifyWith({ derived, chain, eventLog: eventLogNaming(undefined), expectedKmsRoot: `0x${compressed(root)}` });
    expect(failed(given)).toEqual([]);
    expect(kms(given)?.detail).toContain('(the expected KMS root)');
  });

  it('fails a chain served in another shape than an array of hex strings', async () => {
    const derived = Wallet.createRandom();
    const report = await verifyWith({ derived, chain: 'ab'.repeat(65) as unknown as string[], eventLog: eventLogNaming(undefined) });
    expect(failed(report)).toEqual(['kms chain']);
    expect(kms(report)?.detail).toBe('kms_signature_chain must be an array of hex strings');
  });

  it('warns when no chain is served', async () => {
    const derived = Wallet.createRandom();
    const report = await verifyWith({ derived, chain: [], eventLog: eventLogNaming(undefined) });
    expect(failed(report)).toEqual([]);
    expect(kms(report)?.warning).toBe(true);
    expect(kms(report)?.detail).toMatch(/^none served/);
  });
});
