import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import path from 'node:path';
import { TeeError } from './key-provider.js';

/**
 * TDX quotes through Linux configfs-tsm (Documentation/ABI/testing/configfs-tsm): make a report entry,
 * write 64 bytes of report data to `inblob`, read the quote from `outblob`, and use `generation` to make
 * sure nobody else wrote `inblob` in between.
 */

/** The filesystem calls quote generation makes; tests swap in a fake kernel. */
export interface TsmFs {
  mkdir(path: string): Promise<void>;
  rmdir(path: string): Promise<void>;
  readFile(path: string): Promise<Buffer>;
  writeFile(path: string, data: Buffer): Promise<void>;
}

export const nodeTsmFs: TsmFs = {
  async mkdir(p) {
    await fsp.mkdir(p);
  },
  rmdir: (p) => fsp.rmdir(p),
  readFile: (p) => fsp.readFile(p),
  writeFile: (p, data) => fsp.writeFile(p, data),
};

export interface GenerateTdxQuoteOptions {
  /** The configfs-tsm report directory, normally /sys/kernel/config/tsm/report. */
  tsmReportDir: string;
  /** @default nodeTsmFs */
  fs?: TsmFs;
  /**
   * Bound on retries, applied separately to `inblob` writes refused with EBUSY and to whole
   * write/read rounds spoilt by a concurrent writer. @default 5
   */
  maxAttempts?: number;
  /** @default setTimeout-based */
  sleep?: (ms: number) => Promise<void>;
}

export const TDX_REPORT_DATA_BYTES = 64;
/** A TDX quote with its certification data is ~5 KB; outside these bounds it is not one. */
export const MIN_QUOTE_BYTES_EXCLUSIVE = 1020;
export const MAX_QUOTE_BYTES_EXCLUSIVE = 8192;
const DEFAULT_MAX_ATTEMPTS = 5;
const BACKOFF_BASE_MS = 10;
const BACKOFF_MAX_MS = 200;

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const backoffMs = (attempt: number) => Math.min(BACKOFF_BASE_MS * 2 ** (attempt - 1), BACKOFF_MAX_MS);

/**
 * The kernel serialises quote generation anyway; queueing here keeps our own callers from spoiling each
 * other's generation check and burning retries. Keyed by report dir because that is the shared resource.
 */
const queues = new Map<string, Promise<unknown>>();

function serialised<T>(key: string, task: () => Promise<T>): Promise<T> {
  const previous = queues.get(key) ?? Promise.resolve();
  const run = previous.then(task, task);
  const tail = run.catch(() => undefined);
  queues.set(key, tail);
  void tail.then(() => {
    if (queues.get(key) === tail) queues.delete(key);
  });
  return run;
}

/** A quote whose report_data is exactly `reportData` (64 bytes), from configfs-tsm. */
export function generateTdxQuote(reportData: Buffer, options: GenerateTdxQuoteOptions): Promise<Buffer> {
  if (!Buffer.isBuffer(reportData) || reportData.length !== TDX_REPORT_DATA_BYTES) {
    return Promise.reject(
      new TeeError(`TDX report data must be exactly ${TDX_REPORT_DATA_BYTES} bytes (a Buffer), got ${describeInput(reportData)}`),
    );
  }
  const dir = path.resolve(options.tsmReportDir);
  // Copy now: the caller may reuse its buffer while we wait our turn in the queue.
  const data = Buffer.from(reportData);
  return serialised(dir, () => generateUnqueued(data, dir, options));
}

async function generateUnqueued(reportData: Buffer, dir: string, options: GenerateTdxQuoteOptions): Promise<Buffer> {
  const fs = options.fs ?? nodeTsmFs;
  const maxAttempts = Math.max(1, options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS);
  const sleep = options.sleep ?? defaultSleep;
  return withReportEntry(fs, dir, async (entry) => {
    await requireTdxProvider(fs, entry);
    let lastRace = '';
    for (let round = 1; round <= maxAttempts; round++) {
      const before = await readGeneration(fs, entry);
      await writeInblob(fs, entry, reportData, maxAttempts, sleep);
      const quote = await readAttribute(fs, entry, 'outblob');
      const after = await readGeneration(fs, entry);
      if (after === before + 1) {
        checkQuote(quote, reportData);
        return quote;
      }
      lastRace = `generation went ${before} → ${after}`;
      if (round < maxAttempts) await sleep(backoffMs(round));
    }
    throw new TeeError(
      `configfs-tsm: another writer changed ${entry}/inblob during each of ${maxAttempts} attempts (${lastRace}); ` +
        'is another process generating quotes through the same report entry?',
    );
  });
}

/**
 * The provider the configfs-tsm entry reports (e.g. `tdx_guest`); TeeError unless it is a TDX guest.
 * Cheap (no quote is made), so start-up can fail early on the wrong machine.
 */
export async function probeTsmProvider(options: { tsmReportDir: string; fs?: TsmFs }): Promise<string> {
  const fs = options.fs ?? nodeTsmFs;
  return withReportEntry(fs, path.resolve(options.tsmReportDir), (entry) => requireTdxProvider(fs, entry));
}

async function withReportEntry<T>(fs: TsmFs, dir: string, use: (entry: string) => Promise<T>): Promise<T> {
  const entry = path.join(dir, `pixeld-${process.pid}-${randomBytes(6).toString('hex')}`);
  try {
    await fs.mkdir(entry);
  } catch (err) {
    throw new TeeError(`configfs-tsm: cannot create report entry ${entry}: ${errorText(err)}`, { cause: err });
  }
  try {
    return await use(entry);
  } finally {
    // A leftover entry holds kernel memory but does not make the quote wrong, so a failing rmdir is not
    // allowed to hide the quote or the real error.
    await fs.rmdir(entry).catch(() => undefined);
  }
}

async function requireTdxProvider(fs: TsmFs, entry: string): Promise<string> {
  const provider = (await readAttribute(fs, entry, 'provider')).toString('utf8').trim();
  if (!provider.startsWith('tdx_guest')) {
    throw new TeeError(
      `configfs-tsm provider is "${provider}", not tdx_guest: this machine is not a TDX guest (tee.mode "tdx" needs one)`,
    );
  }
  return provider;
}

async function readGeneration(fs: TsmFs, entry: string): Promise<number> {
  const text = (await readAttribute(fs, entry, 'generation')).toString('utf8').trim();
  if (!/^\d+$/.test(text)) throw new TeeError(`configfs-tsm: ${entry}/generation holds "${text}", not a number`);
  return Number(text);
}

async function writeInblob(
  fs: TsmFs,
  entry: string,
  reportData: Buffer,
  maxAttempts: number,
  sleep: (ms: number) => Promise<void>,
): Promise<void> {
  const file = path.join(entry, 'inblob');
  for (let attempt = 1; ; attempt++) {
    try {
      await fs.writeFile(file, reportData);
      return;
    } catch (err) {
      if (errorCode(err) !== 'EBUSY') {
        throw new TeeError(`configfs-tsm: writing ${file} failed: ${errorText(err)}`, { cause: err });
      }
      if (attempt >= maxAttempts) {
        throw new TeeError(`configfs-tsm: ${file} stayed busy (EBUSY) for ${maxAttempts} attempts`, { cause: err });
      }
      await sleep(backoffMs(attempt));
    }
  }
}

async function readAttribute(fs: TsmFs, entry: string, name: string): Promise<Buffer> {
  const file = path.join(entry, name);
  try {
    return await fs.readFile(file);
  } catch (err) {
    throw new TeeError(`configfs-tsm: reading ${file} failed: ${errorText(err)}`, { cause: err });
  }
}

function checkQuote(quote: Buffer, reportData: Buffer): void {
  if (quote.length <= MIN_QUOTE_BYTES_EXCLUSIVE || quote.length >= MAX_QUOTE_BYTES_EXCLUSIVE) {
    throw new TeeError(
      `configfs-tsm returned ${quote.length} bytes from outblob; a TDX quote is between ` +
        `${MIN_QUOTE_BYTES_EXCLUSIVE} and ${MAX_QUOTE_BYTES_EXCLUSIVE} bytes`,
    );
  }
  // The generation check already rules out a raced write; this catches a kernel or QGS that quoted
  // something else, which would otherwise surface only at the verifier.
  const quoted = reportDataOfTdxQuote(quote);
  if (quoted !== undefined && !quoted.equals(reportData)) {
    throw new TeeError('configfs-tsm returned a quote over different report data than was written to inblob');
  }
}

/**
 * The 64-byte report_data of a TDX quote, or undefined for a layout this does not know. v4 quotes put the
 * TD report body right after the 48-byte header; v5 adds a 6-byte body descriptor first. In both, report
 * data sits at offset 520 of the body.
 */
export function reportDataOfTdxQuote(quote: Buffer): Buffer | undefined {
  if (quote.length < 48) return undefined;
  const version = quote.readUInt16LE(0);
  const teeType = quote.readUInt32LE(4);
  if (teeType !== 0x81) return undefined;
  const bodyStart = version === 4 ? 48 : version === 5 ? 54 : undefined;
  if (bodyStart === undefined) return undefined;
  const start = bodyStart + 520;
  if (quote.length < start + TDX_REPORT_DATA_BYTES) return undefined;
  return quote.subarray(start, start + TDX_REPORT_DATA_BYTES);
}

function describeInput(value: unknown): string {
  if (Buffer.isBuffer(value)) return `${value.length} bytes`;
  return typeof value;
}

function errorCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
