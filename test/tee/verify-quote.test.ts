import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { QuoteVerificationError, verifyTdxQuote } from '../../src/tee/verify-quote.js';

/** Intel's public sample TDX quote and the collateral that was current when it was taken. */
const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/tdx');
const SAMPLE_QUOTE = readFileSync(path.join(FIXTURES, 'tdx_quote'));
const SAMPLE_COLLATERAL = JSON.parse(readFileSync(path.join(FIXTURES, 'tdx_quote_collateral.json'), 'utf8')) as Record<string, string>;

/**
 * Just after the collateral was issued, while every part of it is valid. tcb_info and qe_identity are
 * JSON strings inside the collateral; the QE identity was issued 16 minutes after the TCB info, so the
 * later of the two issue dates is the first moment the whole collateral is valid.
 */
function collateralTime(collateral: Record<string, string>): number {
  const tcbIssued = Date.parse((JSON.parse(collateral.tcb_info!) as { issueDate: string }).issueDate) / 1000;
  const qeIssued = Date.parse((JSON.parse(collateral.qe_identity!) as { issueDate: string }).issueDate) / 1000;
  return Math.max(tcbIssued, qeIssued) + 60;
}

const NOW = collateralTime(SAMPLE_COLLATERAL);

describe('verifyTdxQuote', () => {
  it('verifies Intel’s sample quote as UpToDate with its collateral, offline', async () => {
    const quote = await verifyTdxQuote(SAMPLE_QUOTE, { collateral: SAMPLE_COLLATERAL, nowSeconds: NOW });
    expect(quote.status).toBe('UpToDate');
    expect(quote.advisoryIds).toEqual([]);
    expect(quote.collateralSource).toBe('offline');
    // report_data is the last 64 bytes of the TD report body of a v4 quote.
    expect(quote.reportData.equals(SAMPLE_QUOTE.subarray(568, 632))).toBe(true);
    expect(quote.reportData).toHaveLength(64);
    // MRTD is at offset 136 of the TD report, which follows the 48-byte quote header.
    expect(quote.mrTd).toBe(SAMPLE_QUOTE.subarray(184, 232).toString('hex'));
    for (const reg of [quote.rtMr0, quote.rtMr1, quote.rtMr2, quote.rtMr3]) expect(reg).toMatch(/^[0-9a-f]{96}$/);
  });

  it('rejects the quote when one byte of the signed TD report is flipped', async () => {
    for (const offset of [200, 600]) {
      const tampered = Buffer.from(SAMPLE_QUOTE);
      tampered[offset]! ^= 0x01;
      const err = await verifyTdxQuote(tampered, { collateral: SAMPLE_COLLATERAL, nowSeconds: NOW }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(QuoteVerificationError);
      expect((err as QuoteVerificationError).stage).toBe('verify');
      expect((err as Error).message).toMatch(/^quote verification failed: .*signature is invalid/);
    }
  });

  it('rejects it outside the collateral’s validity window', async () => {
    const tcbInfo = JSON.parse(SAMPLE_COLLATERAL.tcb_info!) as { issueDate: string; nextUpdate: string };
    const before = Date.parse(tcbInfo.issueDate) / 1000 - 60;
    const after = Date.parse(tcbInfo.nextUpdate) / 1000 + 60;
    await expect(verifyTdxQuote(SAMPLE_QUOTE, { collateral: SAMPLE_COLLATERAL, nowSeconds: before })).rejects.toThrow(/issue date is in the future/);
    await expect(verifyTdxQuote(SAMPLE_QUOTE, { collateral: SAMPLE_COLLATERAL, nowSeconds: after })).rejects.toThrow(/expired/);
  });

  it('names missing collateral fields instead of crashing inside dcap-qvl', async () => {
    const { tcb_info: _dropped, ...partial } = SAMPLE_COLLATERAL;
    await expect(verifyTdxQuote(SAMPLE_QUOTE, { collateral: partial, nowSeconds: NOW })).rejects.toThrow('collateral lacks tcb_info');
    await expect(verifyTdxQuote(SAMPLE_QUOTE, { collateral: 'nope', nowSeconds: NOW })).rejects.toThrow(QuoteVerificationError);
  });

  it('reports an unreachable PCCS as a collateral error', async () => {
    // Port 9 on loopback: nothing listens, so the fetch fails at once without leaving the machine.
    const err = await verifyTdxQuote(SAMPLE_QUOTE, { pccsUrl: 'http://127.0.0.1:9', nowSeconds: NOW }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QuoteVerificationError);
    expect((err as QuoteVerificationError).stage).toBe('collateral');
    expect((err as Error).message).toContain('could not fetch collateral from http://127.0.0.1:9');
  });
});
