import type { DstackClient } from '@phala/dstack-sdk';
import { Wallet, hexlify } from 'ethers';
import { reportDataOfTdxQuote, TDX_REPORT_DATA_BYTES } from './configfs-tsm.js';
import { TeeError, type TeeKeyProvider, type TeeQuote } from './key-provider.js';

export interface DstackKeyOptions {
  /** Unix socket path or http(s) URL of the guest agent; undefined: the SDK's own search. */
  endpoint: string | undefined;
  /** Key derivation path, e.g. `pixeld/signing/v1`. */
  keyPath: string;
  /** The settlement journal's directory: the app's data volume, which dstack encrypts with an app key. */
  journalDir: string;
}

export interface DstackKeyDeps {
  /** @default new DstackClient(options.endpoint) */
  client?: DstackClient;
}

/** Purpose string the KMS app key signs together with the derived public key (signature_chain[0]). */
export const DSTACK_KEY_PURPOSE = 'signing';

/**
 * `dstack` mode: the key is derived by the dstack KMS for this app and path, so every restart (and every
 * instance of the app) gets the same signer, and the signature chain proves where it came from.
 */
export async function openDstackKeyProvider(options: DstackKeyOptions, deps: DstackKeyDeps = {}): Promise<TeeKeyProvider> {
  const client = deps.client ?? (await createClient(options.endpoint));
  const where = describeEndpoint(client, options.endpoint);

  let derived: Awaited<ReturnType<DstackClient['getKey']>>;
  try {
    derived = await client.getKey(options.keyPath, DSTACK_KEY_PURPOSE);
  } catch (err) {
    throw new TeeError(`dstack guest agent at ${where}: GetKey for path "${options.keyPath}" failed: ${errorText(err)}`, {
      cause: err,
    });
  }
  if (!(derived.key instanceof Uint8Array) || derived.key.length !== 32) {
    throw new TeeError(
      `dstack guest agent at ${where}: GetKey returned ${describeBytes(derived.key)} where a 32-byte secp256k1 key belongs`,
    );
  }
  let wallet: Wallet;
  try {
    wallet = new Wallet(hexlify(derived.key));
  } catch {
    // No cause attached: it could quote the key material.
    throw new TeeError(`dstack guest agent at ${where}: GetKey returned bytes that are not a valid secp256k1 key`);
  }
  // As the agent sends them (plain hex), so verifiers can use dstack's own tooling on them unchanged.
  const signatureChain = Array.from(derived.signature_chain, (sig) => Buffer.from(sig).toString('hex'));

  let info: Promise<Record<string, unknown>> | undefined;
  const fetchInfo = async (): Promise<Record<string, unknown>> => {
    try {
      return { ...(await client.info()) };
    } catch (err) {
      throw new TeeError(`dstack guest agent at ${where}: Info failed: ${errorText(err)}`, { cause: err });
    }
  };

  return {
    mode: 'dstack',
    teeLabel: 'dstack',
    insecure: false,
    keySource: `dstack-kms:${options.keyPath}`,
    address: wallet.address,
    signer: wallet,
    journalDir: options.journalDir,
    signatureChain,
    async info() {
      // Info does not change while the CVM runs; a failed fetch is not cached so the next call retries.
      info ??= fetchInfo().catch((err: unknown) => {
        info = undefined;
        throw err;
      });
      // A copy each time: callers must not be able to edit what later reports publish.
      return structuredClone(await info);
    },
    async quote(reportData: Buffer): Promise<TeeQuote> {
      if (!Buffer.isBuffer(reportData) || reportData.length !== TDX_REPORT_DATA_BYTES) {
        throw new TeeError(
          `report data for a dstack quote must be a Buffer of exactly ${TDX_REPORT_DATA_BYTES} bytes, got ${describeBytes(reportData)}`,
        );
      }
      let response: Awaited<ReturnType<DstackClient['getQuote']>>;
      try {
        // A Buffer, never a string: the SDK hex-encodes a string's UTF-8 bytes rather than decoding it.
        response = await client.getQuote(Buffer.from(reportData));
      } catch (err) {
        throw new TeeError(`dstack guest agent at ${where}: GetQuote failed: ${errorText(err)}`, { cause: err });
      }
      const quote = decodeHex(response.quote);
      if (quote === undefined || quote.length === 0) {
        throw new TeeError(`dstack guest agent at ${where}: GetQuote returned no quote (${describeBytes(response.quote)})`);
      }
      const quoted = reportDataOfTdxQuote(quote);
      if (quoted !== undefined && !quoted.equals(reportData)) {
        throw new TeeError(`dstack guest agent at ${where}: GetQuote returned a quote over different report data`);
      }
      return {
        quote,
        quoteProvider: 'dstack-guest-agent',
        eventLog: typeof response.event_log === 'string' && response.event_log !== '' ? response.event_log : undefined,
      };
    },
  };
}

async function createClient(endpoint: string | undefined): Promise<DstackClient> {
  // Loaded only in dstack mode: the SDK imports its optional peer @noble/curves unconditionally, and a
  // missing copy must not stop dev or tdx mode from starting.
  let sdk: typeof import('@phala/dstack-sdk');
  try {
    sdk = await import('@phala/dstack-sdk');
  } catch (err) {
    throw new TeeError(
      `tee.mode "dstack" cannot load @phala/dstack-sdk: ${errorText(err)} (it needs @noble/curves installed beside it)`,
      { cause: err },
    );
  }
  try {
    return new sdk.DstackClient(endpoint);
  } catch (err) {
    // The SDK throws here when the socket file is missing: the usual sign of not running in a dstack CVM
    // or of the socket not being mounted into the container.
    throw new TeeError(
      `dstack guest agent not reachable at ${endpoint ?? 'its default socket'}: ${errorText(err)}. ` +
        'Is this a dstack CVM with /var/run/dstack.sock mounted into the container (or DSTACK_SIMULATOR_ENDPOINT set)?',
      { cause: err },
    );
  }
}

function describeEndpoint(client: DstackClient, configured: string | undefined): string {
  // `endpoint` is a protected field of the SDK client: the resolved socket or URL, which is what an
  // operator needs when the configured value was empty and the SDK searched.
  const resolved: unknown = (client as unknown as { endpoint?: unknown }).endpoint;
  return typeof resolved === 'string' ? resolved : (configured ?? 'the default socket');
}

function decodeHex(value: unknown): Buffer | undefined {
  if (typeof value !== 'string') return undefined;
  const hex = value.startsWith('0x') ? value.slice(2) : value;
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) return undefined;
  return Buffer.from(hex, 'hex');
}

function describeBytes(value: unknown): string {
  if (value instanceof Uint8Array) return `${value.length} bytes`;
  if (typeof value === 'string') return `a string of ${value.length} characters`;
  return value === undefined ? 'nothing' : typeof value;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
