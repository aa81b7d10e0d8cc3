import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { composeHashes } from './compose-hash.js';
import { OciLayoutError, platformName, readOciImages, type OciImageEntry } from './oci-layout.js';

/** `pixeld measurements`: what a verifier should pin for a dstack deployment of this app. */

export const MEASUREMENTS_USAGE = `Usage: pixeld measurements --app-compose <app-compose.json> [--json]
       pixeld measurements --oci <dir|tar> [--app-compose <app-compose.json>] [--json]

Prints the compose hash dstack measures into RTMR3 for this app-compose.json (sha256 of the file's
bytes, exactly as deployed), for verifiers to pin with pixeld verify --expect-compose-hash; and/or the
image digest of a Docker build, for comparing with the image@sha256:… the compose file pins.

  --app-compose <file>  The app-compose.json the CVM is deployed with (the file dstack hashes; it wraps
                        the docker-compose file — take it from your deployment tool, e.g. the phala CLI
                        or the dstack VMM, not the docker-compose.yml alone)
  --oci <dir|tar>       An OCI image layout, as docker buildx build --output type=oci,dest=pixeld.oci.tar
                        writes it (the tar, or a directory it was unpacked into): prints the digest of
                        the image its index.json names (what image@sha256:… pins) and, for an image
                        index, each platform manifest's. With --app-compose too, checks that the compose
                        file pins one of them (exit 1 if it does not)
  --json                With --app-compose: a measurements file for pixeld verify --measurements,
                        {"composeHash": …}. With --oci: {"imageDigest": …, "images": […]}, which is NOT a
                        measurements file (verify checks the image only through the compose hash); the
                        two cannot be combined in one --json output

MRTD and RTMR0..2 measure dstack's OS image, not this app: take them from the dstack release you deploy
(or from a quote of a CVM you trust) and add them to the measurements file.

Exit status: 0; 1 if --app-compose does not pin the --oci image; 2 on bad arguments, a file that is not
JSON, or a directory/tar that is not a valid OCI image layout.
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
      options: { 'app-compose': { type: 'string' }, oci: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
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
  const oci = values.oci;
  if (file === undefined && oci === undefined) {
    io.stderr(`pixeld measurements: --app-compose or --oci is required\n\n${MEASUREMENTS_USAGE}`);
    return 2;
  }
  if (oci !== undefined && file !== undefined && values.json) {
    io.stderr(
      'pixeld measurements: --json with both --oci and --app-compose: run them separately (the measurements file for pixeld verify holds only what verify checks, and the image digest is not one)',
    );
    return 2;
  }
  if (oci !== undefined) return ociCommand(oci, file, values.json === true, io);
  return composeCommand(file!, values.json === true, io);
}

function composeCommand(file: string, json: boolean, io: MeasurementsCommandIo): number {
  let hashes;
  try {
    hashes = composeHashes(readFileSync(file));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    io.stderr(`pixeld measurements: --app-compose ${file}: ${code ?? (err as Error).message}`);
    return 2;
  }
  if (json) {
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

function ociCommand(source: string, composeFile: string | undefined, json: boolean, io: MeasurementsCommandIo): number {
  let images: OciImageEntry[];
  try {
    images = readOciImages(source);
  } catch (err) {
    if (!(err instanceof OciLayoutError)) throw err;
    io.stderr(`pixeld measurements: --oci ${err.message}`);
    return 2;
  }
  if (json) {
    // imageDigest only when index.json names one image (buildx writes one); `images` always.
    const out = { ...(images.length === 1 ? { imageDigest: images[0]!.digest } : {}), images };
    io.stdout(JSON.stringify(out, null, 2));
    return 0;
  }
  for (const image of images) {
    const kind = image.manifests ? 'image index' : 'image manifest';
    io.stdout(`imageDigest: ${image.digest}${image.refName ? ` (${image.refName})` : ''}`);
    io.stdout(`  the ${kind} ${source} names in index.json: pin it in the compose file as image: <name>@${image.digest}`);
    for (const m of image.manifests ?? []) {
      io.stdout(`  ${m.attestation ? 'attestation' : platformName(m.platform)}: ${m.digest}`);
    }
  }
  if (composeFile === undefined) return 0;

  let compose;
  try {
    compose = readFileSync(composeFile, 'utf8');
  } catch (err) {
    io.stderr(`pixeld measurements: --app-compose ${composeFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    return 2;
  }
  const pinned = new Set((compose.match(/@sha256:[0-9a-f]{64}/g) ?? []).map((m) => m.slice(1)));
  const candidates = images.flatMap((i) => [i.digest, ...(i.manifests ?? []).filter((m) => !m.attestation).map((m) => m.digest)]);
  const match = candidates.find((d) => pinned.has(d));
  if (match !== undefined) {
    io.stdout(`${composeFile} pins ${match}: this build`);
    return 0;
  }
  io.stdout(
    `${composeFile} does NOT pin this build: it pins ${pinned.size ? [...pinned].join(', ') : 'no image by digest'}`,
  );
  return 1;
}

function notDeterministic(normalised: string): string {
  return `note: the file is not in dstack-sdk's deterministic form (keys sorted, no whitespace); a tool that re-serialises it (phala CLI, getComposeHash) deploys the hash ${normalised} instead`;
}
