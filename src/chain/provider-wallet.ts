import { readFileSync } from 'node:fs';
import { Wallet, type Provider } from 'ethers';
import { ConfigError } from '../config/load.js';
import type { Config } from '../config/schema.js';

/**
 * The provider wallet (the operator's key: sends settlement and registration transactions, owns the
 * service, receives the fees) — never to be confused with the TEE key, which signs responses and
 * settlement data. Loaded from an encrypted keystore when one is configured, else from an env var.
 * Returns undefined when neither is present: the daemon then serves but cannot settle.
 */
export async function loadProviderWallet(
  wallet: Config['provider']['wallet'],
  env: NodeJS.ProcessEnv,
  chain?: Provider,
): Promise<Wallet | undefined> {
  let loaded: Wallet | undefined;
  if (wallet.keystoreFile !== undefined) {
    const password = env[wallet.keystorePasswordEnv];
    if (password === undefined) {
      throw new ConfigError(`config: provider.wallet.keystoreFile is set but env ${wallet.keystorePasswordEnv} (its password) is not`);
    }
    let json: string;
    try {
      json = readFileSync(wallet.keystoreFile, 'utf8');
    } catch (err) {
      throw new ConfigError(`config: provider.wallet.keystoreFile: cannot read ${wallet.keystoreFile}: ${(err as Error).message}`);
    }
    try {
      const decrypted = await Wallet.fromEncryptedJson(json, password);
      loaded = new Wallet(decrypted.privateKey);
    } catch {
      // The keystore library's message can echo input; say only what the operator needs.
      throw new ConfigError(`config: provider.wallet.keystoreFile: ${wallet.keystoreFile} could not be decrypted with ${wallet.keystorePasswordEnv}`);
    }
  } else {
    const key = env[wallet.privateKeyEnv];
    if (key === undefined || key === '') return undefined;
    const hex = key.startsWith('0x') ? key : `0x${key}`;
    if (!/^0x[0-9a-fA-F]{64}$/.test(hex)) throw new ConfigError(`config: env ${wallet.privateKeyEnv} must be a 32-byte hex private key`);
    loaded = new Wallet(hex);
  }
  return chain ? loaded.connect(chain) : loaded;
}

/**
 * The provider address everything names: the wallet's when one is loaded (a configured address must then
 * agree), else the configured one.
 */
export function resolveProviderAddress(configured: string, wallet: Wallet | undefined): string {
  if (!wallet) return configured;
  if (!/^0x0{40}$/.test(configured) && configured.toLowerCase() !== wallet.address.toLowerCase()) {
    throw new ConfigError(`config: provider.address ${configured} is not the address of the provider wallet (${wallet.address})`);
  }
  return wallet.address;
}
