// The SSRF guard for webhook URLs: only public unicast addresses, unless
// WEBHOOK_ALLOW_PRIVATE_NETWORKS=true. Checked twice: before the request (a clear error
// for the row) and inside the connect step (the address actually dialled), so a DNS
// answer that changes between the two (rebinding) cannot reach a private network.
import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from "node:dns";
import { isIP } from "node:net";
import ipaddr from "ipaddr.js";

/** Thrown (and recorded as the delivery's last_error) when a target address is not public. */
export class PrivateAddressError extends Error {
  override name = "PrivateAddressError";
  readonly code = "ERR_PRIVATE_ADDRESS";
  constructor(host: string, address: string, range: string) {
    super(
      `refused: ${host} resolves to ${address}, a ${range} address; webhooks only go to public addresses unless WEBHOOK_ALLOW_PRIVATE_NETWORKS=true`,
    );
  }
}

/** ipaddr.js range name of an address ('unicast' means public), IPv4-mapped IPv6 unwrapped. */
export function addressRange(address: string): string {
  try {
    return ipaddr.process(address).range();
  } catch {
    return "invalid";
  }
}

/** Loopback, private, link-local (169.254/16), CGNAT, ULA, multicast, unspecified… all refused. */
export function isPublicAddress(address: string): boolean {
  return addressRange(address) === "unicast";
}

function assertPublic(host: string, address: string) {
  const range = addressRange(address);
  if (range !== "unicast") throw new PrivateAddressError(host, address, range);
}

type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | LookupAddress[],
  family?: number,
) => void;

/**
 * A drop-in for dns.lookup, given to the HTTP agent's connect step: it fails the
 * connection when any resolved address is not public.
 */
export function guardedLookup(
  hostname: string,
  options: LookupOptions,
  callback: LookupCallback,
): void {
  dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
    if (err) return callback(err, []);
    const list = addresses as LookupAddress[];
    try {
      for (const a of list) assertPublic(hostname, a.address);
    } catch (e) {
      return callback(e as NodeJS.ErrnoException, []);
    }
    if (options.all) return callback(null, list);
    const first = list[0];
    if (!first)
      return callback(
        Object.assign(new Error(`no address for ${hostname}`), { code: "ENOTFOUND" }),
        [],
      );
    callback(null, first.address, first.family);
  });
}

/** The pre-check: resolves the URL's host and throws PrivateAddressError if it is not public. */
export async function checkUrlIsPublic(url: URL): Promise<void> {
  const host = url.hostname.replace(/^\[|\]$/g, "");
  if (isIP(host)) {
    assertPublic(host, host);
    return;
  }
  const addresses = await new Promise<LookupAddress[]>((resolve, reject) =>
    dnsLookup(host, { all: true }, (err, list) => (err ? reject(err) : resolve(list))),
  );
  for (const a of addresses) assertPublic(host, a.address);
}
