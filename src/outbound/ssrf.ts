// The SSRF guard for webhook URLs, as one policy built from the environment: public
// unicast addresses, plus the networks listed in WEBHOOK_ALLOWED_NETWORKS; everything
// (no guard) with WEBHOOK_ALLOW_PRIVATE_NETWORKS=true. Checked before the request (a
// clear error for the row or the admin request) and again inside the connect step on
// the address actually dialled, so a DNS answer that changes between the two
// (rebinding) cannot reach a private network.
import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from "node:dns";
import { isIP, type LookupFunction } from "node:net";
import ipaddr from "ipaddr.js";
import type { Env } from "../config/env.js";

/** Thrown (and recorded as the delivery's last_error) when a target address is refused. */
export class PrivateAddressError extends Error {
  override name = "PrivateAddressError";
  readonly code = "ERR_PRIVATE_ADDRESS";
  constructor(host: string, address: string, why: string) {
    super(
      `refused: ${host} resolves to ${address}, ${why}; webhooks only go to public addresses and to the networks listed in WEBHOOK_ALLOWED_NETWORKS (WEBHOOK_ALLOW_PRIVATE_NETWORKS=true allows every address)`,
    );
  }
}

/** How long the pre-check's "allowed" on a host holds (see makeAddressPolicy). */
const VERDICT_TTL_MS = 10_000;
/** Hosts kept at most; the list starts again when full. */
const MAX_KEPT = 10_000;

type Address = ipaddr.IPv4 | ipaddr.IPv6;
type Network = [Address, number];

/**
 * Parses an IP address. IPv6 text goes through the WHATWG URL parser first: ipaddr.js
 * reads a dotted tail as IPv4-mapped even without ffff (`::127.0.0.1`, the form
 * getaddrinfo prints for an IPv4-compatible address), the URL parser does not.
 */
function parse(address: string): Address | null {
  try {
    if (!address.includes(":")) return ipaddr.IPv4.parse(address);
    const canonical = new URL(`http://[${address}]/`).hostname.slice(1, -1);
    return ipaddr.IPv6.parse(canonical);
  } catch {
    return null;
  }
}

const v4 = (bytes: number[]) => ipaddr.fromByteArray(bytes.slice(-4)) as ipaddr.IPv4;

/**
 * IPv6 forms that carry an IPv4 address. Those that reach it (IPv4-mapped, NAT64's
 * well-known prefix: how DNS64 gives IPv6-only clusters the IPv4 internet) are judged by
 * the IPv4 address inside. The others are refused whatever they carry: IPv4-compatible
 * (deprecated, RFC 4291), 6to4 (deprecated, RFC 7526), Teredo (a tunnel through a
 * third-party relay), IPv4-translated (RFC 6145) and NAT64's local-use prefix (RFC 8215,
 * translated by a local gateway to anything).
 */
function embeddedIPv4(
  a: ipaddr.IPv6,
):
  | { judged: true; form: "IPv4-mapped" | "NAT64"; inner: ipaddr.IPv4 }
  | { judged: false; why: string }
  | null {
  const p = a.parts;
  const bytes = a.toByteArray();
  const zeros = (from: number, to: number) => p.slice(from, to).every((x) => x === 0);
  if (zeros(0, 5) && p[5] === 0xffff)
    return { judged: true, form: "IPv4-mapped", inner: v4(bytes) };
  if (p[0] === 0x64 && p[1] === 0xff9b && zeros(2, 6))
    return { judged: true, form: "NAT64", inner: v4(bytes) };
  // :: and ::1 are the unspecified and loopback addresses, not IPv4-compatible ones.
  if (zeros(0, 6) && !(p[6] === 0 && (p[7] === 0 || p[7] === 1)))
    return {
      judged: false,
      why: `an IPv4-compatible IPv6 address (embedding ${v4(bytes)}; a deprecated form)`,
    };
  if (p[0] === 0x2002) {
    const inner = ipaddr.fromByteArray(bytes.slice(2, 6));
    return { judged: false, why: `a 6to4 address (embedding ${inner}; a deprecated form)` };
  }
  if (p[0] === 0x2001 && p[1] === 0)
    return { judged: false, why: "a Teredo address (a tunnel through a third-party relay)" };
  if (zeros(0, 4) && p[4] === 0xffff && p[5] === 0)
    return { judged: false, why: `an IPv4-translated address (embedding ${v4(bytes)})` };
  if (p[0] === 0x64 && p[1] === 0xff9b && p[2] === 1)
    return { judged: false, why: "a local-use NAT64 address (translated to any network)" };
  return null;
}

/** "a loopback address", "an unspecified address". */
const described = (range: string) =>
  `${/^(?:[aeio]|un[^i])/i.test(range) ? "an" : "a"} ${range} address`;

/** What the guard decides about one address: null to allow, else why not (for the message). */
export type AddressVerdict = string | null;

export interface AddressPolicy {
  /** WEBHOOK_ALLOW_PRIVATE_NETWORKS=true: every address is allowed and nothing is checked. */
  readonly allowsAll: boolean;
  /** null when `address` (an IP literal) may be reached, else the reason it may not. */
  refusal(address: string): AddressVerdict;
  /** Throws PrivateAddressError unless `host` (a name or an IP literal) may be reached. */
  assertHost(host: string, address?: string): void;
  /** Resolves the URL's host; throws PrivateAddressError if any address is refused. */
  check(url: URL | string): Promise<void>;
  /** A dns.lookup drop-in for an HTTP agent's connect step: fails on a refused address. */
  lookup: LookupFunction;
}

/**
 * The policy: `allowPrivateNetworks` allows everything; otherwise an address is allowed
 * when it is public unicast or inside one of `allowedNetworks` (`address/prefix` strings,
 * as loadEnv returns them).
 */
export function makeAddressPolicy(
  env: Pick<Env, "webhookAllowPrivateNetworks" | "webhookAllowedNetworks">,
): AddressPolicy {
  const networks: Network[] = env.webhookAllowedNetworks.map(
    (cidr) => ipaddr.parseCIDR(cidr) as Network,
  );
  const listed = (a: Address) =>
    networks.some(([net, bits]) => net.kind() === a.kind() && a.match(net, bits));

  function refusal(address: string): AddressVerdict {
    if (env.webhookAllowPrivateNetworks) return null;
    const a = parse(address);
    if (!a) return "not an IP address";
    if (listed(a)) return null;
    if (a.kind() === "ipv6") {
      const embedded = embeddedIPv4(a as ipaddr.IPv6);
      if (embedded && !embedded.judged) return embedded.why;
      if (embedded) {
        const range = embedded.inner.range();
        // A mapped address is dialled as its IPv4 address, so the list applies to it; a
        // NAT64 one is reached by a gateway on its own network: public only.
        const allowed =
          range === "unicast" || (embedded.form === "IPv4-mapped" && listed(embedded.inner));
        if (allowed) return null;
        return `${described(range)} (${embedded.inner} inside ${embedded.form === "NAT64" ? "a NAT64" : "an IPv4-mapped"} IPv6 address)`;
      }
    }
    const range = a.range();
    return range === "unicast" ? null : described(range);
  }

  /**
   * Hosts the pre-check allowed, and until when (VERDICT_TTL_MS): without them every
   * delivery to a named host waited for its own DNS lookup. The connect guard (`lookup`,
   * `assertHost`) still judges the address actually dialled on every new connection, so a
   * name that changes to a private address meanwhile is refused there. Refusals are not
   * kept: a refusal fails a delivery for good, so a name that pointed at a private address
   * for a moment must not go on failing deliveries after it is fixed; and refused hosts
   * are rare, so looking them up each time costs little.
   */
  const allowedUntil = new Map<string, number>();

  function assertHost(host: string, address = host): void {
    const why = refusal(address);
    if (why !== null) throw new PrivateAddressError(host, address, why);
  }

  const lookup = (
    hostname: string,
    options: LookupOptions,
    callback: (
      err: NodeJS.ErrnoException | null,
      address: string | LookupAddress[],
      family?: number,
    ) => void,
  ): void => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, []);
      const list = addresses as LookupAddress[];
      try {
        for (const a of list) assertHost(hostname, a.address);
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
  };

  return {
    allowsAll: env.webhookAllowPrivateNetworks,
    refusal,
    assertHost,
    async check(url) {
      if (env.webhookAllowPrivateNetworks) return;
      const host = (typeof url === "string" ? new URL(url) : url).hostname.replace(/^\[|\]$/g, "");
      // On the monotonic clock: with Date.now, a wall clock stepped back (NTP, a resumed
      // VM) kept a verdict for as long as the step.
      const now = performance.now();
      if ((allowedUntil.get(host) ?? 0) > now) return;
      let refused: [string, string] | null = null;
      if (isIP(host)) {
        const why = refusal(host);
        if (why !== null) refused = [host, why];
      } else {
        const addresses = await new Promise<LookupAddress[]>((resolve, reject) =>
          dnsLookup(host, { all: true }, (err, list) => (err ? reject(err) : resolve(list))),
        );
        for (const a of addresses) {
          const why = refusal(a.address);
          if (why !== null) {
            refused = [a.address, why];
            break;
          }
        }
      }
      if (refused) throw new PrivateAddressError(host, ...refused);
      if (allowedUntil.size >= MAX_KEPT) allowedUntil.clear();
      allowedUntil.set(host, now + VERDICT_TTL_MS);
    },
    lookup: lookup as LookupFunction,
  };
}
