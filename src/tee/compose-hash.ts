import { createHash } from 'node:crypto';

/**
 * dstack's compose hash: the guest measures sha256 of the app-compose.json it was deployed with, byte for
 * byte (dstack-util: `sha256(app_compose.as_bytes())`, extended into RTMR3 as the `compose-hash` event).
 * Deployment tools (the phala CLI, dstack-sdk's getComposeHash) write that file in a deterministic form:
 * keys sorted at every level, no whitespace (JSON.stringify), non-finite numbers as null. A file in
 * another form hashes differently from what such a tool would deploy, so both are reported.
 */

export interface ComposeHashes {
  /** sha256 of the bytes as given: what dstack measures when this exact file is deployed. */
  composeHash: string;
  /** sha256 of the deterministic form. */
  normalisedHash: string;
  /** The file already is in the deterministic form (the two hashes agree). */
  deterministic: boolean;
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((k) => [k, sortKeys((value as Record<string, unknown>)[k])]),
    );
  }
  return value;
}

/** dstack-sdk's deterministic JSON (getComposeHash without its `normalize` option). */
export function deterministicComposeJson(appCompose: unknown): string {
  return JSON.stringify(sortKeys(appCompose), (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v));
}

export function composeHashes(fileBytes: Uint8Array): ComposeHashes {
  const text = Buffer.from(fileBytes).toString('utf8');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new SyntaxError(`not JSON: ${(err as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new SyntaxError('an app-compose file is a JSON object');
  const composeHash = createHash('sha256').update(fileBytes).digest('hex');
  const normalisedHash = createHash('sha256').update(deterministicComposeJson(parsed), 'utf8').digest('hex');
  return { composeHash, normalisedHash, deterministic: composeHash === normalisedHash };
}
