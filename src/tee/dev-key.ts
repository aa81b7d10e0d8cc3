import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Wallet } from 'ethers';
import { TeeError, type TeeKeyProvider } from './key-provider.js';

/** Name of the dev key file inside the data dir. */
export const DEV_KEY_FILE = 'tee-dev-signing-key';

export interface DevKeyOptions {
  dataDir: string;
  /** NODE_ENV of the process; `production` is refused unless `allowInProduction`. */
  nodeEnv: string | undefined;
  allowInProduction: boolean;
}

/**
 * `dev` mode: a key file in the data dir, made once. There is no TEE here and it says so everywhere:
 * reports carry `tee:"none", insecure:true`, receipts the tag INSECURE-DEV, and it will not start in
 * production unless forced.
 */
export function openDevKeyProvider(options: DevKeyOptions): TeeKeyProvider {
  if (options.nodeEnv === 'production' && !options.allowInProduction) {
    throw new TeeError(
      'tee.mode "dev" refuses to run with NODE_ENV=production: its key sits in a plain file and nothing is attested. ' +
        'Use tee.mode dstack or tdx, or set tee.allowDevInProduction to force it.',
    );
  }
  const file = path.join(options.dataDir, DEV_KEY_FILE);
  let wallet: Wallet;
  if (existsSync(file)) {
    const hex = readFileSync(file, 'utf8').trim();
    if (!/^0x[0-9a-fA-F]{64}$/.test(hex)) throw new TeeError(`${file} does not hold a 32-byte hex key`);
    wallet = new Wallet(hex);
  } else {
    const fresh = Wallet.createRandom();
    // wx: never overwrite a key another process just wrote; 0600: readable by this user only.
    writeFileSync(file, `${fresh.privateKey}\n`, { mode: 0o600, flag: 'wx' });
    wallet = new Wallet(fresh.privateKey);
  }
  return {
    mode: 'dev',
    teeLabel: 'INSECURE-DEV',
    insecure: true,
    keySource: 'dev-file',
    address: wallet.address,
    signer: wallet,
    journalDir: options.dataDir,
    signatureChain: [],
    async info() {
      return undefined;
    },
    async quote() {
      return undefined;
    },
  };
}
