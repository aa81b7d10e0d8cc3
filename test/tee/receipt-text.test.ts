import { Wallet } from 'ethers';
import { describe, expect, it } from 'vitest';
import { parseReceiptText, receiptText, signJob, type ReceiptFields } from '../../src/tee/receipt.js';

const key = Wallet.createRandom();
const fields: ReceiptFields = {
  tee: 'tdx',
  provider: '0x00000000000000000000000000000000000000A1',
  signer: key.address,
  job: `job_${'1'.repeat(32)}`,
  model: 'flux',
  user: '0x00000000000000000000000000000000000000B2',
  seq: 42n,
  requestSha256: 'a'.repeat(64),
  imageSha256: ['b'.repeat(64), 'c'.repeat(64)],
  pricePerImageWei: 10n,
  feeWei: 20n,
  created: 1_800_000_000,
};

describe('the signed receipt text', () => {
  it('reads back exactly the fields it was made from, v2 with the sequence number and v1 without', () => {
    expect(parseReceiptText(receiptText(fields))).toEqual(fields);
    const v1 = { ...fields, seq: undefined };
    expect(receiptText(v1).split('\n')[0]).toBe('image-receipt/1');
    expect(parseReceiptText(receiptText(v1))).toEqual(v1);
  });

  it('reads nothing from a text that is not exactly what receiptText writes', () => {
    const text = receiptText(fields);
    for (const bad of [
      text.replace('image-receipt/2', 'image-receipt/3'),
      text.replace('seq:42', 'seq:042'),
      text.replace('fee_wei:20', 'fee_wei:2e1'),
      text.replace('\nseq:42', ''),
      `${text}\nextra:1`,
      text.replace('model:flux', 'modell:flux'),
      text.replace('images:2', 'images:3'),
      text.replace('tee:tdx', 'tee:sgx'),
    ]) {
      expect(parseReceiptText(bad)).toBeUndefined();
    }
  });

  it('signs the sequence number into the receipt', () => {
    const signed = signJob({ signer: key, address: key.address, teeLabel: 'tdx' }, { ...fields, seq: 7n });
    expect(signed.receipt).toMatchObject({ version: 2, seq: '7' });
    expect(parseReceiptText(signed.receipt.text)?.seq).toBe(7n);
  });
});
