import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseMeasurements } from '../../src/tee/measurements.js';
import { runMeasurementsCommand } from '../../src/tee/measurements-command.js';
import { OciLayoutError, readOciImages } from '../../src/tee/oci-layout.js';
import { tempDir } from '../helpers/daemon.js';

/**
 * There is no Docker engine on these machines, so no layout here comes from a real `docker buildx build
 * --output type=oci`: each is BUILT for the test, with the files and media types buildx writes (oci-layout,
 * index.json, blobs/sha256/<hex>; an image index with per-platform manifests and an attestation manifest
 * as buildx adds by default). The tars are made by the system's GNU tar, not by our own code.
 */

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const INDEX = 'application/vnd.oci.image.index.v1+json';

function blob(dir: string, content: string | object): { digest: string; size: number; bytes: Buffer } {
  const bytes = Buffer.from(typeof content === 'string' ? content : JSON.stringify(content));
  mkdirSync(path.join(dir, 'blobs/sha256'), { recursive: true });
  writeFileSync(path.join(dir, 'blobs/sha256', sha(bytes)), bytes);
  return { digest: `sha256:${sha(bytes)}`, size: bytes.length, bytes };
}

function imageManifest(dir: string, arch: string) {
  const config = blob(dir, { architecture: arch, os: 'linux', rootfs: { type: 'layers', diff_ids: [] } });
  const layer = blob(dir, `layer for ${arch}`);
  return blob(dir, {
    schemaVersion: 2,
    mediaType: MANIFEST,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config.digest, size: config.size },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layer.digest, size: layer.size }],
  });
}

function finish(dir: string, top: { digest: string; size: number }, mediaType: string) {
  writeFileSync(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    path.join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: INDEX,
      manifests: [{ mediaType, digest: top.digest, size: top.size, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }],
    }),
  );
}

/** A single-platform build: index.json names the image manifest itself. */
function singleLayout() {
  const dir = tempDir('pixeld-oci-');
  const manifest = imageManifest(dir, 'amd64');
  finish(dir, manifest, MANIFEST);
  return { dir, digest: manifest.digest };
}

/** A multi-platform build with buildx's attestation manifest: index.json names an image index. */
function multiLayout() {
  const dir = tempDir('pixeld-oci-');
  const amd = imageManifest(dir, 'amd64');
  const arm = imageManifest(dir, 'arm64');
  const att = imageManifest(dir, 'unknown');
  const index = blob(dir, {
    schemaVersion: 2,
    mediaType: INDEX,
    manifests: [
      { mediaType: MANIFEST, digest: amd.digest, size: amd.size, platform: { os: 'linux', architecture: 'amd64' } },
      { mediaType: MANIFEST, digest: arm.digest, size: arm.size, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
      {
        mediaType: MANIFEST,
        digest: att.digest,
        size: att.size,
        platform: { os: 'unknown', architecture: 'unknown' },
        annotations: { 'vnd.docker.reference.type': 'attestation-manifest', 'vnd.docker.reference.digest': amd.digest },
      },
    ],
  });
  finish(dir, index, INDEX);
  return { dir, digest: index.digest, amd: amd.digest, arm: arm.digest, att: att.digest };
}

function tarOf(dir: string, format: 'ustar' | 'pax' | 'gnu'): string {
  const out = path.join(tempDir('pixeld-oci-tar-'), `image-${format}.tar`);
  execFileSync('tar', [`--format=${format}`, '-cf', out, '-C', dir, '.']);
  return out;
}

function run(args: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = runMeasurementsCommand(args, { stdout: (l) => out.push(l), stderr: (l) => err.push(l) });
  return { code, stdout: out.join('\n'), stderr: err.join('\n') };
}

describe('OCI layout: image digest', () => {
  it('a single-platform layout: the digest is sha256 of the manifest index.json names, as a directory and as tars', () => {
    const { dir, digest } = singleLayout();
    for (const source of [dir, tarOf(dir, 'ustar'), tarOf(dir, 'pax'), tarOf(dir, 'gnu')]) {
      expect(readOciImages(source)).toEqual([{ digest, mediaType: MANIFEST, size: expect.any(Number), refName: 'latest' }]);
    }
    const text = run(['--oci', dir]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(`imageDigest: ${digest} (latest)`);
    expect(text.stdout).toContain(`image: <name>@${digest}`);
  });

  it('a multi-platform layout: the image index digest, then each platform manifest, attestations named as such', () => {
    const l = multiLayout();
    const tar = tarOf(l.dir, 'pax');
    for (const source of [l.dir, tar]) {
      const [image] = readOciImages(source);
      expect(image!.digest).toBe(l.digest);
      expect(image!.manifests).toEqual([
        { digest: l.amd, mediaType: MANIFEST, platform: { os: 'linux', architecture: 'amd64' }, attestation: false },
        { digest: l.arm, mediaType: MANIFEST, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' }, attestation: false },
        { digest: l.att, mediaType: MANIFEST, platform: { os: 'unknown', architecture: 'unknown' }, attestation: true },
      ]);
    }
    const text = run(['--oci', tar]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(`imageDigest: ${l.digest}`);
    expect(text.stdout).toContain(`linux/amd64: ${l.amd}`);
    expect(text.stdout).toContain(`linux/arm64/v8: ${l.arm}`);
    expect(text.stdout).toContain(`attestation: ${l.att}`);
  });

  it('--json prints imageDigest, which pixeld verify --measurements refuses (the image is checked through the compose hash)', () => {
    const { dir, digest } = singleLayout();
    const json = run(['--oci', dir, '--json']);
    expect(json.code).toBe(0);
    const parsed = JSON.parse(json.stdout) as { imageDigest: string; images: unknown[] };
    expect(parsed.imageDigest).toBe(digest);
    expect(parsed.images).toHaveLength(1);
    expect(() => parseMeasurements(parsed, 'image.json')).toThrow(/unknown key "imageDigest"/);
    expect(run(['--oci', dir, '--app-compose', path.join(dir, 'index.json'), '--json']).code).toBe(2);
  });

  it('with --app-compose: exit 0 when the compose file pins the build (index or a platform manifest), 1 when not', () => {
    const l = multiLayout();
    const dir = tempDir('pixeld-oci-compose-');
    const compose = (d: string) => {
      const f = path.join(dir, `${d.slice(7, 15)}.json`);
      writeFileSync(f, JSON.stringify({ docker_compose_file: `services:\n  pixeld:\n    image: ghcr.io/example/pixeld@${d}\n` }));
      return f;
    };
    const byIndex = run(['--oci', l.dir, '--app-compose', compose(l.digest)]);
    expect(byIndex.code).toBe(0);
    expect(byIndex.stdout).toContain(`pins ${l.digest}: this build`);
    expect(run(['--oci', l.dir, '--app-compose', compose(l.arm)]).code).toBe(0);
    // An attestation manifest is not an image: a compose file naming it does not pin the build.
    expect(run(['--oci', l.dir, '--app-compose', compose(l.att)]).code).toBe(1);
    const other = `sha256:${'cd'.repeat(32)}`;
    const wrong = run(['--oci', l.dir, '--app-compose', compose(other)]);
    expect(wrong.code).toBe(1);
    expect(wrong.stdout).toContain(`does NOT pin this build: it pins ${other}`);
  });

  it('refuses what is not a valid layout, naming the problem', () => {
    const { dir } = singleLayout();
    const expectError = (source: string, message: RegExp) => {
      expect(() => readOciImages(source)).toThrow(OciLayoutError);
      expect(() => readOciImages(source)).toThrow(message);
      const r = run(['--oci', source]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(message);
    };
    expectError(path.join(dir, 'nope'), /ENOENT/);

    const noLayout = tempDir('pixeld-oci-bad-');
    expectError(noLayout, /no oci-layout: not an OCI image layout/);
    writeFileSync(path.join(noLayout, 'oci-layout'), JSON.stringify({ version: 1 }));
    expectError(noLayout, /oci-layout has no imageLayoutVersion/);
    writeFileSync(path.join(noLayout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    expectError(noLayout, /no index\.json/);
    writeFileSync(path.join(noLayout, 'index.json'), '{');
    expectError(noLayout, /index\.json is not JSON/);
    writeFileSync(path.join(noLayout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [] }));
    expectError(noLayout, /lists no image/);

    // A manifest the index names but the layout does not hold, or holds changed.
    const missing = singleLayout();
    execFileSync('rm', [path.join(missing.dir, 'blobs/sha256', missing.digest.slice(7))]);
    expectError(missing.dir, /is missing \(named by sha256:/);
    const tampered = singleLayout();
    writeFileSync(path.join(tampered.dir, 'blobs/sha256', tampered.digest.slice(7)), '{"schemaVersion":2}');
    expectError(tampered.dir, /hashes to sha256:[0-9a-f]{64}, not its name/);

    const notTar = path.join(tempDir('pixeld-oci-bad-'), 'x.tar');
    writeFileSync(notTar, Buffer.alloc(2048, 0x41));
    expectError(notTar, /not a tar file/);
  });
});
