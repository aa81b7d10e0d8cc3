import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { composeHashes } from './compose-hash.js';

/** `pixeld measurements`: what a verifier should pin for a dstack deployment of this app. */

export const MEASUREMENTS_USAGE = `Usage: pixeld measurements --app-compose <app-compose.json> [--json]

Prints the compose hash dstack measures into RTMR3 for this app-compose.json (sha256 of the file's
bytes, exactly as deployed), for verifiers to pin with pixeld verify --expect-compose-hash.

  --app-compose <file>  The app-compose.json the CVM is deployed with (the file dstack hashes; it wraps
                        the docker-compose file — take it from your deployment tool, e.g. the phala CLI
                        or the dstack VMM, not the docker-compose.yml alone)
  --json                Print a measurements file for pixeld verify --measurements: {"composeHash": …}

MRTD and RTMR0..2 measure dstack's OS image, not this app: take them from the dstack release you deploy
(or from a quote of a CVM you trust) and add them to the measurements file.

Exit status: 0, or 2 on bad arguments or a file that is not JSON.
`;

export interface MeasurementsCommandIo {
  stdout: (line: string) => void;
  stderr: (line: string) => void;
}

const defaultIo: MeasurementsCommandIo = {
  stdout: (line) => process.stdout.write(`${line}\n`),
  stderr: (line) => process.stderr.write(`${line}\n`),
};

export function runMeasurementsCommand(argv: string[], io: MeasurementsCommandIo = defaultIo): number {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: { 'app-compose': { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    }));
  } catch (err) {
    io.stderr(`pixeld measurements: ${(err as Error).message}\n\n${MEASUREMENTS_USAGE}`);
    return 2;
  }
  if (values.help) {
    io.stdout(MEASUREMENTS_USAGE);
    return 0;
  }
  const file = values['app-compose'];
  if (file === undefined) {
    io.stderr(`pixeld measurements: --app-compose is required\n\n${MEASUREMENTS_USAGE}`);
    return 2;
  }
  let hashes;
  try {
    hashes = composeHashes(readFileSync(file));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    io.stderr(`pixeld measurements: --app-compose ${file}: ${code ?? (err as Error).message}`);
    return 2;
  }
  if (values.json) {
    io.stdout(JSON.stringify({ composeHash: hashes.composeHash }, null, 2));
    if (!hashes.deterministic) io.stderr(notDeterministic(hashes.normalisedHash));
    return 0;
  }
  io.stdout(`composeHash: ${hashes.composeHash}`);
  io.stdout(`  sha256 of ${file} byte for byte: what dstack measures when exactly this file is deployed`);
  if (hashes.deterministic) io.stdout('  the file is in dstack-sdk’s deterministic form (keys sorted, no whitespace)');
  else io.stdout(`  ${notDeterministic(hashes.normalisedHash)}`);
  io.stdout(`verify with: pixeld verify … --expect-compose-hash ${hashes.composeHash}`);
  return 0;
}

function notDeterministic(normalised: string): string {
  return `note: the file is not in dstack-sdk's deterministic form (keys sorted, no whitespace); a tool that re-serialises it (phala CLI, getComposeHash) deploys the hash ${normalised} instead`;
}
