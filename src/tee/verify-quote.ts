import { getCollateral, PHALA_PCCS_URL, verify, type Collateral, type TDReport10 } from '@phala/dcap-qvl';

/**
 * Intel TDX quote verification (DCAP) through `@phala/dcap-qvl`: certificate chains up to Intel's root,
 * CRLs, the QE report, the quote signature over the TD report, and the platform's TCB level. What it
 * returns is only worth anything because of that signature: the report_data and measurements below are
 * the ones the hardware signed.
 */

export interface VerifyTdxQuoteOptions {
  /**
   * Collateral (dcap-qvl's shape, parsed JSON: `tcb_info`, `qe_identity`, CRLs, issuer chains). Given,
   * nothing is fetched, so verification works offline and is reproducible at a fixed `nowSeconds`.
   */
  collateral?: unknown;
  /**
   * PCCS to fetch the collateral from when none is given.
   * @default PHALA_PCCS_URL (https://pccs.phala.network)
   */
  pccsUrl?: string;
  /**
   * The time the collateral and certificates must be valid at, in Unix seconds.
   * @default Date.now() / 1000
   */
  nowSeconds?: number;
}

export interface VerifiedTdxQuote {
  /** TCB status: `UpToDate`, or e.g. `SWHardeningNeeded`, `OutOfDate` (dcap-qvl rejects `Revoked`). */
  status: string;
  advisoryIds: string[];
  /** The 64 bytes of report_data the TD asked the hardware to sign. */
  reportData: Buffer;
  /** Measurements (hex): the TD's initial image and its runtime registers. */
  mrTd: string;
  rtMr0: string;
  rtMr1: string;
  rtMr2: string;
  rtMr3: string;
  /** Where the collateral came from: `offline` (given) or the PCCS URL it was fetched from. */
  collateralSource: string;
}

export type QuoteVerificationStage = 'collateral' | 'verify' | 'not-tdx';

/** The quote is not a valid, current Intel TDX quote (or its collateral could not be had). */
export class QuoteVerificationError extends Error {
  override readonly name = 'QuoteVerificationError';
  constructor(
    readonly stage: QuoteVerificationStage,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const COLLATERAL_FIELDS = [
  'pck_crl_issuer_chain',
  'root_ca_crl',
  'pck_crl',
  'tcb_info_issuer_chain',
  'tcb_info',
  'tcb_info_signature',
  'qe_identity_issuer_chain',
  'qe_identity',
  'qe_identity_signature',
] as const;

/** dcap-qvl dereferences these fields without checking; a missing one would surface as a TypeError. */
function asCollateral(value: unknown): Collateral {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new QuoteVerificationError('collateral', 'collateral must be a JSON object');
  }
  const missing = COLLATERAL_FIELDS.filter((k) => (value as Record<string, unknown>)[k] === undefined);
  if (missing.length > 0) throw new QuoteVerificationError('collateral', `collateral lacks ${missing.join(', ')}`);
  return value as Collateral;
}

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');

export async function verifyTdxQuote(quote: Buffer, options: VerifyTdxQuoteOptions = {}): Promise<VerifiedTdxQuote> {
  let collateral: Collateral;
  let collateralSource: string;
  if (options.collateral !== undefined) {
    collateral = asCollateral(options.collateral);
    collateralSource = 'offline';
  } else {
    const pccsUrl = options.pccsUrl ?? PHALA_PCCS_URL;
    try {
      collateral = await getCollateral(pccsUrl, quote);
    } catch (err) {
      throw new QuoteVerificationError('collateral', `could not fetch collateral from ${pccsUrl}: ${(err as Error).message}`, { cause: err });
    }
    collateralSource = pccsUrl;
  }

  const nowSeconds = options.nowSeconds ?? Date.now() / 1000;
  let verified;
  try {
    verified = verify(quote, collateral, nowSeconds);
  } catch (err) {
    throw new QuoteVerificationError('verify', `quote verification failed: ${(err as Error).message}`, { cause: err });
  }

  // An SGX enclave quote verifies too, but its report_data means something else: only a TD report is accepted.
  // asTd10 also answers for a TD 1.5 report (its base).
  const td: TDReport10 | null = verified.report.asTd10();
  if (!td) throw new QuoteVerificationError('not-tdx', `not a TDX quote (report type ${verified.report.type})`);
  return {
    status: verified.status,
    advisoryIds: [...verified.advisory_ids],
    reportData: Buffer.from(td.reportData),
    mrTd: hex(td.mrTd),
    rtMr0: hex(td.rtMr0),
    rtMr1: hex(td.rtMr1),
    rtMr2: hex(td.rtMr2),
    rtMr3: hex(td.rtMr3),
    collateralSource,
  };
}
