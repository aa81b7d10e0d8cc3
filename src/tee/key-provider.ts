import type { Wallet } from 'ethers';

/** Where the signing key lives and how quotes are made; one config switch, `tee.mode`. */
export type TeeMode = 'dev' | 'dstack' | 'tdx';

export interface TeeQuote {
  /** The raw TDX quote. */
  quote: Buffer;
  /** What produced it: `dstack-guest-agent`, `configfs-tsm`. */
  quoteProvider: string;
  /** dstack's event log (JSON text) when the platform gives one. */
  eventLog: string | undefined;
}

/**
 * A signing key held inside the TEE, and the means to prove it: quotes over 64 bytes of report data.
 * Implementations keep the private key to themselves; nothing here returns it.
 */
export interface TeeKeyProvider {
  readonly mode: TeeMode;
  /** `tee` field of reports and receipts: `tdx`, `dstack`, or `INSECURE-DEV`. */
  readonly teeLabel: 'tdx' | 'dstack' | 'INSECURE-DEV';
  /** true only for `dev`: the key sits in a plain file and there is no quote. */
  readonly insecure: boolean;
  /** How the key was obtained, e.g. `dstack-kms:pixeld/signing/v1`, `tdx-tmpfs`, `dev-file`. */
  readonly keySource: string;
  /** Checksummed Ethereum address of the key. */
  readonly address: string;
  /**
   * EIP-191 and EIP-712 signing with the key; the key itself never leaves. A Wallet (not any Signer)
   * because receipts are signed synchronously inside the completion transaction.
   */
  readonly signer: Pick<Wallet, 'signMessage' | 'signMessageSync' | 'signTypedData' | 'address'>;
  /**
   * Where the settlement journal lives: storage with the key's own trust and lifetime (tmpfs beside the
   * key in `tdx` mode, the app's encrypted volume under dstack), never the operator's data dir in `tdx`.
   */
  readonly journalDir: string;
  /** dstack KMS signature chain for the key (hex), proving it was derived for this app; empty elsewhere. */
  readonly signatureChain: string[];
  /** Platform information worth publishing (dstack's Info); undefined elsewhere. */
  info(): Promise<Record<string, unknown> | undefined>;
  /** A quote whose report_data is exactly these 64 bytes; undefined in dev mode (no TEE). */
  quote(reportData: Buffer): Promise<TeeQuote | undefined>;
}

/** Quote generation is unavailable or failed. */
export class TeeError extends Error {
  override readonly name = 'TeeError';
}
