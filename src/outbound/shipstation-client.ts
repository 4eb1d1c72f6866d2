// The ShipStation v1 API as the uploads workload needs it: one call, createorders, with
// its answer classified so the workload can decide each row's fate.
import type { Agent } from "undici";
import { request } from "undici";
import { describeNetworkError, header, parseRetryAfter, readTextCapped } from "../outbound/http.js";
import { redactSecrets } from "../outbound/redact.js";

/** Per-call timeout; ShipStation answers a 100-order batch in a few seconds. */
const CALL_TIMEOUT_MS = 60_000;
/** Used when a 429 carries no reset hint: ShipStation's window is one minute. */
const DEFAULT_RESET_MS = 60_000;

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

export type CreateOrdersResponse =
  | { kind: "ok"; status: number; results: CreateOrderResult[]; rate: RateHeaders }
  | { kind: "rate_limited"; status: 429; resetMs: number }
  | { kind: "auth"; status: number; error: string }
  /** Not an answer about the orders (a wrong base URL, a redirect): no order is at fault. */
  | { kind: "endpoint"; status: number; error: string }
  | { kind: "rejected"; status: number; error: string }
  | { kind: "transient"; status: number | null; error: string };

export interface ShipStationClient {
  /** Sends orders already serialised (exact JSON of each), in one createorders call. */
  createOrders(orders: readonly string[]): Promise<CreateOrdersResponse>;
}

export function makeShipStationClient(options: {
  baseUrl: string;
  apiKey: string;
  apiSecret: string;
  agent: Agent;
  userAgent: string;
}): ShipStationClient {
  const auth = `Basic ${Buffer.from(`${options.apiKey}:${options.apiSecret}`).toString("base64")}`;
  const url = `${options.baseUrl}/orders/createorders`;
  const secrets = [options.apiKey, options.apiSecret, auth.slice("Basic ".length)];
  /** A target's text as it may be stored: cut short, with every credential redacted. */
  const excerpt = (text: string) => redactSecrets(text, secrets).slice(0, 1000);

  return {
    async createOrders(orders) {
      let res: Awaited<ReturnType<typeof request>>;
      try {
        res = await request(url, {
          method: "POST",
          dispatcher: options.agent,
          headers: {
            authorization: auth,
            "content-type": "application/json",
            "user-agent": options.userAgent,
          },
          body: `[${orders.join(",")}]`,
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
        text = await readTextCapped(res.body, status < 300 ? 32 * 1024 * 1024 : 1024);
      } catch (err) {
        return {
          kind: "transient",
          status,
          error: `ShipStation response cut off: ${describeNetworkError(err)}`,
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
        return {
          kind: "transient",
          status,
          error: `ShipStation HTTP ${status}: ${excerpt(text)}`,
        };
      }
      // Only these say something about the orders sent; a 404, 405 or 3xx says the
      // request went to the wrong place, and no order should fail for it.
      if (status >= 300 && ![400, 409, 413, 422].includes(status)) {
        return {
          kind: "endpoint",
          status,
          error: `ShipStation answered HTTP ${status} to ${url.replace(/\/\/[^/@]*@/, "//")}: check SHIPSTATION_BASE_URL (${excerpt(text).slice(0, 200)})`,
        };
      }
      if (status >= 300) {
        return {
          kind: "rejected",
          status,
          error: `ShipStation HTTP ${status}: ${excerpt(text)}`,
        };
      }
      try {
        const body = JSON.parse(text) as { results?: unknown };
        if (!Array.isArray(body.results)) throw new Error("no results array");
        return { kind: "ok", status, results: body.results as CreateOrderResult[], rate };
      } catch (err) {
        return {
          kind: "transient",
          status,
          error: `ShipStation HTTP ${status} with an unreadable body (${(err as Error).message})`,
        };
      }
    },
  };
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
