// POST /hooks/shipstation/:token: ShipStation's SHIP_NOTIFY. A wrong token is a 404 (the
// route might as well not exist); a bad body is a 400 naming the field; a resource_url
// outside SHIPSTATION_BASE_URL's origin is refused and never fetched (SSRF). Otherwise
// the notification is stored, which wakes the shipments workload, and answered 200.
import { timingSafeEqual } from "node:crypto";
import type { FastifyInstance } from "fastify";
import type { Pool } from "../../db/pool.js";
import { schemaErrors } from "../../http/validation.js";
import { isShipStationUrl } from "../../outbound/shipstation-client.js";

/** The resource types this hook takes: what the reactor subscribes. */
const RESOURCE_TYPES = ["SHIP_NOTIFY"];

const bodySchema = {
  type: "object",
  required: ["resource_url", "resource_type"],
  properties: {
    resource_url: { type: "string", minLength: 8, maxLength: 2048, pattern: "^[^\\u0000]*$" },
    resource_type: { type: "string", enum: RESOURCE_TYPES },
  },
} as const;

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

function sameToken(expected: Buffer, given: string): boolean {
  const g = Buffer.from(given);
  return g.length === expected.length && timingSafeEqual(g, expected);
}

export function registerShipStationHook(
  server: FastifyInstance,
  options: { pool: Pool; token: string; baseUrl: string },
): void {
  const expected = Buffer.from(options.token);
  void server.register(async (hooks) => {
    hooks.setSchemaErrorFormatter(schemaErrors);
    // The token is checked before the body is read or validated: a caller without it
    // learns nothing, not even that the route exists.
    hooks.addHook("onRequest", async (req, reply) => {
      const { token } = req.params as { token?: string };
      if (!token || !sameToken(expected, token)) {
        return reply.code(404).send({ statusCode: 404, error: "Not Found", message: "not found" });
      }
    });
    hooks.post(
      "/hooks/shipstation/:token",
      { schema: { body: bodySchema } },
      async (req, reply) => {
        const body = req.body as { resource_url: string; resource_type: string };
        if (!isShipStationUrl(options.baseUrl, body.resource_url)) {
          return reply.code(400).send({
            statusCode: 400,
            error: "Bad Request",
            message: `body/resource_url must be on ${new URL(options.baseUrl).origin} (SHIPSTATION_BASE_URL); it was not stored and will not be fetched`,
          });
        }
        const { rows } = await options.pool.query<{ id: string }>(STORE_SQL, [
          body.resource_type,
          body.resource_url,
        ]);
        return { received: true, id: rows[0] ? Number(rows[0].id) : null };
      },
    );
  });
}
