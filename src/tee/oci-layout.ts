import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';

/**
 * The image digest of a Docker build, read from an OCI image layout: what `docker buildx build --output
 * type=oci,dest=pixeld.oci.tar` writes (as a tar, or unpacked into a directory). The digest a compose file
 * pins as `image@sha256:…` is the digest of the descriptor `index.json` points to — an image manifest, or,
 * for a multi-platform build (or one with attestations, which buildx adds by default), an image index whose
 * manifests are the per-platform images.
 *
 * Every blob read is checked against its digest and size, so a layout whose index names a manifest it does
 * not hold, or holds a different one, is an error rather than a wrong answer.
 */

export class OciLayoutError extends Error {
  override readonly name = 'OciLayoutError';
}

const INDEX_TYPES = new Set(['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json']);
const MANIFEST_TYPES = new Set(['application/vnd.oci.image.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v2+json']);

export interface OciPlatform {
  os?: string;
  architecture?: string;
  variant?: string;
}

export interface OciImageEntry {
  /** `sha256:<64 hex>`: what `image@…` pins. */
  digest: string;
  mediaType: string;
  size: number;
  /** The `org.opencontainers.image.ref.name` annotation (the tag buildx was given), if any. */
  refName?: string;
  /** Set for an image index: its manifests (per platform, and buildx's attestation manifests). */
  manifests?: OciChildManifest[];
}

export interface OciChildManifest {
  digest: string;
  mediaType: string;
  platform?: OciPlatform;
  /** buildx's provenance/SBOM manifests (annotation `vnd.docker.reference.type: attestation-manifest`): not an image to run. */
  attestation: boolean;
}

/** Reads a layout's files by path relative to its root (`index.json`, `blobs/sha256/<hex>`). */
type FileReader = (name: string) => Buffer | undefined;

/** The images `index.json` names, each checked against its blob. `source`: the layout directory, or a tar of one. */
export function readOciImages(source: string): OciImageEntry[] {
  let stat;
  try {
    stat = statSync(source);
  } catch (err) {
    throw new OciLayoutError(`${source}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const read = stat.isDirectory() ? directoryReader(source) : tarReader(readFileSync(source), source);

  const layout = parseJson(read, 'oci-layout', source);
  if (typeof layout !== 'object' || layout === null || typeof (layout as { imageLayoutVersion?: unknown }).imageLayoutVersion !== 'string') {
    throw new OciLayoutError(`${source}: oci-layout has no imageLayoutVersion: not an OCI image layout`);
  }
  const index = parseJson(read, 'index.json', source) as { schemaVersion?: unknown; manifests?: unknown };
  if (typeof index !== 'object' || index === null || index.schemaVersion !== 2 || !Array.isArray(index.manifests)) {
    throw new OciLayoutError(`${source}: index.json is not an OCI image index (schemaVersion 2 with a manifests array)`);
  }
  if (index.manifests.length === 0) throw new OciLayoutError(`${source}: index.json lists no image`);

  return index.manifests.map((d, i) => {
    const desc = descriptor(d, `${source}: index.json manifests[${i}]`);
    const blob = readBlob(read, desc, source);
    const entry: OciImageEntry = { digest: desc.digest, mediaType: desc.mediaType, size: desc.size };
    const ref = desc.annotations?.['org.opencontainers.image.ref.name'];
    if (typeof ref === 'string') entry.refName = ref;
    if (INDEX_TYPES.has(desc.mediaType)) {
      const inner = parseBlobJson(blob, desc.digest, source) as { manifests?: unknown };
      if (!Array.isArray(inner.manifests)) throw new OciLayoutError(`${source}: image index ${desc.digest} has no manifests array`);
      entry.manifests = inner.manifests.map((c, j) => {
        const child = descriptor(c, `${source}: image index ${desc.digest} manifests[${j}]`);
        // The platform manifests are checked too: an index naming a manifest the layout lacks is no build output.
        readBlob(read, child, source);
        const out: OciChildManifest = {
          digest: child.digest,
          mediaType: child.mediaType,
          attestation: child.annotations?.['vnd.docker.reference.type'] === 'attestation-manifest',
        };
        if (child.platform) out.platform = child.platform;
        return out;
      });
    } else if (!MANIFEST_TYPES.has(desc.mediaType)) {
      throw new OciLayoutError(`${source}: ${desc.digest} has media type ${desc.mediaType}, neither an image manifest nor an image index`);
    }
    return entry;
  });
}

export function platformName(p: OciPlatform | undefined): string {
  if (!p) return 'no platform';
  return [p.os, p.architecture, p.variant].filter((s) => s !== undefined && s !== '').join('/') || 'no platform';
}

interface Descriptor {
  digest: string;
  mediaType: string;
  size: number;
  platform?: OciPlatform;
  annotations?: Record<string, unknown>;
}

function descriptor(value: unknown, where: string): Descriptor {
  const d = value as Partial<Descriptor> | null;
  if (typeof d !== 'object' || d === null) throw new OciLayoutError(`${where} is not a descriptor object`);
  if (typeof d.digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(d.digest)) {
    throw new OciLayoutError(`${where}: digest ${JSON.stringify(d.digest)} is not sha256:<64 lower-case hex>`);
  }
  if (typeof d.mediaType !== 'string') throw new OciLayoutError(`${where}: no mediaType`);
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) throw new OciLayoutError(`${where}: no valid size`);
  return d as Descriptor;
}

function readBlob(read: FileReader, d: Descriptor, source: string): Buffer {
  const name = `blobs/sha256/${d.digest.slice('sha256:'.length)}`;
  const blob = read(name);
  if (blob === undefined) throw new OciLayoutError(`${source}: ${name} is missing (named by ${d.digest})`);
  const actual = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
  if (actual !== d.digest) throw new OciLayoutError(`${source}: ${name} hashes to ${actual}, not its name`);
  if (blob.length !== d.size) throw new OciLayoutError(`${source}: ${name} is ${blob.length} bytes, its descriptor says ${d.size}`);
  return blob;
}

function parseJson(read: FileReader, name: string, source: string): unknown {
  const buf = read(name);
  if (buf === undefined) throw new OciLayoutError(`${source}: no ${name}: not an OCI image layout`);
  try {
    return JSON.parse(buf.toString('utf8'));
  } catch {
    throw new OciLayoutError(`${source}: ${name} is not JSON`);
  }
}

function parseBlobJson(blob: Buffer, digest: string, source: string): unknown {
  try {
    const v: unknown = JSON.parse(blob.toString('utf8'));
    if (typeof v === 'object' && v !== null) return v;
  } catch {
    // fall through
  }
  throw new OciLayoutError(`${source}: blob ${digest} is not a JSON object`);
}

function directoryReader(dir: string): FileReader {
  return (name) => {
    try {
      return readFileSync(path.join(dir, name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new OciLayoutError(`${dir}: ${name}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  };
}

/**
 * A tar read whole into memory (only the small JSON files are looked at, but layers are in the same file):
 * ustar headers, with pax extended headers (`x`) for long paths as Go's archive/tar (buildx) and GNU tar
 * write them, and GNU long names (`L`). Regular files only; other entries are skipped.
 */
export function tarReader(tar: Buffer, source: string): FileReader {
  const files = new Map<string, Buffer>();
  let offset = 0;
  let longName: string | undefined;
  while (offset + 512 <= tar.length) {
    const header = tar.subarray(offset, offset + 512);
    if (header.every((b) => b === 0)) break; // end-of-archive marker
    if (!checksumOk(header)) throw new OciLayoutError(`${source}: not a tar file (bad header checksum at byte ${offset})`);
    const size = octal(header.subarray(124, 136), source, offset);
    const type = String.fromCharCode(header[156]!);
    const dataStart = offset + 512;
    if (dataStart + size > tar.length) throw new OciLayoutError(`${source}: tar is truncated (entry at byte ${offset})`);
    const data = tar.subarray(dataStart, dataStart + size);
    offset = dataStart + Math.ceil(size / 512) * 512;

    if (type === 'x') {
      longName = paxPath(data) ?? longName;
      continue;
    }
    if (type === 'L') {
      longName = cString(data);
      continue;
    }
    if (type === 'g') continue;
    let name = longName;
    longName = undefined;
    if (name === undefined) {
      const prefix = header.subarray(257, 263).toString('latin1').startsWith('ustar') ? cString(header.subarray(345, 500)) : '';
      const base = cString(header.subarray(0, 100));
      name = prefix ? `${prefix}/${base}` : base;
    }
    if (type === '0' || type === '\0') files.set(normaliseTarPath(name), data);
  }
  if (files.size === 0) throw new OciLayoutError(`${source}: not a tar file, or an empty one`);
  return (name) => files.get(name);
}

function normaliseTarPath(name: string): string {
  return name.replace(/^(\.\/)+/, '').replace(/^\/+/, '');
}

function checksumOk(header: Buffer): boolean {
  const stored = parseInt(cString(header.subarray(148, 156)).trim(), 8);
  if (!Number.isFinite(stored)) return false;
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i]!;
  return sum === stored;
}

function octal(field: Buffer, source: string, at: number): number {
  if (field[0]! & 0x80) throw new OciLayoutError(`${source}: tar entry at byte ${at} uses a base-256 size (a file over 8 GiB): not supported`);
  const text = cString(field).trim();
  const n = text === '' ? 0 : parseInt(text, 8);
  if (!Number.isSafeInteger(n) || n < 0) throw new OciLayoutError(`${source}: bad tar size field at byte ${at}`);
  return n;
}

function cString(buf: Buffer): string {
  const end = buf.indexOf(0);
  return buf.subarray(0, end === -1 ? buf.length : end).toString('utf8');
}

/** The `path` record of a pax extended header: records are "<len> <key>=<value>\n". */
function paxPath(data: Buffer): string | undefined {
  let pos = 0;
  let found: string | undefined;
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos);
    if (space === -1) break;
    const len = parseInt(data.subarray(pos, space).toString('latin1'), 10);
    if (!Number.isSafeInteger(len) || len <= 0) break;
    const record = data.subarray(space + 1, pos + len - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq !== -1 && record.slice(0, eq) === 'path') found = record.slice(eq + 1);
    pos += len;
  }
  return found;
}
