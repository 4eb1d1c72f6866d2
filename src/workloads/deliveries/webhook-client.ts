// Sends one signed webhook and classifies the answer. No redirects are followed; the
// SSRF guard runs before the request (`policy`) and again on the address actually
// dialled (the agent's guard, see makeAgent).
import type { Agent } from "undici";
import { request } from "undici";
import { SharedDeadlines } from "../../outbound/deadlines.js";
import { describeNetworkError, parseRetryAfter, readCapped } from "../../outbound/http.js";
import { type AddressPolicy, PrivateAddressError } from "../../outbound/ssrf.js";

/**
 * The statuses whose Retry-After is honoured: 429 (slow down) and the gateway answers
 * that mean "back soon". Any other failure retries on the delivery schedule, so a
 * receiver's 500 with `Retry-After: 3000` cannot park a delivery for 50 minutes.
 */
export const RETRY_AFTER_STATUSES: ReadonlySet<number> = new Set([429, 502, 503, 504]);

/**
 * Response bodies kept (in last_error, and as an attempt's response_excerpt) are cut to
 * at most this many bytes, on a character boundary.
 */
export const ERROR_BODY_BYTES = 1024;
/**
 * Bytes of a response read and redacted, of which the first ERROR_BODY_BYTES are kept. A
 * secret cut off by the end of the read escapes the redaction; whatever the redaction
 * shrank before it, it stays at the end, so a cut body also loses its last
 * SECRET_MARGIN_CHARS once redacted: more than any spelling of a secret (whsec_ + at most
 * 88 base64 characters, each at most 6 once JSON-escaped).
 */
const BODY_READ_BYTES = 4 * 1024;
const SECRET_MARGIN_CHARS = 1024;
/** Each attempt's whole-request deadline (a receiver that trickles its body included). */
const deadlines = new SharedDeadlines();

/**
 * `excerpt` is the start of the answer's body (redacted, no NUL, at most ERROR_BODY_BYTES
 * bytes), absent when the body was empty.
 */
export type WebhookResult =
  | { kind: "delivered"; status: number; excerpt?: string }
  | { kind: "gone"; status: 410; excerpt?: string }
  /** The receiver asked us to slow down (429): no attempt is used. */
  | { kind: "throttled"; status: 429; retryAfterMs: number | null; error: string; excerpt?: string }
  /** `status` is null when no answer came (timeout, connection or DNS failure). */
  | {
      kind: "failed";
      status: number | null;
      retryAfterMs: number | null;
      error: string;
      excerpt?: string;
    }
  /** Refused before sending (a private address): retrying cannot help. */
  | { kind: "refused"; error: string };

/** An answer's status in words: what an attempt that got it failed with. */
export function statusSummary(status: number): string {
  return status >= 300 && status < 400
    ? `HTTP ${status} (redirects are not followed)`
    : `HTTP ${status}`;
}

/** The longest start of `text` that is at most `maxBytes` bytes of UTF-8. */
export function utf8Prefix(text: string, maxBytes: number): string {
  const bytes = Buffer.from(text, "utf8");
  if (bytes.length <= maxBytes) return text;
  let end = maxBytes;
  // Back off continuation bytes (10xxxxxx) to the start of the character that was cut.
  while (end > 0 && ((bytes[end] as number) & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end).toString("utf8");
}

/** What is kept of a body: without NUL (PostgreSQL text cannot hold it), redacted, cut. */
function excerptOf(read: { head: Buffer; cut: boolean }, redact: (text: string) => string): string {
  // Most answers have no body (204): nothing to redact.
  if (read.head.length === 0) return "";
  const text = redact(read.head.toString("utf8").replaceAll("\u0000", ""));
  const whole = read.cut ? text.slice(0, Math.max(0, text.length - SECRET_MARGIN_CHARS)) : text;
  return utf8Prefix(whole, ERROR_BODY_BYTES);
}

export interface SendOptions {
  url: string;
  body: string;
  headers: Record<string, string>;
  timeoutMs: number;
  /** Dials the target; its connect guard refuses what the policy refuses. */
  agent: Agent;
  /** The pre-check: a refused address fails the row before any connection is opened. */
  policy?: AddressPolicy;
  /** Removes secrets from the response body before any of it is kept. */
  redact?: (text: string) => string;
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
      signal: deadlines.signal(options.timeoutMs),
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
    });
    const status = res.statusCode;
    const read = await readCapped(res.body, BODY_READ_BYTES).catch(() => ({
      head: Buffer.alloc(0),
      cut: false,
    }));
    const text = excerptOf(read, options.redact ?? ((t) => t));
    const excerpt = text ? { excerpt: text } : {};
    if (status >= 200 && status < 300) return { kind: "delivered", status, ...excerpt };
    if (status === 410) return { kind: "gone", status: 410, ...excerpt };
    const retryAfterMs = RETRY_AFTER_STATUSES.has(status)
      ? parseRetryAfter(res.headers["retry-after"])
      : null;
    const detail = text.trim() ? `: ${text.trim()}` : "";
    if (status === 429)
      return { kind: "throttled", status, retryAfterMs, error: `HTTP 429${detail}`, ...excerpt };
    return {
      kind: "failed",
      status,
      retryAfterMs,
      error: `${statusSummary(status)}${detail}`,
      ...excerpt,
    };
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
