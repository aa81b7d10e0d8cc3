import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../src/errors.js';

/** docs/errors.md is the contract clients read; it must say exactly what src/errors.ts does. */

const DOC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../docs/errors.md');

interface DocumentedCode {
  code: string;
  status: number;
  type: string;
  retryable: boolean;
  when: string;
}

/** The rows of the table whose header starts `| code | HTTP status | type | retryable | when |`. */
function documentedCodes(markdown: string): DocumentedCode[] {
  const lines = markdown.split('\n');
  const header = lines.findIndex((l) => /^\|\s*code\s*\|\s*HTTP status\s*\|\s*type\s*\|\s*retryable\s*\|\s*when\s*\|\s*$/.test(l));
  if (header < 0) throw new Error('docs/errors.md has no "| code | HTTP status | type | retryable | when |" table');
  if (!/^\|(\s*:?-+:?\s*\|){5}\s*$/.test(lines[header + 1] ?? '')) throw new Error('the table header is not followed by a separator row');
  const rows: DocumentedCode[] = [];
  let end = header + 2;
  for (const line of lines.slice(header + 2)) {
    if (!line.startsWith('|')) break;
    end += 1;
    const cells = line.split('|').slice(1, -1).map((c) => c.trim());
    if (cells.length !== 5) throw new Error(`a table row does not have 5 cells: ${line}`);
    const [code, status, type, retryable, when] = cells as [string, string, string, string, string];
    const unquote = (s: string) => s.replace(/^`(.*)`$/, '$1');
    if (retryable !== 'yes' && retryable !== 'no') throw new Error(`retryable must be yes or no: ${line}`);
    rows.push({ code: unquote(code), status: Number(status), type: unquote(type), retryable: retryable === 'yes', when });
  }
  // A code row cut off from the table (by a blank line, say) would otherwise go unchecked.
  const stray = lines.filter((l, i) => (i < header || i >= end) && /^\|\s*`/.test(l));
  if (stray.length > 0) throw new Error(`code rows outside the table: ${stray.join(' / ')}`);
  return rows;
}

describe('docs/errors.md', () => {
  const rows = documentedCodes(readFileSync(DOC, 'utf8'));

  it('parses into one row per code', () => {
    expect(rows.length).toBeGreaterThan(0);
    const codes = rows.map((r) => r.code);
    expect(codes.filter((c, i) => codes.indexOf(c) !== i), 'codes documented twice').toEqual([]);
  });

  it('documents every code of ERROR_CODES with its status, type and retryable flag', () => {
    const documented = new Map(rows.map((r) => [r.code, r]));
    for (const [code, info] of Object.entries(ERROR_CODES)) {
      const row = documented.get(code);
      expect(row, `${code} is not documented`).toBeDefined();
      expect({ code, status: row!.status, type: row!.type, retryable: row!.retryable }).toEqual({
        code,
        status: info.status,
        type: info.type,
        retryable: info.retryable,
      });
    }
  });

  it('documents no code that does not exist', () => {
    const unknown = rows.map((r) => r.code).filter((c) => !Object.hasOwn(ERROR_CODES, c));
    expect(unknown).toEqual([]);
  });

  it('says when each code happens', () => {
    for (const row of rows) expect(row.when.length, `${row.code} has no explanation`).toBeGreaterThan(20);
  });
});
