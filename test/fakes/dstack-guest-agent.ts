/**
 * A fake dstack guest agent speaking the same HTTP/JSON protocol as the real one (dstack guest-agent
 * rpc_service.rs) over a unix socket, and optionally TCP like the simulator. Keys are derived
 * deterministically from `appSecret`, so a "restarted" agent with the same secret hands out the same key;
 * the signature chain is built exactly like the real one (app key signs `purpose:pubkey`, KMS root signs
 * `dstack-kms-issued:` ‖ app_id ‖ app pubkey), so chain verification code can be tested against it.
 */
import { createHash, createHmac } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { SigningKey, computeAddress, concat, getBytes, keccak256, toUtf8Bytes } from 'ethers';

export type DstackRpc = 'GetKey' | 'GetQuote' | 'Info' | 'Version';

export interface FakeDstackAgentOptions {
  /** Stands for the app's KMS-issued key material. @default 'pixeld-test-app' */
  appSecret?: string;
  /** Directory for the socket; a fresh temp dir (removed on close) when unset. */
  socketDir?: string;
  /** Also listen on 127.0.0.1:<ephemeral> for the http-URL endpoint form. @default false */
  tcp?: boolean;
}

export interface RecordedDstackRequest {
  rpc: string;
  /** Parsed JSON body. */
  body: unknown;
  status: number;
  /** The JSON the agent answered with. */
  response: unknown;
}

export interface FakeDstackAgent {
  socketPath: string;
  /** `http://127.0.0.1:<port>` when started with `tcp: true`. */
  url: string | undefined;
  requests: RecordedDstackRequest[];
  /** Public facts tests check against. */
  appId: string;
  appAddress: string;
  /** The next call (to `rpc`, or to any RPC when omitted) answers HTTP 500 `{error: message}`. */
  failNext(rpc?: DstackRpc, message?: string): void;
  /** Every following response waits this long first. */
  setDelayMs(ms: number): void;
  close(): Promise<void>;
}

/** The fake KMS root; fixed for all fakes, like a real KMS whose root key is registered on-chain. */
const KMS_ROOT = new SigningKey(sha256Bytes('fake-dstack-kms-root'));
export const FAKE_KMS_ROOT_ADDRESS = computeAddress(KMS_ROOT);

export const FAKE_QUOTE_BYTES = 5006;
const QUOTE_HEADER_BYTES = 48;
const TD_REPORT_BODY_BYTES = 584;
const REPORT_DATA_BODY_OFFSET = 520;
/** Identifies Intel's QE in quote headers. */
const INTEL_QE_VENDOR_ID = Buffer.from('939a7233f79c4ca9940a0db3957f0607', 'hex');
/** dstack's event type for runtime events extended into RTMR3. */
const DSTACK_RUNTIME_EVENT_TYPE = 0x08000001;

export async function startFakeDstackAgent(options: FakeDstackAgentOptions = {}): Promise<FakeDstackAgent> {
  const appSecret = options.appSecret ?? 'pixeld-test-app';
  const ownDir = options.socketDir === undefined;
  const socketDir = options.socketDir ?? (await mkdtemp(path.join(tmpdir(), 'pixeld-dstack-')));
  const socketPath = path.join(socketDir, 'dstack.sock');

  const app = deriveApp(appSecret);
  const requests: RecordedDstackRequest[] = [];
  const failures: Array<{ rpc: DstackRpc | undefined; message: string }> = [];
  let delayMs = 0;

  const answer = (rpc: string, body: unknown): { status: number; json: unknown } => {
    const failureIndex = failures.findIndex((f) => f.rpc === undefined || f.rpc === rpc);
    if (failureIndex >= 0) {
      const [failure] = failures.splice(failureIndex, 1);
      return { status: 500, json: { error: failure!.message } };
    }
    switch (rpc) {
      case 'GetKey':
        return getKey(app, body);
      case 'GetQuote':
        return getQuote(app, body);
      case 'Info':
        return { status: 200, json: app.info };
      case 'Version':
        return { status: 200, json: { version: '0.5.8', rev: 'fake0000' } };
      default:
        return { status: 404, json: { error: `unknown method ${rpc}` } };
    }
  };

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      void (async () => {
        const rpc = (req.url ?? '/').replace(/^\/(prpc\/)?/, '').replace(/\?.*$/, '');
        let body: unknown;
        let result: { status: number; json: unknown };
        try {
          const text = Buffer.concat(chunks).toString('utf8');
          body = text === '' ? {} : JSON.parse(text);
          result = req.method === 'POST' ? answer(rpc, body) : { status: 405, json: { error: 'POST only' } };
        } catch (err) {
          result = { status: 400, json: { error: `bad request: ${(err as Error).message}` } };
        }
        requests.push({ rpc, body, status: result.status, response: result.json });
        if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
        // Explicit Content-Length: the SDK's unix-socket client parses raw HTTP and cannot read chunked bodies.
        const payload = Buffer.from(JSON.stringify(result.json));
        res.writeHead(result.status, { 'Content-Type': 'application/json', 'Content-Length': payload.length });
        res.end(payload);
      })();
    });
  };

  const servers: Server[] = [];
  const unixServer = createServer(handler);
  await listen(unixServer, socketPath);
  servers.push(unixServer);
  let url: string | undefined;
  if (options.tcp) {
    const tcpServer = createServer(handler);
    await listen(tcpServer, 0, '127.0.0.1');
    servers.push(tcpServer);
    url = `http://127.0.0.1:${(tcpServer.address() as AddressInfo).port}`;
  }

  let closed = false;
  return {
    socketPath,
    url,
    requests,
    appId: app.appId,
    appAddress: computeAddress(app.appKey),
    failNext(rpc, message = 'simulated guest agent failure') {
      failures.push({ rpc, message });
    },
    setDelayMs(ms) {
      delayMs = ms;
    },
    async close() {
      if (closed) return;
      closed = true;
      await Promise.all(
        servers.map(
          (s) =>
            new Promise<void>((resolve) => {
              s.close(() => resolve());
              s.closeAllConnections();
            }),
        ),
      );
      if (ownDir) await rm(socketDir, { recursive: true, force: true });
    },
  };
}

interface FakeApp {
  appSecret: string;
  appId: string;
  appKey: SigningKey;
  /** KMS root's signature over this app's key: signature_chain[1] of every GetKey. */
  kmsSignature: Buffer;
  mrtd: Buffer;
  rtmrs: Buffer[];
  eventLog: FakeEvent[];
  info: Record<string, unknown>;
}

interface FakeEvent {
  imr: number;
  event_type: number;
  digest: string;
  event: string;
  event_payload: string;
}

function deriveApp(appSecret: string): FakeApp {
  const appKey = new SigningKey(hmac(appSecret, 'app-key'));
  const appIdBytes = hmac(appSecret, 'app-id').subarray(0, 20);
  const appId = appIdBytes.toString('hex');
  const kmsSignature = recoverableSignature(
    KMS_ROOT,
    keccak256(concat([toUtf8Bytes('dstack-kms-issued:'), appIdBytes, getBytes(appKey.compressedPublicKey)])),
  );
  const instanceId = hmac(appSecret, 'instance-id').subarray(0, 20).toString('hex');
  const deviceId = hmac(appSecret, 'device-id').toString('hex');
  const appCompose = JSON.stringify({
    manifest_version: 2,
    name: 'pixeld',
    runner: 'docker-compose',
    docker_compose_file: 'services:\n  pixeld:\n    image: pixeld:test\n',
    kms_enabled: true,
    public_logs: false,
    public_sysinfo: true,
    public_tcbinfo: true,
  });
  const composeHash = createHash('sha256').update(appCompose).digest('hex');
  const keyProviderInfo = JSON.stringify({ name: 'kms', id: KMS_ROOT.compressedPublicKey.slice(2) });
  const osImageHash = hmac(appSecret, 'os-image').toString('hex');

  const eventLog: FakeEvent[] = [
    bootEvent(appSecret, 0, 0x80000001, 'td-hob'),
    bootEvent(appSecret, 0, 0x80000001, 'cfv-image'),
    bootEvent(appSecret, 1, 0x80000003, 'kernel'),
    bootEvent(appSecret, 2, 0x0000000d, 'cmdline'),
    runtimeEvent('system-preparing', Buffer.alloc(0)),
    runtimeEvent('app-id', appIdBytes),
    runtimeEvent('compose-hash', Buffer.from(composeHash, 'hex')),
    runtimeEvent('instance-id', Buffer.from(instanceId, 'hex')),
    runtimeEvent('boot-mr-done', Buffer.alloc(0)),
    runtimeEvent('key-provider', Buffer.from(keyProviderInfo)),
    runtimeEvent('system-ready', Buffer.alloc(0)),
  ];
  const rtmrs = [0, 1, 2, 3].map((imr) => replayRtmr(eventLog.filter((e) => e.imr === imr).map((e) => e.digest)));
  const mrtd = createHash('sha384').update(`${appSecret}/mrtd`).digest();
  const mrAggregated = createHash('sha256').update(Buffer.concat([mrtd, ...rtmrs])).digest('hex');

  const tcbInfo = {
    mrtd: mrtd.toString('hex'),
    rtmr0: rtmrs[0]!.toString('hex'),
    rtmr1: rtmrs[1]!.toString('hex'),
    rtmr2: rtmrs[2]!.toString('hex'),
    rtmr3: rtmrs[3]!.toString('hex'),
    mr_aggregated: mrAggregated,
    os_image_hash: osImageHash,
    compose_hash: composeHash,
    device_id: deviceId,
    event_log: eventLog,
    app_compose: appCompose,
  };
  const vmConfig = JSON.stringify({ spec_version: 1, os_image_hash: osImageHash, cpu_count: 4, memory_size: 8589934592 });
  const info = {
    app_id: appId,
    instance_id: instanceId,
    app_cert: '',
    tcb_info: JSON.stringify(tcbInfo, null, 2),
    app_name: 'pixeld',
    device_id: deviceId,
    mr_aggregated: mrAggregated,
    os_image_hash: osImageHash,
    key_provider_info: keyProviderInfo,
    compose_hash: composeHash,
    vm_config: vmConfig,
    cloud_vendor: 'fake',
    cloud_product: 'fake-cvm',
  };
  return { appSecret, appId, appKey, kmsSignature, mrtd, rtmrs, eventLog, info };
}

function getKey(app: FakeApp, body: unknown): { status: number; json: unknown } {
  const { path: keyPath, purpose, algorithm } = body as { path?: unknown; purpose?: unknown; algorithm?: unknown };
  if (typeof keyPath !== 'string' || typeof purpose !== 'string') {
    return { status: 400, json: { error: 'path and purpose must be strings' } };
  }
  if (algorithm !== undefined && algorithm !== 'secp256k1' && algorithm !== 'k256' && algorithm !== '') {
    return { status: 400, json: { error: 'Unsupported algorithm' } };
  }
  // Like the real agent: the key depends on the path only; the purpose goes into the signature.
  const derived = hmac(app.appSecret, `key:${keyPath}`);
  const derivedPubHex = new SigningKey(derived).compressedPublicKey.slice(2);
  const appSignature = recoverableSignature(app.appKey, keccak256(toUtf8Bytes(`${purpose}:${derivedPubHex}`)));
  return {
    status: 200,
    json: { key: derived.toString('hex'), signature_chain: [appSignature.toString('hex'), app.kmsSignature.toString('hex')] },
  };
}

function getQuote(app: FakeApp, body: unknown): { status: number; json: unknown } {
  const reportDataHex = (body as { report_data?: unknown }).report_data;
  if (typeof reportDataHex !== 'string' || reportDataHex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(reportDataHex)) {
    return { status: 400, json: { error: 'report_data must be a hex string' } };
  }
  if (reportDataHex.length > 128) return { status: 400, json: { error: 'Report data is too long' } };
  // The real agent zero-pads on the right to 64 bytes.
  const reportData = Buffer.alloc(64);
  Buffer.from(reportDataHex, 'hex').copy(reportData);
  const quote = buildFakeTdxQuote(reportData, { mrtd: app.mrtd, rtmrs: app.rtmrs, seed: app.appSecret });
  return {
    status: 200,
    json: {
      quote: quote.toString('hex'),
      event_log: JSON.stringify(app.eventLog),
      report_data: reportData.toString('hex'),
      vm_config: app.info.vm_config,
    },
  };
}

/**
 * A TDX v4 quote shape: 48-byte header, 584-byte TD report body (report_data at body offset 520, so quote
 * offset 568), then a length-prefixed, meaningless signature section. It parses like a quote but does not
 * verify.
 */
export function buildFakeTdxQuote(
  reportData: Buffer,
  options: { mrtd?: Buffer; rtmrs?: Buffer[]; seed?: string; totalBytes?: number } = {},
): Buffer {
  const total = options.totalBytes ?? FAKE_QUOTE_BYTES;
  const quote = Buffer.alloc(total);
  quote.writeUInt16LE(4, 0); // version
  quote.writeUInt16LE(2, 2); // attestation key type: ECDSA-256 with P-256
  quote.writeUInt32LE(0x81, 4); // TEE type: TDX
  INTEL_QE_VENDOR_ID.copy(quote, 12);
  const body = QUOTE_HEADER_BYTES;
  // mrtd sits after tee_tcb_svn (16), mrseam (48), mrsignerseam (48), seam/td attributes and xfam (3×8).
  (options.mrtd ?? Buffer.alloc(48, 0x11)).copy(quote, body + 136);
  // rtmr0..3 follow mrtd, mrconfigid, mrowner, mrownerconfig (4×48).
  (options.rtmrs ?? []).forEach((rtmr, i) => rtmr.copy(quote, body + 328 + i * 48));
  reportData.copy(quote, body + REPORT_DATA_BODY_OFFSET);
  const sigStart = QUOTE_HEADER_BYTES + TD_REPORT_BODY_BYTES;
  if (total >= sigStart + 4) {
    quote.writeUInt32LE(total - sigStart - 4, sigStart);
    const filler = createHash('sha512').update(options.seed ?? 'fake-quote').digest();
    for (let i = sigStart + 4; i < total; i++) quote[i] = filler[i % filler.length]!;
  }
  return quote;
}

function bootEvent(appSecret: string, imr: number, eventType: number, name: string): FakeEvent {
  return {
    imr,
    event_type: eventType,
    digest: createHash('sha384').update(`${appSecret}/${name}`).digest('hex'),
    event: '',
    event_payload: Buffer.from(name).toString('hex'),
  };
}

function runtimeEvent(event: string, payload: Buffer): FakeEvent {
  // dstack's runtime event digest: sha384(event_type as u32 LE ‖ ":" ‖ event ‖ ":" ‖ payload).
  const type = Buffer.alloc(4);
  type.writeUInt32LE(DSTACK_RUNTIME_EVENT_TYPE);
  const digest = createHash('sha384')
    .update(Buffer.concat([type, Buffer.from(':'), Buffer.from(event), Buffer.from(':'), payload]))
    .digest('hex');
  return { imr: 3, event_type: DSTACK_RUNTIME_EVENT_TYPE, digest, event, event_payload: payload.toString('hex') };
}

/** RTMR replay as the SDK's replayRtmrs does it, so the quote's RTMRs match its event log. */
function replayRtmr(digests: string[]): Buffer {
  let mr = Buffer.alloc(48);
  for (const digest of digests) {
    mr = createHash('sha384').update(Buffer.concat([mr, Buffer.from(digest, 'hex')])).digest();
  }
  return mr;
}

/** 65 bytes r ‖ s ‖ recovery id (0/1), the layout dstack uses in signature chains. */
function recoverableSignature(key: SigningKey, digest: string): Buffer {
  const sig = key.sign(digest);
  return Buffer.concat([Buffer.from(getBytes(sig.r)), Buffer.from(getBytes(sig.s)), Buffer.from([sig.yParity])]);
}

function hmac(secret: string, label: string): Buffer {
  return createHmac('sha256', secret).update(label).digest();
}

function sha256Bytes(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

function listen(server: Server, target: string | number, host?: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const done = () => {
      server.off('error', reject);
      resolve();
    };
    if (typeof target === 'string') server.listen(target, done);
    else server.listen(target, host, done);
  });
}
