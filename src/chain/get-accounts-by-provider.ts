import { chainUnavailable } from './errors.js';
import { toServingAccount, type ServingAccount } from './get-account.js';
import type { ChainClient } from './serving-contract.js';

/** The contract pages accounts 50 at a time at most. */
export const ACCOUNTS_PAGE_LIMIT = 50;

export interface GetAccountsByProviderParameters {
  provider: string;
  /** Stop after this many accounts. @default all */
  max?: number;
}

export type GetAccountsByProviderReturnType = ServingAccount[];

/** Every user account with this provider, paging through `getAccountsByProvider(provider, offset, 50)`. */
export async function getAccountsByProvider(
  client: ChainClient,
  params: GetAccountsByProviderParameters,
): Promise<GetAccountsByProviderReturnType> {
  const accounts: ServingAccount[] = [];
  const max = params.max ?? Number.POSITIVE_INFINITY;
  for (let offset = 0; accounts.length < max; offset += ACCOUNTS_PAGE_LIMIT) {
    let page: [Array<Record<string, unknown>>, bigint];
    try {
      page = (await client.serving.getFunction('getAccountsByProvider').staticCall(params.provider, offset, ACCOUNTS_PAGE_LIMIT)) as [
        Array<Record<string, unknown>>,
        bigint,
      ];
    } catch (err) {
      throw chainUnavailable('getAccountsByProvider', err);
    }
    const [rows, total] = page;
    accounts.push(...rows.map(toServingAccount));
    if (rows.length === 0 || BigInt(offset + rows.length) >= total) break;
  }
  return accounts.slice(0, max);
}
