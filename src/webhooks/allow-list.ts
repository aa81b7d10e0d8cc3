import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import { isPublicAddress } from '../images/fetch-remote-image.js';

/**
 * `webhooks.allowPrivate`: the private destinations a provider's own receivers live at. Everything else a
 * webhook URL may reach must be public, as for remote images.
 */

const HOST_NAME = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/i;

/** A CIDR, a single IP address, or a host name. */
export function isAllowListEntry(entry: string): boolean {
  // node's isIP on the address part: ipaddr.js would also take shorthand like 10.0.0/8.
  if (entry.includes('/')) return isIP(entry.slice(0, entry.indexOf('/'))) !== 0 && ipaddr.isValidCIDR(entry);
  return isIP(entry) !== 0 || HOST_NAME.test(entry);
}

export interface WebhookAddressPolicy {
  /** Whether a URL whose host is `host` may be connected to at `address`. */
  allows(host: string, address: string): boolean;
}

/** Public addresses, plus the allow-list's networks and host names (entries checked by isAllowListEntry). */
export function webhookAddressPolicy(allowPrivate: readonly string[]): WebhookAddressPolicy {
  const hosts = new Set(allowPrivate.filter((e) => !e.includes('/') && isIP(e) === 0).map((e) => e.toLowerCase()));
  const networks = allowPrivate
    .filter((e) => e.includes('/') || isIP(e) !== 0)
    .map((e) => (e.includes('/') ? ipaddr.parseCIDR(e) : ([ipaddr.parse(e), isIP(e) === 4 ? 32 : 128] as [ipaddr.IPv4 | ipaddr.IPv6, number])));
  return {
    allows(host, address) {
      if (isPublicAddress(address) || hosts.has(host.toLowerCase())) return true;
      if (isIP(address) === 0) return false;
      const ip = ipaddr.process(address);
      return networks.some(([net, bits]) => ip.kind() === net.kind() && ip.match(net, bits));
    },
  };
}
