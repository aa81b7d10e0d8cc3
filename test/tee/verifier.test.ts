import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Quote } from '@phala/dcap-qvl';
import { Wallet } from 'ethers';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import type { TeeKeyProvider } from '../../src/tee/key-provider.js';
import { verifyJob, type VerificationReport, type VerifyJobInput } from '../../src/tee/verifier.js';
import { verifyTdxQuote, type VerifiedTdxQuote } from '../../src/tee/verify-quote.js';
import { startTestDaemon, tempDir, type TestDaemon } from '../helpers/daemon.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const FIXTURES = path.join(REPO, 'test/fixtures/tdx');
const SAMPLE_QUOTE = readFileSync(path.join(FIXTURES, 'tdx_quote'));
const COLLATERAL_FILE = path.join(FIXTURES, 'tdx_quote_collateral.json');
const COLLATERAL = JSON.parse(readFileSync(COLLATERAL_FILE, 'utf8')) as Record<string, string>;
/** Just after the collateral was issued: its QE identity came 16 minutes after its TCB info, so the later date. */
const COLLATERAL_NOW =
  Math.max(
    Date.parse((JSON.parse(COLLATERAL.tcb_info!) as { issueDate: string }).issueDate),
    Date.parse((JSON.parse(COLLATERAL.qe_identity!) as { issueDate: string }).issueDate),
  ) /
    1000 +
  60;

const PROVIDER = '0x1111111111111111111111111111111111111111';
const MODEL = 'reference-image-1';
const PRICE = 2_500_000_000_000_000n;
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

let daemons: TestDaemon[] = [];
afterEach(async () => {
  for (const d of daemons) await d.close();
  daemons = [];
});

async function start(tee?: TeeKeyProvider): Promise<TestDaemon> {
  const d = await startTestDaemon({
    tee,
    config: {
      provider: { address: PROVIDER },
      models: [{ id: MODEL, backend: 'reference', capabilities: ['generation', 'edit'], sizes: ['64x64'], pricePerImageWei: PRICE.toString() }],
      backends: [{ id: 'reference', type: 'reference', latencyMsPerImage: 0 }],
    },
  });
  daemons.push(d);
  return d;
}

interface Received {
  jobId: string;
  /** Exactly the bytes sent. */
  requestBody: Buffer;
  /** The response body as received, and the images decoded from it. */
  responseText: string;
  images: Buffer[];
}

async function received(res: Response, requestBody: Buffer): Promise<Received> {
  expect(res.status).toBe(200);
  const responseText = await res.text();
  const body = JSON.parse(responseText) as { data: Array<{ b64_json: string }> };
  return { jobId: res.headers.get('zg-res-key')!, requestBody, responseText, images: body.data.map((i) => Buffer.from(i.b64_json, 'base64')) };
}

async function generate(d: TestDaemon, prompt: string, n = 1): Promise<Received> {
  // Odd spacing on purpose: only the bytes on the wire verify, never a re-serialisation.
  const bodyText = `{"prompt": ${JSON.stringify(prompt)},  "n":${n}, "size":"64x64" }`;
  const res = await fetch(`${d.url}/v1/images/generations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: bodyText });
  return received(res, Buffer.from(bodyText));
}

async function edit(d: TestDaemon): Promise<Received> {
  const image = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#336699' } }).png().toBuffer();
  const form = new FormData();
  form.append('prompt', 'add snow');
  form.append('size', '64x64');
  form.append('image[]', new Blob([new Uint8Array(image)], { type: 'image/png' }), 'in.png');
  const encoded = new Request('http://x', { method: 'POST', body: form });
  const wire = Buffer.from(await encoded.arrayBuffer());
  const res = await fetch(`${d.url}/v1/images/edits`, { method: 'POST', headers: { 'content-type': encoded.headers.get('content-type')! }, body: wire });
  return received(res, wire);
}

function verify(d: TestDaemon, job: Received, extra: Partial<VerifyJobInput> = {}): Promise<VerificationReport> {
  return verifyJob({ baseUrl: d.url, jobId: job.jobId, requestBody: job.requestBody, images: job.images, ...extra });
}

const failed = (report: VerificationReport) => report.checks.filter((c) => !c.ok).map((c) => c.name);
const detail = (report: VerificationReport, name: string) => report.checks.find((c) => c.name === name)?.detail;

function flipByte(bytes: Buffer, at: number): Buffer {
  const copy = Buffer.from(bytes);
  copy[at]! ^= 0x01;
  return copy;
}

/** A fetch that answers `from`'s URLs with `to`'s responses: a daemon (or a proxy) lying about one thing. */
function rewritingFetch(rewrite: (url: string) => string): typeof fetch {
  return (input, init) => fetch(rewrite(String(input)), init);
}

const ALL_CHECKS_DEV = [
  'attestation',
  'nonce',
  'report_data',
  'binding',
  'expected signer',
  'tee',
  'quote',
  'request',
  'image count',
  'image 0',
  'image 1',
  '0G text',
  'receipt text',
  'signature',
  'receipt signature',
  'receipt signer',
  'job',
  'model',
  'provider',
  'receipt tee',
  'fee',
];

describe('verifyJob against a dev-mode daemon', () => {
  it('passes every check for a JSON generation when insecure mode is allowed, with dev mode flagged as a warning', async () => {
    const d = await start();
    const job = await generate(d, 'a lighthouse', 2);
    const report = await verify(d, job, { allowInsecure: true, expectedModel: MODEL, expectedSigner: d.daemon.tee.address });
    expect(report.checks.map((c) => c.name)).toEqual(ALL_CHECKS_DEV);
    expect(failed(report)).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.signingAddress).toBe(d.daemon.tee.address);
    expect(report.checks.filter((c) => c.warning).map((c) => c.name)).toEqual(['tee', 'quote']);
    expect(detail(report, 'tee')).toMatch(/^dev mode: nothing is attested/);
    expect(detail(report, 'fee')).toBe(`${2n * PRICE} wei = 2 × ${PRICE} wei`);
  });

  it('passes every check for a multipart edit, hashed as the whole body on the wire', async () => {
    const d = await start();
    const job = await edit(d);
    const report = await verify(d, job, { allowInsecure: true, expectedModel: MODEL });
    expect(failed(report)).toEqual([]);
    expect(report.ok).toBe(true);
    expect(detail(report, 'request')).toBe(`sha256 ${sha256(job.requestBody)}, as signed`);
  });

  it('fails closed in dev mode unless insecure mode is allowed', async () => {
    const d = await start();
    const job = await generate(d, 'closed');
    const report = await verify(d, job);
    expect(report.ok).toBe(false);
    expect(failed(report)).toEqual(['tee']);
    expect(detail(report, 'tee')).toMatch(/^dev mode: nothing is attested \(tee "none", insecure true\).*refused/);
    // No quote to check, and no pretending there was one.
    expect(report.checks.find((c) => c.name === 'quote')).toBeUndefined();
  });

  it('names the image whose bytes differ by one byte', async () => {
    const d = await start();
    const job = await generate(d, 'two images', 2);
    const tampered = flipByte(job.images[1]!, 100);
    const report = await verify(d, { ...job, images: [job.images[0]!, tampered] }, { allowInsecure: true });
    expect(report.ok).toBe(false);
    expect(failed(report)).toEqual(['image 1', '0G text', 'receipt text']);
    expect(detail(report, 'image 1')).toBe(`sha256 differs: received ${sha256(tampered)}, signed ${sha256(job.images[1]!)}`);
    expect(detail(report, 'receipt text')).toContain(`line 11: served 'image_sha256:${sha256(job.images[0]!)},${sha256(job.images[1]!)}'`);
  });

  it('fails when one byte of the request differs from what was signed', async () => {
    const d = await start();
    const job = await generate(d, 'request bytes');
    const tampered = flipByte(job.requestBody, 3);
    const report = await verify(d, { ...job, requestBody: tampered }, { allowInsecure: true });
    expect(failed(report)).toEqual(['request', '0G text', 'receipt text']);
    expect(detail(report, 'request')).toBe(`request body differs from the signed request_sha256: received ${sha256(tampered)}, signed ${sha256(job.requestBody)}`);
  });

  it('fails when the receipt names another model than expected', async () => {
    const d = await start();
    const job = await generate(d, 'model');
    const report = await verify(d, job, { allowInsecure: true, expectedModel: 'gpt-image-1' });
    expect(failed(report)).toEqual(['model']);
    expect(detail(report, 'model')).toBe(`signed '${MODEL}', expected 'gpt-image-1'`);
  });

  it('fails when the attested signer is not the one expected', async () => {
    const d = await start();
    const job = await generate(d, 'signer');
    const other = Wallet.createRandom().address;
    const report = await verify(d, job, { allowInsecure: true, expectedSigner: other });
    expect(failed(report)).toEqual(['expected signer']);
    expect(detail(report, 'expected signer')).toBe(`attested signer is ${d.daemon.tee.address}, expected ${other}`);
  });

  it('catches job B’s genuine signature served for job A', async () => {
    const d = await start();
    const a = await generate(d, 'job a');
    const b = await generate(d, 'job b');
    const swap = rewritingFetch((url) => url.replace(`/v1/signature/${a.jobId}`, `/v1/signature/${b.jobId}`));
    const report = await verify(d, a, { allowInsecure: true, fetch: swap });
    expect(report.ok).toBe(false);
    // Validly signed by the attested key: only comparing with the received bytes and the job id catches it.
    expect(report.checks.find((c) => c.name === 'signature')!.ok).toBe(true);
    expect(report.checks.find((c) => c.name === 'receipt signature')!.ok).toBe(true);
    expect(failed(report)).toEqual(expect.arrayContaining(['request', 'image 0', '0G text', 'receipt text', 'job']));
    expect(detail(report, 'job')).toBe(`signed job '${b.jobId}', asked for '${a.jobId}'`);
  });

  it('catches a signature by a key other than the attested one', async () => {
    const d = await start();
    const elsewhere = await start();
    const job = await generate(d, 'same request');
    const foreign = await generate(elsewhere, 'same request');
    const report = await verify(d, job, {
      allowInsecure: true,
      fetch: rewritingFetch((url) => (url.includes('/v1/signature/') ? `${elsewhere.url}/v1/signature/${foreign.jobId}` : url)),
    });
    expect(failed(report)).toEqual(expect.arrayContaining(['signature', 'receipt signature', 'receipt signer']));
    expect(detail(report, 'signature')).toBe(`0G text recovers ${elsewhere.daemon.tee.address}, attested signer is ${d.daemon.tee.address}`);
    expect(detail(report, 'receipt signature')).toBe(`receipt text recovers ${elsewhere.daemon.tee.address}, attested signer is ${d.daemon.tee.address}`);
  });

  it('rejects a report made for another nonce (a replay)', async () => {
    const d = await start();
    const job = await generate(d, 'replay');
    const old = 'cd'.repeat(32);
    const replay = rewritingFetch((url) => url.replace(/nonce=[0-9a-f]{64}/, `nonce=${old}`));
    const report = await verify(d, job, { allowInsecure: true, fetch: replay });
    expect(failed(report)).toEqual(['nonce', 'report_data']);
    expect(detail(report, 'nonce')).toBe(`the report answers nonce ${old}, we sent ${report.nonce}: a stale or replayed report`);
  });

  it('reports an unknown job as a failed signature fetch', async () => {
    const d = await start();
    const job = await generate(d, 'unknown');
    const report = await verify(d, { ...job, jobId: 'job_0123456789abcdef0123456789abcdef' }, { allowInsecure: true });
    expect(failed(report)).toEqual(['signature body']);
    expect(detail(report, 'signature body')).toMatch(/answered 404: no signature for id job_0123456789abcdef0123456789abcdef$/);
  });
});

/** A TEE on a test double: a real key, and quotes made from Intel's sample quote. */
function fakeTdx(makeQuote: (reportData: Buffer) => Buffer): TeeKeyProvider {
  const wallet = Wallet.createRandom();
  return {
    mode: 'tdx',
    teeLabel: 'tdx',
    insecure: false,
    keySource: 'test-fake-tdx',
    address: wallet.address,
    signer: wallet,
    journalDir: '/nonexistent',
    signatureChain: [],
    async info() {
      return undefined;
    },
    async quote(reportData) {
      return { quote: makeQuote(reportData), quoteProvider: 'test-sample', eventLog: undefined };
    },
  };
}

/** In a TDX v4 quote the report_data is bytes 568..632. */
function spliceReportData(reportData: Buffer): Buffer {
  const quote = Buffer.from(SAMPLE_QUOTE);
  reportData.copy(quote, 568);
  return quote;
}

describe('verifyJob against a TDX daemon', () => {
  it('verifies Intel’s sample quote, and still fails: its report_data does not bind this key and nonce', async () => {
    const d = await start(fakeTdx(() => SAMPLE_QUOTE));
    const job = await generate(d, 'tdx', 2);
    const report = await verify(d, job, { collateral: COLLATERAL, nowSeconds: COLLATERAL_NOW, expectedModel: MODEL });
    expect(report.tee).toBe('tdx');
    expect(report.checks.find((c) => c.name === 'quote')).toEqual({ name: 'quote', ok: true, detail: 'UpToDate (TDX, collateral offline)' });
    expect(report.checks.find((c) => c.name === 'tee')).toEqual({ name: 'tee', ok: true, detail: 'tdx, key from test-fake-tdx' });
    expect(failed(report)).toEqual(['quote report_data']);
    expect(detail(report, 'quote report_data')).toMatch(
      new RegExp(`^quote report_data does not match the binding and nonce: the quote has ${SAMPLE_QUOTE.subarray(568, 632).toString('hex')}, expected [0-9a-f]{128}$`),
    );
    expect(report.ok).toBe(false);
  });

  it('fails the quote when the collateral is not valid at the given time', async () => {
    const d = await start(fakeTdx(() => SAMPLE_QUOTE));
    const job = await generate(d, 'tdx late');
    const report = await verify(d, job, { collateral: COLLATERAL, nowSeconds: COLLATERAL_NOW + 365 * 86_400 });
    expect(failed(report)).toEqual(['quote']);
    expect(detail(report, 'quote')).toMatch(/^quote verification failed: .*expired/);
  });

  it('passes every check when the quote carries sha256(binding) ‖ nonce (signature check stood in for)', async () => {
    const d = await start(fakeTdx(spliceReportData));
    const job = await generate(d, 'tdx bound', 2);
    // Splicing breaks Intel's signature, which the real verifier notices …
    const real = await verify(d, job, { collateral: COLLATERAL, nowSeconds: COLLATERAL_NOW });
    expect(failed(real)).toEqual(['quote']);
    expect(detail(real, 'quote')).toMatch(/signature is invalid/);
    // … so stand in for the signature check and read report_data from the quote as it came.
    const trusting: typeof verifyTdxQuote = async (quote): Promise<VerifiedTdxQuote> => {
      const td = Quote.parse(quote).report.asTd10()!;
      const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
      return { status: 'UpToDate', advisoryIds: [], reportData: Buffer.from(td.reportData), mrTd: hex(td.mrTd), rtMr0: hex(td.rtMr0), rtMr1: hex(td.rtMr1), rtMr2: hex(td.rtMr2), rtMr3: hex(td.rtMr3), collateralSource: 'offline' };
    };
    // Every register pinned to the sample quote's own values (splicing report_data leaves them untouched) …
    const td = Quote.parse(SAMPLE_QUOTE).report.asTd10()!;
    const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
    const expectedMeasurements = { mrtd: hex(td.mrTd), rtmr0: hex(td.rtMr0), rtmr1: hex(td.rtMr1), rtmr2: hex(td.rtMr2), rtmr3: hex(td.rtMr3) };
    const report = await verify(d, job, { verifyQuote: trusting, expectedModel: MODEL, expectedSigner: d.daemon.tee.address, expectedMeasurements });
    expect(failed(report)).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.checks.filter((c) => c.warning)).toEqual([]);
    // … and without the pins the same quote passes only with the warning that nothing proves which code ran.
    const unpinned = await verify(d, job, { verifyQuote: trusting });
    expect(unpinned.ok).toBe(true);
    expect(unpinned.checks.filter((c) => c.warning).map((c) => c.name)).toEqual(['measurements']);
    expect(detail(report, 'receipt tee')).toBe("'tdx', as attested");
    expect(detail(report, 'quote report_data')).toBe('the hardware signed sha256(binding) ‖ our nonce');
  });
});

describe('pixeld verify', () => {
  function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'verify', ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`pixeld verify did not exit within 20 s; stderr: ${stderr}`));
      }, 20_000);
      child.on('error', reject);
      child.on('exit', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      });
    });
  }

  function files(job: Received) {
    const dir = tempDir('pixeld-verify-');
    const request = path.join(dir, 'request.bin');
    const response = path.join(dir, 'response.json');
    writeFileSync(request, job.requestBody);
    writeFileSync(response, job.responseText);
    const images = job.images.map((img, i) => {
      const file = path.join(dir, `image-${i}.png`);
      writeFileSync(file, img);
      return file;
    });
    return { dir, request, response, images };
  }

  it('exits 0 on an untampered dev job with --allow-insecure, one verdict line per check', async () => {
    const d = await start();
    const job = await generate(d, 'cli', 2);
    const f = files(job);
    const run = await cli(['--url', d.url, '--job', job.jobId, '--request', f.request, '--response', f.response, '--model', MODEL, '--allow-insecure']);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const lines = run.stdout.trimEnd().split('\n');
    const verdicts = lines.filter((l) => /^[✓!✗] /.test(l));
    expect(verdicts.map((l) => l.slice(2, l.indexOf(':')))).toEqual(ALL_CHECKS_DEV.filter((n) => n !== 'expected signer'));
    expect(verdicts.every((l) => !l.startsWith('✗'))).toBe(true);
    expect(lines).toContain(`✓ image 1: sha256 ${sha256(job.images[1]!)}, as signed`);
    expect(lines.find((l) => l.startsWith('! tee: '))).toMatch(/dev mode: nothing is attested/);
    expect(lines.at(-1)).toBe(`verified INSECURELY: job ${job.jobId} was signed by ${d.daemon.tee.address}, but nothing is attested (dev mode)`);
  });

  it('exits non-zero in dev mode without --allow-insecure', async () => {
    const d = await start();
    const job = await generate(d, 'cli closed');
    const f = files(job);
    const run = await cli(['--url', d.url, '--job', job.jobId, '--request', f.request, '--image', f.images[0]!]);
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(/^✗ tee: dev mode: nothing is attested/m);
    expect(run.stdout.trimEnd().split('\n').at(-1)).toMatch(/^NOT VERIFIED: 1 of \d+ checks failed \(tee\)$/);
  });

  it('exits non-zero on a tampered image and names it', async () => {
    const d = await start();
    const job = await generate(d, 'cli tamper', 2);
    const f = files(job);
    const tampered = flipByte(job.images[0]!, 50);
    writeFileSync(f.images[0]!, tampered);
    const run = await cli(['--url', d.url, '--job', job.jobId, '--request', f.request, '--image', f.images[0]!, '--image', f.images[1]!, '--allow-insecure']);
    expect(run.code).toBe(1);
    expect(run.stdout).toContain(`✗ image 0: sha256 differs: received ${sha256(tampered)}, signed ${sha256(job.images[0]!)}`);
    expect(run.stdout).toContain(`✓ image 1: sha256 ${sha256(job.images[1]!)}, as signed`);
  });

  it('verifies the quote offline with --collateral and --now, and fails the binding of the sample quote', async () => {
    const d = await start(fakeTdx(() => SAMPLE_QUOTE));
    const job = await generate(d, 'cli tdx');
    const f = files(job);
    const run = await cli(['--url', d.url, '--job', job.jobId, '--request', f.request, '--response', f.response, '--collateral', COLLATERAL_FILE, '--now', String(COLLATERAL_NOW)]);
    expect(run.code).toBe(1);
    expect(run.stdout).toContain('✓ quote: UpToDate (TDX, collateral offline)');
    expect(run.stdout).toMatch(/^✗ quote report_data: quote report_data does not match the binding and nonce/m);
  });

  it('prints the usage and exits 2 on bad arguments', async () => {
    for (const args of [['--url', 'http://127.0.0.1:1', '--request', 'x', '--image', 'y'], ['--url', 'http://127.0.0.1:1', '--job', 'j', '--request', 'x'], ['--bogus']]) {
      const run = await cli(args);
      expect(run.code).toBe(2);
      expect(run.stderr).toContain('Usage: pixeld verify');
    }
    const missing = await cli(['--url', 'http://127.0.0.1:1', '--job', 'j', '--request', '/nonexistent/request', '--image', '/nonexistent/image']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('--request /nonexistent/request: ENOENT');
  });
});
