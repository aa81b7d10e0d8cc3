import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { completionCommitScenario } from './scenarios/completion-commit.js';
import { memoryScenario } from './scenarios/memory.js';
import { pollThroughputScenario } from './scenarios/poll-throughput.js';
import { replicasScenario } from './scenarios/replicas.js';
import { saturationScenario } from './scenarios/saturation.js';
import { settlementScenario } from './scenarios/settlement.js';
import { signingScenario } from './scenarios/signing.js';
import { syncOverheadScenario } from './scenarios/sync-overhead.js';
import { timeToResultScenario } from './scenarios/time-to-result.js';
import { formatTable, type BenchRow, type BenchScenario } from './table.js';

/**
 * `npm run bench [scenario …]`: runs each scenario on this machine, prints one table and writes the same
 * to bench/results/latest.json. Figures, not timed tests: nothing here fails the test suite.
 */
const SCENARIOS: BenchScenario[] = [
  saturationScenario,
  timeToResultScenario,
  syncOverheadScenario,
  pollThroughputScenario,
  memoryScenario,
  signingScenario,
  completionCommitScenario,
  settlementScenario,
  replicasScenario,
];

async function main(): Promise<void> {
  const wanted = process.argv.slice(2);
  const chosen = wanted.length === 0 ? SCENARIOS : SCENARIOS.filter((s) => wanted.includes(s.name));
  if (chosen.length === 0) {
    console.error(`unknown scenario; choose from: ${SCENARIOS.map((s) => s.name).join(', ')}`);
    process.exit(2);
  }
  const rows: BenchRow[] = [];
  for (const scenario of chosen) {
    process.stderr.write(`running ${scenario.name}…\n`);
    const started = Date.now();
    rows.push(...(await scenario.run()));
    process.stderr.write(`  ${scenario.name}: ${((Date.now() - started) / 1000).toFixed(0)} s\n`);
  }
  const machine = `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
  const date = new Date().toISOString();
  console.log(`pixeld benchmark — ${date} — ${machine}\n`);
  console.log(formatTable(rows));
  const out = fileURLToPath(new URL('./results/latest.json', import.meta.url));
  mkdirSync(fileURLToPath(new URL('./results/', import.meta.url)), { recursive: true });
  writeFileSync(out, `${JSON.stringify({ date, machine, rows }, null, 2)}\n`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
