// POST /hooks/shipstation/:token: ShipStation's SHIP_NOTIFY. A wrong token is answered
// exactly as a route that does not exist; a bad body is a 400 naming the field; a
// resource_url that is not ShipStation's shipments listing is refused and never fetched
// (SSRF, resource-url.ts). Otherwise the notification is stored, which wakes the
// shipments workload, and answered 200.
import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { Pool } from "../../db/pool.js";
import { badRequest } from "../../http/validation.js";
import { shipmentsResourceUrl } from "./resource-url.js";

/** The resource types this hook takes: what the reactor subscribes. */
const RESOURCE_TYPES = ["SHIP_NOTIFY"];
/** Longer than any URL ShipStation sends (it documents 200 characters). */
const RESOURCE_URL_MAX = 2048;

/**
 * Stores the notification unless the same resource is already waiting unclaimed (a
 * repeated webhook): one fetch then serves both.
 */
const STORE_SQL = `
  INSERT INTO shipstation_notifications (resource_type, resource_url)
  SELECT $1, $2
  WHERE NOT EXISTS (
    SELECT 1 FROM shipstation_notifications
    WHERE state = 'pending' AND locked_by IS NULL AND resource_url = $2)
  RETURNING id`;

/**
 * Compares digests, so neither the time taken nor an early exit on length says anything
 * about the token.
 */
function sameToken(expected: Buffer, given: string): boolean {
  return timingSafeEqual(createHash("sha256").update(given).digest(), expected);
}

/**
 * The answer Fastify gives a route that does not exist, word for word: a caller without
 * the token cannot tell the hook is there.
 */
function notFound(req: FastifyRequest, reply: FastifyReply) {
  return reply.code(404).send({
    message: `Route ${req.raw.method}:${req.raw.url} not found`,
    error: "Not Found",
    statusCode: 404,
  });
}

/**
 * The body as stored, or a 400 naming the field. Checked by hand rather than by a route
 * schema: Fastify's validator coerces types (a number or a one-element array would pass
 * as a string), and a notification is either what ShipStation sends or refused. Fields
 * beyond these two are ignored: ShipStation may add some.
 */
function readBody(body: unknown, baseUrl: string): { type: string; url: string } {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw badRequest("body must be a JSON object with resource_url and resource_type");
  }
  const { resource_url: url, resource_type: type } = body as Record<string, unknown>;
  for (const [name, value] of [
    ["resource_url", url],
    ["resource_type", type],
  ] as const) {
    if (value === undefined) throw badRequest(`body must have required property '${name}'`);
  }
  if (typeof url !== "string") throw badRequest("body/resource_url must be a string");
  if (typeof type !== "string") throw badRequest("body/resource_type must be a string");
  if (!RESOURCE_TYPES.includes(type)) {
    throw badRequest(`body/resource_type must be one of ${RESOURCE_TYPES.join(", ")}`);
  }
  if (url.length > RESOURCE_URL_MAX) {
    throw badRequest(`body/resource_url must be at most ${RESOURCE_URL_MAX} characters`);
  }
  if (url.includes("\u0000")) throw badRequest("body/resource_url must not contain NUL characters");
  const checked = shipmentsResourceUrl(baseUrl, url);
  if (!checked.ok) {
    throw badRequest(`body/${checked.error}; it was not stored and will not be fetched`);
  }
  return { type, url };
}

export function registerShipStationHook(
  server: FastifyInstance,
  options: { pool: Pool; token: string; baseUrl: string },
): void {
  const expected = createHash("sha256").update(options.token).digest();
  void server.register(async (hooks) => {
    // The token is checked before the body is read or validated: a caller without it
    // learns nothing, not even that the route exists. Request logging is off server-wide,
    // and nothing here logs the URL, which holds the token.
    hooks.addHook("onRequest", async (req, reply) => {
      const { token } = req.params as { token?: string };
      if (!token || !sameToken(expected, token)) return notFound(req, reply);
    });
    hooks.post("/hooks/shipstation/:token", async (req) => {
      const body = readBody(req.body, options.baseUrl);
      const { rows } = await options.pool.query<{ id: string }>(STORE_SQL, [body.type, body.url]);
      return { received: true, id: rows[0] ? Number(rows[0].id) : null };
    });
  });
}
