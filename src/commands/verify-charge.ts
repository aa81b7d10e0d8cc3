import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { FetchRequest, JsonRpcProvider, Network, isAddress, isHexString } from 'ethers';
import { verifyCharge, type ReceiptInput, type VerifyChargeReturnType } from '../billing/verify-charge.js';
import { CommandError, EXIT_FAILED, EXIT_OK, EXIT_USAGE, processIo, type CommandIo } from './command-io.js';

/**
 * `pixeld verify-charge`: checks one on-chain settlement against the receipts behind it (billing/
 * verify-charge.ts), one line per check. Runs on a user's machine: no config, no database, no TEE.
 *
 * Receipts come from a file (the JSON GET /v1/receipts answers, or an array of its entries or of bare
 * signed receipts) or from the daemon itself, every page of GET /v1/receipts?user=…, authenticated with
 * the credential in the environment variable PIXELD_AUTHORIZATION (a 0G session token `app-sk-…` or an
 * API key; kept off the command line, where other users of the machine could read it).
 */

export const VERIFY_CHARGE_USAGE = `Usage: pixeld verify-charge --rpc <url> --tx <hash> --user <0x…> (--url <daemon> | --receipts <file>) [--json]

Checks a settleFeesWithTEE transaction against the receipts behind it, one line per check:
the transaction and the user's item in it; the service's acknowledged TEE signer at that block; the item's
EIP-712 signature by that signer; each receipt's signature by that signer for this user and provider; the
Merkle root of the receipts' leaves (re-derived from their signed texts) against the item's requestsHash;
the highest receipt sequence number against the item's nonce; totalFee against the sum of their fees.

  --rpc <url>         JSON-RPC endpoint of the chain the transaction was sent on
  --tx <hash>         The settlement transaction
  --user <0x…>        Whose item to check
  --url <daemon>      Fetch the receipts from the daemon's GET /v1/receipts, with the credential in
                      env PIXELD_AUTHORIZATION (a 0G session token app-sk-…, or an API key)
  --receipts <file>   Or read them from a file: the JSON GET /v1/receipts answers, or an array of its
                      entries or of signed receipts
  --json              Print the checks as one JSON object

Exit status: 0 every check passes, 1 a check fails, 2 bad arguments or the receipts could not be read.
`;

export interface VerifyChargeOptions {
  rpc: string;
  tx: string;
  user: string;
  url?: string | undefined;
  receiptsFile?: string | undefined;
  json?: boolean | undefined;
}

export interface VerifyChargeCommandDeps {
  fetch?: typeof fetch;
  /** Pages of GET /v1/receipts asked for. @default 1000 */
  pageSize?: number;
  /** One JSON-RPC call gives up after this long. @default 10_000 */
  rpcTimeoutMs?: number;
}

async function chainIdOf(rpc: string, timeoutMs: number, doFetch: typeof fetch): Promise<bigint> {
  const res = await doFetch(rpc, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'eth_chainId', params: [] }),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const body = (await res.json()) as { result?: string; error?: { message?: string } };
  if (typeof body.result !== 'string') throw new Error(`eth_chainId: ${body.error?.message ?? `HTTP ${res.status}`}`);
  return BigInt(body.result);
}

export async function verifyChargeCommand(
  options: VerifyChargeOptions,
  io: Pick<CommandIo, 'stdout' | 'stderr' | 'env'>,
  deps: VerifyChargeCommandDeps = {},
): Promise<number> {
  let receipts: ReceiptInput[];
  try {
    if (!isHexString(options.tx, 32)) throw new CommandError(`--tx must be a transaction hash (0x and 64 hex digits), not ${options.tx}`, EXIT_USAGE);
    if (!isAddress(options.user)) throw new CommandError(`--user must be an address, not ${options.user}`, EXIT_USAGE);
    if ((options.url === undefined) === (options.receiptsFile === undefined)) throw new CommandError('give either --url or --receipts', EXIT_USAGE);
    receipts =
      options.receiptsFile !== undefined
        ? receiptsFromFile(options.receiptsFile)
        : await receiptsFromDaemon(options.url!, options.user, io.env.PIXELD_AUTHORIZATION, deps);
  } catch (err) {
    if (err instanceof CommandError) {
      io.stderr(`pixeld verify-charge: ${err.message}`);
      return err.exitCode;
    }
    throw err;
  }
  const rpcTimeoutMs = deps.rpcTimeoutMs ?? 10_000;
  let provider: JsonRpcProvider | undefined;
  let result: VerifyChargeReturnType;
  try {
    // The chain id is asked once, with a deadline: ethers left to detect the network retries forever.
    const network = Network.from(await chainIdOf(options.rpc, rpcTimeoutMs, deps.fetch ?? fetch));
    const request = new FetchRequest(options.rpc);
    request.timeout = rpcTimeoutMs;
    provider = new JsonRpcProvider(request, network, { staticNetwork: network, batchMaxCount: 1 });
    result = await verifyCharge({ provider }, { txHash: options.tx, user: options.user, receipts });
  } catch (err) {
    io.stderr(`pixeld verify-charge: the chain could not be read at ${options.rpc}: ${(err as Error).message.split('\n')[0]}`);
    return EXIT_FAILED;
  } finally {
    provider?.destroy();
  }
  if (options.json) {
    io.stdout(
      JSON.stringify({
        ok: result.ok,
        checks: result.checks,
        item: result.item && { ...result.item, nonce: result.item.nonce.toString(), totalFeeWei: result.item.totalFeeWei.toString() },
      }),
    );
  } else {
    for (const c of result.checks) io.stdout(`${c.ok ? '✓' : '✗'} ${c.name}: ${c.detail}`);
    io.stdout(result.ok ? 'charge verified: every check passed' : 'charge NOT verified');
  }
  return result.ok ? EXIT_OK : EXIT_FAILED;
}

/** The JSON GET /v1/receipts answers, or an array of its entries or of bare receipts. */
function receiptsOf(body: unknown, where: string): ReceiptInput[] {
  const list = Array.isArray(body) ? body : (body as { data?: unknown })?.data;
  if (!Array.isArray(list) || !list.every((r) => typeof r === 'object' && r !== null && ('text' in r || 'receipt' in r))) {
    throw new CommandError(`${where} holds no list of receipts (the JSON of GET /v1/receipts, or an array of receipts)`, EXIT_USAGE);
  }
  return list as ReceiptInput[];
}

function receiptsFromFile(file: string): ReceiptInput[] {
  let body: unknown;
  try {
    body = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new CommandError(`--receipts ${file}: ${(err as Error).message}`, EXIT_USAGE);
  }
  return receiptsOf(body, file);
}

async function receiptsFromDaemon(base: string, user: string, credential: string | undefined, deps: VerifyChargeCommandDeps): Promise<ReceiptInput[]> {
  if (!credential) throw new CommandError('--url needs the credential in env PIXELD_AUTHORIZATION (a 0G session token app-sk-…, or an API key)', EXIT_USAGE);
  const authorization = credential.startsWith('Bearer ') ? credential : `Bearer ${credential}`;
  const doFetch = deps.fetch ?? fetch;
  const all: ReceiptInput[] = [];
  let after: string | null = null;
  do {
    const url = new URL('/v1/receipts', base);
    url.searchParams.set('user', user);
    url.searchParams.set('limit', String(deps.pageSize ?? 1000));
    if (after !== null) url.searchParams.set('after', after);
    let res: Response;
    try {
      res = await doFetch(url, { headers: { authorization } });
    } catch (err) {
      throw new CommandError(`GET ${url.origin}${url.pathname}: ${(err as Error).message}`, EXIT_USAGE);
    }
    const body = (await res.json().catch(() => undefined)) as { has_more?: boolean; next_after?: string | null; error?: { message?: string } } | undefined;
    if (res.status !== 200) throw new CommandError(`GET ${url.origin}${url.pathname}: ${res.status} ${body?.error?.message ?? ''}`.trim(), EXIT_USAGE);
    all.push(...receiptsOf(body, `the answer of ${url.origin}${url.pathname}`));
    after = body?.has_more ? (body.next_after ?? null) : null;
  } while (after !== null);
  return all;
}

export async function runVerifyChargeCli(argv: string[], io: CommandIo = processIo()): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    allowPositionals: false,
    options: {
      rpc: { type: 'string' },
      tx: { type: 'string' },
      user: { type: 'string' },
      url: { type: 'string' },
      receipts: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      config: { type: 'string', short: 'c' },
    },
  });
  if (values.help) {
    io.stdout(VERIFY_CHARGE_USAGE.trimEnd());
    return EXIT_OK;
  }
  if (values.rpc === undefined || values.tx === undefined || values.user === undefined) {
    io.stderr(`pixeld verify-charge: --rpc, --tx and --user are required\n\n${VERIFY_CHARGE_USAGE}`);
    return EXIT_USAGE;
  }
  return verifyChargeCommand({ rpc: values.rpc, tx: values.tx, user: values.user, url: values.url, receiptsFile: values.receipts, json: values.json }, io);
}
