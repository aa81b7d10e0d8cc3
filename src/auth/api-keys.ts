import { createHash, timingSafeEqual } from 'node:crypto';
import type { Config } from '../config/schema.js';
import { ConfigError } from '../config/load.js';

/**
 * API keys for routers that are not on 0G. Only their sha256 is held; a presented key is hashed and
 * compared with every configured hash in constant time, so timing tells nothing about which key is close.
 */
export class ApiKeyRing {
  private readonly entries: Array<{ owner: string; digest: Buffer }>;

  constructor(keys: Config['auth']['apiKeys'], env: NodeJS.ProcessEnv) {
    this.entries = keys.map((key) => {
      if ('sha256' in key) return { owner: key.owner, digest: Buffer.from(key.sha256, 'hex') };
      const value = env[key.env];
      if (value === undefined || value === '') throw new ConfigError(`config: auth.apiKeys: env ${key.env} (key of ${key.owner}) is not set`);
      return { owner: key.owner, digest: sha256(value) };
    });
  }

  get size(): number {
    return this.entries.length;
  }

  /** The owner id of the key, or undefined. */
  ownerOf(presented: string): string | undefined {
    const digest = sha256(presented);
    let owner: string | undefined;
    for (const entry of this.entries) {
      if (timingSafeEqual(entry.digest, digest) && owner === undefined) owner = entry.owner;
    }
    return owner;
  }
}

function sha256(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}
