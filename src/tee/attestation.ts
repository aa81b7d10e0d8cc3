import { createHash, randomBytes } from 'node:crypto';
import { TokenBuckets } from '../auth/token-buckets.js';
import { PixeldError } from '../errors.js';
import type { Logger } from '../obs/logger.js';
import { canonicalJson } from './canonical-json.js';
import { TeeError, type TeeKeyProvider } from './key-provider.js';
import { signQuoteBody } from './receipt.js';

/**
 * Attestation (tee.md §2): a quote whose 64-byte report_data is sha256(canonical binding) ‖ nonce, so
 * one quote proves both which key signs (the binding) and that it is fresh (the caller's nonce).
 */

export interface AttestationBinding {
  v: 1;
  signing_address: string;
  signing_algo: 'ecdsa';
  /** The models this daemon serves, sorted, comma-separated. */
  model: string;
  provider_address: string;
  key_source: string;
}

export interface AttestationReport {
  version: 1;
  tee: 'tdx' | 'dstack' | 'none';
  insecure: boolean;
  key_source: string;
  signing_address: string;
  signing_algo: 'ecdsa';
  /** The caller's nonce (hex), or null for the cached nonce-less report. */
  request_nonce: string | null;
  binding: AttestationBinding;
  report_data: string;
  intel_quote: string | null;
  quote_provider: string;
  event_log: string | null;
  info: Record<string, unknown> | null;
  kms_signature_chain: string[];
}

export function bindingOf(key: TeeKeyProvider, providerAddress: string, modelIds: readonly string[]): AttestationBinding {
  return {
    v: 1,
    signing_address: key.address,
    signing_algo: 'ecdsa',
    model: [...modelIds].sort().join(','),
    provider_address: providerAddress,
    key_source: key.keySource,
  };
}

/** report_data = sha256(canonical JSON of the binding) ‖ nonce (32 raw bytes; zeros when there is none). */
export function reportDataOf(binding: AttestationBinding, nonce: Buffer | undefined): Buffer {
  const digest = createHash('sha256').update(canonicalJson(binding)).digest();
  return Buffer.concat([digest, nonce ?? Buffer.alloc(32)]);
}

/** 0G's legacy report_data: the ASCII of the signer address, zero padded to 64 bytes. */
export function legacyReportData(address: string): Buffer {
  const data = Buffer.alloc(64);
  data.write(address, 'ascii');
  return data;
}

const NONCE = /^[0-9a-fA-F]{64}$/;

/** How long a fresh report is served again to whoever asks with the same nonce. */
export const SAME_NONCE_REUSE_MS = 60_000;

/** The key of the allowance all clients share. */
const EVERYONE = '';

export interface AttestationServiceDeps {
  key: TeeKeyProvider;
  providerAddress: string;
  modelIds: readonly string[];
  cachedReportTtlMs: number;
  freshReportsPerMinute: number;
  /**
   * The fresh reports one client may have a minute, so that no one client can use up the quoting device's
   * allowance for everyone. @default a quarter of freshReportsPerMinute, at least 1
   */
  freshReportsPerClientPerMinute?: number;
  logger: Logger;
  now: () => number;
}

export class AttestationService {
  readonly binding: AttestationBinding;
  /** What attests the signing key: `none` for a dev key, which nothing attests. */
  readonly tee: AttestationReport['tee'];
  private cached: { atMs: number; report: Promise<AttestationReport> } | undefined;
  private legacy: Promise<{ body: string; signature: string }> | undefined;
  /**
   * Fresh (nonce) reports: quoting takes seconds and the kernel serialises it, so all clients together get
   * `freshReportsPerMinute` and each one a share of it.
   */
  private readonly freshForEveryone: TokenBuckets;
  private readonly freshPerClient: TokenBuckets;
  /** Fresh reports by nonce (lower-case hex), oldest first, for SAME_NONCE_REUSE_MS. */
  private readonly byNonce = new Map<string, { atMs: number; report: Promise<AttestationReport> }>();

  constructor(private readonly deps: AttestationServiceDeps) {
    this.binding = bindingOf(deps.key, deps.providerAddress, deps.modelIds);
    this.tee = deps.key.insecure ? 'none' : deps.key.mode === 'dstack' ? 'dstack' : 'tdx';
    this.freshForEveryone = new TokenBuckets(deps.freshReportsPerMinute, deps.now);
    const perClient = deps.freshReportsPerClientPerMinute ?? Math.max(1, Math.floor(deps.freshReportsPerMinute / 4));
    this.freshPerClient = new TokenBuckets(Math.min(perClient, deps.freshReportsPerMinute), deps.now);
  }

  /** When the cached nonce-less report was made (unix ms); undefined until one is asked for. */
  get cachedReportMs(): number | undefined {
    return this.cached?.atMs;
  }

  /**
   * With a nonce: a fresh quote, within the client's and everyone's allowance; the same nonce again within
   * SAME_NONCE_REUSE_MS gets the same report, at no cost. Without: the cached report (report_data ends in
   * zeros). `client` names whose allowance a fresh quote spends (see clientKeyOf).
   */
  async report(nonceHex: string | undefined, client: string): Promise<AttestationReport> {
    if (nonceHex === undefined) {
      const { now, cachedReportTtlMs } = this.deps;
      if (!this.cached || now() - this.cached.atMs >= cachedReportTtlMs) {
        const report = this.build(undefined);
        this.cached = { atMs: now(), report };
        report.catch(() => {
          if (this.cached?.report === report) this.cached = undefined;
        });
      }
      return this.cached.report;
    }
    if (!NONCE.test(nonceHex)) {
      throw new PixeldError('invalid_request', 'nonce must be 64 hex characters (32 bytes)', { param: 'nonce' });
    }
    const nonce = nonceHex.toLowerCase();
    const nowMs = this.deps.now();
    this.forgetOldNonces(nowMs);
    const reused = this.byNonce.get(nonce);
    if (reused) return reused.report;
    this.takeFreshToken(client);
    const report = this.build(Buffer.from(nonce, 'hex'));
    this.byNonce.set(nonce, { atMs: nowMs, report });
    report.catch(() => {
      if (this.byNonce.get(nonce)?.report === report) this.byNonce.delete(nonce);
    });
    return report;
  }

  /** `GET /v1/quote`: the hex quote over the padded signer address, and its ZG-Quote-Signature. */
  legacyQuote(): Promise<{ body: string; signature: string }> {
    const { key } = this.deps;
    if (key.insecure) {
      throw new PixeldError('no_tee', 'this daemon runs in tee.mode "dev": there is no TEE and no quote');
    }
    this.legacy ??= (async () => {
      const quote = await this.quoteOrFail(legacyReportData(key.address));
      const body = quote.quote.toString('hex');
      return { body, signature: await signQuoteBody(key, body) };
    })();
    this.legacy.catch(() => {
      this.legacy = undefined;
    });
    return this.legacy;
  }

  private async build(nonce: Buffer | undefined): Promise<AttestationReport> {
    const { key } = this.deps;
    const reportData = reportDataOf(this.binding, nonce);
    const quote = key.insecure ? undefined : await this.quoteOrFail(reportData);
    const info = await key.info().catch(() => undefined);
    return {
      version: 1,
      tee: this.tee,
      insecure: key.insecure,
      key_source: key.keySource,
      signing_address: key.address,
      signing_algo: 'ecdsa',
      request_nonce: nonce ? nonce.toString('hex') : null,
      binding: this.binding,
      report_data: reportData.toString('hex'),
      intel_quote: quote ? quote.quote.toString('hex') : null,
      quote_provider: quote?.quoteProvider ?? 'none',
      event_log: quote?.eventLog ?? null,
      info: info ?? null,
      kms_signature_chain: key.signatureChain,
    };
  }

  private async quoteOrFail(reportData: Buffer) {
    try {
      const quote = await this.deps.key.quote(reportData);
      if (!quote) throw new TeeError('the key provider returned no quote');
      return quote;
    } catch (err) {
      this.deps.logger.error('quote generation failed', { error: (err as Error).message });
      throw new PixeldError('attestation_failed', `the TEE could not produce a quote: ${(err as Error).message}`, {
        cause: err,
        retryAfterSeconds: 5,
      });
    }
  }

  /** Takes one fresh report from the client's and from everyone's allowance, or throws 429 taking neither. */
  private takeFreshToken(client: string): void {
    if (this.freshPerClient.tokens(client) < 1) {
      throw new PixeldError('rate_limit_exceeded', `at most ${this.freshPerClient.perMinute} fresh attestation reports a minute per client; try again shortly`, {
        retryAfterSeconds: this.freshPerClient.secondsUntil(client, 1),
      });
    }
    if (this.freshForEveryone.tokens(EVERYONE) < 1) {
      throw new PixeldError('rate_limit_exceeded', `at most ${this.freshForEveryone.perMinute} fresh attestation reports a minute; try again shortly`, {
        retryAfterSeconds: this.freshForEveryone.secondsUntil(EVERYONE, 1),
      });
    }
    this.freshPerClient.take(client, 1);
    this.freshForEveryone.take(EVERYONE, 1);
  }

  /** Every entry was made with a token, so there are never more than a window's worth of them. */
  private forgetOldNonces(nowMs: number): void {
    for (const [nonce, entry] of this.byNonce) {
      if (nowMs - entry.atMs < SAME_NONCE_REUSE_MS) break;
      this.byNonce.delete(nonce);
    }
  }
}

/** A random 32-byte nonce as hex, for verifiers. */
export function newNonce(): string {
  return randomBytes(32).toString('hex');
}
