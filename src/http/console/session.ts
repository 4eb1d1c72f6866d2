// The console's login session, without server-side state: a cookie that says until when
// it is valid, signed with ADMIN_TOKEN (HMAC-SHA256), so every replica behind one load
// balancer accepts it, a changed token ends every session, and the token itself never
// sits in the browser. The CSRF token is derived from the cookie the same way: a page
// gets it in its HTML; a request from another site cannot read it (the cookie is
// SameSite=Strict besides).
import { createHash, createHmac, timingSafeEqual } from "node:crypto";

export const SESSION_COOKIE = "pgr_console";
/** How long a login lasts. */
export const SESSION_SECONDS = 12 * 60 * 60;
/** The header a cookie-authenticated request that changes something must carry. */
export const CSRF_HEADER = "x-csrf-token";

const digest = (s: string) => createHash("sha256").update(s).digest();

/** Equal strings, compared in constant time (both hashed to one length first). */
export function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(digest(a), digest(b));
}

export interface ConsoleSessions {
  /** A fresh cookie value, valid for SESSION_SECONDS from `now`. */
  issue(now?: number): string;
  /** Whether a cookie value is one of ours and not expired. */
  valid(cookie: string | undefined, now?: number): cookie is string;
  /**
   * The first valid session among the Cookie header's copies of SESSION_COOKIE, or
   * undefined. Every copy counts: a sibling host can plant a same-named cookie with a
   * narrower Path, which the browser then sends first (cookie tossing); it must not lock
   * the operator out, and cannot log anyone in (it carries no valid signature).
   */
  fromHeader(header: string | undefined, now?: number): string | undefined;
  /** The CSRF token that goes with a (valid) cookie value. */
  csrfFor(cookie: string): string;
}

export function makeConsoleSessions(adminToken: string): ConsoleSessions {
  const sign = (purpose: string, value: string) =>
    createHmac("sha256", adminToken)
      .update(`pg-reactor console ${purpose}\n${value}`)
      .digest("base64url");
  const sessions: ConsoleSessions = {
    issue(now = Date.now()) {
      const expires = Math.floor(now / 1000) + SESSION_SECONDS;
      return `v1.${expires}.${sign("session", String(expires))}`;
    },
    valid(cookie, now = Date.now()): cookie is string {
      if (!cookie) return false;
      const match = /^v1\.(\d{1,12})\.([A-Za-z0-9_-]{43})$/.exec(cookie);
      if (!match?.[1] || !match[2]) return false;
      if (Number(match[1]) * 1000 <= now) return false;
      return sameSecret(match[2], sign("session", match[1]));
    },
    fromHeader(header, now = Date.now()) {
      return readCookies(header, SESSION_COOKIE).find((value) => sessions.valid(value, now));
    },
    csrfFor(cookie) {
      return sign("csrf", cookie);
    },
  };
  return sessions;
}

/** Every value of one cookie name in a Cookie header, in the order sent. */
export function readCookies(header: string | undefined, name: string): string[] {
  if (!header) return [];
  const values: string[] = [];
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) values.push(part.slice(eq + 1).trim());
  }
  return values;
}

/** One cookie's first value from a Cookie header, or undefined. */
export function readCookie(header: string | undefined, name: string): string | undefined {
  return readCookies(header, name)[0];
}

/** The Set-Cookie value for a session (or, with value null, for ending it). */
export function sessionCookie(value: string | null, secure: boolean): string {
  const attributes = [
    `${SESSION_COOKIE}=${value ?? ""}`,
    "Path=/",
    "HttpOnly",
    "SameSite=Strict",
    `Max-Age=${value === null ? 0 : SESSION_SECONDS}`,
  ];
  if (secure) attributes.push("Secure");
  return attributes.join("; ");
}
