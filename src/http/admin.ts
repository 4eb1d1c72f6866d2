// The admin API (registered only when ADMIN_TOKEN is set): failed rows of each workload
// with retries, and webhook subscriptions. Every body, query and param is validated by
// a JSON schema, so a bad request is a 400 that names the field.
import type { FastifyInstance, FastifyReply } from "fastify";
import type { App } from "../app.js";
import { makeDeliveriesQueue } from "../deliveries/queue.js";
import { checkUrlIsPublic, PrivateAddressError } from "../deliveries/ssrf.js";
import { makeSubscriptions } from "../deliveries/subscriptions.js";
import { type FailedFilter, makeFailedRows } from "../reactor/failed-rows.js";
import { makeOrdersQueue } from "../uploads/queue.js";
import { makeBearerCheck } from "./auth.js";

const idParams = {
  type: "object",
  required: ["id"],
  properties: { id: { type: "integer", minimum: 1, maximum: Number.MAX_SAFE_INTEGER } },
} as const;

/** A bulk retry touches at most this many rows unless the body says otherwise. */
const DEFAULT_BULK_RETRY_LIMIT = 10_000;

const EVENT_TYPE = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*(\\.\\*)?$";
const SECRET = "^whsec_[A-Za-z0-9+/]{32,88}={0,2}$";

const pageQuery = (extra: Record<string, unknown>) =>
  ({
    type: "object",
    additionalProperties: false,
    properties: {
      limit: { type: "integer", minimum: 1, maximum: 500, default: 50 },
      after_id: { type: "integer", minimum: 0 },
      error_contains: { type: "string", minLength: 1, maxLength: 200 },
      created_after: { type: "string", format: "date-time" },
      created_before: { type: "string", format: "date-time" },
      ...extra,
    },
  }) as const;

const retryBody = (extra: Record<string, unknown>) =>
  ({
    type: "object",
    additionalProperties: false,
    minProperties: 1,
    properties: {
      all: { type: "boolean", const: true },
      ids: { type: "array", minItems: 1, maxItems: 10_000, items: { type: "integer", minimum: 1 } },
      error_contains: { type: "string", minLength: 1, maxLength: 200 },
      created_after: { type: "string", format: "date-time" },
      created_before: { type: "string", format: "date-time" },
      limit: { type: "integer", minimum: 1, maximum: 100_000 },
      ...extra,
    },
  }) as const;

type Query = Record<string, string | number | boolean | undefined>;

function notFound(reply: FastifyReply, message: string) {
  return reply.code(404).send({ statusCode: 404, error: "Not Found", message });
}

function toFilter(q: Query, equals: string[]): FailedFilter {
  const filter: FailedFilter = {
    ids: q.ids as unknown as number[] | undefined,
    errorContains: q.error_contains as string | undefined,
    createdAfter: q.created_after as string | undefined,
    createdBefore: q.created_before as string | undefined,
    equals: {},
  };
  for (const key of equals)
    if (q[key] !== undefined) (filter.equals as Record<string, unknown>)[key] = q[key];
  return filter;
}

async function assertPublicUrl(app: App, url: string) {
  if (app.env.webhookAllowPrivateNetworks) return null;
  try {
    await checkUrlIsPublic(new URL(url));
    return null;
  } catch (err) {
    if (err instanceof PrivateAddressError) return err.message;
    return `url host does not resolve: ${(err as Error).message}`;
  }
}

export async function registerAdminRoutes(server: FastifyInstance, app: App): Promise<void> {
  const token = app.env.adminToken;
  if (!token) return;
  const requireToken = makeBearerCheck(token);

  await server.register(
    async (admin) => {
      admin.addHook("onRequest", requireToken);

      const workloads = {
        orders: {
          rows: makeFailedRows(app.pool, makeOrdersQueue(app.pool).spec, {
            columns: `t.id, t.order_number, t.order_key, t.status, t.attempts, t.last_error, t.created_at, t.updated_at`,
            allowedEquals: { status: "t.status", order_number: "t.order_number" },
          }),
          equals: ["status", "order_number"],
          extraQuery: {
            status: { type: "string", maxLength: 50 },
            order_number: { type: "string", maxLength: 200 },
          },
        },
        deliveries: {
          rows: makeFailedRows(app.pool, makeDeliveriesQueue(app.pool).spec, {
            columns: `t.id, t.event_id, t.subscription_id::int AS subscription_id, e.event_type, s.url,
              t.attempts, t.last_status, t.last_error, t.created_at`,
            allowedEquals: { subscription_id: "t.subscription_id", event_type: "e.event_type" },
          }),
          equals: ["subscription_id", "event_type"],
          extraQuery: {
            subscription_id: { type: "integer", minimum: 1 },
            event_type: { type: "string", maxLength: 200 },
          },
        },
      };

      for (const [name, w] of Object.entries(workloads)) {
        admin.get(
          `/${name}/failed`,
          { schema: { querystring: pageQuery(w.extraQuery) } },
          async (req) => {
            const q = req.query as Query;
            const page = await w.rows.list(toFilter(q, w.equals), {
              limit: q.limit as number,
              afterId: q.after_id as number | undefined,
            });
            return { items: page.items, next_after_id: page.nextAfterId };
          },
        );
        admin.post(`/${name}/:id/retry`, { schema: { params: idParams } }, async (req, reply) => {
          const { id } = req.params as { id: number };
          const result = await w.rows.retryOne(id);
          if (result === "not_found") return notFound(reply, `no ${name} row with id ${id}`);
          if (result === "not_failed") {
            return reply.code(409).send({
              statusCode: 409,
              error: "Conflict",
              message: `${name} row ${id} is not failed; only failed rows can be retried`,
            });
          }
          return { id, retried: true };
        });
        const filterKeys = [
          "all",
          "ids",
          "error_contains",
          "created_after",
          "created_before",
          ...w.equals,
        ];
        admin.post(
          `/${name}/retry`,
          { schema: { body: retryBody(w.extraQuery) } },
          async (req, reply) => {
            const body = req.body as Query & { limit?: number };
            // A bulk retry must say what it retries; {"all": true} is the explicit "everything".
            if (!filterKeys.some((k) => body[k] !== undefined)) {
              return reply.code(400).send({
                statusCode: 400,
                error: "Bad Request",
                message: `body needs a filter: one of ${filterKeys.join(", ")}`,
              });
            }
            const retried = await w.rows.retryMatching(
              toFilter(body, w.equals),
              body.limit ?? DEFAULT_BULK_RETRY_LIMIT,
            );
            return { retried };
          },
        );
      }

      const subs = makeSubscriptions(app.pool);
      const subscriptionFields = {
        url: {
          type: "string",
          minLength: 8,
          maxLength: 2048,
          pattern: "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s/?#]+",
        },
        event_types: {
          type: "array",
          maxItems: 100,
          uniqueItems: true,
          items: { type: "string", pattern: EVENT_TYPE, maxLength: 200 },
        },
        enabled: { type: "boolean" },
        description: { type: ["string", "null"], maxLength: 500 },
      } as const;

      admin.get(
        "/subscriptions",
        {
          schema: {
            querystring: {
              type: "object",
              additionalProperties: false,
              properties: {
                limit: { type: "integer", minimum: 1, maximum: 500, default: 100 },
                after_id: { type: "integer", minimum: 0 },
                enabled: { type: "boolean" },
              },
            },
          },
        },
        async (req) => {
          const q = req.query as { limit: number; after_id?: number; enabled?: boolean };
          const page = await subs.list({ limit: q.limit, afterId: q.after_id, enabled: q.enabled });
          return { items: page.items, next_after_id: page.nextAfterId };
        },
      );
      admin.post(
        "/subscriptions",
        {
          schema: {
            body: {
              type: "object",
              additionalProperties: false,
              required: ["url"],
              properties: { ...subscriptionFields, secret: { type: "string", pattern: SECRET } },
            },
          },
        },
        async (req, reply) => {
          const body = req.body as { url: string };
          const refused = await assertPublicUrl(app, body.url);
          if (refused)
            return reply
              .code(400)
              .send({ statusCode: 400, error: "Bad Request", message: `body/url ${refused}` });
          const created = await subs.create(body);
          return reply.code(201).send(created);
        },
      );
      admin.get("/subscriptions/:id", { schema: { params: idParams } }, async (req, reply) => {
        const { id } = req.params as { id: number };
        const sub = await subs.get(id);
        return sub ?? notFound(reply, `no subscription with id ${id}`);
      });
      admin.patch(
        "/subscriptions/:id",
        {
          schema: {
            params: idParams,
            body: {
              type: "object",
              additionalProperties: false,
              minProperties: 1,
              properties: subscriptionFields,
            },
          },
        },
        async (req, reply) => {
          const { id } = req.params as { id: number };
          const body = req.body as { url?: string };
          if (body.url) {
            const refused = await assertPublicUrl(app, body.url);
            if (refused)
              return reply
                .code(400)
                .send({ statusCode: 400, error: "Bad Request", message: `body/url ${refused}` });
          }
          const sub = await subs.update(id, body);
          return sub ?? notFound(reply, `no subscription with id ${id}`);
        },
      );
      admin.delete("/subscriptions/:id", { schema: { params: idParams } }, async (req, reply) => {
        const { id } = req.params as { id: number };
        if (!(await subs.remove(id))) return notFound(reply, `no subscription with id ${id}`);
        return reply.code(204).send();
      });
      admin.post(
        "/subscriptions/:id/rotate",
        {
          schema: {
            params: idParams,
            body: {
              type: ["object", "null"],
              additionalProperties: false,
              properties: { grace_hours: { type: "integer", minimum: 0, maximum: 720 } },
            },
          },
        },
        async (req, reply) => {
          const { id } = req.params as { id: number };
          const body = (req.body ?? {}) as { grace_hours?: number };
          const sub = await subs.rotate(id, body.grace_hours);
          return sub ?? notFound(reply, `no subscription with id ${id}`);
        },
      );
    },
    { prefix: "/admin" },
  );
}
