import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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

  it('adopts items signed elsewhere beside its own, lowest nonce first, once each, raising the floor', () => {
    const dir = journalDir();
    const journal = new SettlementJournal(dir, SIGNER);
    journal.recordSigned([item(5n)]);
    const elsewhere = { ...item(3n), signature: '0x03' };
    journal.adopt(USER, [elsewhere, item(5n)], 0n);
    journal.adopt(USER.toLowerCase(), [elsewhere], 8n);
    const reopened = new SettlementJournal(dir, SIGNER);
    expect(reopened.outstandingItems(USER)).toEqual([elsewhere, item(5n)]);
    expect(reopened.outstanding(USER)).toEqual(elsewhere);
    expect(reopened.floorFor(USER)).toBe(8n);
    // Nothing new is signed while any of them is outstanding.
    expect(() => reopened.recordSigned([item(9n)])).toThrow(/already has an outstanding item/);
    reopened.observeChainNonce(USER, 3n);
    expect(reopened.outstandingItems(USER)).toEqual([item(5n)]);
  });

  it('retires an item for good: no longer offered nor adopted again, still in the floor, forgotten once the chain passes it', () => {
    const dir = journalDir();
    const journal = new SettlementJournal(dir, SIGNER);
    journal.adopt(USER, [item(4n)], 0n);
    journal.retire(item(4n));
    journal.adopt(USER, [item(4n)], 0n);
    const reopened = new SettlementJournal(dir, SIGNER);
    expect(reopened.outstandingItems(USER)).toEqual([]);
    expect(reopened.floorFor(USER)).toBe(4n);
    reopened.recordSigned([item(6n)]);
    reopened.observeChainNonce(USER, 6n);
    expect(JSON.parse(readFileSync(path.join(dir, JOURNAL_FILE), 'utf8')).users[USER.toLowerCase()]).toEqual({ signedNonce: '6', outstanding: [] });
  });

  it('reads a version 1 journal (one outstanding item per user) and writes version 2', () => {
    const dir = journalDir();
    const stored = { ...item(7n), nonce: '7', totalFeeWei: '5' };
    writeFileSync(
      path.join(dir, JOURNAL_FILE),
      JSON.stringify({ version: 1, signer: SIGNER, users: { [USER.toLowerCase()]: { signedNonce: '7', outstanding: stored } } }),
    );
    const journal = new SettlementJournal(dir, SIGNER);
    expect(journal.outstandingItems(USER)).toEqual([item(7n)]);
    journal.observeChainNonce(USER, 8n);
    expect(JSON.parse(readFileSync(path.join(dir, JOURNAL_FILE), 'utf8'))).toMatchObject({ version: 2, users: { [USER.toLowerCase()]: { signedNonce: '8', outstanding: [] } } });
    writeFileSync(path.join(dir, JOURNAL_FILE), JSON.stringify({ version: 3, signer: SIGNER, users: {} }));
    expect(() => new SettlementJournal(dir, SIGNER)).toThrow(/version 3/);
  });

  it('fails loudly on a journal it cannot read rather than signing without it', () => {
    const dir = journalDir();
    writeFileSync(path.join(dir, JOURNAL_FILE), '{not json');
    expect(() => new SettlementJournal(dir, SIGNER)).toThrow();
  });
});
