// Who may use the admin API and the console: a request with `Authorization: Bearer
// <ADMIN_TOKEN>` (scripts, curl), or a browser with a valid console session cookie. A
// cookie arrives with any request the browser makes, so a cookie-authenticated request
// that changes something must also carry the page's CSRF token; a Bearer header is never
// sent by a browser on its own, so it needs none. Tokens are compared in constant time.
import type { FastifyReply, FastifyRequest } from "fastify";
import { type ConsoleSessions, CSRF_HEADER, sameSecret } from "./console/session.js";

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

export type AdminIdentity = "bearer" | "session" | null;

export function makeAdminAuth(token: string, sessions: ConsoleSessions) {
  /** How the request proves it may act: a Bearer token, a session cookie, or neither. */
  function identify(req: FastifyRequest): AdminIdentity {
    const match = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? "");
    if (match?.[1]) return sameSecret(match[1], token) ? "bearer" : null;
    return sessions.fromHeader(req.headers.cookie) ? "session" : null;
  }

  /**
   * Whether a session-authenticated request carries the CSRF token of the cookie that
   * authenticated it (never of another copy sent beside it).
   */
  function csrfOk(req: FastifyRequest): boolean {
    const cookie = sessions.fromHeader(req.headers.cookie);
    const sent = req.headers[CSRF_HEADER];
    return (
      cookie !== undefined && typeof sent === "string" && sameSecret(sent, sessions.csrfFor(cookie))
    );
  }

  async function requireAdmin(req: FastifyRequest, reply: FastifyReply) {
    const who = identify(req);
    if (who === null) {
      return reply.code(401).header("www-authenticate", 'Bearer realm="pg-reactor admin"').send({
        statusCode: 401,
        error: "Unauthorized",
        message:
          "a valid Authorization: Bearer <ADMIN_TOKEN> header (or a console login) is required",
      });
    }
    if (who === "session" && !SAFE_METHODS.has(req.method) && !csrfOk(req)) {
      return reply.code(403).send({
        statusCode: 403,
        error: "Forbidden",
        message: `a console request that changes something needs the page's ${CSRF_HEADER} header (reload the console)`,
      });
    }
  }

  return { identify, csrfOk, requireAdmin };
}
