import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { JOURNAL_FILE, SettlementJournal, type JournalItem } from '../../src/tee/settlement-journal.js';

const SIGNER = '0x00000000000000000000000000000000000000A1';
const USER = '0x00000000000000000000000000000000000000B2';
const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function journalDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'pixeld-journal-'));
  dirs.push(dir);
  return dir;
}

const item = (nonce: bigint): JournalItem => ({
  user: USER,
  nonce,
  totalFeeWei: 5n,
  requestsHash: `0x${'ab'.repeat(32)}`,
  signature: '0x01',
  receipts: [{ jobId: `job_${'0'.repeat(32)}`, leaf: ['a', 'b', 'c', 'd', 'e', '1', '5', '1', nonce.toString()] }],
});

describe('the TEE settlement journal', () => {
  it('keeps the outstanding item and the floor across instances (another process, a restart)', () => {
    const dir = journalDir();
    new SettlementJournal(dir, SIGNER).recordSigned([item(7n)]);
    const reopened = new SettlementJournal(dir, SIGNER);
    expect(reopened.floorFor(USER.toLowerCase())).toBe(7n);
    expect(reopened.outstanding(USER)).toEqual(item(7n));
  });

  it('refuses to record a second item while one is outstanding, or a nonce not above the floor', () => {
    const journal = new SettlementJournal(journalDir(), SIGNER);
    journal.recordSigned([item(3n)]);
    expect(() => journal.recordSigned([item(4n)])).toThrow(/already has an outstanding item/);
    journal.observeChainNonce(USER, 3n);
    expect(journal.outstanding(USER)).toBeUndefined();
    expect(() => journal.recordSigned([item(3n)])).toThrow(/not above 3/);
  });

  it('clears the outstanding item only once the chain nonce reaches it, and raises the floor to the chain', () => {
    const journal = new SettlementJournal(journalDir(), SIGNER);
    journal.recordSigned([item(5n)]);
    journal.observeChainNonce(USER, 4n);
    expect(journal.outstanding(USER)?.nonce).toBe(5n);
    journal.observeChainNonce(USER, 9n);
    expect(journal.outstanding(USER)).toBeUndefined();
    expect(journal.floorFor(USER)).toBe(9n);
  });

  it('ignores a journal written for another key (a rotated tdx key starts afresh)', () => {
    const dir = journalDir();
    new SettlementJournal(dir, '0x00000000000000000000000000000000000000C3').recordSigned([item(8n)]);
    const mine = new SettlementJournal(dir, SIGNER);
    expect(mine.floorFor(USER)).toBe(0n);
    expect(mine.outstanding(USER)).toBeUndefined();
  });

  it('fails loudly on a journal it cannot read rather than signing without it', () => {
    const dir = journalDir();
    writeFileSync(path.join(dir, JOURNAL_FILE), '{not json');
    expect(() => new SettlementJournal(dir, SIGNER)).toThrow();
  });
});
