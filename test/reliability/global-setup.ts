import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TestProject } from 'vitest/node';

/** Where the figures of this run go, for report-reporter.ts (same process) to read once every file has run. */
export const FIGURES_DIR_ENV = 'PIXELD_RELIABILITY_FIGURES_DIR';

/**
 * Gives the reliability files one seed and a directory for their figures. The report is written by
 * report-reporter.ts at the end of the run, which also knows which files failed.
 */
export default function setup(project: TestProject): void {
  const dir = mkdtempSync(path.join(tmpdir(), 'pixeld-reliability-figures-'));
  process.env[FIGURES_DIR_ENV] = dir;
  project.provide('reliabilityFiguresDir', dir);
  project.provide('reliabilitySeed', process.env.RELIABILITY_SEED !== undefined ? Number(process.env.RELIABILITY_SEED) : Math.floor(Math.random() * 2 ** 31));
}
