/** One line of the benchmark table: what was measured, the figure, the target, and whether it holds. */
export interface BenchRow {
  scenario: string;
  figure: string;
  value: number;
  unit: string;
  target: string;
  pass: boolean | null;
  note?: string;
}

export interface BenchScenario {
  name: string;
  run(): Promise<BenchRow[]>;
}

export function formatTable(rows: BenchRow[]): string {
  const header = ['scenario', 'figure', 'value', 'target', 'result'];
  const lines = rows.map((r) => [
    r.scenario,
    r.figure,
    `${formatNumber(r.value)} ${r.unit}`.trim(),
    r.target,
    r.pass === null ? 'info' : r.pass ? 'pass' : 'FAIL',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const row = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  const table = [row(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...lines.map(row)].join('\n');
  const notes = rows.filter((r) => r.note !== undefined).map((r) => `- ${r.scenario} — ${r.figure}: ${r.note}`);
  return notes.length === 0 ? table : `${table}\n\nNotes:\n${notes.join('\n')}`;
}

export function formatNumber(n: number): string {
  if (Number.isInteger(n)) return n.toLocaleString('en-US');
  return n >= 100 ? Math.round(n).toLocaleString('en-US') : n >= 10 ? n.toFixed(1) : n.toFixed(2);
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index]!;
}
