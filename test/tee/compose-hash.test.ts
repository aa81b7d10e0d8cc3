import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { getComposeHash } from '@phala/dstack-sdk';
import { describe, expect, it } from 'vitest';
import { composeHashes, deterministicComposeJson } from '../../src/tee/compose-hash.js';
import { parseMeasurements } from '../../src/tee/measurements.js';
import { runMeasurementsCommand } from '../../src/tee/measurements-command.js';
import { tempDir } from '../helpers/daemon.js';

/**
 * No published capture includes its app-compose.json, so this one is BUILT for the test (the fields a
 * phala CLI deployment writes). The deterministic form is checked against dstack-sdk's own getComposeHash.
 */
const APP_COMPOSE = {
  manifest_version: 2,
  name: 'pixeld',
  runner: 'docker-compose',
  docker_compose_file: 'services:\n  pixeld:\n    image: ghcr.io/example/pixeld@sha256:' + 'ab'.repeat(32) + '\n    volumes:\n      - /var/run/dstack.sock:/var/run/dstack.sock\n',
  kms_enabled: true,
  gateway_enabled: true,
  public_logs: false,
  public_sysinfo: true,
  local_key_provider_enabled: false,
  allowed_envs: ['PIXELD_PROVIDER_KEY'],
  no_instance_id: false,
  secure_time: false,
  features: ['kms', 'tproxy-net'],
};

const sha256 = (s: string | Uint8Array) => createHash('sha256').update(s).digest('hex');

describe('compose hash', () => {
  it('matches dstack-sdk’s getComposeHash for a file in the deterministic form', () => {
    const file = Buffer.from(deterministicComposeJson(APP_COMPOSE));
    const hashes = composeHashes(file);
    expect(hashes.composeHash).toBe(getComposeHash(APP_COMPOSE));
    expect(hashes).toEqual({ composeHash: sha256(file), normalisedHash: hashes.composeHash, deterministic: true });
    // Keys sorted at every level, no whitespace.
    expect(file.toString().startsWith('{"allowed_envs":["PIXELD_PROVIDER_KEY"],"docker_compose_file":')).toBe(true);
  });

  it('hashes a pretty-printed file byte for byte, and reports the hash a re-serialising tool would deploy', () => {
    const file = Buffer.from(JSON.stringify(APP_COMPOSE, null, 2));
    const hashes = composeHashes(file);
    expect(hashes.composeHash).toBe(sha256(file));
    expect(hashes.deterministic).toBe(false);
    expect(hashes.normalisedHash).toBe(getComposeHash(APP_COMPOSE));
    expect(() => composeHashes(Buffer.from('[1]'))).toThrow('an app-compose file is a JSON object');
  });
});

describe('pixeld measurements', () => {
  function run(args: string[]) {
    const out: string[] = [];
    const err: string[] = [];
    const code = runMeasurementsCommand(args, { stdout: (l) => out.push(l), stderr: (l) => err.push(l) });
    return { code, stdout: out.join('\n'), stderr: err.join('\n') };
  }

  it('prints the compose hash, and with --json a file pixeld verify --measurements reads', () => {
    const dir = tempDir('pixeld-compose-');
    const file = path.join(dir, 'app-compose.json');
    writeFileSync(file, deterministicComposeJson(APP_COMPOSE));
    const expected = getComposeHash(APP_COMPOSE);

    const text = run(['--app-compose', file]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(`composeHash: ${expected}`);
    expect(text.stdout).toContain(`--expect-compose-hash ${expected}`);

    const json = run(['--app-compose', file, '--json']);
    expect(json.code).toBe(0);
    expect(parseMeasurements(JSON.parse(json.stdout), 'out')).toEqual({ composeHash: expected });
  });

  it('notes a file a re-serialising tool would hash differently, and exits 2 on a bad file', () => {
    const dir = tempDir('pixeld-compose-');
    const file = path.join(dir, 'app-compose.json');
    writeFileSync(file, JSON.stringify(APP_COMPOSE, null, 2));
    expect(run(['--app-compose', file]).stdout).toContain(`deploys the hash ${getComposeHash(APP_COMPOSE)} instead`);
    writeFileSync(file, 'services: {}');
    const bad = run(['--app-compose', file]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('not JSON');
    expect(run([]).code).toBe(2);
  });
});
