import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Wallet, verifyMessage } from 'ethers';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { generateTdxQuote } from '../../src/tee/configfs-tsm.js';
import { TeeError } from '../../src/tee/key-provider.js';
import { openTdxKeyProvider } from '../../src/tee/tdx-key.js';
import { createFakeTsm, type FakeTsm } from '../fakes/configfs-tsm.js';

const noSleep = async () => {};

let tsm: FakeTsm;
let keyDir: string;
let keyFile: string;

beforeEach(async () => {
  tsm = await createFakeTsm();
  keyDir = await mkdtemp(path.join(tmpdir(), 'pixeld-tdx-key-'));
  // A directory that does not exist yet, as /run/pixeld after a reboot.
  keyFile = path.join(keyDir, 'run', 'pixeld', 'tee-signing-key');
});

afterEach(async () => {
  try {
    // Whatever happened, no report entry may be left behind.
    expect(await tsm.liveEntries()).toEqual([]);
  } finally {
    await tsm.close();
    await rm(keyDir, { recursive: true, force: true });
  }
});

const open = () => openTdxKeyProvider({ tsmReportDir: tsm.reportDir, keyFile }, { fs: tsm.fs });
const quoteDirect = (reportData: Buffer, maxAttempts?: number) =>
  generateTdxQuote(reportData, { tsmReportDir: tsm.reportDir, fs: tsm.fs, sleep: noSleep, maxAttempts });

describe('tdx key', () => {
  it('makes a key file readable by its owner only, in a 0700 directory', async () => {
    const provider = await open();
    expect((await stat(keyFile)).mode & 0o777).toBe(0o600);
    expect((await stat(path.dirname(keyFile))).mode & 0o777).toBe(0o700);
    const stored = (await readFile(keyFile, 'utf8')).trim();
    expect(new Wallet(stored).address).toBe(provider.address);
    expect(provider).toMatchObject({
      mode: 'tdx',
      teeLabel: 'tdx',
      insecure: false,
      keySource: 'tdx-tmpfs',
      signatureChain: [],
    });
    await expect(provider.info()).resolves.toBeUndefined();
  });

  it('reuses the key on restart', async () => {
    const first = await open();
    const second = await open();
    expect(second.address).toBe(first.address);
    const signature = await second.signer.signMessage('receipt');
    expect(verifyMessage('receipt', signature)).toBe(first.address);
  });

  it('rotates the key when the key file is gone, as after a VM reboot', async () => {
    const first = await open();
    await rm(keyFile);
    const second = await open();
    expect(second.address).not.toBe(first.address);
  });

  it('adopts a key that is already there instead of overwriting it', async () => {
    const existing = Wallet.createRandom();
    await open(); // creates the directory
    await writeFile(keyFile, `${existing.privateKey}\n`, { mode: 0o600 });
    const provider = await open();
    expect(provider.address).toBe(existing.address);
    expect((await readFile(keyFile, 'utf8')).trim()).toBe(existing.privateKey);
  });

  it('refuses a key file others can read', async () => {
    await open();
    await chmod(keyFile, 0o644);
    const opening = open();
    await expect(opening).rejects.toBeInstanceOf(TeeError);
    await expect(opening).rejects.toThrow(/0644.*group\/other permission/);
  });

  it('refuses a key file that holds no key', async () => {
    await open();
    await writeFile(keyFile, 'not a key\n');
    await expect(open()).rejects.toThrow(/32-byte hex key/);
  });

  it('fails clearly when there is no configfs-tsm', async () => {
    const opening = openTdxKeyProvider({ tsmReportDir: path.join(tsm.dir, 'missing'), keyFile }, { fs: tsm.fs });
    await expect(opening).rejects.toBeInstanceOf(TeeError);
    await expect(opening).rejects.toThrow(/not a TDX guest|configfs is not mounted/);
    await expect(stat(keyFile)).rejects.toThrow(/ENOENT/);
  });

  it('refuses to start on a machine whose TSM provider is not TDX', async () => {
    tsm.setProvider('sev_guest\n');
    await expect(open()).rejects.toThrow(/"sev_guest", not tdx_guest/);
  });
});

describe('tdx quotes through configfs-tsm', () => {
  it('returns a quote carrying exactly the report data', async () => {
    const provider = await open();
    const reportData = randomBytes(64);
    const result = await provider.quote(reportData);
    expect(result).toBeDefined();
    expect(result!.quoteProvider).toBe('configfs-tsm');
    expect(result!.eventLog).toBeUndefined();
    expect(result!.quote.length).toBeGreaterThan(1020);
    expect(result!.quote.length).toBeLessThan(8192);
    expect(result!.quote.subarray(568, 632).equals(reportData)).toBe(true);
    expect(tsm.stats.inblobWrites).toBe(1);
  });

  it('rejects report data that is not 64 bytes', async () => {
    const provider = await open();
    await expect(provider.quote(randomBytes(32))).rejects.toBeInstanceOf(TeeError);
    await expect(provider.quote(randomBytes(65))).rejects.toThrow(/exactly 64 bytes/);
    expect(tsm.stats.inblobWrites).toBe(0);
  });

  it('retries an inblob write refused with EBUSY', async () => {
    tsm.failInblobWrites(2, 'EBUSY');
    const reportData = randomBytes(64);
    const quote = await quoteDirect(reportData);
    expect(quote.subarray(568, 632).equals(reportData)).toBe(true);
    expect(tsm.stats.inblobRejections).toBe(2);
    expect(tsm.stats.inblobWrites).toBe(3);
  });

  it('waits between EBUSY retries with the default sleep', async () => {
    const provider = await open();
    tsm.failInblobWrites(1, 'EBUSY');
    const reportData = randomBytes(64);
    const result = await provider.quote(reportData);
    expect(result!.quote.subarray(568, 632).equals(reportData)).toBe(true);
  });

  it('gives up with TeeError when inblob stays busy', async () => {
    tsm.failInblobWrites(10, 'EBUSY');
    await expect(quoteDirect(randomBytes(64), 4)).rejects.toThrow(/stayed busy \(EBUSY\) for 4 attempts/);
    expect(tsm.stats.inblobWrites).toBe(4);
  });

  it('does not retry other write errors', async () => {
    tsm.failInblobWrites(1, 'EIO');
    await expect(quoteDirect(randomBytes(64))).rejects.toThrow(/EIO/);
    expect(tsm.stats.inblobWrites).toBe(1);
  });

  it('retries when another writer raced it and returns its own quote', async () => {
    tsm.raceNext(1);
    const reportData = randomBytes(64);
    const quote = await quoteDirect(reportData);
    expect(quote.subarray(568, 632).equals(reportData)).toBe(true);
    expect(tsm.stats.inblobWrites).toBe(2);
    expect(tsm.stats.outblobReads).toBe(2);
  });

  it('fails with TeeError after bounded attempts when every round is raced', async () => {
    tsm.raceNext(Number.POSITIVE_INFINITY);
    const quoting = quoteDirect(randomBytes(64), 3);
    await expect(quoting).rejects.toBeInstanceOf(TeeError);
    await expect(quoting).rejects.toThrow(/another writer changed .* during each of 3 attempts/);
    expect(tsm.stats.inblobWrites).toBe(3);
  });

  it('refuses a provider that is not tdx_guest', async () => {
    tsm.setProvider('sev_guest\n');
    await expect(quoteDirect(randomBytes(64))).rejects.toThrow(/not a TDX guest/);
    expect(tsm.stats.inblobWrites).toBe(0);
  });

  it.each([512, 1020, 8192, 9000])('refuses an outblob of %i bytes', async (size) => {
    const provider = await open();
    tsm.setOutblobSize(size);
    const quoting = provider.quote(randomBytes(64));
    await expect(quoting).rejects.toBeInstanceOf(TeeError);
    await expect(quoting).rejects.toThrow(new RegExp(`returned ${size} bytes from outblob`));
  });

  it('accepts quotes just inside the size bounds', async () => {
    for (const size of [1021, 8191]) {
      tsm.setOutblobSize(size);
      const reportData = randomBytes(64);
      const quote = await quoteDirect(reportData);
      expect(quote.length).toBe(size);
      expect(quote.subarray(568, 632).equals(reportData)).toBe(true);
    }
  });

  it('fails with TeeError when the report dir cannot take a new entry', async () => {
    await expect(
      generateTdxQuote(randomBytes(64), { tsmReportDir: path.join(tsm.dir, 'missing'), fs: tsm.fs, sleep: noSleep }),
    ).rejects.toThrow(/cannot create report entry/);
  });

  it('serialises concurrent quotes, each getting its own report data', async () => {
    const provider = await open();
    tsm.setOutblobDelayMs(30);
    const inputs = [randomBytes(64), randomBytes(64), randomBytes(64)];
    const results = await Promise.all(inputs.map((d) => provider.quote(d)));
    results.forEach((result, i) => expect(result!.quote.subarray(568, 632).equals(inputs[i]!)).toBe(true));
    expect(tsm.stats.maxLiveEntries).toBe(1);
    // One entry for the start-up provider probe, one per quote; no retries were needed.
    expect(tsm.stats.entriesCreated).toBe(4);
    expect(tsm.stats.inblobWrites).toBe(3);
  });

  it('keeps serving after a failed quote', async () => {
    const provider = await open();
    tsm.failInblobWrites(1, 'EIO');
    const failing = provider.quote(randomBytes(64));
    // Queued behind the failing one; the queue must not stay broken.
    const reportData = randomBytes(64);
    const next = provider.quote(reportData);
    await expect(failing).rejects.toBeInstanceOf(TeeError);
    expect((await next)!.quote.subarray(568, 632).equals(reportData)).toBe(true);
  });
});
