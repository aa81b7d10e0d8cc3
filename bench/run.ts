import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { completionCommitScenario } from './scenarios/completion-commit.js';
import { memoryScenario } from './scenarios/memory.js';
import { pollThroughputScenario } from './scenarios/poll-throughput.js';
import { replicasScenario } from './scenarios/replicas.js';
import { saturationScenario } from './scenarios/saturation.js';
import { settlementScenario } from './scenarios/settlement.js';
import { signingScenario } from './scenarios/signing.js';
import { syncOverheadScenario } from './scenarios/sync-overhead.js';
import { timeToResultScenario } from './scenarios/time-to-result.js';
import { formatNumber, formatTable, type BenchRow, type BenchScenario } from './table.js';

/**
 * `npm run bench [-- --json] [scenario …]`: runs each scenario on this machine, prints one table (with
 * --json: the results object instead) and writes the results to bench/results/latest.json. Which scenario
 * runs, and each one's figures as it finishes, go to stderr. Figures, not timed tests: nothing here fails
 * the test suite.
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
  let args;
  try {
    args = parseArgs({ args: process.argv.slice(2), allowPositionals: true, options: { json: { type: 'boolean' } } });
  } catch (err) {
    console.error(`bench: ${(err as Error).message}; usage: npm run bench -- [--json] [scenario …]`);
    process.exit(2);
  }
  const wanted = args.positionals;
  const unknown = wanted.filter((name) => !SCENARIOS.some((s) => s.name === name));
  const chosen = wanted.length === 0 ? SCENARIOS : SCENARIOS.filter((s) => wanted.includes(s.name));
  if (unknown.length > 0 || chosen.length === 0) {
    console.error(`unknown scenario ${unknown.join(', ')}; choose from: ${SCENARIOS.map((s) => s.name).join(', ')}`);
    process.exit(2);
  }
  const rows: BenchRow[] = [];
  for (const [i, scenario] of chosen.entries()) {
    process.stderr.write(`[${i + 1}/${chosen.length}] running ${scenario.name}…\n`);
    const started = Date.now();
    const produced = await scenario.run();
    rows.push(...produced);
    const figures = produced.map((r) => `${r.figure} ${formatNumber(r.value)} ${r.unit}${r.pass === false ? ' (FAIL)' : ''}`.trimEnd());
    process.stderr.write(`[${i + 1}/${chosen.length}] ${scenario.name} done in ${((Date.now() - started) / 1000).toFixed(0)} s: ${figures.join('; ')}\n`);
  }
  const machine = `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
  const date = new Date().toISOString();
  const results = { date, machine, rows };
  const out = fileURLToPath(new URL('./results/latest.json', import.meta.url));
  mkdirSync(fileURLToPath(new URL('./results/', import.meta.url)), { recursive: true });
  writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
  if (args.values.json) {
    process.stdout.write(`${JSON.stringify(results)}\n`);
    return;
  }
  console.log(`pixeld benchmark — ${date} — ${machine}\n`);
  console.log(formatTable(rows));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
