import { createHash } from 'node:crypto';
import { computeAddress, getAddress, hashMessage, SigningKey } from 'ethers';
import { newNonce, reportDataOf, type AttestationReport } from './attestation.js';
import { receiptFieldsOf, receiptText, recoverTextSigner, zeroGText, type ReceiptJson, type TeeLabel } from './receipt.js';
import { kmsRootAddressOf, kmsRootOfKeyProvider, recoverKmsChain } from './dstack-kms-chain.js';
import { DSTACK_KEY_PURPOSE } from './dstack-key.js';
import { appIdentityOf, parseEventLog, replayEventLog, type DstackAppIdentity } from './dstack-event-log.js';
import { compareRegisters, parseMeasurements, REGISTERS, type ExpectedMeasurements } from './measurements.js';
import { verifyTdxQuote, type VerifiedTdxQuote } from './verify-quote.js';

/**
 * The verifier (tee.md §4): from the bytes a client sent and received alone, decide whether *this*
 * attested machine produced *these* images for *this* request at *this* price. Nothing the daemon says
 * about the job is taken on trust: every hash is recomputed, both signed texts are rebuilt, and the
 * signer is tied to the hardware through the quote's report_data and a nonce of our own.
 *
 * Every check is reported, failed or not, so one run names everything that differs.
 */

export interface VerifyJobInput {
  /** The daemon, e.g. `https://pixeld.example.com`. */
  baseUrl: string;
  /** The id from `ZG-Res-Key` (or the async job id). */
  jobId: string;
  /** The request body exactly as sent: for a multipart edit, the whole encoded body. */
  requestBody: Uint8Array;
  /** Each output image's decoded bytes, as received, in order. */
  images: Uint8Array[];
  /** Fail unless the receipt names this model. */
  expectedModel?: string;
  /** Fail unless the attested signer is this address (e.g. the on-chain `teeSignerAddress`). */
  expectedSigner?: string;
  /**
   * What the quote must measure (measurements.ts documents the file shape): any register that differs fails.
   * Under dstack, `composeHash` and `appId` are checked against the event log after it replays to the
   * quote's RTMRs. Nothing pinned: the quote passes with a warning that nothing proves which code ran.
   */
  expectedMeasurements?: ExpectedMeasurements;
  /**
   * dstack: the KMS root (address or secp256k1 public key) the key's signature chain must lead to. Without
   * it, the root the measured OS named in its key-provider event is the one trusted.
   */
  expectedKmsRoot?: string;
  /** Accept a dev-mode daemon (nothing attested) and check the rest; the `tee` check becomes a warning. */
  allowInsecure?: boolean;
  /** Quote collateral (parsed JSON), to verify offline; else it is fetched from `pccsUrl`. */
  collateral?: unknown;
  /** @default dcap-qvl's PHALA_PCCS_URL */
  pccsUrl?: string;
  /** Time the quote's collateral must be valid at, Unix seconds. @default now */
  nowSeconds?: number;
  /** @default globalThis.fetch */
  fetch?: typeof fetch;
  /** 64 hex characters. @default 32 fresh random bytes; pass one only to reproduce a run */
  nonce?: string;
  /** Per HTTP request to the daemon. @default 30_000 */
  timeoutMs?: number;
  /** Replaces the DCAP verification (another verifier, or a test double). @default verifyTdxQuote */
  verifyQuote?: typeof verifyTdxQuote;
}

export interface VerificationCheck {
  /** Short and stable: `quote`, `nonce`, `image 0`, `signature`, … */
  name: string;
  ok: boolean;
  /** What was found; on failure, what differs from what. */
  detail: string;
  /** A pass the caller should still read: dev mode accepted, or a TCB level below UpToDate. */
  warning?: true;
}

export interface VerificationReport {
  /** true only when every check passed. */
  ok: boolean;
  checks: VerificationCheck[];
  jobId: string;
  /** The nonce sent with the attestation request. */
  nonce: string;
  /** The signer the daemon attested, when its report could be read. */
  signingAddress: string | undefined;
  /** The report's `tee`, when it could be read. */
  tee: string | undefined;
  /** The verified quote, when there was one and it verified. */
  quote: VerifiedTdxQuote | undefined;
  /**
   * What no expected value covered (`mrtd`, `rtmr0`…`rtmr3`; under dstack a pinned `composeHash` with a
   * replayed event log covers `rtmr3`). Every register when nothing was pinned; empty when all were.
   */
  unpinned: string[];
  /** dstack: the app named by the event log, when it replayed to the quote's registers. */
  dstackApp: DstackAppIdentity | undefined;
}

/** `GET /v1/signature/{id}` */
interface SignatureBody {
  text: string;
  signature: string;
  signing_address: string;
  signing_algo: string;
  receipt: ReceiptJson;
}

const DEFAULT_TIMEOUT_MS = 30_000;
const HEX64 = /^[0-9a-fA-F]{64}$/;
const TEE_LABEL_OF: Record<AttestationReport['tee'], TeeLabel> = { tdx: 'tdx', dstack: 'dstack', none: 'INSECURE-DEV' };

class Checks {
  readonly list: VerificationCheck[] = [];
  pass(name: string, detail: string, warning = false): void {
    this.list.push(warning ? { name, ok: true, detail, warning: true } : { name, ok: true, detail });
  }
  fail(name: string, detail: string): void {
    this.list.push({ name, ok: false, detail });
  }
  check(name: string, ok: boolean, passDetail: string, failDetail: string): void {
    if (ok) this.pass(name, passDetail);
    else this.fail(name, failDetail);
  }
}

interface Attested {
  report: AttestationReport;
  expectedReportData: Buffer;
}

export async function verifyJob(input: VerifyJobInput): Promise<VerificationReport> {
  const nonce = (input.nonce ?? newNonce()).toLowerCase();
  if (!HEX64.test(nonce)) throw new TypeError('nonce must be 64 hex characters (32 bytes)');
  // Normalised (0x dropped, lower case) and checked before anything is fetched: a malformed pin throws.
  const expected = parseMeasurements(input.expectedMeasurements ?? {}, 'expectedMeasurements');
  const ctx = {
    base: input.baseUrl.replace(/\/+$/, ''),
    doFetch: input.fetch ?? globalThis.fetch,
    timeoutMs: input.timeoutMs ?? DEFAULT_TIMEOUT_MS,
  };
  const checks = new Checks();

  const attested = await checkAttestation(checks, ctx, nonce, input);
  const quote = attested && !isInsecure(attested.report) ? await checkQuote(checks, attested, input) : undefined;
  const measured = checkMeasurements(checks, attested?.report, quote, expected);
  const signed = await checkSignature(checks, ctx, attested?.report, input);
  checkKmsChain(checks, attested?.report, measured.app, signed, input.expectedKmsRoot);

  return {
    ok: checks.list.length > 0 && checks.list.every((c) => c.ok),
    checks: checks.list,
    jobId: input.jobId,
    nonce,
    signingAddress: attested?.report.signing_address,
    tee: attested?.report.tee,
    quote,
    unpinned: measured.unpinned,
    dstackApp: measured.app,
  };
}

interface FetchContext {
  base: string;
  doFetch: typeof fetch;
  timeoutMs: number;
}

/** The report, if it could be read; the checks that need nothing else are made here. */
async function checkAttestation(checks: Checks, ctx: FetchContext, nonce: string, input: VerifyJobInput): Promise<Attested | undefined> {
  const got = await getJson(ctx, `/v1/attestation/report?nonce=${nonce}`);
  if (!got.ok) {
    checks.fail('attestation', got.error);
    return undefined;
  }
  const problem = reportProblem(got.body);
  if (problem) {
    checks.fail('attestation', `malformed attestation report: ${problem}`);
    return undefined;
  }
  const report = got.body as AttestationReport;
  checks.pass('attestation', `signer ${report.signing_address}, tee ${report.tee}, key ${report.key_source}`);

  checks.check(
    'nonce',
    report.request_nonce?.toLowerCase() === nonce,
    `the report answers our fresh nonce ${nonce.slice(0, 16)}…`,
    `the report answers nonce ${report.request_nonce ?? 'null'}, we sent ${nonce}: a stale or replayed report`,
  );

  const expectedReportData = reportDataOf(report.binding, Buffer.from(nonce, 'hex'));
  checks.check(
    'report_data',
    report.report_data.toLowerCase() === expectedReportData.toString('hex'),
    'sha256(canonical binding) ‖ our nonce',
    `report_data ${report.report_data} is not sha256(canonical binding) ‖ nonce = ${expectedReportData.toString('hex')}`,
  );

  const binding = report.binding;
  const bindingProblems = [
    sameAddress(binding.signing_address, report.signing_address) ? undefined : `binding names signer ${binding.signing_address}, the report ${report.signing_address}`,
    binding.signing_algo === 'ecdsa' ? undefined : `binding signing_algo is '${binding.signing_algo}', not 'ecdsa'`,
    binding.key_source === report.key_source ? undefined : `binding key_source is '${binding.key_source}', the report says '${report.key_source}'`,
  ].filter((p): p is string => p !== undefined);
  checks.check(
    'binding',
    bindingProblems.length === 0,
    `binds signer ${binding.signing_address}, provider ${binding.provider_address}, models ${binding.model}`,
    bindingProblems.join('; '),
  );

  if (input.expectedSigner !== undefined) {
    checks.check(
      'expected signer',
      sameAddress(report.signing_address, input.expectedSigner),
      `attested signer is ${report.signing_address}, as expected`,
      `attested signer is ${report.signing_address}, expected ${input.expectedSigner}`,
    );
  }

  if (isInsecure(report)) {
    const what = `dev mode: nothing is attested (tee "${report.tee}", insecure ${String(report.insecure)}): the key sits in a plain file`;
    if (input.allowInsecure) {
      checks.pass('tee', `${what}; accepted because insecure mode was allowed`, true);
      checks.pass('quote', 'skipped: a dev-mode daemon has no quote', true);
    } else {
      checks.fail('tee', `${what}; refused (allow insecure mode to check the rest anyway)`);
    }
  } else {
    checks.pass('tee', `${report.tee}, key from ${report.key_source}`);
  }
  return { report, expectedReportData };
}

/** Either flag is enough: a report that contradicts itself is treated as the weaker claim. */
function isInsecure(report: AttestationReport): boolean {
  return report.insecure !== false || report.tee === 'none';
}

async function checkQuote(checks: Checks, attested: Attested, input: VerifyJobInput): Promise<VerifiedTdxQuote | undefined> {
  const { report, expectedReportData } = attested;
  if (report.intel_quote === null || report.intel_quote.length === 0) {
    checks.fail('quote', `the report claims tee "${report.tee}" but carries no intel_quote`);
    return undefined;
  }
  let quote: VerifiedTdxQuote;
  try {
    quote = await (input.verifyQuote ?? verifyTdxQuote)(Buffer.from(report.intel_quote, 'hex'), {
      collateral: input.collateral,
      pccsUrl: input.pccsUrl,
      nowSeconds: input.nowSeconds,
    });
  } catch (err) {
    checks.fail('quote', (err as Error).message);
    return undefined;
  }
  const source = quote.collateralSource === 'offline' ? 'collateral offline' : `collateral from ${quote.collateralSource}`;
  const advisories = quote.advisoryIds.length > 0 ? `; advisories ${quote.advisoryIds.join(', ')}` : '';
  if (quote.status === 'UpToDate') checks.pass('quote', `UpToDate (TDX, ${source})${advisories}`);
  // Still Intel-signed hardware, but with known unpatched issues: the caller decides whether that is enough.
  else checks.pass('quote', `${quote.status} (TDX, ${source}): the platform's TCB is not up to date${advisories}`, true);

  // The step that ties the signing key and our nonce to the hardware: without it, any genuine quote would do.
  checks.check(
    'quote report_data',
    quote.reportData.equals(expectedReportData),
    'the hardware signed sha256(binding) ‖ our nonce',
    `quote report_data does not match the binding and nonce: the quote has ${quote.reportData.toString('hex')}, expected ${expectedReportData.toString('hex')}`,
  );
  return quote;
}

/**
 * The quote's registers against the expected values, and under dstack the event log: replayed into
 * RTMR0..3 and compared with the quote, then read for the app's identity. Only then are the compose hash
 * and app id it names worth comparing.
 */
function checkMeasurements(
  checks: Checks,
  report: AttestationReport | undefined,
  quote: VerifiedTdxQuote | undefined,
  expected: ExpectedMeasurements,
): { unpinned: string[]; app: DstackAppIdentity | undefined } {
  const all: string[] = [...REGISTERS];
  const pinnedKeys = Object.entries(expected).filter(([, v]) => v !== undefined).map(([k]) => k);
  if (!quote) {
    // Dev mode, or a quote that failed (its own check says why): nothing measured to compare with.
    if (pinnedKeys.length > 0 && report !== undefined && isInsecure(report)) {
      checks.fail('measurements', `expected ${pinnedKeys.join(', ')}, but a dev-mode daemon has no quote and measures nothing`);
    }
    return { unpinned: all, app: undefined };
  }
  for (const c of compareRegisters(quote, expected)) {
    if (c.ok) checks.pass(c.register, c.detail);
    else checks.fail(c.register, c.detail);
  }

  let app: DstackAppIdentity | undefined;
  if (report?.tee === 'dstack') app = checkDstackEventLog(checks, report, quote, expected);
  else {
    for (const key of ['composeHash', 'appId'] as const) {
      if (expected[key] !== undefined) checks.fail(key === 'composeHash' ? 'compose hash' : 'app id', `expected ${expected[key]}, but tee "${report?.tee}" has no dstack event log to name it`);
    }
  }

  const composePinned = app !== undefined && expected.composeHash !== undefined;
  const unpinned = REGISTERS.filter((r) => expected[r] === undefined && !(r === 'rtmr3' && composePinned));
  if (unpinned.length === REGISTERS.length && !composePinned) {
    checks.pass(
      'measurements',
      'NOT PINNED: no expected measurements were given, so nothing proves which code ran — only that a genuine TDX machine holds the key ' +
        '(give --measurements or --expect-mrtd/--expect-rtmr0..3, and under dstack --expect-compose-hash)',
      true,
    );
  } else if (unpinned.length > 0) {
    checks.pass(
      'measurements',
      `PARTLY PINNED: ${unpinned.map((r) => r.toUpperCase()).join(', ')} not compared with expected values, so whatever they measure is not proven`,
      true,
    );
  } else {
    checks.pass('measurements', `pinned: ${[...REGISTERS.filter((r) => expected[r] !== undefined), ...(composePinned ? ['compose hash'] : [])].join(', ')}`);
  }
  return { unpinned, app };
}

function checkDstackEventLog(checks: Checks, report: AttestationReport, quote: VerifiedTdxQuote, expected: ExpectedMeasurements): DstackAppIdentity | undefined {
  const failExpected = (why: string) => {
    if (expected.composeHash !== undefined) checks.fail('compose hash', `expected ${expected.composeHash}, but ${why}`);
    if (expected.appId !== undefined) checks.fail('app id', `expected ${expected.appId}, but ${why}`);
  };
  if (report.event_log === null || report.event_log === '') {
    checks.fail('event log', 'a dstack report without an event log: the app it ran cannot be named');
    failExpected('there is no event log');
    return undefined;
  }
  let app: DstackAppIdentity;
  let replayed: string[];
  try {
    const events = parseEventLog(report.event_log);
    replayed = replayEventLog(events);
    app = appIdentityOf(events);
  } catch (err) {
    checks.fail('event log', (err as Error).message);
    failExpected('the event log is unusable');
    return undefined;
  }
  const inQuote = [quote.rtMr0, quote.rtMr1, quote.rtMr2, quote.rtMr3].map((r) => r.toLowerCase());
  const differing = replayed.map((r, i) => ({ i, r })).filter(({ i, r }) => r !== inQuote[i]);
  if (differing.length > 0) {
    checks.fail('event log', `replay mismatch: ${differing.map(({ i, r }) => `RTMR${i} replays to ${r}, the quote has ${inQuote[i]}`).join('; ')}`);
    failExpected('the event log does not replay to the quote');
    return undefined;
  }
  checks.pass('event log', 'replays to the quote’s RTMR0..3');
  checks.check(
    'dstack app',
    app.composeHash !== undefined && app.appId !== undefined,
    `app id ${app.appId}, compose hash ${app.composeHash}, instance id ${app.instanceId ?? 'none'}`,
    `the event log lacks ${[app.appId === undefined ? 'app-id' : '', app.composeHash === undefined ? 'compose-hash' : ''].filter(Boolean).join(' and ')}`,
  );
  if (expected.composeHash !== undefined) {
    checks.check(
      'compose hash',
      app.composeHash === expected.composeHash,
      `${app.composeHash}, as expected`,
      `compose hash differs: expected ${expected.composeHash}, the event log has ${app.composeHash ?? 'none'}`,
    );
  }
  if (expected.appId !== undefined) {
    checks.check('app id', app.appId === expected.appId, `${app.appId}, as expected`, `app id differs: expected ${expected.appId}, the event log has ${app.appId ?? 'none'}`);
  }
  return app;
}

/** The signature body, when it could be read (the KMS chain check recovers the signing key's public key from it). */
async function checkSignature(checks: Checks, ctx: FetchContext, report: AttestationReport | undefined, input: VerifyJobInput): Promise<SignatureBody | undefined> {
  const got = await getJson(ctx, `/v1/signature/${encodeURIComponent(input.jobId)}`);
  if (!got.ok) {
    checks.fail('signature body', got.error);
    return undefined;
  }
  const problem = signatureProblem(got.body);
  if (problem) {
    checks.fail('signature body', `malformed signature body: ${problem}`);
    return undefined;
  }
  const body = got.body as SignatureBody;
  const receipt = body.receipt;
  const attestedSigner = report?.signing_address;

  const requestSha = sha256Hex(input.requestBody);
  const imageShas = input.images.map(sha256Hex);
  const signedShas = receipt.image_sha256;

  checks.check(
    'request',
    receipt.request_sha256 === requestSha,
    `sha256 ${requestSha}, as signed`,
    `request body differs from the signed request_sha256: received ${requestSha}, signed ${receipt.request_sha256}`,
  );
  checks.check(
    'image count',
    imageShas.length === signedShas.length && receipt.images === signedShas.length,
    `${imageShas.length} image(s), as signed`,
    `received ${imageShas.length} image(s), the receipt signs ${signedShas.length} hash(es) and says images: ${receipt.images}`,
  );
  for (let i = 0; i < Math.max(imageShas.length, signedShas.length); i++) {
    const got = imageShas[i];
    const signed = signedShas[i];
    if (got === undefined) checks.fail(`image ${i}`, `signed (sha256 ${signed}) but not received`);
    else if (signed === undefined) checks.fail(`image ${i}`, `received (sha256 ${got}) but not signed`);
    else checks.check(`image ${i}`, got === signed, `sha256 ${got}, as signed`, `sha256 differs: received ${got}, signed ${signed}`);
  }

  const rebuilt0g = zeroGText(receipt.tee, requestSha, imageShas);
  checks.check(
    '0G text',
    body.text === rebuilt0g,
    'matches the text rebuilt from the received bytes',
    `the served text differs from the one rebuilt from the received bytes: served '${body.text}', rebuilt '${rebuilt0g}'`,
  );
  // The served fields, but every hash from our own bytes: a receipt over other bytes cannot match.
  const rebuiltReceipt = receiptText({ ...receiptFieldsOf(receipt), requestSha256: requestSha, imageSha256: imageShas });
  checks.check(
    'receipt text',
    receipt.text === rebuiltReceipt,
    'matches the receipt rebuilt from its fields and the received bytes',
    `the served receipt text differs from the one rebuilt from its fields and the received bytes: ${firstLineDiff(receipt.text, rebuiltReceipt)}`,
  );

  checkSigner(checks, 'signature', '0G text', body.text, body.signature, attestedSigner);
  checkSigner(checks, 'receipt signature', 'receipt text', receipt.text, receipt.signature, attestedSigner);

  const named = [
    { what: 'the receipt', address: receipt.signer },
    { what: 'the signature body', address: body.signing_address },
  ];
  const wrong = named.filter((n) => attestedSigner === undefined || !sameAddress(n.address, attestedSigner));
  checks.check(
    'receipt signer',
    wrong.length === 0,
    `names the attested signer ${attestedSigner ?? ''}`,
    wrong.map((n) => `${n.what} names signer ${n.address}, attested signer is ${attestedSigner ?? 'unknown (no attestation)'}`).join('; '),
  );

  checks.check(
    'job',
    receipt.job === input.jobId,
    `the receipt is for ${input.jobId}`,
    `signed job '${receipt.job}', asked for '${input.jobId}'`,
  );

  const attestedModels = report ? report.binding.model.split(',') : undefined;
  const modelProblems = [
    input.expectedModel !== undefined && receipt.model !== input.expectedModel ? `signed '${receipt.model}', expected '${input.expectedModel}'` : undefined,
    attestedModels === undefined
      ? 'no attestation to compare the model with'
      : attestedModels.includes(receipt.model)
        ? undefined
        : `signed '${receipt.model}', which the attestation does not list ('${report!.binding.model}')`,
  ].filter((p): p is string => p !== undefined);
  checks.check('model', modelProblems.length === 0, `'${receipt.model}'`, modelProblems.join('; '));

  const provider = report?.binding.provider_address;
  checks.check(
    'provider',
    provider !== undefined && sameAddress(receipt.provider, provider),
    `${receipt.provider}, as attested`,
    `receipt names provider ${receipt.provider}, attested provider is ${provider ?? 'unknown (no attestation)'}`,
  );

  const attestedLabel = report ? TEE_LABEL_OF[report.tee] : undefined;
  checks.check(
    'receipt tee',
    receipt.tee === attestedLabel,
    `'${receipt.tee}', as attested`,
    `receipt says tee '${receipt.tee}', the attestation says '${report?.tee ?? 'unknown (no attestation)'}'`,
  );

  // Billed by delivered images: the fee must be the price times what the client actually received.
  const price = BigInt(receipt.price_per_image_wei);
  const fee = BigInt(receipt.fee_wei);
  const owed = price * BigInt(input.images.length);
  checks.check(
    'fee',
    fee === owed,
    `${fee} wei = ${input.images.length} × ${price} wei`,
    `signed fee_wei ${fee}, but ${input.images.length} image(s) × ${price} wei = ${owed}`,
  );
  return body;
}

/**
 * dstack: the KMS signature chain served with the report must lead from the attested signing key, through
 * an app key issued to the app the event log names, to a trusted KMS root (expectedKmsRoot, else the root
 * the measured key-provider event names). A chain made for another app, or for another key, leads elsewhere.
 */
function checkKmsChain(
  checks: Checks,
  report: AttestationReport | undefined,
  app: DstackAppIdentity | undefined,
  signed: SignatureBody | undefined,
  expectedKmsRoot: string | undefined,
): void {
  const name = 'kms chain';
  if (report?.tee !== 'dstack' || app === undefined || app.appId === undefined) {
    if (expectedKmsRoot !== undefined) checks.fail(name, `expected KMS root ${expectedKmsRoot}, but no dstack app was verified to check a chain for`);
    return;
  }
  const served: unknown = report.kms_signature_chain ?? [];
  if (!Array.isArray(served) || !served.every(isString)) {
    checks.fail(name, 'kms_signature_chain must be an array of hex strings');
    return;
  }
  const chain = served as string[];
  if (chain.length === 0) {
    if (expectedKmsRoot !== undefined) checks.fail(name, `expected KMS root ${expectedKmsRoot}, but the report serves no KMS signature chain`);
    else checks.pass(name, `none served: nothing shows the KMS derived the key for app ${app.appId} (the quote still binds it to this CVM)`, true);
    return;
  }
  if (signed === undefined) {
    checks.fail(name, 'no signature to recover the signing key’s public key from');
    return;
  }
  let derivedPublicKey: string;
  try {
    derivedPublicKey = SigningKey.recoverPublicKey(hashMessage(signed.receipt.text), signed.receipt.signature);
  } catch (err) {
    checks.fail(name, `cannot recover the signing key’s public key from the receipt signature: ${(err as Error).message}`);
    return;
  }
  if (!sameAddress(computeAddress(derivedPublicKey), report.signing_address)) {
    checks.fail(name, `the receipt was not signed by the attested signer ${report.signing_address}: no public key to check the chain with`);
    return;
  }
  let root;
  try {
    root = recoverKmsChain({ chain, purpose: DSTACK_KEY_PURPOSE, derivedPublicKey, appId: app.appId });
  } catch (err) {
    checks.fail(name, (err as Error).message);
    return;
  }
  const trusted: Array<{ what: string; address: string }> = [];
  try {
    if (expectedKmsRoot !== undefined) trusted.push({ what: 'the expected KMS root', address: kmsRootAddressOf(expectedKmsRoot) });
  } catch (err) {
    checks.fail(name, (err as Error).message);
    return;
  }
  const measuredRoot = kmsRootOfKeyProvider(app.keyProvider);
  if (measuredRoot !== undefined) trusted.push({ what: 'the KMS root in the measured key-provider event', address: computeAddress(`0x${measuredRoot}`) });
  if (trusted.length === 0) {
    checks.fail(
      name,
      `the chain leads to KMS root ${root.kmsRootAddress}, but nothing trusted names the KMS: the key-provider event (${app.keyProvider ?? 'none'}) ` +
        'names no secp256k1 KMS root; give the expected KMS root',
    );
    return;
  }
  const wrong = trusted.filter((t) => !sameAddress(t.address, root.kmsRootAddress));
  checks.check(
    name,
    wrong.length === 0,
    `KMS root ${root.kmsRootAddress} (${trusted.map((t) => t.what).join(' and ')}) issued app ${app.appId} the key that derived ${report.signing_address}`,
    `the key was not derived for app ${app.appId} by the trusted KMS: the chain leads to root ${root.kmsRootAddress}, ` +
      wrong.map((t) => `${t.what} is ${t.address}`).join('; '),
  );
}

function checkSigner(checks: Checks, name: string, what: string, text: string, signature: string, attested: string | undefined): void {
  let recovered: string;
  try {
    recovered = recoverTextSigner(text, signature);
  } catch (err) {
    checks.fail(name, `the ${what} signature is malformed: ${(err as Error).message}`);
    return;
  }
  checks.check(
    name,
    attested !== undefined && sameAddress(recovered, attested),
    `${what} signed by the attested signer ${recovered}`,
    `${what} recovers ${recovered}, attested signer is ${attested ?? 'unknown (no attestation)'}`,
  );
}

function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function sameAddress(a: string, b: string): boolean {
  try {
    return getAddress(a) === getAddress(b);
  } catch {
    return false;
  }
}

function firstLineDiff(served: string, rebuilt: string): string {
  const a = served.split('\n');
  const b = rebuilt.split('\n');
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i] !== b[i]) return `line ${i + 1}: served '${a[i] ?? ''}', rebuilt '${b[i] ?? ''}'`;
  }
  return 'they differ';
}

type Got = { ok: true; body: unknown } | { ok: false; error: string };

async function getJson(ctx: FetchContext, pathAndQuery: string): Promise<Got> {
  const url = `${ctx.base}${pathAndQuery}`;
  let res: Response;
  let text: string;
  try {
    res = await ctx.doFetch(url, { headers: { accept: 'application/json' }, signal: AbortSignal.timeout(ctx.timeoutMs) });
    text = await res.text();
  } catch (err) {
    return { ok: false, error: `GET ${url} failed: ${(err as Error).message}` };
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return { ok: false, error: `GET ${url} answered ${res.status} with a body that is not JSON: ${text.slice(0, 200)}` };
  }
  if (!res.ok) {
    const message = (body as { error?: { message?: unknown } } | null)?.error?.message;
    return { ok: false, error: `GET ${url} answered ${res.status}: ${typeof message === 'string' ? message : text.slice(0, 200)}` };
  }
  return { ok: true, body };
}

// Shape checks: the daemon is the party being checked, so nothing it serves is assumed well formed.

type Rule = [field: string, ok: (v: unknown) => boolean, want: string];

const isString = (v: unknown) => typeof v === 'string';
const isHex = (v: unknown) => typeof v === 'string' && /^([0-9a-fA-F]{2})*$/.test(v);
const isDecimal = (v: unknown) => typeof v === 'string' && /^(0|[1-9][0-9]*)$/.test(v);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function firstProblem(value: unknown, rules: Rule[], prefix = ''): string | undefined {
  if (!isObject(value)) return `${prefix || 'the body'} is not a JSON object`;
  for (const [field, ok, want] of rules) {
    if (!ok(value[field])) return `${prefix}${field} must be ${want}`;
  }
  return undefined;
}

function reportProblem(value: unknown): string | undefined {
  return (
    firstProblem(value, [
      ['tee', (v) => v === 'tdx' || v === 'dstack' || v === 'none', "'tdx', 'dstack' or 'none'"],
      ['insecure', (v) => typeof v === 'boolean', 'a boolean'],
      ['key_source', isString, 'a string'],
      ['signing_address', isString, 'a string'],
      ['request_nonce', (v) => v === null || isString(v), 'a string or null'],
      ['binding', isObject, 'an object'],
      ['report_data', (v) => isHex(v) && (v as string).length === 128, '64 bytes of hex'],
      ['intel_quote', (v) => v === null || isHex(v), 'hex or null'],
    ]) ??
    firstProblem(
      (value as { binding: unknown }).binding,
      [
        ['signing_address', isString, 'a string'],
        ['signing_algo', isString, 'a string'],
        ['model', isString, 'a string'],
        ['provider_address', isString, 'a string'],
        ['key_source', isString, 'a string'],
      ],
      'binding.',
    )
  );
}

function signatureProblem(value: unknown): string | undefined {
  return (
    firstProblem(value, [
      ['text', isString, 'a string'],
      ['signature', isString, 'a string'],
      ['signing_address', isString, 'a string'],
      ['receipt', isObject, 'an object'],
    ]) ??
    firstProblem(
      (value as { receipt: unknown }).receipt,
      [
        ['version', (v) => v === 1 || v === 2, '1 or 2'],
        // v2 receipts carry the user's sequence number; v1 receipts have none.
        ['seq', (v) => ((value as { receipt: { version: unknown } }).receipt.version === 2 ? isDecimal(v) : v === undefined), 'a decimal string in v2, absent in v1'],
        ['tee', (v) => v === 'tdx' || v === 'dstack' || v === 'INSECURE-DEV', "'tdx', 'dstack' or 'INSECURE-DEV'"],
        ['provider', isString, 'a string'],
        ['signer', isString, 'a string'],
        ['job', isString, 'a string'],
        ['model', isString, 'a string'],
        ['user', isString, 'a string'],
        ['request_sha256', isString, 'a string'],
        ['images', (v) => Number.isSafeInteger(v), 'an integer'],
        ['image_sha256', (v) => Array.isArray(v) && v.every(isString), 'an array of strings'],
        ['price_per_image_wei', isDecimal, 'a decimal string'],
        ['fee_wei', isDecimal, 'a decimal string'],
        ['created', (v) => Number.isSafeInteger(v), 'an integer'],
        ['text', isString, 'a string'],
        ['signature', isString, 'a string'],
      ],
      'receipt.',
    )
  );
}
