// Outbound HTTP helpers shared by every target client: one keep-alive undici Agent per
// target family, hard timeouts, status classes for metrics, and Retry-After parsing.
import { isIP, type LookupFunction } from "node:net";
import type { Readable } from "node:stream";
import { Agent, buildConnector } from "undici";

/** Connecting (TCP and TLS) takes at most this long. */
const CONNECT_TIMEOUT_MS = 10_000;

/**
 * What an agent checks on every connection it opens: `lookup` judges the addresses a
 * name resolves to; `assertHost` judges an IP literal, which Node dials without a
 * lookup. The SSRF guard (outbound/ssrf.ts) is one.
 */
export interface ConnectGuard {
  /** No checks at all (then the agent dials like any other). */
  readonly allowsAll: boolean;
  lookup: LookupFunction;
  /** Throws when `host`, an IP literal, may not be dialled. */
  assertHost(host: string): void;
}

export function makeAgent(
  options: { connections?: number; lookup?: LookupFunction; guard?: ConnectGuard } = {},
): Agent {
  const guard = options.guard?.allowsAll ? undefined : options.guard;
  const lookup = guard?.lookup ?? options.lookup;
  const connectOptions = { timeout: CONNECT_TIMEOUT_MS, ...(lookup ? { lookup } : {}) };
  return new Agent({
    keepAliveTimeout: 30_000,
    keepAliveMaxTimeout: 60_000,
    connections: options.connections ?? 64,
    connect: guard ? guardedConnector(guard, connectOptions) : connectOptions,
    // Redirects are never followed (a 3xx is a failure), so no redirect interceptor.
  });
}

/** undici's own connector, after the guard has judged an IP-literal host. */
function guardedConnector(
  guard: ConnectGuard,
  connectOptions: buildConnector.BuildOptions,
): buildConnector.connector {
  const connect = buildConnector(connectOptions);
  return (options, callback) => {
    const host = options.hostname.replace(/^\[|\]$/g, "");
    if (isIP(host)) {
      try {
        guard.assertHost(host);
      } catch (err) {
        callback(err as Error, null);
        return;
      }
    }
    connect(options, callback);
  };
}

/** '2xx'…'5xx', or 'error' when no response arrived. */
export function statusClass(status: number | null): string {
  return status === null ? "error" : `${Math.floor(status / 100)}xx`;
}

/**
 * Parses Retry-After (delta-seconds or an HTTP date) into ms from now, or null.
 * Callers clamp the result to their own sane range.
 */
export function parseRetryAfter(
  value: string | string[] | undefined,
  now = Date.now(),
): number | null {
  const v = Array.isArray(value) ? value[0] : value;
  if (!v) return null;
  if (/^\s*\d+\s*$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

export function header(headers: Record<string, string | string[] | undefined>, name: string) {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * The first `limit` bytes of a body, and whether there was more; the rest is drained.
 * Read through its events rather than `for await`: an async iterator per response was a
 * measurable share of a webhook's cost, and most answers have no body at all.
 */
export function readCapped(body: Readable, limit: number): Promise<{ head: Buffer; cut: boolean }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let ended = false;
    body.on("data", (chunk: Buffer | Uint8Array) => {
      if (size < limit)
        chunks.push(
          Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).subarray(0, limit - size),
        );
      size += chunk.length;
    });
    body.once("end", () => {
      ended = true;
      resolve({
        head: chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks),
        cut: size > limit,
      });
    });
    body.once("error", reject);
    body.once("close", () => {
      if (!ended) reject(new Error("the response body ended early"));
    });
  });
}

/** Reads at most `limit` bytes of a body as text, discarding the rest. */
export async function readTextCapped(body: Readable, limit: number): Promise<string> {
  return (await readCapped(body, limit)).head.toString("utf8");
}

export function describeNetworkError(err: unknown): string {
  const e = err as { code?: string; message?: string; name?: string };
  if (
    e.name === "TimeoutError" ||
    e.code === "UND_ERR_HEADERS_TIMEOUT" ||
    e.code === "UND_ERR_BODY_TIMEOUT"
  ) {
    return "timed out waiting for the response";
  }
  return `${e.code ? `${e.code}: ` : ""}${e.message ?? String(err)}`;
}
