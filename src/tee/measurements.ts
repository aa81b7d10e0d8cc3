/**
 * Expected measurements: what a verifier pins so that a genuine quote also proves *which code* ran.
 * Without them a quote proves only that some TDX machine holds the key.
 *
 * The `--measurements <file>` shape (every key optional, hex, upper or lower case, `0x` allowed):
 *
 *     {
 *       "mrtd":  "<96 hex>",   // the TD's initial image (firmware)
 *       "rtmr0": "<96 hex>",   // firmware configuration (ACPI tables, boot variables)
 *       "rtmr1": "<96 hex>",   // the OS loader and kernel
 *       "rtmr2": "<96 hex>",   // kernel command line and initrd
 *       "rtmr3": "<96 hex>",   // runtime: under dstack, the app's events (compose hash, app id, instance id, …)
 *       "composeHash": "<64 hex>", // dstack: sha256 of the app's normalised app-compose.json
 *       "appId": "<40 hex>"        // dstack: the app's id (its KMS identity)
 *     }
 *
 * Unknown keys are refused, so a misspelt key can never leave a register silently unpinned.
 */

export const REGISTERS = ['mrtd', 'rtmr0', 'rtmr1', 'rtmr2', 'rtmr3'] as const;
export type RegisterName = (typeof REGISTERS)[number];

export interface ExpectedMeasurements {
  mrtd?: string;
  rtmr0?: string;
  rtmr1?: string;
  rtmr2?: string;
  rtmr3?: string;
  composeHash?: string;
  appId?: string;
}

/** Hex length of each key's value. */
const HEX_CHARS: Record<keyof ExpectedMeasurements, number> = {
  mrtd: 96,
  rtmr0: 96,
  rtmr1: 96,
  rtmr2: 96,
  rtmr3: 96,
  composeHash: 64,
  appId: 40,
};

export const MEASUREMENT_KEYS = Object.keys(HEX_CHARS) as Array<keyof ExpectedMeasurements>;

export class MeasurementsError extends Error {
  override readonly name = 'MeasurementsError';
}

/** One value: `0x` dropped, lower-cased, length checked. `where` names it in the error (`--expect-mrtd`, `mrtd in m.json`). */
export function normaliseMeasurement(key: keyof ExpectedMeasurements, value: unknown, where: string): string {
  const want = HEX_CHARS[key];
  if (typeof value !== 'string') throw new MeasurementsError(`${where} must be a hex string of ${want} characters`);
  const hex = (value.startsWith('0x') || value.startsWith('0X') ? value.slice(2) : value).toLowerCase();
  if (hex.length !== want || !/^[0-9a-f]*$/.test(hex)) {
    throw new MeasurementsError(`${where} must be ${want} hex characters (${want / 2} bytes), got "${value}"`);
  }
  return hex;
}

/** The parsed JSON of a measurements file, checked and normalised. */
export function parseMeasurements(value: unknown, file: string): ExpectedMeasurements {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new MeasurementsError(`${file} must hold a JSON object`);
  const out: ExpectedMeasurements = {};
  for (const [key, v] of Object.entries(value)) {
    if (v === undefined) continue;
    if (!(key in HEX_CHARS)) throw new MeasurementsError(`${file}: unknown key "${key}" (known: ${MEASUREMENT_KEYS.join(', ')})`);
    const k = key as keyof ExpectedMeasurements;
    out[k] = normaliseMeasurement(k, v, `${k} in ${file}`);
  }
  return out;
}

/** The registers as a verified quote gives them (hex). */
export interface QuoteRegisters {
  mrTd: string;
  rtMr0: string;
  rtMr1: string;
  rtMr2: string;
  rtMr3: string;
}

export function registerOf(quote: QuoteRegisters, name: RegisterName): string {
  const field = ({ mrtd: 'mrTd', rtmr0: 'rtMr0', rtmr1: 'rtMr1', rtmr2: 'rtMr2', rtmr3: 'rtMr3' } as const)[name];
  return quote[field].toLowerCase();
}

export interface RegisterComparison {
  register: RegisterName;
  ok: boolean;
  detail: string;
}

/** One comparison per pinned register, in MRTD, RTMR0..3 order. */
export function compareRegisters(quote: QuoteRegisters, expected: ExpectedMeasurements): RegisterComparison[] {
  const out: RegisterComparison[] = [];
  for (const register of REGISTERS) {
    const want = expected[register];
    if (want === undefined) continue;
    const actual = registerOf(quote, register);
    const label = register.toUpperCase();
    out.push(
      actual === want.toLowerCase()
        ? { register, ok: true, detail: `${label} ${actual}, as expected` }
        : { register, ok: false, detail: `${label} differs: expected ${want.toLowerCase()}, the quote has ${actual}` },
    );
  }
  return out;
}
