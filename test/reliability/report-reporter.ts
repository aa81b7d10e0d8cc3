import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Reporter, TestModule } from 'vitest/node';
import { FIGURES_DIR_ENV } from './global-setup.js';
import { readFigures, renderReliabilityReport, SCENARIO_FILES } from './report.js';

const DOC = fileURLToPath(new URL('../../docs/RELIABILITY.md', import.meta.url));

/**
 * Once every reliability file has run, writes docs/RELIABILITY.md from the figures they measured. A scenario
 * whose file failed shows as FAIL whatever figures it left; one that did not run shows as not run.
 */
export default class ReliabilityReportReporter implements Reporter {
  onTestRunEnd(modules: ReadonlyArray<TestModule>): void {
    const dir = process.env[FIGURES_DIR_ENV];
    if (dir === undefined) return;
    const failed = new Set<string>();
    for (const module of modules) {
      const file = path.basename(module.moduleId);
      const scenario = Object.entries(SCENARIO_FILES).find(([, f]) => f === file)?.[0];
      const anyFailed = module.state() === 'failed' || [...module.children.allTests()].some((t) => t.result().state === 'failed');
      if (scenario && anyFailed) failed.add(scenario);
    }
    const figures = readFigures(dir);
    if (figures.length > 0 || failed.size > 0) {
      writeFileSync(DOC, renderReliabilityReport(figures, new Date(), failed));
      process.stdout.write(`\nreliability: wrote ${path.relative(process.cwd(), DOC)} from ${figures.length} scenario(s)${failed.size > 0 ? `, ${failed.size} failed` : ''}\n`);
    }
    rmSync(dir, { recursive: true, force: true });
  }
}
