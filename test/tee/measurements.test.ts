import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Quote } from '@phala/dcap-qvl';
import { Wallet } from 'ethers';
import { afterEach, describe, expect, it } from 'vitest';
import { appIdentityOf, EventLogError, parseEventLog, replayEventLog, runtimeEventDigest } from '../../src/tee/dstack-event-log.js';
import type { TeeKeyProvider } from '../../src/tee/key-provider.js';
import { compareRegisters, MeasurementsError, parseMeasurements, type ExpectedMeasurements } from '../../src/tee/measurements.js';
import { verifyJob, type VerificationReport, type VerifyJobInput } from '../../src/tee/verifier.js';
import type { VerifiedTdxQuote, verifyTdxQuote } from '../../src/tee/verify-quote.js';
import { startTestDaemon, tempDir, type TestDaemon } from '../helpers/daemon.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const TDX = path.join(REPO, 'test/fixtures/tdx');
const DSTACK = path.join(REPO, 'test/fixtures/dstack');

/** Intel's sample quote with the collateral current when it was taken: verified for real below. */
const INTEL_QUOTE = readFileSync(path.join(TDX, 'tdx_quote'));
const COLLATERAL = JSON.parse(readFileSync(path.join(TDX, 'tdx_quote_collateral.json'), 'utf8')) as Record<string, string>;
const COLLATERAL_NOW =
  Math.max(
    Date.parse((JSON.parse(COLLATERAL.tcb_info!) as { issueDate: string }).issueDate),
    Date.parse((JSON.parse(COLLATERAL.qe_identity!) as { issueDate: string }).issueDate),
  ) /
    1000 +
  60;

/** dstack's published guest-agent captures: quote + event log as GetQuote returns them. */
interface Capture {
  quote: string;
  event_log: string;
}
const LITE = JSON.parse(readFileSync(path.join(DSTACK, 'tdx-lite-getquote.json'), 'utf8')) as Capture;
const REPORT = JSON.parse(readFileSync(path.join(DSTACK, 'quote-report.json'), 'utf8')) as Capture;

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** The registers as the quote carries them, parsed without checking Intel's signature (no collateral was captured). */
function registersOf(quote: Buffer) {
  const td = Quote.parse(quote).report.asTd10()!;
  return { mrTd: hex(td.mrTd), rtMr0: hex(td.rtMr0), rtMr1: hex(td.rtMr1), rtMr2: hex(td.rtMr2), rtMr3: hex(td.rtMr3) };
}

function pinsOf(quote: Buffer): Required<Pick<ExpectedMeasurements, 'mrtd' | 'rtmr0' | 'rtmr1' | 'rtmr2' | 'rtmr3'>> {
  const r = registersOf(quote);
  return { mrtd: r.mrTd, rtmr0: r.rtMr0, rtmr1: r.rtMr1, rtmr2: r.rtMr2, rtmr3: r.rtMr3 };
}

/** One hex digit changed, at `at`. */
function changeDigit(value: string, at = 10): string {
  const digit = value[at] === '0' ? '1' : '0';
  return value.slice(0, at) + digit + value.slice(at + 1);
}

const LITE_QUOTE = Buffer.from(LITE.quote, 'hex');
const REPORT_QUOTE = Buffer.from(REPORT.quote, 'hex');
const LITE_APP_ID = '86b0e55f2fa8e4fb69d890f14f54d5612707646e';
const LITE_COMPOSE_HASH = '86b0e55f2fa8e4fb69d890f14f54d5612707646e2573d54e0d2ddaaade77caa9';
const LITE_INSTANCE_ID = '050bf89570575fe8fab4cb8f0a62a9e64efe8ead';

describe('compareRegisters on real quotes', () => {
  for (const [name, quote] of [
    ['Intel sample', INTEL_QUOTE],
    ['dstack tdx-lite', LITE_QUOTE],
    ['dstack quote-report', REPORT_QUOTE],
  ] as const) {
    it(`${name}: its own values pass; one changed digit in any register fails naming it, the expected and the actual value`, () => {
      const registers = registersOf(quote);
      const pins = pinsOf(quote);
      expect(compareRegisters(registers, pins).map((c) => c.ok)).toEqual([true, true, true, true, true]);
      for (const reg of ['mrtd', 'rtmr0', 'rtmr1', 'rtmr2', 'rtmr3'] as const) {
        const wrong = changeDigit(pins[reg]);
        const result = compareRegisters(registers, { ...pins, [reg]: wrong });
        expect(result.filter((c) => !c.ok)).toEqual([{ register: reg, ok: false, detail: `${reg.toUpperCase()} differs: expected ${wrong}, the quote has ${pins[reg]}` }]);
      }
    });
  }

  it('compares only what was pinned', () => {
    const pins = pinsOf(INTEL_QUOTE);
    expect(compareRegisters(registersOf(INTEL_QUOTE), { rtmr2: pins.rtmr2 }).map((c) => c.register)).toEqual(['rtmr2']);
    expect(compareRegisters(registersOf(INTEL_QUOTE), {})).toEqual([]);
  });
});

describe('parseMeasurements', () => {
  it('normalises 0x and upper case, and refuses unknown keys and wrong lengths', () => {
    const pins = pinsOf(LITE_QUOTE);
    expect(parseMeasurements({ mrtd: `0x${pins.mrtd.toUpperCase()}`, appId: LITE_APP_ID }, 'm.json')).toEqual({ mrtd: pins.mrtd, appId: LITE_APP_ID });
    expect(() => parseMeasurements({ mrdt: pins.mrtd }, 'm.json')).toThrow('m.json: unknown key "mrdt"');
    expect(() => parseMeasurements({ rtmr0: pins.rtmr0.slice(2) }, 'm.json')).toThrow(MeasurementsError);
    expect(() => parseMeasurements({ composeHash: LITE_APP_ID }, 'm.json')).toThrow('composeHash in m.json must be 64 hex characters');
    expect(() => parseMeasurements([], 'm.json')).toThrow('m.json must hold a JSON object');
  });
});

describe('dstack event log', () => {
  it('replays both captures to all four of their quote’s RTMRs', () => {
    for (const capture of [LITE, REPORT]) {
      const r = registersOf(Buffer.from(capture.quote, 'hex'));
      expect(replayEventLog(parseEventLog(capture.event_log))).toEqual([r.rtMr0, r.rtMr1, r.rtMr2, r.rtMr3]);
    }
  });

  it('derives the runtime digests the capture with digests carries, from event name and payload', () => {
    const served = (JSON.parse(REPORT.event_log) as Array<{ imr: number; event_type: number; digest: string; event: string; event_payload: string }>).filter((e) => e.imr === 3);
    expect(served.length).toBeGreaterThan(5);
    for (const e of served) expect(runtimeEventDigest(e.event_type, e.event, e.event_payload)).toBe(e.digest);
  });

  it('reads the app’s identity from the RTMR3 events', () => {
    const app = appIdentityOf(parseEventLog(LITE.event_log));
    expect(app).toMatchObject({ appId: LITE_APP_ID, composeHash: LITE_COMPOSE_HASH, instanceId: LITE_INSTANCE_ID });
    expect(app.keyProvider).toMatch(/^\{"name":"kms"/);
  });

  it('refuses a runtime event whose digest is not that of its payload (true digest, false compose hash)', () => {
    const events = JSON.parse(REPORT.event_log) as Array<{ event: string; event_payload: string }>;
    const compose = events.find((e) => e.event === 'compose-hash')!;
    compose.event_payload = changeDigit(compose.event_payload);
    expect(() => parseEventLog(JSON.stringify(events))).toThrow(EventLogError);
    expect(() => parseEventLog(JSON.stringify(events))).toThrow(/"compose-hash"\): its digest [0-9a-f]{96} is not the digest of its name and payload/);
  });

  it('refuses an event that appears twice', () => {
    const events = JSON.parse(LITE.event_log) as Array<{ event: string }>;
    events.push({ ...events.find((e) => e.event === 'compose-hash')! });
    expect(() => appIdentityOf(parseEventLog(JSON.stringify(events)))).toThrow('the event log has "compose-hash" twice');
  });
});

// verifyJob end to end against daemons with a fake TEE serving the real quotes.

const PROVIDER = '0x1111111111111111111111111111111111111111';
const MODEL = 'reference-image-1';

let daemons: TestDaemon[] = [];
afterEach(async () => {
  for (const d of daemons) await d.close();
  daemons = [];
});

function fakeTee(mode: 'tdx' | 'dstack', makeQuote: (reportData: Buffer) => Buffer, eventLog?: string): TeeKeyProvider {
  const wallet = Wallet.createRandom();
  return {
    mode,
    teeLabel: mode,
    insecure: false,
    keySource: `test-fake-${mode}`,
    address: wallet.address,
    signer: wallet,
    journalDir: '/nonexistent',
    signatureChain: [],
    async info() {
      return undefined;
    },
    async quote(reportData) {
      return { quote: makeQuote(reportData), quoteProvider: 'test-sample', eventLog };
    },
  };
}

async function start(tee: TeeKeyProvider): Promise<TestDaemon> {
  const d = await startTestDaemon({
    tee,
    config: {
      provider: { address: PROVIDER },
      models: [{ id: MODEL, backend: 'reference', capabilities: ['generation'], sizes: ['64x64'], pricePerImageWei: '1000' }],
      backends: [{ id: 'reference', type: 'reference', latencyMsPerImage: 0 }],
    },
  });
  daemons.push(d);
  return d;
}

async function generate(d: TestDaemon) {
  const bodyText = '{"prompt":"measured","n":1,"size":"64x64"}';
  const res = await fetch(`${d.url}/v1/images/generations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: bodyText });
  expect(res.status).toBe(200);
  const responseText = await res.text();
  const body = JSON.parse(responseText) as { data: Array<{ b64_json: string }> };
  return { jobId: res.headers.get('zg-res-key')!, requestBody: Buffer.from(bodyText), responseText, images: body.data.map((i) => Buffer.from(i.b64_json, 'base64')) };
}

const check = (report: VerificationReport, name: string) => report.checks.find((c) => c.name === name);
const failed = (report: VerificationReport) => report.checks.filter((c) => !c.ok).map((c) => c.name);

describe('verifyJob with expected measurements, Intel’s sample quote verified for real', () => {
  async function run(expected: ExpectedMeasurements | undefined): Promise<VerificationReport> {
    const d = await start(fakeTee('tdx', () => INTEL_QUOTE));
    const job = await generate(d);
    const input: VerifyJobInput = { baseUrl: d.url, ...job, collateral: COLLATERAL, nowSeconds: COLLATERAL_NOW, expectedMeasurements: expected };
    return verifyJob(input);
  }

  it('passes the quote’s actual values, one check per register', async () => {
    const pins = pinsOf(INTEL_QUOTE);
    const report = await run(pins);
    expect(check(report, 'quote')?.ok).toBe(true);
    for (const reg of ['mrtd', 'rtmr0', 'rtmr1', 'rtmr2', 'rtmr3'] as const) {
      expect(check(report, reg)).toEqual({ name: reg, ok: true, detail: `${reg.toUpperCase()} ${pins[reg]}, as expected` });
    }
    expect(check(report, 'measurements')).toEqual({ name: 'measurements', ok: true, detail: 'pinned: mrtd, rtmr0, rtmr1, rtmr2, rtmr3' });
    expect(report.unpinned).toEqual([]);
    // The sample quote's report_data binds nothing of ours: that check fails, and only that one.
    expect(failed(report)).toEqual(['quote report_data']);
  });

  it('fails on one changed digit, naming the register, the expected and the actual value', async () => {
    const pins = pinsOf(INTEL_QUOTE);
    const wrong = changeDigit(pins.rtmr1, 40);
    const report = await run({ ...pins, rtmr1: wrong });
    expect(failed(report)).toEqual(['quote report_data', 'rtmr1']);
    expect(check(report, 'rtmr1')?.detail).toBe(`RTMR1 differs: expected ${wrong}, the quote has ${pins.rtmr1}`);
  });

  it('passes an unpinned quote only with a loud warning that nothing proves which code ran', async () => {
    const report = await run(undefined);
    expect(check(report, 'measurements')).toEqual({
      name: 'measurements',
      ok: true,
      warning: true,
      detail: expect.stringMatching(/^NOT PINNED: no expected measurements were given, so nothing proves which code ran/),
    });
    expect(report.unpinned).toEqual(['mrtd', 'rtmr0', 'rtmr1', 'rtmr2', 'rtmr3']);
  });

  it('names what a partial pin leaves unproven', async () => {
    const report = await run({ mrtd: pinsOf(INTEL_QUOTE).mrtd });
    expect(check(report, 'measurements')?.warning).toBe(true);
    expect(check(report, 'measurements')?.detail).toMatch(/^PARTLY PINNED: RTMR0, RTMR1, RTMR2, RTMR3 not compared/);
  });

  it('fails a compose hash expectation on plain TDX, which has no event log to name one', async () => {
    const report = await run({ composeHash: LITE_COMPOSE_HASH });
    expect(check(report, 'compose hash')?.ok).toBe(false);
  });
});

/** The capture's quote with our report_data in it (bytes 568..632 of a v4 quote); RTMRs untouched. */
function spliced(capture: Buffer) {
  return (reportData: Buffer) => {
    const q = Buffer.from(capture);
    reportData.copy(q, 568);
    return q;
  };
}

/** Stands in for Intel's signature check (the splice breaks it, and no collateral was captured): reads the quote as it came. */
const parsingOnly: typeof verifyTdxQuote = async (quote): Promise<VerifiedTdxQuote> => {
  const td = Quote.parse(quote).report.asTd10()!;
  return { status: 'UpToDate', advisoryIds: [], reportData: Buffer.from(td.reportData), ...registersOf(quote), collateralSource: 'offline' };
};

describe('verifyJob on dstack: the real capture’s event log replayed against its quote', () => {
  async function run(eventLog: string, expected: ExpectedMeasurements | undefined): Promise<VerificationReport> {
    const d = await start(fakeTee('dstack', spliced(LITE_QUOTE), eventLog));
    const job = await generate(d);
    return verifyJob({ baseUrl: d.url, ...job, verifyQuote: parsingOnly, expectedMeasurements: expected });
  }

  it('passes with the app’s compose hash and id pinned, and names the app', async () => {
    const pins = pinsOf(LITE_QUOTE);
    const { rtmr3: _covered, ...osPins } = pins;
    const report = await run(LITE.event_log, { ...osPins, composeHash: LITE_COMPOSE_HASH, appId: LITE_APP_ID });
    expect(failed(report)).toEqual([]);
    expect(report.ok).toBe(true);
    expect(check(report, 'event log')?.detail).toBe('replays to the quote’s RTMR0..3');
    expect(check(report, 'dstack app')?.detail).toBe(`app id ${LITE_APP_ID}, compose hash ${LITE_COMPOSE_HASH}, instance id ${LITE_INSTANCE_ID}`);
    expect(check(report, 'compose hash')?.detail).toBe(`${LITE_COMPOSE_HASH}, as expected`);
    expect(check(report, 'measurements')).toEqual({ name: 'measurements', ok: true, detail: 'pinned: mrtd, rtmr0, rtmr1, rtmr2, compose hash' });
    expect(report.dstackApp?.instanceId).toBe(LITE_INSTANCE_ID);
  });

  it('fails when the compose hash expected differs by one digit', async () => {
    const wrong = changeDigit(LITE_COMPOSE_HASH, 63);
    const report = await run(LITE.event_log, { composeHash: wrong });
    expect(failed(report)).toEqual(['compose hash']);
    expect(check(report, 'compose hash')?.detail).toBe(`compose hash differs: expected ${wrong}, the event log has ${LITE_COMPOSE_HASH}`);
  });

  it('fails when the app id expected differs', async () => {
    const wrong = changeDigit(LITE_APP_ID, 0);
    const report = await run(LITE.event_log, { appId: wrong });
    expect(failed(report)).toEqual(['app id']);
  });

  it('fails with a replay mismatch when an event was edited (another compose hash), and trusts nothing it names', async () => {
    const events = JSON.parse(LITE.event_log) as Array<{ event: string; event_payload: string }>;
    const forged = changeDigit(LITE_COMPOSE_HASH, 63);
    events.find((e) => e.event === 'compose-hash')!.event_payload = forged;
    const report = await run(JSON.stringify(events), { composeHash: forged });
    expect(failed(report)).toEqual(['event log', 'compose hash']);
    expect(check(report, 'event log')?.detail).toMatch(/^replay mismatch: RTMR3 replays to [0-9a-f]{96}, the quote has [0-9a-f]{96}$/);
    expect(check(report, 'compose hash')?.detail).toBe(`expected ${forged}, but the event log does not replay to the quote`);
    expect(report.dstackApp).toBeUndefined();
  });

  it('fails a dstack report that serves no event log', async () => {
    const d = await start(fakeTee('dstack', spliced(LITE_QUOTE), undefined));
    const job = await generate(d);
    const report = await verifyJob({ baseUrl: d.url, ...job, verifyQuote: parsingOnly });
    expect(failed(report)).toEqual(['event log']);
  });
});

describe('pixeld verify with measurements', () => {
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

  it('takes --measurements and --expect-* flags, names a differing register, and refuses contradictions', async () => {
    const d = await start(fakeTee('tdx', () => INTEL_QUOTE));
    const job = await generate(d);
    const dir = tempDir('pixeld-measure-');
    const request = path.join(dir, 'request.bin');
    const response = path.join(dir, 'response.json');
    const measurements = path.join(dir, 'measurements.json');
    writeFileSync(request, job.requestBody);
    writeFileSync(response, job.responseText);
    const pins = pinsOf(INTEL_QUOTE);
    writeFileSync(measurements, JSON.stringify({ mrtd: pins.mrtd, rtmr0: pins.rtmr0, rtmr1: pins.rtmr1, rtmr2: pins.rtmr2 }));
    const base = ['--url', d.url, '--job', job.jobId, '--request', request, '--response', response, '--collateral', path.join(TDX, 'tdx_quote_collateral.json'), '--now', String(COLLATERAL_NOW)];

    const wrong = changeDigit(pins.rtmr3);
    const run = await cli([...base, '--measurements', measurements, '--expect-rtmr3', wrong]);
    expect(run.code).toBe(1);
    expect(run.stdout).toContain(`✓ mrtd: MRTD ${pins.mrtd}, as expected`);
    expect(run.stdout).toContain(`✗ rtmr3: RTMR3 differs: expected ${wrong}, the quote has ${pins.rtmr3}`);

    const contradiction = await cli([...base, '--measurements', measurements, '--expect-mrtd', changeDigit(pins.mrtd)]);
    expect(contradiction.code).toBe(2);
    expect(contradiction.stderr).toContain('--expect-mrtd');
    expect(contradiction.stderr).toContain('contradicts mrtd');

    const unpinned = await cli(base);
    expect(unpinned.stdout).toMatch(/^! measurements: NOT PINNED/m);
  }, 60_000);
});
