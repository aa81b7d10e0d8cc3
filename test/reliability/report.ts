import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Figures } from './harness/figures.js';
import { SIZES_BY_MODE } from './harness/sizes.js';

/**
 * docs/RELIABILITY.md, written from the figures the reliability files measured in this run: the summary
 * table (load held, faults injected, inputs tried, jobs lost, receipts wrong, RSS bound), the security
 * checks, then each scenario's own numbers. Nothing in it is typed by hand; a scenario whose file failed
 * reads FAIL, one that did not run reads "not run".
 */

type Scenario = Figures['scenario'];

/** The test file behind each scenario. */
export const SCENARIO_FILES: Record<Scenario, string> = {
  load: 'load.test.ts',
  crash: 'crash.test.ts',
  'backend-faults': 'backend-faults.test.ts',
  'disk-full': 'disk-full.test.ts',
  'hostile-input': 'hostile-input.test.ts',
  security: 'security.test.ts',
};

export function readFigures(dir: string): Figures[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as Figures);
}

type Values = Figures['values'];

const fmt = (v: number | string | boolean | undefined): string =>
  v === undefined ? '—' : typeof v === 'number' ? v.toLocaleString('en-US') : String(v);
const num = (v: Values | undefined, key: string): number => Number(v?.[key] ?? 0);
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const cell = (c: string) => c.replaceAll('|', '\\|');
const table = (header: string[], body: string[][]) =>
  [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`, ...body.map((r) => `| ${r.map(cell).join(' | ')} |`)].join('\n');

export function renderReliabilityReport(figures: Figures[], at: Date, failed: ReadonlySet<string> = new Set()): string {
  const by = new Map(figures.map((f) => [f.scenario, f.values]));
  const load = by.get('load');
  const crash = by.get('crash');
  const faults = by.get('backend-faults');
  const disk = by.get('disk-full');
  const fuzz = by.get('hostile-input');
  const sec = by.get('security');
  const { ci, heavy } = SIZES_BY_MODE;
  const modes = [...new Set(figures.map((f) => f.mode))].join(' + ') || 'no';
  const seeds = [...new Set(figures.map((f) => f.seed))].join(', ') || '—';

  /** pass / FAIL / not run, for a row fed by `scenarios`: a failed file fails the row whatever it measured. */
  const verdict = (scenarios: Scenario[], ok: boolean): string => {
    if (scenarios.some((s) => failed.has(s))) return '**FAIL**';
    if (!scenarios.some((s) => by.has(s))) return 'not run';
    return ok ? 'pass' : '**FAIL**';
  };
  const missing = (scenarios: Scenario[]) =>
    scenarios.some((s) => failed.has(s)) ? `the ${scenarios.filter((s) => failed.has(s)).join(', ')} test failed before recording its figures` : 'not run';

  const rows: string[][] = [];
  rows.push([
    'load held',
    load
      ? `${fmt(load.jobs)} async jobs from ${fmt(load.clients)} concurrent clients (${fmt(load.users)} paying 0G users with session tokens, priced model, anvil) in ${fmt(load.seconds)} s (${fmt(load.jobsPerSecond)} jobs/s): ${fmt(load.completed)} completed, ${fmt(load.failedWithReason)} failed with a reason (cancelled by their client)`
      : missing(['load']),
    `≥ ${fmt(ci.loadJobs)} jobs, ${fmt(ci.loadClients)} clients, every one ended`,
    verdict(['load'], num(load, 'completed') + num(load, 'failedWithReason') === num(load, 'jobs') && num(load, 'jobsUnfinished') === 0),
  ]);

  const faultParts: string[] = [];
  if (crash) {
    faultParts.push(
      `${fmt(crash.kills)} SIGKILLs of the daemon under load at random moments, each followed by a restart on the same data dir (${fmt(crash.processingAtKills)} jobs were running at the kills, all ${fmt(crash.recoveredAtRestarts)} recovered; ${fmt(crash.requestsCutOff)} client requests cut off and sent again)`,
    );
  }
  if (faults) {
    faultParts.push(
      `backend: ${fmt(faults.backendDown)} × down (connection refused), ${fmt(faults.backendDiedMidResponse)} × died mid-answer, ${fmt(faults.backendHung)} × hung past the deadline, ${fmt(faults.backendGarbage)} × garbage bytes, ${fmt(faults.backendBadJson)} × broken JSON, ${fmt(faults.backendShort)} × fewer images than asked, ${fmt(faults.backend5xx)} × 5xx`,
    );
  }
  if (disk) {
    faultParts.push(
      `data dir full: a ${fmt(disk.sizeMiB)} MiB ${fmt(disk.method)} filled to ${fmt(disk.freeAfterFirstFillKiB)} KiB, then to ${fmt(disk.freeAfterSecondFillKiB)} KiB free under running jobs (${fmt(disk.refused)} submits refused with 507, ${fmt(num(disk, 'imageWritesRetried') + num(disk, 'jobRowWritesRetried') + num(disk, 'claimsRefusedByFullDisk'))} failed writes retried, 0 crashes)`,
    );
  }
  const faultScenarios: Scenario[] = ['crash', 'backend-faults', 'disk-full'];
  rows.push([
    'faults injected',
    faultParts.length > 0 ? faultParts.join('; ') : missing(faultScenarios),
    `${fmt(ci.crashKills)} SIGKILLs in CI, ${fmt(heavy.crashKills)} in the heavy run (≥ 20); the daemon survives every fault`,
    verdict(faultScenarios, num(crash, 'invariantViolations') === 0 && num(faults, 'internalErrors') === 0 && num(disk, 'serverErrors') === 0),
  ]);

  rows.push([
    'inputs tried',
    fuzz
      ? `${fmt(fuzz.inputs)} hostile requests (${fmt(fuzz.jsonBodies)} JSON bodies, ${fmt(fuzz.multipartBodies)} multipart bodies, ${fmt(fuzz.images)} images, ${fmt(fuzz.imageUrls)} image_url targets; fast-check, ${fmt(fuzz.runsPerProperty)} runs per property): ${fmt(fuzz.answered4xx)} answered 4xx in the error shape, ${fmt(fuzz.accepted)} accepted as valid, ${fmt(fuzz.answered5xx)} × 5xx, ${fmt(fuzz.tempFilesLeft)} temp files left, ${fmt(fuzz.urlFetches)} URLs fetched`
      : missing(['hostile-input']),
    'no 5xx, no temp file, nothing fetched, the process up',
    verdict(['hostile-input'], num(fuzz, 'answered5xx') + num(fuzz, 'tempFilesLeft') + num(fuzz, 'urlFetches') + num(fuzz, 'problems') === 0),
  ]);

  const jobScenarios: Scenario[] = ['load', 'crash', 'backend-faults', 'disk-full'];
  const measured = jobScenarios.map((s) => by.get(s)).filter((v): v is Values => v !== undefined);
  const lost = sum(measured.map((v) => num(v, 'jobsLost')));
  const duplicated = sum(measured.map((v) => num(v, 'jobsDuplicated')));
  const unfinished = sum(measured.map((v) => num(v, 'jobsUnfinished')));
  const jobs = sum(measured.map((v) => num(v, 'jobs')));
  rows.push([
    'jobs lost (must be 0)',
    measured.length > 0 ? `${lost} of ${fmt(jobs)} accepted jobs lost, ${duplicated} duplicated, ${unfinished} left unfinished` : missing(jobScenarios),
    '0',
    verdict(jobScenarios, lost + duplicated + unfinished === 0),
  ]);
  const wrong = sum(measured.map((v) => num(v, 'receiptsWrong')));
  const receipts = sum(measured.map((v) => num(v, 'receipts')));
  rows.push([
    'receipts wrong (must be 0)',
    measured.length > 0
      ? `${wrong} of ${fmt(receipts)} receipts${load ? `; under load ${fmt(load.receiptImages)} receipt images for ${fmt(load.imagesDelivered)} images delivered, then settled on chain through \`POST /v1/admin/settle\` with every user charged exactly the sum of their receipts` : ''}`
      : missing(jobScenarios),
    '0',
    verdict(jobScenarios, wrong === 0),
  ]);
  rows.push([
    'RSS bound',
    load
      ? `daemon peak ${fmt(load.rssPeakMiB)} MiB under load (idle ${fmt(load.rssIdleMiB)} MiB; ${fmt(load.rssSamples)} samples of /proc/<pid>/status). JS heap after GC: ${fmt(load.heapFloorFirstHalfMiB)} MiB in the first half of the run, ${fmt(load.heapFloorSecondHalfMiB)} MiB in the second${load.heapFloorsCompared === true ? '' : ' (not compared: a half without a major GC)'}`
      : missing(['load']),
    `≤ ${fmt(load?.rssLimitMiB ?? 600)} MiB; heap after GC not growing (+ ≤ 32 MiB)`,
    verdict(
      ['load'],
      num(load, 'rssPeakMiB') < num(load, 'rssLimitMiB') &&
        (load?.heapFloorsCompared !== true || num(load, 'heapFloorSecondHalfMiB') <= num(load, 'heapFloorFirstHalfMiB') + 32),
    ),
  ]);

  const secRows: string[][] = sec
    ? [
        [
          'ids unguessable, not probeable',
          `${load ? `${fmt(load.jobs)} job ids: all distinct, every hex digit at each of the 32 positions, ${(num(load, 'idOnesShare') * 100).toFixed(2)} % of bits set. ` : ''}Others' jobs, receipts, result files and signature-less ids answer exactly like unknown ids (status, body but for the id, headers); median time difference over ${fmt(sec.probeSamples)} interleaved probes each: poll ${fmt(sec.pollTimingDiffMs)} ms, receipt ${fmt(sec.receiptTimingDiffMs)} ms, signature ${fmt(sec.signatureTimingDiffMs)} ms`,
          'identical 404s; < 0.5 ms or 25 %',
          verdict(['security'], sec.probeOk === true),
        ],
        ['admin endpoints', `${fmt(sec.adminRefusals)} requests without the admin token (none, wrong, near misses, its hash, a job API key, basic auth, a closed surface) all 401 \`invalid_admin_token\`; with it 200`, 'admin token only', verdict(['security'], sec.adminOk === true)],
        [
          'secrets in logs',
          `${fmt(sec.secretsChecked)} secrets (provider wallet key, TEE key, API keys, admin token, session token) in ${fmt(sec.logBytes)} bytes of debug-level logs of a full run: ${fmt(sec.secretsFound)} found${load ? `; in the load run's log: ${fmt(load.secretsInLog)}` : ''}${by.get('crash') ? `; in the crash runs' logs: ${fmt(by.get('crash')!.secretsInLog)}` : ''}`,
          '0',
          verdict(['security'], num(sec, 'secretsFound') + num(load, 'secretsInLog') + num(crash, 'secretsInLog') === 0),
        ],
        ['dev TEE in production', `\`tee.mode: dev\` with NODE_ENV=production: ${fmt(sec.devInProduction)}`, 'refused at start', verdict(['security'], sec.devInProductionRefused === true)],
        ['helmet headers, CORS', `${fmt(sec.headersChecked)} error and admin answers carry nosniff, frame and CSP headers; a foreign origin gets no CORS headers`, 'every answer; CORS closed by default', verdict(['security'], sec.headersOk === true)],
        ['dependency audit', String(sec.audit), 'no high-severity advisory', String(sec.auditVerdict)],
      ]
    : [['all', missing(['security']), '—', verdict(['security'], false)]];

  const details = [...figures]
    .sort((a, b) => a.scenario.localeCompare(b.scenario))
    .map((f) => `### ${f.scenario} (${f.mode} size, seed ${f.seed})\n\n${table(['figure', 'value'], Object.entries(f.values).map(([k, v]) => [k, fmt(v)]))}`)
    .join('\n\n');

  return `# Reliability

Written by \`npm run test:reliability\` (test/reliability/) on ${at.toISOString().slice(0, 10)}: ${modes} size, seed ${seeds}, on
${os.cpus().length} × ${os.cpus()[0]?.model.trim() ?? 'CPU'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.versions.node}.
Every figure below was measured by that run. Run it again to regenerate this file.

${table(['measure', 'this run', 'target', 'result'], rows)}

## Security

${table(['check', 'this run', 'target', 'result'], secRows)}

## Money records against an operator with the disk

In \`tdx\` mode the operator who is paid can edit the data dir and choose the RPC node. What it can and cannot do
is in the README's trust table; \`npm test\` checks it on anvil (test/billing/untrusted-disk.test.ts, settlement.test.ts):
fees inflated in the receipt columns, a receipt's signed text edited, settled receipts flipped back to unsettled, the
data dir restored from a copy taken before a settlement, a node that understates the nonce, a node lagging behind
the block where the wallet nonce was seen used — in each case the amount charged on chain is the sum of the fees the
TEE signed, each receipt once; a balance that only partly covers the receipts settles whole receipts and keeps the
rest owed (never a PARTIAL); right after a settlement the money just paid cannot be reserved again. SQLite runs with
\`synchronous = FULL\`; its cost is the bench's \`completion commit\` rows.

## What runs where

- **CI** (\`npm test\`: vitest's default include takes test/reliability/*.test.ts too) runs every scenario at the CI
  size: the load at ${fmt(ci.loadJobs)} jobs from ${fmt(ci.loadClients)} clients, ${fmt(ci.crashKills)} SIGKILLs, ${fmt(ci.faultRounds)} random backend faults after
  the scripted ones, ${fmt(ci.fuzzRuns)} fast-check runs per property, ${fmt(ci.timingSamples)} timing probes per comparison — 2½ to 3
  minutes on two vCPUs.
- **On demand**: \`npm run test:reliability\` runs the same files alone, one at a time, and rewrites this file;
  \`RELIABILITY_HEAVY=1 npm run test:reliability\` runs the heavy size: ${fmt(heavy.loadJobs)} jobs, ${fmt(heavy.crashKills)} SIGKILLs,
  ${fmt(heavy.faultRounds)} random backend faults, ${fmt(heavy.fuzzRuns)} runs per property, ${fmt(heavy.timingSamples)} timing probes.
  \`RELIABILITY_SEED=<n>\` replays a run's random choices (kill moments, fault mix, fuzz inputs).
- The data-dir-full scenario mounts a small tmpfs (the suite runs as root in CI's container); where mounting is not
  permitted it falls back to a loop-mounted ext4 image, and as a last resort to ENOSPC injected into the daemon's own
  file writes and free-space reads by a preload (SQLite is then not reached). The \`disk-full\` figures name the
  method this run used.
- Not run by the suite: the dependency audit (it needs the registry); the Security table says what was recorded.
- CMYK JPEGs and 16-bit PNGs (images and masks) are valid inputs: the suite checks they are accepted and edited
  into correct outputs, not refused.

## Scenarios

${details}
`;
}
