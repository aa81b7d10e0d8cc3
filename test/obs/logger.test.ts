import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/obs/logger.js';

/** The JSON lines a logger wrote, parsed. */
function capture(): { stream: Writable; lines: () => Array<Record<string, unknown>> } {
  let text = '';
  const stream = new Writable({
    write(chunk, _encoding, done) {
      text += String(chunk);
      done();
    },
  });
  return { stream, lines: () => text.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>) };
}

describe('JSON log lines', () => {
  it('are one object per line with level, message, timestamp and the fields; bigints as decimal strings', () => {
    const out = capture();
    const logger = createLogger({ level: 'info', stream: out.stream });
    logger.info('settled', { user: '0xabc', amountWei: 12345678901234567890n, receipts: 3 });
    logger.debug('dropped below the level');
    const [line, ...rest] = out.lines();
    expect(rest).toEqual([]);
    expect(line).toMatchObject({ level: 'info', message: 'settled', user: '0xabc', amountWei: '12345678901234567890', receipts: 3 });
    expect(new Date(String(line!.timestamp)).toISOString()).toBe(line!.timestamp);
  });

  it('keep the line when a field cannot be serialised (a cycle), and say so', () => {
    const out = capture();
    const logger = createLogger({ level: 'info', stream: out.stream });
    const cyclic: Record<string, unknown> = { name: 'a' };
    cyclic.self = cyclic;
    logger.warn('odd value', { value: cyclic });
    logger.info('next line');
    const lines = out.lines();
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({ level: 'warn', message: 'odd value' });
    expect(String(lines[0]!.logError)).toMatch(/^fields not serialisable: /);
    expect(lines[0]).not.toHaveProperty('value');
    expect(lines[1]).toMatchObject({ level: 'info', message: 'next line' });
  });
});
