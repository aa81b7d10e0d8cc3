import { readFileSync } from 'node:fs';
import { Contract, FetchRequest, JsonRpcProvider, Network, type InterfaceAbi, type Signer } from 'ethers';

/**
 * The InferenceServing contract as the daemon sees it: the ABI in contracts-abi/ (written from 0G's
 * provider-facing interface) on a JSON-RPC provider pinned to the configured chain id.
 */

interface AbiFile {
  abi: InterfaceAbi;
  settlementStatus: Record<string, number>;
  eip712: { domain: { name: string; version: string }; types: Record<string, Array<{ name: string; type: string }>> };
}

// Read at run time, relative to this file, so it works from src/ (tsx) and dist/ alike.
const abiFile = JSON.parse(readFileSync(new URL('../../contracts-abi/InferenceServing.json', import.meta.url), 'utf8')) as AbiFile;

export const SERVING_ABI = abiFile.abi;
export const SETTLEMENT_STATUS = abiFile.settlementStatus;
export const SETTLEMENT_EIP712 = abiFile.eip712;

export interface ChainConfig {
  rpcUrl: string;
  chainId: number;
  servingAddress: string;
  /** One RPC call gives up after this long. @default 5_000 */
  rpcTimeoutMs: number;
  /**
   * Turns off ethers' reuse of identical requests made within 250 ms: settlement must never act on a
   * receipt or nonce read from before its own transaction, nor register on a stale serviceExists. @default false
   */
  freshReads?: boolean;
}

export interface ChainClient {
  provider: JsonRpcProvider;
  /** Read-only contract; `.connect(signer)` for transactions. */
  serving: Contract;
  chainId: number;
  servingAddress: string;
  close(): void;
}

export function createChainClient(config: ChainConfig): ChainClient {
  const request = new FetchRequest(config.rpcUrl);
  request.timeout = config.rpcTimeoutMs;
  // staticNetwork: the chain id is configured, so ethers never probes (and never retries forever) at start.
  const network = Network.from(config.chainId);
  const provider = new JsonRpcProvider(request, network, {
    staticNetwork: network,
    batchMaxCount: 1,
    ...(config.freshReads ? { cacheTimeout: -1 } : {}),
  });
  const serving = new Contract(config.servingAddress, SERVING_ABI, provider);
  return {
    provider,
    serving,
    chainId: config.chainId,
    servingAddress: config.servingAddress,
    close: () => provider.destroy(),
  };
}

export function servingWithSigner(client: ChainClient, signer: Signer): Contract {
  return client.serving.connect(signer) as Contract;
}
