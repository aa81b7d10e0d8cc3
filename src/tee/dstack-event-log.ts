import { createHash } from 'node:crypto';

/**
 * dstack's event log, as the guest agent's GetQuote serves it beside the quote: a JSON array of
 * `{imr, event_type, digest, event, event_payload}`. Replaying it reproduces the quote's RTMR0..3, which
 * is what makes the events worth reading: an event whose digest was not extended into the register the
 * hardware signed cannot survive the replay.
 *
 * - TDX extend: RTMR_new = SHA-384(RTMR_old ‖ digest), every register starting from 48 zero bytes.
 * - Boot events (RTMR0..2) carry their digest; dstack's runtime events (event_type 0x08000001, RTMR3:
 *   app-id, compose-hash, instance-id, os-image-hash, key-provider, …) are extended with
 *   SHA-384(event_type as u32 little-endian ‖ ":" ‖ event name ‖ ":" ‖ payload bytes). Their digest is
 *   always recomputed from name and payload here and a served digest must equal it: replaying a served
 *   digest alone would let a log pair the true digest with a false payload (say, another compose hash).
 *
 * Checked against the public dstack captures in test/fixtures/dstack (all four registers replay).
 */

export const DSTACK_RUNTIME_EVENT_TYPE = 0x08000001;

export interface DstackEvent {
  imr: number;
  eventType: number;
  /** Hex, 96 characters: the digest extended (recomputed for runtime events). */
  digest: string;
  event: string;
  /** Hex. */
  payload: string;
}

/** What the runtime events say about the app (hex as logged; the payloads are hex-encoded bytes). */
export interface DstackAppIdentity {
  appId: string | undefined;
  composeHash: string | undefined;
  instanceId: string | undefined;
  osImageHash: string | undefined;
  /** The key-provider payload decoded as UTF-8 (JSON naming the KMS), when present. */
  keyProvider: string | undefined;
}

export class EventLogError extends Error {
  override readonly name = 'EventLogError';
}

const HEX = /^([0-9a-fA-F]{2})*$/;
const ZERO_REGISTER = Buffer.alloc(48);

function asInt(value: unknown, what: string, at: number): number {
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw new EventLogError(`event ${at}: ${what} must be a non-negative integer`);
  return n;
}

function asHex(value: unknown, what: string, at: number): string {
  if (typeof value !== 'string' || !HEX.test(value)) throw new EventLogError(`event ${at}: ${what} must be hex`);
  return value.toLowerCase();
}

export function runtimeEventDigest(eventType: number, event: string, payloadHex: string): string {
  const type = Buffer.alloc(4);
  type.writeUInt32LE(eventType);
  return createHash('sha384')
    .update(type)
    .update(':')
    .update(event, 'utf8')
    .update(':')
    .update(Buffer.from(payloadHex, 'hex'))
    .digest('hex');
}

/** Parses and checks the event log text; throws EventLogError naming the first bad event. */
export function parseEventLog(text: string): DstackEvent[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new EventLogError(`the event log is not JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(raw)) throw new EventLogError('the event log is not a JSON array');
  return raw.map((entry: unknown, at): DstackEvent => {
    if (typeof entry !== 'object' || entry === null) throw new EventLogError(`event ${at} is not an object`);
    const e = entry as Record<string, unknown>;
    const imr = asInt(e.imr, 'imr', at);
    if (imr > 3) throw new EventLogError(`event ${at}: imr ${imr} is not 0..3`);
    const eventType = asInt(e.event_type, 'event_type', at);
    const served = asHex(e.digest ?? '', 'digest', at);
    const event = typeof e.event === 'string' ? e.event : '';
    const payload = asHex(e.event_payload ?? '', 'event_payload', at);
    if (eventType === DSTACK_RUNTIME_EVENT_TYPE) {
      const digest = runtimeEventDigest(eventType, event, payload);
      if (served !== '' && served !== digest) {
        throw new EventLogError(`event ${at} ("${event}"): its digest ${served} is not the digest of its name and payload (${digest})`);
      }
      return { imr, eventType, digest, event, payload };
    }
    if (served.length !== 96) throw new EventLogError(`event ${at}: digest must be 48 bytes of hex, got ${served.length / 2} bytes`);
    return { imr, eventType, digest: served, event, payload };
  });
}

/** RTMR0..3 (hex) after extending every event's digest into its register in log order. */
export function replayEventLog(events: readonly DstackEvent[]): [string, string, string, string] {
  const regs = [ZERO_REGISTER, ZERO_REGISTER, ZERO_REGISTER, ZERO_REGISTER];
  for (const e of events) {
    regs[e.imr] = createHash('sha384').update(regs[e.imr]!).update(Buffer.from(e.digest, 'hex')).digest();
  }
  return regs.map((r) => r.toString('hex')) as [string, string, string, string];
}

/**
 * The app's identity from the RTMR3 runtime events. An event that appears twice makes the log ambiguous
 * (which one does the app's KMS identity follow?) and is refused.
 */
export function appIdentityOf(events: readonly DstackEvent[]): DstackAppIdentity {
  const seen = new Map<string, string>();
  for (const e of events) {
    if (e.imr !== 3 || e.eventType !== DSTACK_RUNTIME_EVENT_TYPE) continue;
    if (!['app-id', 'compose-hash', 'instance-id', 'os-image-hash', 'key-provider'].includes(e.event)) continue;
    if (seen.has(e.event)) throw new EventLogError(`the event log has "${e.event}" twice`);
    seen.set(e.event, e.payload);
  }
  const keyProvider = seen.get('key-provider');
  return {
    appId: seen.get('app-id'),
    composeHash: seen.get('compose-hash'),
    instanceId: seen.get('instance-id'),
    osImageHash: seen.get('os-image-hash'),
    keyProvider: keyProvider === undefined ? undefined : Buffer.from(keyProvider, 'hex').toString('utf8'),
  };
}
