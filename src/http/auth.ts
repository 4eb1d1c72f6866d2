// Bearer-token check for admin routes, in constant time: both sides are hashed to the
// same length first, so neither the comparison nor its length leaks the token.
import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyReply, FastifyRequest } from "fastify";

const digest = (s: string) => createHash("sha256").update(s).digest();

export function makeBearerCheck(token: string) {
  const expected = digest(token);
  return async function requireToken(req: FastifyRequest, reply: FastifyReply) {
    const header = req.headers.authorization ?? "";
    const match = /^Bearer\s+(.+)$/i.exec(header);
    if (!match?.[1] || !timingSafeEqual(digest(match[1]), expected)) {
      return reply.code(401).header("www-authenticate", 'Bearer realm="pg-reactor admin"').send({
        statusCode: 401,
        error: "Unauthorized",
        message: "a valid Authorization: Bearer <ADMIN_TOKEN> header is required",
      });
    }
  };
}
