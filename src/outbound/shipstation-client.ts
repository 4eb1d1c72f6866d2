// The ShipStation v1 API as the reactor needs it: createorders for the uploads workload;
// shipment listings (a SHIP_NOTIFY resource_url, the watermark poll) and the webhook
// subscription for the shipments workload. Every answer is classified the same way so a
// workload can decide each row's fate; no credential ever reaches an error text.
import type { Agent } from "undici";
import { request } from "undici";
import { describeNetworkError, header, parseRetryAfter, readTextCapped } from "../outbound/http.js";
import { redactSecrets } from "../outbound/redact.js";
// ShipStation reads offset-less date-times as US Pacific time; the upload side already
// renders an instant that way, and a shipment listing's createDateStart is the same text.
import { fromShipStationTime } from "./shipstation-time.js";

/** Per-call timeout; ShipStation answers a 100-order batch or a 500-shipment page in seconds. */
const CALL_TIMEOUT_MS = 60_000;
/** Used when a 429 carries no reset hint: ShipStation's window is one minute. */
const DEFAULT_RESET_MS = 60_000;
/** A 500-shipment page is a few MB of JSON; anything past this is not a page. */
const OK_BODY_LIMIT = 32 * 1024 * 1024;
/** An error body is only ever shown as an excerpt. */
const ERROR_BODY_LIMIT = 1024;
/** ShipStation's largest page of GET /shipments. */
export const SHIPMENTS_MAX_PAGE_SIZE = 500;

export interface CreateOrderResult {
  orderId?: number;
  orderKey?: string;
  orderNumber?: string;
  success: boolean;
  errorMessage?: string | null;
}

export interface RateHeaders {
  remaining: number | null;
  resetMs: number | null;
}

/** Every way a call can fail, the same for each endpoint. */
export type ShipStationError =
  | { kind: "rate_limited"; status: 429; resetMs: number }
  | { kind: "auth"; status: number; error: string }
  /** Not an answer about what was sent (a wrong base URL, a redirect): nothing sent is at fault. */
  | { kind: "endpoint"; status: number; error: string }
  /** ShipStation refused what was sent (or, with status 0, the client refused to send it). */
  | { kind: "rejected"; status: number; error: string }
  | { kind: "transient"; status: number | null; error: string };

export type CreateOrdersResponse =
  | { kind: "ok"; status: number; results: CreateOrderResult[]; rate: RateHeaders }
  | ShipStationError;

/** A shipment as the shipments workload needs it; other ShipStation fields are dropped. */
/** The text fields of a Shipment (each a string or null). */
export const SHIPMENT_TEXT_FIELDS = [
  "orderKey",
  "orderNumber",
  "createDate",
  "shipDate",
  "trackingNumber",
  "carrierCode",
  "serviceCode",
] as const;

export interface Shipment {
  /** Always a positive safe integer. */
  shipmentId: number;
  orderId: number | null;
  /** Text fields: an empty string counts as missing (null). */
  orderKey: string | null;
  orderNumber: string | null;
  /** ShipStation's createDate as sent: local US Pacific time without an offset, e.g. "2026-11-23T06:51:33.6270000". */
  createDate: string | null;
  /** createDate as an instant (interpreted as America/Los_Angeles), or null when missing/unparseable. */
  createdAt: Date | null;
  /** As sent, e.g. "2026-11-23". */
  shipDate: string | null;
  trackingNumber: string | null;
  carrierCode: string | null;
  serviceCode: string | null;
  voided: boolean;
}

export type ShipmentsPageResponse =
  | {
      kind: "ok";
      status: number;
      shipments: Shipment[];
      /** One readable line per entry that was not a usable shipment (no shipmentId, wrong types). */
      invalid: string[];
      page: number;
      /** 0 when nothing matched. */
      pages: number;
      total: number;
      rate: RateHeaders;
    }
  | ShipStationError;

export interface ShipStationWebhook {
  id: number | null;
  url: string;
  /** ShipStation's HookType, e.g. "SHIP_NOTIFY". */
  event: string;
  active: boolean;
}

export type WebhooksResponse =
  | { kind: "ok"; status: number; webhooks: ShipStationWebhook[] }
  | ShipStationError;

export type SubscribeResponse =
  | { kind: "ok"; status: number; id: number | null }
  | ShipStationError;

export interface ShipStationClient {
  /** Sends orders already serialised (exact JSON of each), in one createorders call. */
  createOrders(orders: readonly string[]): Promise<CreateOrdersResponse>;
  /**
   * GET an absolute URL on ShipStation (a SHIP_NOTIFY resource_url or a listing URL) and
   * read one page of shipments. A URL off ShipStation's origin is refused without a
   * request: kind "rejected", status 0.
   */
  getShipments(url: string): Promise<ShipmentsPageResponse>;
  /**
   * The URL of one page of GET /shipments created at or after `createDateStart`
   * (ShipStation local time text, see toShipStationTime), oldest first, pageSize 500
   * unless given. Throws a RangeError for a page below 1 or a pageSize outside 1-500.
   */
  shipmentsListUrl(query: { createDateStart: string; page: number; pageSize?: number }): string;
  listWebhooks(): Promise<WebhooksResponse>;
  subscribeWebhook(input: {
    targetUrl: string;
    event: "SHIP_NOTIFY";
    friendlyName: string;
  }): Promise<SubscribeResponse>;
}

/**
 * True only when `url` parses and has exactly `baseUrl`'s origin (scheme, host, port)
 * and no userinfo: the guard that keeps a SHIP_NOTIFY resource_url from sending our
 * credentials (or our requests) anywhere but ShipStation.
 */
export function isShipStationUrl(baseUrl: string, url: string): boolean {
  let base: URL;
  let target: URL;
  try {
    base = new URL(baseUrl);
    target = new URL(url);
  } catch {
    return false;
  }
  if (target.username !== "" || target.password !== "") return false;
  if (target.protocol !== "http:" && target.protocol !== "https:") return false;
  return target.origin === base.origin;
}

export { fromShipStationTime, toShipStationTime } from "./shipstation-time.js";

export function makeShipStationClient(options: {
  baseUrl: string;
  apiKey: string;
  apiSecret: string;
  agent: Agent;
  userAgent: string;
}): ShipStationClient {
  const baseUrl = options.baseUrl.replace(/\/+$/, "");
  const auth = `Basic ${Buffer.from(`${options.apiKey}:${options.apiSecret}`).toString("base64")}`;
  const secrets = [options.apiKey, options.apiSecret, auth.slice("Basic ".length)];
  /** A target's text as it may be stored: cut short, with every credential redacted. */
  const excerpt = (text: string) => redactSecrets(text, secrets).slice(0, 1000);
  /** A URL as it may be shown: no userinfo, no credential. */
  const showUrl = (url: string) => excerpt(url.replace(/\/\/[^/@]*@/, "//")).slice(0, 300);
  const origin = URL.canParse(baseUrl) ? new URL(baseUrl).origin : showUrl(baseUrl);

  /**
   * One call, classified. `read` turns a 2xx body's JSON into the caller's answer and
   * throws when the body is not what the endpoint promises (then: transient).
   */
  async function call<T>(
    method: "GET" | "POST",
    url: string,
    body: string | undefined,
    read: (json: unknown, rate: RateHeaders, status: number) => T,
  ): Promise<T | ShipStationError> {
    let res: Awaited<ReturnType<typeof request>>;
    try {
      res = await request(url, {
        method,
        dispatcher: options.agent,
        headers: {
          authorization: auth,
          accept: "application/json",
          "user-agent": options.userAgent,
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        ...(body === undefined ? {} : { body }),
        signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
        headersTimeout: CALL_TIMEOUT_MS,
        bodyTimeout: CALL_TIMEOUT_MS,
      });
    } catch (err) {
      return {
        kind: "transient",
        status: null,
        error: `ShipStation unreachable: ${excerpt(describeNetworkError(err))}`,
      };
    }
    const status = res.statusCode;
    let text: string;
    try {
      text = await readTextCapped(res.body, status < 300 ? OK_BODY_LIMIT : ERROR_BODY_LIMIT);
    } catch (err) {
      return {
        kind: "transient",
        status,
        error: `ShipStation response cut off: ${excerpt(describeNetworkError(err))}`,
      };
    }
    const rate = readRate(res.headers);
    if (status === 429) {
      return { kind: "rate_limited", status, resetMs: rate.resetMs ?? DEFAULT_RESET_MS };
    }
    if (status === 401 || status === 403) {
      return {
        kind: "auth",
        status,
        error: `ShipStation rejected the credentials (HTTP ${status}): check SHIPSTATION_API_KEY and SHIPSTATION_API_SECRET`,
      };
    }
    if (status >= 500 || status === 408) {
      return { kind: "transient", status, error: `ShipStation HTTP ${status}: ${excerpt(text)}` };
    }
    // Only these say something about what was sent; a 404, 405 or 3xx says the request
    // went to the wrong place, and nothing sent should fail for it.
    if (status >= 300 && ![400, 409, 413, 422].includes(status)) {
      return {
        kind: "endpoint",
        status,
        error: `ShipStation answered HTTP ${status} to ${showUrl(url)}: check SHIPSTATION_BASE_URL (${excerpt(text).slice(0, 200)})`,
      };
    }
    if (status >= 300) {
      return { kind: "rejected", status, error: `ShipStation HTTP ${status}: ${excerpt(text)}` };
    }
    try {
      return read(JSON.parse(text), rate, status);
    } catch (err) {
      return {
        kind: "transient",
        status,
        error: `ShipStation HTTP ${status} with an unreadable body (${excerpt((err as Error).message).slice(0, 200)})`,
      };
    }
  }

  return {
    createOrders(orders) {
      return call(
        "POST",
        `${baseUrl}/orders/createorders`,
        `[${orders.join(",")}]`,
        (json, rate, status) => {
          const body = json as { results?: unknown } | null;
          if (!Array.isArray(body?.results)) throw new Error("no results array");
          return { kind: "ok", status, results: body.results as CreateOrderResult[], rate };
        },
      );
    },

    async getShipments(url) {
      if (!isShipStationUrl(baseUrl, url)) {
        return {
          kind: "rejected",
          status: 0,
          error: `refused to fetch ${showUrl(url).slice(0, 200)}: not on ShipStation's origin (${origin}, from SHIPSTATION_BASE_URL), so it was never requested`,
        };
      }
      return call("GET", url, undefined, (json, rate, status) => {
        const body = json as Record<string, unknown> | null;
        if (!body || !Array.isArray(body.shipments)) throw new Error("no shipments array");
        const shipments: Shipment[] = [];
        const invalid: string[] = [];
        body.shipments.forEach((entry: unknown, i: number) => {
          const read = readShipment(entry);
          if (typeof read === "string") {
            invalid.push(excerpt(`shipments[${i}]: ${read}; got ${summarize(entry)}`));
          } else {
            shipments.push(read);
          }
        });
        const count = (v: unknown, fallback: number) =>
          Number.isSafeInteger(v) && (v as number) >= 0 ? (v as number) : fallback;
        const page = count(body.page, 1);
        return {
          kind: "ok",
          status,
          shipments,
          invalid,
          page,
          pages: count(body.pages, page),
          total: count(body.total, body.shipments.length),
          rate,
        };
      });
    },

    shipmentsListUrl({ createDateStart, page, pageSize = SHIPMENTS_MAX_PAGE_SIZE }) {
      if (!Number.isSafeInteger(page) || page < 1) {
        throw new RangeError(`page must be an integer from 1 up (got ${page})`);
      }
      if (!Number.isSafeInteger(pageSize) || pageSize < 1 || pageSize > SHIPMENTS_MAX_PAGE_SIZE) {
        throw new RangeError(
          `pageSize must be an integer from 1 to ${SHIPMENTS_MAX_PAGE_SIZE} (got ${pageSize})`,
        );
      }
      const query = new URLSearchParams({
        createDateStart,
        sortBy: "CreateDate",
        sortDir: "ASC",
        pageSize: String(pageSize),
        page: String(page),
      });
      return `${baseUrl}/shipments?${query}`;
    },

    listWebhooks() {
      return call("GET", `${baseUrl}/webhooks`, undefined, (json, _rate, status) => {
        // Documented as { webhooks: [...] }; a bare array is read the same way.
        const list = Array.isArray(json) ? json : (json as { webhooks?: unknown } | null)?.webhooks;
        if (!Array.isArray(list)) throw new Error("no webhooks array");
        const webhooks = list
          .filter((w): w is Record<string, unknown> => w !== null && typeof w === "object")
          .map((w) => ({
            id: Number.isSafeInteger(w.WebHookID) ? (w.WebHookID as number) : null,
            url: typeof w.Url === "string" ? w.Url : "",
            event: typeof w.HookType === "string" ? w.HookType : "",
            active: w.Active === true,
          }));
        return { kind: "ok", status, webhooks };
      });
    },

    subscribeWebhook({ targetUrl, event, friendlyName }) {
      const body = JSON.stringify({
        target_url: targetUrl,
        event,
        store_id: null,
        friendly_name: friendlyName,
      });
      return call("POST", `${baseUrl}/webhooks/subscribe`, body, (json, _rate, status) => {
        const id = (json as { id?: unknown } | null)?.id;
        return { kind: "ok", status, id: Number.isSafeInteger(id) ? (id as number) : null };
      });
    },
  };
}

/** Optional text: null when absent or empty; undefined when of the wrong type. */
function optionalText(v: unknown): string | null | undefined {
  if (v === null || v === undefined || v === "") return null;
  return typeof v === "string" ? v : undefined;
}

function describeType(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "string"
    ? `"${v.slice(0, 40)}"`
    : typeof v === "object"
      ? "an object"
      : String(v);
}

/** One listing entry as a Shipment, or why it is not one. */
function readShipment(entry: unknown): Shipment | string {
  if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
    return "not a shipment object";
  }
  const e = entry as Record<string, unknown>;
  const problems: string[] = [];
  const id = e.shipmentId;
  if (id === undefined || id === null) problems.push("shipmentId is missing");
  else if (!Number.isSafeInteger(id) || (id as number) < 1) {
    problems.push(`shipmentId must be a positive integer (got ${describeType(id)})`);
  }
  const orderId = e.orderId;
  if (orderId !== undefined && orderId !== null && !Number.isSafeInteger(orderId)) {
    problems.push(`orderId must be an integer or null (got ${describeType(orderId)})`);
  }
  const text: Record<string, string | null> = {};
  for (const field of SHIPMENT_TEXT_FIELDS) {
    const v = optionalText(e[field]);
    if (v === undefined) problems.push(`${field} must be text (got ${describeType(e[field])})`);
    else text[field] = v;
  }
  const voided = e.voided;
  if (voided !== undefined && voided !== null && typeof voided !== "boolean") {
    problems.push(`voided must be true or false (got ${describeType(voided)})`);
  }
  if (problems.length > 0) return problems.join("; ");
  const createDate = text.createDate ?? null;
  return {
    shipmentId: id as number,
    orderId: (orderId as number | null | undefined) ?? null,
    orderKey: text.orderKey ?? null,
    orderNumber: text.orderNumber ?? null,
    createDate,
    createdAt: createDate === null ? null : fromShipStationTime(createDate),
    shipDate: text.shipDate ?? null,
    trackingNumber: text.trackingNumber ?? null,
    carrierCode: text.carrierCode ?? null,
    serviceCode: text.serviceCode ?? null,
    voided: voided === true,
  };
}

/** The identifying part of a bad entry, short enough for a log line. */
function summarize(entry: unknown): string {
  if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
    return describeType(entry);
  }
  const e = entry as Record<string, unknown>;
  const picked = Object.fromEntries(
    ["shipmentId", "orderId", "orderKey", "orderNumber", "trackingNumber"]
      .filter((k) => e[k] !== undefined)
      .map((k) => [k, e[k]]),
  );
  const json = JSON.stringify(Object.keys(picked).length > 0 ? picked : e) ?? "?";
  return json.length > 200 ? `${json.slice(0, 200)}…` : json;
}

function readRate(headers: Record<string, string | string[] | undefined>): RateHeaders {
  const remaining = Number(header(headers, "x-rate-limit-remaining"));
  const reset = Number(header(headers, "x-rate-limit-reset"));
  const retryAfter = parseRetryAfter(headers["retry-after"]);
  return {
    remaining:
      Number.isFinite(remaining) && header(headers, "x-rate-limit-remaining") !== undefined
        ? remaining
        : null,
    resetMs:
      Number.isFinite(reset) && header(headers, "x-rate-limit-reset") !== undefined
        ? reset * 1000
        : retryAfter,
  };
}
