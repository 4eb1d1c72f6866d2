// The admin API (registered only when ADMIN_TOKEN is set): failed rows of each workload
// with retries, and webhook subscriptions. Every body, query and param is validated by
// a JSON schema, so a bad request is a 400 that names the field.
import type { FastifyInstance, FastifyReply, FastifySchemaValidationError } from "fastify";
import type { App } from "../app.js";
import { makeAddressPolicy, PrivateAddressError } from "../outbound/ssrf.js";
import { type FailedFilter, makeFailedRows, retryOneRefusal } from "../reactor/failed-rows.js";
import { makeDeliveriesQueue } from "../workloads/deliveries/queue.js";
import { makeSubscriptions, SUBSCRIPTION_RULES } from "../workloads/deliveries/subscriptions.js";
import { makeOrdersQueue } from "../workloads/uploads/queue.js";
import { makeBearerCheck } from "./auth.js";

/**
 * Every free-text field carries this pattern: PostgreSQL cannot store or compare a NUL
 * character, and would answer 500 with its own text.
 */
const NO_NUL = "^[^\\u0000]*$";

/** Ids are bigint in the database but JSON numbers here: at most 2^53 - 1, exactly. */
const id = { type: "integer", minimum: 1, maximum: Number.MAX_SAFE_INTEGER } as const;
const afterId = { type: "integer", minimum: 0, maximum: Number.MAX_SAFE_INTEGER } as const;
const text = (maxLength: number) =>
  ({ type: "string", minLength: 1, maxLength, pattern: NO_NUL }) as const;
/** Checked again by timestamp(): the format allows years and offsets PostgreSQL refuses. */
const dateTime = { type: "string", format: "date-time", maxLength: 64 } as const;

const idParams = {
  type: "object",
  required: ["id"],
  properties: { id },
} as const;

/** A bulk retry touches at most this many rows unless the body says otherwise. */
const DEFAULT_BULK_RETRY_LIMIT = 10_000;

const pageQuery = (extra: Record<string, unknown>) =>
  ({
    type: "object",
    additionalProperties: false,
    properties: {
      limit: { type: "integer", minimum: 1, maximum: 500, default: 50 },
      after_id: afterId,
      error_contains: text(200),
      created_after: dateTime,
      created_before: dateTime,
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
      ids: { type: "array", minItems: 1, maxItems: 10_000, items: id },
      error_contains: text(200),
      created_after: dateTime,
      created_before: dateTime,
      limit: { type: "integer", minimum: 1, maximum: 100_000 },
      ...extra,
    },
  }) as const;

type Query = Record<string, string | number | boolean | undefined>;

/** A 400 whose message names the field; the status server's error handler sends it. */
function badRequest(message: string): Error {
  return Object.assign(new Error(message), { statusCode: 400 });
}

/**
 * Schema errors as `querystring/field must …`, like Fastify's own, but in words for the
 * NUL rule instead of the pattern that states it.
 */
function schemaErrors(errors: FastifySchemaValidationError[], dataVar: string): Error {
  return new Error(
    errors
      .map((e) => {
        const field = `${dataVar}${e.instancePath}`;
        return e.keyword === "pattern" && e.params.pattern === NO_NUL
          ? `${field} must not contain NUL characters`
          : `${field} ${e.message}`;
      })
      .join(", "),
  );
}

/**
 * The path of the first number in `value` that is not finite, or null. Ajv coerces the
 * text "Infinity" (or "1e400") to Infinity and then skips minimum and maximum, which it
 * checks on finite numbers only; PostgreSQL would refuse it in its own words.
 */
function nonFinite(value: unknown, path: string): string | null {
  if (typeof value === "number") return Number.isFinite(value) ? null : path;
  if (value === null || typeof value !== "object") return null;
  for (const [key, inner] of Object.entries(value)) {
    const found = nonFinite(inner, `${path}/${key}`);
    if (found) return found;
  }
  return null;
}

/**
 * A date-time PostgreSQL accepts, as UTC ISO text: the date-time format also passes year
 * 0000 and offsets beyond ±15:59, which PostgreSQL refuses with its own wording.
 */
function timestamp(value: unknown, field: string): string | undefined {
  if (value === undefined) return undefined;
  const at = new Date(String(value));
  const year = at.getUTCFullYear();
  if (Number.isNaN(at.getTime()) || year < 1 || year > 9999)
    throw badRequest(`${field} must be a date-time from year 0001 to 9999`);
  return at.toISOString();
}

function notFound(reply: FastifyReply, message: string) {
  return reply.code(404).send({ statusCode: 404, error: "Not Found", message });
}

function toFilter(q: Query, equals: string[], where: "querystring" | "body"): FailedFilter {
  const filter: FailedFilter = {
    ids: q.ids as unknown as number[] | undefined,
    errorContains: q.error_contains as string | undefined,
    createdAfter: timestamp(q.created_after, `${where}/created_after`),
    createdBefore: timestamp(q.created_before, `${where}/created_before`),
    equals: {},
  };
  for (const key of equals)
    if (q[key] !== undefined) (filter.equals as Record<string, unknown>)[key] = q[key];
  return filter;
}

export async function registerAdminRoutes(server: FastifyInstance, app: App): Promise<void> {
  const token = app.env.adminToken;
  if (!token) return;
  const requireToken = makeBearerCheck(token);
  const addressPolicy = makeAddressPolicy(app.env);

  /** null when webhooks may go to `url`, else why not (the same guard deliveries pass). */
  async function urlRefusal(url: string): Promise<string | null> {
    if (!URL.canParse(url)) return "body/url is not a valid URL";
    try {
      await addressPolicy.check(url);
      return null;
    } catch (err) {
      if (err instanceof PrivateAddressError) return `body/url ${err.message}`;
      return `body/url host does not resolve: ${(err as Error).message}`;
    }
  }

  await server.register(
    async (admin) => {
      admin.addHook("onRequest", requireToken);
      admin.setSchemaErrorFormatter(schemaErrors);
      admin.addHook("preHandler", async (req) => {
        const where = { params: req.params, querystring: req.query, body: req.body };
        for (const [name, value] of Object.entries(where)) {
          const path = nonFinite(value, name);
          if (path) throw badRequest(`${path} must be a finite number`);
        }
      });

      const workloads = {
        orders: {
          rows: makeFailedRows(app.pool, makeOrdersQueue(app.pool).spec, {
            columns: `t.id, t.order_number, t.order_key, t.status, t.attempts, t.last_error, t.created_at, t.updated_at`,
            allowedEquals: { status: "t.status", order_number: "t.order_number" },
          }),
          equals: ["status", "order_number"],
          extraQuery: { status: text(50), order_number: text(200) },
        },
        deliveries: {
          rows: makeFailedRows(app.pool, makeDeliveriesQueue(app.pool).spec, {
            columns: `t.id, t.event_id, t.subscription_id, e.event_type, s.url,
              t.attempts, t.last_status, t.last_error, t.created_at`,
            allowedEquals: { subscription_id: "t.subscription_id", event_type: "e.event_type" },
            numberColumns: ["subscription_id"],
          }),
          equals: ["subscription_id", "event_type"],
          extraQuery: { subscription_id: id, event_type: text(200) },
        },
      };

      for (const [name, w] of Object.entries(workloads)) {
        admin.get(
          `/${name}/failed`,
          { schema: { querystring: pageQuery(w.extraQuery) } },
          async (req) => {
            const q = req.query as Query;
            const page = await w.rows.list(toFilter(q, w.equals, "querystring"), {
              limit: q.limit as number,
              afterId: q.after_id as number | undefined,
            });
            return { items: page.items, next_after_id: page.nextAfterId };
          },
        );
        admin.post(`/${name}/:id/retry`, { schema: { params: idParams } }, async (req, reply) => {
          const { id } = req.params as { id: number };
          const result = await w.rows.retryOne(id);
          const refusal = retryOneRefusal(name, id, result);
          if (result.result === "not_found") return notFound(reply, refusal ?? "");
          if (result.result === "not_failed") {
            return reply
              .code(409)
              .send({ statusCode: 409, error: "Conflict", message: refusal ?? "" });
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
              toFilter(body, w.equals, "body"),
              body.limit ?? DEFAULT_BULK_RETRY_LIMIT,
            );
            return { retried };
          },
        );
      }

      const subs = makeSubscriptions(app.pool);
      const r = SUBSCRIPTION_RULES;
      const subscriptionFields = {
        url: { type: "string", minLength: 8, maxLength: r.urlMaxLength, pattern: r.urlPattern },
        event_types: {
          type: "array",
          maxItems: r.eventTypesMax,
          uniqueItems: true,
          items: { type: "string", pattern: r.eventTypePattern, maxLength: r.eventTypeMaxLength },
        },
        enabled: { type: "boolean" },
        description: {
          type: ["string", "null"],
          maxLength: r.descriptionMaxLength,
          pattern: NO_NUL,
        },
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
                after_id: afterId,
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
              properties: {
                ...subscriptionFields,
                secret: { type: "string", pattern: r.secretPattern },
              },
            },
          },
        },
        async (req, reply) => {
          const body = req.body as { url: string };
          const refused = await urlRefusal(body.url);
          if (refused) throw badRequest(refused);
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
            const refused = await urlRefusal(body.url);
            if (refused) throw badRequest(refused);
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
