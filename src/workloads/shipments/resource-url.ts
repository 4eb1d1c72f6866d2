// Which SHIP_NOTIFY resource_url the reactor follows, and where it fetches it. A
// notification only ever names a shipments listing on ShipStation, so that is all it may
// name; and it is always fetched on SHIPSTATION_BASE_URL's own origin, so our
// credentials never go to a host the notification chose (SSRF). The hook checks this
// before storing a notification, and the workload again before fetching one.
import { SHIPMENTS_MAX_PAGE_SIZE } from "../../outbound/shipstation-client.js";

/** The public v1 API: SHIP_NOTIFY names its numbered hosts (ssapi6…) instead of it. */
const PUBLIC_API_HOST = "ssapi.shipstation.com";
/** ShipStation's numbered API hosts, which serve the same accounts as the public one. */
const PUBLIC_API_SHARD = /^ssapi\d{0,3}\.shipstation\.com$/;

export type ResourceUrl = { ok: true; fetchUrl: string } | { ok: false; error: string };

/** Lower case, without trailing slashes: how two API paths are compared. */
const pathKey = (path: string) => path.replace(/\/+$/, "").toLowerCase();

/**
 * The URL to fetch for a SHIP_NOTIFY `resource_url`, or why it is refused. Accepted: an
 * http(s) URL without userinfo, on SHIPSTATION_BASE_URL's origin (or, when that is the
 * public API, on one of its numbered hosts over https), whose path is the shipments
 * listing under the base URL's path. The fetch URL keeps the query and uses the base
 * URL's origin, whatever host the notification named.
 */
export function shipmentsResourceUrl(baseUrl: string, resourceUrl: string): ResourceUrl {
  let base: URL;
  let target: URL;
  try {
    base = new URL(baseUrl);
    target = new URL(resourceUrl);
  } catch {
    return { ok: false, error: "resource_url is not a URL" };
  }
  const where = `${base.origin} (SHIPSTATION_BASE_URL)`;
  if (target.protocol !== "http:" && target.protocol !== "https:") {
    return { ok: false, error: `resource_url must be an http(s) URL on ${where}` };
  }
  if (target.username !== "" || target.password !== "") {
    return { ok: false, error: "resource_url must not carry a user name or password" };
  }
  const shard =
    base.protocol === "https:" &&
    base.port === "" &&
    base.hostname === PUBLIC_API_HOST &&
    target.protocol === "https:" &&
    target.port === "" &&
    PUBLIC_API_SHARD.test(target.hostname);
  if (target.origin !== base.origin && !shard) {
    return { ok: false, error: `resource_url must be on ${where}` };
  }
  // The URL parser has already resolved dot segments (also percent-encoded ones).
  const listing = `${base.pathname.replace(/\/+$/, "")}/shipments`;
  if (pathKey(target.pathname) !== pathKey(listing)) {
    return {
      ok: false,
      error: `resource_url must be ShipStation's shipments listing (${listing}), not ${target.pathname.slice(0, 100)}`,
    };
  }
  return { ok: true, fetchUrl: `${base.origin}${listing}${target.search}` };
}

/**
 * Page `page` of a listing URL, 500 shipments a page. Both are always set, page 1 too:
 * a page or pageSize the notification carried would shift or shrink the walk.
 */
export function listingPage(url: string, page: number): string {
  const u = new URL(url);
  u.searchParams.set("page", String(page));
  u.searchParams.set("pageSize", String(SHIPMENTS_MAX_PAGE_SIZE));
  return u.toString();
}
