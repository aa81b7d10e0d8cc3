import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { hashMessage, recoverAddress } from 'ethers';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { canonicalJson } from '../../src/tee/canonical-json.js';
import { DEV_KEY_FILE, openDevKeyProvider } from '../../src/tee/dev-key.js';
import { receiptFieldsOf, receiptText, type ReceiptJson } from '../../src/tee/receipt.js';
import { startTestDaemon, tempDir, type TestDaemon } from '../helpers/daemon.js';

const sha256 = (bytes: Uint8Array | string) => createHash('sha256').update(bytes).digest('hex');
const PROVIDER = '0x1111111111111111111111111111111111111111';

let daemons: TestDaemon[] = [];
afterEach(async () => {
  for (const d of daemons) await d.close();
  daemons = [];
});

async function start(dataDir?: string, extra: Record<string, unknown> = {}) {
  const d = await startTestDaemon({
    dataDir,
    config: {
      provider: { address: PROVIDER },
      models: [
        {
          id: 'reference-image-1',
          backend: 'reference',
          capabilities: ['generation', 'edit'],
          sizes: ['64x64', '128x128'],
          pricePerImageWei: '2500000000000000',
        },
      ],
      backends: [{ id: 'reference', type: 'reference' }],
      ...extra,
    },
  });
  daemons.push(d);
  return d;
}

async function generate(url: string, bodyText: string) {
  const res = await fetch(`${url}/v1/images/generations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: bodyText });
  return { res, body: (await res.json()) as { data: Array<{ b64_json: string }> } };
}

describe('every completed job is signed (dev mode)', () => {
  it('signs sync generations: 0G text over the raw request and decoded images, checkable the way 0G’s SDK checks it', async () => {
    const d = await start();
    // Odd spacing on purpose: the hash must be of the bytes sent, never of re-serialised JSON.
    const bodyText = '{ "prompt":"a lighthouse",  "n":2, "size":"64x64" }';
    const { res, body } = await generate(d.url, bodyText);
    expect(res.status).toBe(200);
    const id = res.headers.get('zg-res-key')!;
    expect(id).toMatch(/^job_[0-9a-f]{32}$/);

    // No credentials: 0G's SDK fetches the signature without any.
    const sigRes = await fetch(`${d.url}/v1/proxy/signature/${id}?model=reference-image-1`);
    expect(sigRes.status).toBe(200);
    const sig = (await sigRes.json()) as { text: string; signature: string; signing_address: string; signing_algo: string; receipt: ReceiptJson };
    expect(sig.signing_algo).toBe('ecdsa');
    expect(sig.signing_address).toBe(d.daemon.tee.address);
    const images = body.data.map((item) => Buffer.from(item.b64_json, 'base64'));
    expect(sig.text).toBe(`INSECURE-DEV:${sha256(bodyText)}:${images.map((i) => sha256(i)).join(',')}`);
    expect(recoverAddress(hashMessage(sig.text), sig.signature)).toBe(sig.signing_address);

    const receipt = sig.receipt;
    expect(receipt).toMatchObject({
      version: 2,
      tee: 'INSECURE-DEV',
      provider: PROVIDER,
      signer: d.daemon.tee.address,
      job: id,
      model: 'reference-image-1',
      user: 'anonymous',
      seq: '1',
      request_sha256: sha256(bodyText),
      images: 2,
      image_sha256: images.map((i) => sha256(i)),
      price_per_image_wei: '2500000000000000',
      fee_wei: '5000000000000000',
    });
    expect(receipt.text).toBe(receiptText(receiptFieldsOf(receipt)));
    expect(receipt.text.split('\n')[0]).toBe('image-receipt/2');
    expect(receipt.text).toContain('\nseq:1\n');
    expect(recoverAddress(hashMessage(receipt.text), receipt.signature)).toBe(sig.signing_address);
    expect(res.headers.get('x-receipt-signature')).toBe(receipt.signature);
    expect(res.headers.get('x-receipt-signer')).toBe(sig.signing_address);
    expect(res.headers.get('x-receipt-fee-wei')).toBe('5000000000000000');

    // The same under /v1/signature.
    expect(await (await fetch(`${d.url}/v1/signature/${id}`)).json()).toEqual(sig);
  });

  it('hashes a multipart edit as the whole body on the wire', async () => {
    const d = await start();
    const image = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#884422' } }).png().toBuffer();
    const form = new FormData();
    form.append('prompt', 'winter');
    form.append('size', '64x64');
    form.append('image[]', new Blob([new Uint8Array(image)], { type: 'image/png' }), 'a.png');
    const encoded = new Request('http://x', { method: 'POST', body: form });
    const wire = Buffer.from(await encoded.arrayBuffer());
    const res = await fetch(`${d.url}/v1/images/edits`, {
      method: 'POST',
      headers: { 'content-type': encoded.headers.get('content-type')! },
      body: wire,
    });
    expect(res.status).toBe(200);
    const out = (await res.json()) as { data: Array<{ b64_json: string }> };
    const sig = (await (await fetch(`${d.url}/v1/signature/${res.headers.get('zg-res-key')}`)).json()) as { text: string };
    expect(sig.text).toBe(`INSECURE-DEV:${sha256(wire)}:${sha256(Buffer.from(out.data[0]!.b64_json, 'base64'))}`);
  });

  it('puts the receipt headers on completed async polls, in both shapes', async () => {
    const d = await start();
    const submit = await fetch(`${d.url}/v1/async/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'async', size: '64x64' }),
    });
    const { jobId } = (await submit.json()) as { jobId: string };
    const poll = await fetch(`${d.url}/v1/async/jobs/${jobId}?wait=10`);
    expect(((await poll.json()) as { status: string }).status).toBe('completed');
    expect(poll.headers.get('zg-res-key')).toBe(jobId);
    expect(poll.headers.get('x-receipt-signer')).toBe(d.daemon.tee.address);
    const theRouter = await fetch(`${d.url}/v1/jobs/${jobId}`);
    expect(theRouter.headers.get('x-receipt-signature')).toBe(poll.headers.get('x-receipt-signature'));
  });

  it('answers unknown and malformed ids with 404 in the error shape', async () => {
    const d = await start();
    for (const id of ['job_0123456789abcdef0123456789abcdef', 'not-an-id']) {
      const res = await fetch(`${d.url}/v1/proxy/signature/${id}`);
      expect(res.status).toBe(404);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('not_found');
    }
  });

  it('keeps signatures across a restart, under the same signer, and after the result expired', async () => {
    const dataDir = tempDir();
    const first = await start(dataDir, { jobs: { resultTtlMs: 1000 } });
    const { res } = await generate(first.url, JSON.stringify({ prompt: 'persist', size: '64x64' }));
    const id = res.headers.get('zg-res-key')!;
    const before = await (await fetch(`${first.url}/v1/signature/${id}`)).json();
    const signer = first.daemon.tee.address;
    await first.close();
    daemons = [];
    await new Promise((r) => setTimeout(r, 1100));
    const second = await start(dataDir, { jobs: { resultTtlMs: 1000 } });
    expect(second.daemon.tee.address).toBe(signer);
    expect((await fetch(`${second.url}/v1/async/jobs/${id}`)).status).toBe(404);
    expect(await (await fetch(`${second.url}/v1/signature/${id}`)).json()).toEqual(before);
  });

  it('reports dev mode honestly in /v1/models', async () => {
    const d = await start();
    const models = (await (await fetch(`${d.url}/v1/models`)).json()) as { data: Array<Record<string, unknown>> };
    expect(models.data[0]).toMatchObject({ tee_attested: false, verifiability: 'none', pricing: { image: '2500000000000000', unit: 'wei' } });
  });

  it('keeps the dev key in a 0600 file and never writes it to the log', async () => {
    const d = await start();
    const file = path.join(d.dataDir, DEV_KEY_FILE);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const key = readFileSync(file, 'utf8').trim();
    await generate(d.url, JSON.stringify({ prompt: 'log check', size: '64x64' }));
    const logText = JSON.stringify(d.logs);
    expect(logText).not.toContain(key.slice(2));
    expect(logText).not.toContain(key.slice(2).toUpperCase());
  });
});

describe('dev key provider', () => {
  it('refuses NODE_ENV=production unless forced', () => {
    const dataDir = tempDir();
    expect(() => openDevKeyProvider({ dataDir, nodeEnv: 'production', allowInProduction: false })).toThrow(/refuses to run with NODE_ENV=production/);
    const forced = openDevKeyProvider({ dataDir, nodeEnv: 'production', allowInProduction: true });
    expect(forced.insecure).toBe(true);
    expect(openDevKeyProvider({ dataDir, nodeEnv: 'development', allowInProduction: false }).address).toBe(forced.address);
  });
});

describe('attestation endpoints (dev mode)', () => {
  it('binds the signer and the caller’s nonce into report_data, and says it is insecure', async () => {
    const d = await start();
    const nonce = 'ab'.repeat(32);
    const res = await fetch(`${d.url}/v1/attestation/report?nonce=${nonce}`);
    expect(res.status).toBe(200);
    const report = (await res.json()) as Record<string, any>;
    expect(report).toMatchObject({
      version: 1,
      tee: 'none',
      insecure: true,
      key_source: 'dev-file',
      signing_address: d.daemon.tee.address,
      signing_algo: 'ecdsa',
      request_nonce: nonce,
      intel_quote: null,
      quote_provider: 'none',
      kms_signature_chain: [],
      binding: { v: 1, signing_address: d.daemon.tee.address, signing_algo: 'ecdsa', model: 'reference-image-1', provider_address: PROVIDER, key_source: 'dev-file' },
    });
    expect(report.report_data).toBe(sha256(canonicalJson(report.binding)) + nonce);
  });

  it('serves a cached nonce-less report and refuses malformed nonces', async () => {
    const d = await start();
    const a = (await (await fetch(`${d.url}/v1/attestation/report`)).json()) as Record<string, any>;
    expect(a.request_nonce).toBeNull();
    expect(a.report_data.endsWith('0'.repeat(64))).toBe(true);
    for (const bad of ['abc', 'zz'.repeat(32), 'ab'.repeat(33)]) {
      const res = await fetch(`${d.url}/v1/attestation/report?nonce=${bad}`);
      expect(res.status).toBe(400);
      expect(((await res.json()) as Record<string, any>).error.param).toBe('nonce');
    }
  });

  it('rate-limits fresh reports with 429 and Retry-After', async () => {
    // Two a minute for this client: a quarter of the allowance all clients share.
    const d = await start(undefined, { tee: { freshReportsPerMinute: 8 } });
    const nonce = () => Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('hex');
    expect((await fetch(`${d.url}/v1/attestation/report?nonce=${nonce()}`)).status).toBe(200);
    expect((await fetch(`${d.url}/v1/attestation/report?nonce=${nonce()}`)).status).toBe(200);
    const limited = await fetch(`${d.url}/v1/attestation/report?nonce=${nonce()}`);
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    // The cached report is not limited.
    expect((await fetch(`${d.url}/v1/attestation/report`)).status).toBe(200);
  });

  it('has no legacy quote in dev mode', async () => {
    const d = await start();
    const res = await fetch(`${d.url}/v1/quote`);
    expect(res.status).toBe(501);
    expect(((await res.json()) as Record<string, any>).error.code).toBe('no_tee');
  });
});

describe('dstack mode through the daemon (fake guest agent)', () => {
  it('signs with the agent-derived key, keeps the signer and signatures across a restart, and quotes with the binding', async () => {
    const { startFakeDstackAgent } = await import('../fakes/dstack-guest-agent.js');
    const agent = await startFakeDstackAgent({ appSecret: 'restart-test' });
    try {
      const dataDir = tempDir();
      const tee = { mode: 'dstack', dstack: { endpoint: agent.socketPath } };
      const first = await start(dataDir, { tee });
      expect(first.daemon.tee.keySource).toBe('dstack-kms:pixeld/signing/v1');
      const { res } = await generate(first.url, JSON.stringify({ prompt: 'attested', size: '64x64' }));
      const id = res.headers.get('zg-res-key')!;
      const before = (await (await fetch(`${first.url}/v1/proxy/signature/${id}`)).json()) as { text: string; signature: string; signing_address: string };
      expect(before.text).not.toContain('INSECURE-DEV');
      expect(recoverAddress(hashMessage(before.text), before.signature)).toBe(first.daemon.tee.address);
      const models = (await (await fetch(`${first.url}/v1/models`)).json()) as { data: Array<Record<string, unknown>> };
      expect(models.data[0]).toMatchObject({ tee_attested: true, verifiability: 'TeeML' });

      // The report's quote carries sha256(binding) ‖ nonce as its report_data (bytes 568..632 of a v4 quote).
      const nonce = 'cd'.repeat(32);
      const report = (await (await fetch(`${first.url}/v1/attestation/report?nonce=${nonce}`)).json()) as Record<string, any>;
      expect(report).toMatchObject({ tee: 'dstack', insecure: false, quote_provider: 'dstack-guest-agent', request_nonce: nonce });
      expect(report.kms_signature_chain.length).toBeGreaterThan(0);
      expect(Buffer.from(report.intel_quote, 'hex').subarray(568, 632).toString('hex')).toBe(report.report_data);
      expect(report.report_data).toBe(sha256(canonicalJson(report.binding)) + nonce);

      // 0G's legacy quote: report_data = the ASCII address, zero padded; header = personal_sign(keccak256(body)).
      const legacy = await fetch(`${first.url}/v1/quote`);
      const body = await legacy.text();
      const reportData = Buffer.from(body, 'hex').subarray(568, 632);
      expect(reportData.subarray(0, 42).toString('ascii')).toBe(first.daemon.tee.address);
      expect(reportData.subarray(42).every((b) => b === 0)).toBe(true);
      const { getBytes, keccak256, toUtf8Bytes } = await import('ethers');
      const digest = hashMessage(getBytes(keccak256(toUtf8Bytes(body))));
      expect(recoverAddress(digest, legacy.headers.get('zg-quote-signature')!)).toBe(first.daemon.tee.address);

      const signer = first.daemon.tee.address;
      await first.close();
      daemons = [];
      const second = await start(dataDir, { tee });
      expect(second.daemon.tee.address).toBe(signer);
      expect(await (await fetch(`${second.url}/v1/proxy/signature/${id}`)).json()).toEqual(before);
    } finally {
      await agent.close();
    }
  });
});
