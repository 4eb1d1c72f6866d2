// Sends one signed webhook and classifies the answer. No redirects are followed; the
// SSRF guard runs before the request (`policy`) and again on the address actually
// dialled (the agent's guard, see makeAgent).
import type { Agent } from "undici";
import { request } from "undici";
import { describeNetworkError, parseRetryAfter, readTextCapped } from "../../outbound/http.js";
import { type AddressPolicy, PrivateAddressError } from "../../outbound/ssrf.js";

/**
 * The statuses whose Retry-After is honoured: 429 (slow down) and the gateway answers
 * that mean "back soon". Any other failure retries on the delivery schedule, so a
 * receiver's 500 with `Retry-After: 3000` cannot park a delivery for 50 minutes.
 */
export const RETRY_AFTER_STATUSES: ReadonlySet<number> = new Set([429, 502, 503, 504]);

/** Response bodies kept in last_error are cut to about this many bytes. */
export const ERROR_BODY_BYTES = 1024;

export type WebhookResult =
  | { kind: "delivered"; status: number }
  | { kind: "gone"; status: 410 }
  /** The receiver asked us to slow down (429): no attempt is used. */
  | { kind: "throttled"; status: 429; retryAfterMs: number | null; error: string }
  | { kind: "failed"; status: number | null; retryAfterMs: number | null; error: string }
  /** Refused before sending (a private address): retrying cannot help. */
  | { kind: "refused"; error: string };

export interface SendOptions {
  url: string;
  body: string;
  headers: Record<string, string>;
  timeoutMs: number;
  /** Dials the target; its connect guard refuses what the policy refuses. */
  agent: Agent;
  /** The pre-check: a refused address fails the row before any connection is opened. */
  policy?: AddressPolicy;
}

export async function sendWebhook(options: SendOptions): Promise<WebhookResult> {
  let url: URL;
  try {
    url = new URL(options.url);
  } catch {
    return { kind: "refused", error: `invalid subscription url: ${options.url}` };
  }
  if (options.policy && !options.policy.allowsAll) {
    try {
      await options.policy.check(url);
    } catch (err) {
      if (err instanceof PrivateAddressError) return { kind: "refused", error: err.message };
      return {
        kind: "failed",
        status: null,
        retryAfterMs: null,
        error: `DNS lookup failed: ${describeNetworkError(err)}`,
      };
    }
  }
  const seconds = Math.round(options.timeoutMs / 1000);
  try {
    const res = await request(url, {
      method: "POST",
      dispatcher: options.agent,
      headers: options.headers,
      body: options.body,
      signal: AbortSignal.timeout(options.timeoutMs),
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
    });
    const status = res.statusCode;
    const text = await readTextCapped(res.body, ERROR_BODY_BYTES).catch(() => "");
    if (status >= 200 && status < 300) return { kind: "delivered", status };
    if (status === 410) return { kind: "gone", status: 410 };
    const retryAfterMs = RETRY_AFTER_STATUSES.has(status)
      ? parseRetryAfter(res.headers["retry-after"])
      : null;
    const detail = text.trim() ? `: ${text.trim()}` : "";
    if (status === 429)
      return { kind: "throttled", status, retryAfterMs, error: `HTTP 429${detail}` };
    const what = status < 400 ? `HTTP ${status} (redirects are not followed)` : `HTTP ${status}`;
    return { kind: "failed", status, retryAfterMs, error: `${what}${detail}` };
  } catch (err) {
    const cause = (err as { cause?: unknown }).cause ?? err;
    if (cause instanceof PrivateAddressError || err instanceof PrivateAddressError) {
      return { kind: "refused", error: (cause as Error).message };
    }
    const e = err as { name?: string; code?: string };
    const timedOut =
      e.name === "TimeoutError" ||
      e.name === "AbortError" ||
      e.code === "UND_ERR_HEADERS_TIMEOUT" ||
      e.code === "UND_ERR_BODY_TIMEOUT";
    return {
      kind: "failed",
      status: null,
      retryAfterMs: null,
      error: timedOut
        ? `timed out after ${seconds} s`
        : `connection failed: ${describeNetworkError(err)}`,
    };
  }
}
