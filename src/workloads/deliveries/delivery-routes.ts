// Admin routes for one delivery (under /admin, behind the admin token): the delivery
// with its event and subscription, and every HTTP attempt made for it.
import type { FastifyInstance } from "fastify";
import { afterId, idParams, notFound } from "../../http/validation.js";
import type { AttemptViews } from "./attempts.js";

export function deliveryRoutes(admin: FastifyInstance, views: AttemptViews) {
  admin.get("/deliveries/:id", { schema: { params: idParams } }, async (req, reply) => {
    const { id } = req.params as { id: number };
    const json = await views.delivery(id);
    if (json === null) return notFound(reply, `no delivery with id ${id}`);
    return reply.type("application/json; charset=utf-8").send(json);
  });

  admin.get(
    "/deliveries/:id/attempts",
    {
      schema: {
        params: idParams,
        querystring: {
          type: "object",
          additionalProperties: false,
          properties: {
            limit: { type: "integer", minimum: 1, maximum: 1000, default: 100 },
            after_id: afterId,
          },
        },
      },
    },
    async (req, reply) => {
      const { id } = req.params as { id: number };
      const q = req.query as { limit: number; after_id?: number };
      const page = await views.attempts(id, { limit: q.limit, afterId: q.after_id });
      if (!page) return notFound(reply, `no delivery with id ${id}`);
      return { items: page.items, next_after_id: page.nextAfterId };
    },
  );
}
