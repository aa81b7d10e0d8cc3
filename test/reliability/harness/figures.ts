import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { inject } from 'vitest';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Where each reliability file leaves its measured figures; set only by test/reliability/vitest.config.ts. */
    reliabilityFiguresDir: string;
    /** The run's seed, so every file of one run draws from the same one. */
    reliabilitySeed: number;
  }
}

/** One scenario's measurements, as the report generator reads them. */
export interface Figures {
  scenario: 'load' | 'crash' | 'backend-faults' | 'disk-full' | 'hostile-input' | 'security';
  mode: 'ci' | 'heavy';
  seed: number;
  /** Numbers and short texts only: the generator formats them. */
  values: Record<string, number | string | boolean>;
}

/**
 * Leaves the figures for the report. Under plain `npm test` (no reliability config) nothing is written:
 * the docs are regenerated only by `npm run test:reliability`.
 */
export function recordFigures(figures: Figures): void {
  const dir = inject('reliabilityFiguresDir');
  if (typeof dir !== 'string' || dir === '') return;
  writeFileSync(path.join(dir, `${figures.scenario}.json`), `${JSON.stringify(figures, null, 2)}\n`);
}
