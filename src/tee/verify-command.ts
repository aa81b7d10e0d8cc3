import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { isAddress } from 'ethers';
import { kmsRootAddressOf } from './dstack-kms-chain.js';
import { MeasurementsError, normaliseMeasurement, parseMeasurements, type ExpectedMeasurements } from './measurements.js';
import { verifyJob, type VerificationCheck, type VerificationReport, type VerifyJobInput } from './verifier.js';

/** `pixeld verify`: the verifier library behind a command line, one verdict line per check. */

export const VERIFY_USAGE = `Usage: pixeld verify --url <daemon> --job <id> --request <file>
                     (--response <file> | --image <file> [--image <file> ...])
                     [--model <id>] [--signer <0x...>] [--collateral <file>] [--pccs <url>]
                     [--now <unix seconds>] [--allow-insecure]
                     [--measurements <file>] [--expect-mrtd <hex>] [--expect-rtmr0..3 <hex>]
                     [--expect-compose-hash <hex>] [--expect-app-id <hex>] [--expect-kms-root <key>]

Checks that the attested TEE behind <daemon> signed exactly these bytes for job <id>.

  --url <daemon>        Base URL of the daemon, e.g. https://pixeld.example.com
  --job <id>            The job id (the ZG-Res-Key response header)
  --request <file>      The request body exactly as sent (for an edit: the whole multipart body)
  --response <file>     The JSON response received; images are decoded from data[].b64_json
                        (the async poll body, with the response under "data", works too)
  --image <file>        An output image as received (repeat, in order) instead of --response
  --model <id>          Fail unless the receipt names this model
  --signer <0x...>      Fail unless the attested signer is this address (e.g. teeSignerAddress)
  --collateral <file>   Quote collateral (JSON) to verify offline; else fetched from --pccs
  --pccs <url>          PCCS for the collateral (default: https://pccs.phala.network)
  --now <unix seconds>  Time the collateral must be valid at (default: now)
  --allow-insecure      Accept a dev-mode daemon (nothing is attested) and check the rest

Which code ran (without these, a genuine quote passes with a warning: nothing proves which code ran):
  --measurements <file> JSON {"mrtd","rtmr0".."rtmr3","composeHash","appId"} (hex, each optional)
  --expect-mrtd <hex>   MRTD the quote must carry (96 hex characters)
  --expect-rtmr0 <hex> … --expect-rtmr3 <hex>   RTMR0..3 the quote must carry
  --expect-compose-hash <hex>  dstack: the app's compose hash (64 hex), read from the event log
                        after it replays to the quote's RTMRs
  --expect-app-id <hex> dstack: the app id (40 hex), from the same event log
  --expect-kms-root <address | public key>   dstack: the KMS root the key's signature chain must lead
                        to (default: the root the measured key-provider event names)
  A value given both in the file and as a flag must agree.

Exit status: 0 when every check passes, 1 when any fails, 2 on bad arguments.
`;

export interface VerifyCommandIo {
  stdout: (line: string) => void;
  stderr: (line: string) => void;
  fetch?: typeof fetch;
}

const defaultIo: VerifyCommandIo = {
  stdout: (line) => process.stdout.write(`${line}\n`),
  stderr: (line) => process.stderr.write(`${line}\n`),
};

class UsageError extends Error {
  override readonly name = 'UsageError';
}

export async function runVerifyCommand(argv: string[], io: VerifyCommandIo = defaultIo): Promise<number> {
  let input: VerifyJobInput;
  try {
    const parsed = parseVerifyArgs(argv);
    if (parsed === 'help') {
      io.stdout(VERIFY_USAGE);
      return 0;
    }
    input = { ...parsed, fetch: io.fetch };
  } catch (err) {
    io.stderr(`pixeld verify: ${(err as Error).message}\n\n${VERIFY_USAGE}`);
    return 2;
  }
  const report = await verifyJob(input);
  for (const check of report.checks) io.stdout(verdictLine(check));
  io.stdout(finalLine(report));
  return report.ok ? 0 : 1;
}

export function verdictLine(check: VerificationCheck): string {
  const mark = !check.ok ? '✗' : check.warning ? '!' : '✓';
  return `${mark} ${check.name}: ${check.detail}`;
}

function finalLine(report: VerificationReport): string {
  const failed = report.checks.filter((c) => !c.ok);
  if (failed.length > 0) {
    return `NOT VERIFIED: ${failed.length} of ${report.checks.length} checks failed (${failed.map((c) => c.name).join(', ')})`;
  }
  if (report.tee === 'none') {
    return `verified INSECURELY: job ${report.jobId} was signed by ${report.signingAddress}, but nothing is attested (dev mode)`;
  }
  const warnings = report.checks.filter((c) => c.warning).length;
  const status = report.quote ? `, TCB ${report.quote.status}` : '';
  const verdict = `verified: job ${report.jobId} was signed by ${report.signingAddress}, attested by ${report.tee}${status}${warnings > 0 ? ` (${warnings} warning(s) above)` : ''}`;
  if (report.unpinned.length === 5) return `${verdict}\nWARNING: measurements NOT PINNED — nothing proves which code ran on that machine`;
  if (report.unpinned.length > 0) return `${verdict}\nWARNING: ${report.unpinned.map((r) => r.toUpperCase()).join(', ')} not pinned — what they measure is not proven`;
  return verdict;
}

function parseVerifyArgs(argv: string[]): Omit<VerifyJobInput, 'fetch'> | 'help' {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        url: { type: 'string' },
        job: { type: 'string' },
        request: { type: 'string' },
        response: { type: 'string' },
        image: { type: 'string', multiple: true },
        model: { type: 'string' },
        signer: { type: 'string' },
        collateral: { type: 'string' },
        pccs: { type: 'string' },
        now: { type: 'string' },
        'allow-insecure': { type: 'boolean' },
        measurements: { type: 'string' },
        'expect-mrtd': { type: 'string' },
        'expect-rtmr0': { type: 'string' },
        'expect-rtmr1': { type: 'string' },
        'expect-rtmr2': { type: 'string' },
        'expect-rtmr3': { type: 'string' },
        'expect-compose-hash': { type: 'string' },
        'expect-app-id': { type: 'string' },
        'expect-kms-root': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.help) return 'help';
  const { url, job, request, response, image } = values;
  if (!url) throw new UsageError('--url is required');
  if (!/^https?:\/\/[^/]/.test(url)) throw new UsageError(`--url must be an http(s) URL, got "${url}"`);
  if (!job) throw new UsageError('--job is required');
  if (!request) throw new UsageError('--request is required');
  if ((response === undefined) === (image === undefined)) throw new UsageError('give either --response or --image (not both)');
  if (values.signer !== undefined && !isAddress(values.signer)) throw new UsageError(`--signer must be an address, got "${values.signer}"`);
  let nowSeconds: number | undefined;
  if (values.now !== undefined) {
    nowSeconds = Number(values.now);
    if (!/^\d+(\.\d+)?$/.test(values.now) || !Number.isFinite(nowSeconds)) throw new UsageError(`--now must be Unix seconds, got "${values.now}"`);
  }
  if (values['expect-kms-root'] !== undefined) {
    try {
      kmsRootAddressOf(values['expect-kms-root']);
    } catch (err) {
      throw new UsageError(`--expect-kms-root: ${(err as Error).message}`);
    }
  }
  if (values.pccs !== undefined && !/^https?:\/\/[^/]/.test(values.pccs)) throw new UsageError(`--pccs must be an http(s) URL, got "${values.pccs}"`);

  return {
    baseUrl: url,
    jobId: job,
    requestBody: readInput(request, '--request'),
    images: response !== undefined ? imagesOfResponse(readInput(response, '--response'), response) : image!.map((f) => readInput(f, '--image')),
    expectedModel: values.model,
    expectedSigner: values.signer,
    allowInsecure: values['allow-insecure'] ?? false,
    collateral: values.collateral !== undefined ? parseJsonFile(values.collateral, '--collateral') : undefined,
    pccsUrl: values.pccs,
    nowSeconds,
    expectedMeasurements: expectedMeasurementsOf(values),
    expectedKmsRoot: values['expect-kms-root'],
  };
}

const EXPECT_FLAGS: Array<[flag: string, key: keyof ExpectedMeasurements]> = [
  ['expect-mrtd', 'mrtd'],
  ['expect-rtmr0', 'rtmr0'],
  ['expect-rtmr1', 'rtmr1'],
  ['expect-rtmr2', 'rtmr2'],
  ['expect-rtmr3', 'rtmr3'],
  ['expect-compose-hash', 'composeHash'],
  ['expect-app-id', 'appId'],
];

function expectedMeasurementsOf(values: Record<string, unknown>): ExpectedMeasurements {
  try {
    const file = values.measurements as string | undefined;
    const expected = file === undefined ? {} : parseMeasurements(parseJsonFile(file, '--measurements'), `--measurements ${file}`);
    for (const [flag, key] of EXPECT_FLAGS) {
      if (values[flag] === undefined) continue;
      const value = normaliseMeasurement(key, values[flag], `--${flag}`);
      if (expected[key] !== undefined && expected[key] !== value) {
        throw new UsageError(`--${flag} ${value} contradicts ${key} ${expected[key]} in --measurements ${file}`);
      }
      expected[key] = value;
    }
    return expected;
  } catch (err) {
    if (err instanceof MeasurementsError) throw new UsageError(err.message);
    throw err;
  }
}

function readInput(file: string, option: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new UsageError(`${option} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

function parseJsonFile(file: string, option: string): unknown {
  try {
    return JSON.parse(readInput(file, option).toString('utf8'));
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`${option} ${file} is not JSON: ${(err as Error).message}`);
  }
}

/** OpenAI's `{data:[{b64_json}]}`, or 0G's poll body, which wraps that response under `data`. */
function imagesOfResponse(bytes: Buffer, file: string): Buffer[] {
  let body: unknown;
  try {
    body = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new UsageError(`--response ${file} is not JSON: ${(err as Error).message}`);
  }
  const outer = (body as { data?: unknown } | null)?.data;
  const items = Array.isArray(outer) ? outer : (outer as { data?: unknown } | null | undefined)?.data;
  if (!Array.isArray(items) || items.length === 0) throw new UsageError(`--response ${file} has no data[] of images`);
  return items.map((item, i) => {
    const b64 = (item as { b64_json?: unknown } | null)?.b64_json;
    if (typeof b64 !== 'string') {
      throw new UsageError(`--response ${file}: data[${i}] has no b64_json (for url responses, download the images and pass --image)`);
    }
    // Buffer's base64 decoder skips junk silently; a response that is not strict base64 is not what was signed.
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) throw new UsageError(`--response ${file}: data[${i}].b64_json is not base64`);
    return Buffer.from(b64, 'base64');
  });
}
