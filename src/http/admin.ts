// The admin API (registered only when ADMIN_TOKEN is set): failed rows of each workload
// with retries, and webhook subscriptions. Every body, query and param is validated by
// a JSON schema, so a bad request is a 400 that names the field.
import type { FastifyInstance } from "fastify";
import type { App } from "../app.js";
import { type FailedFilter, makeFailedRows, retryOneRefusal } from "../reactor/failed-rows.js";
import { registerSettingsRoutes } from "./admin-settings.js";
import { makeAdminAuth } from "./auth.js";
import type { ConsoleSessions } from "./console/session.js";
import {
  afterId,
  badRequest,
  id,
  idParams,
  NO_NUL,
  nonFinite,
  notFound,
  schemaErrors,
  text,
} from "./validation.js";

/** Checked again by timestamp(): the format allows years and offsets PostgreSQL refuses. */
const dateTime = { type: "string", format: "date-time", maxLength: 64 } as const;

/** A bulk retry touches at most this many rows unless the body says otherwise. */
const DEFAULT_BULK_RETRY_LIMIT = 10_000;

/** The filters every failed-rows route takes, plus the module's own (`extra`). */
const filterFields = (extra: Record<string, unknown>) => ({
  error_contains: text(200),
  created_after: dateTime,
  created_before: dateTime,
  ...extra,
});

/** The largest `limit` of a bulk retry (and of counting what one would retry). */
const bulkLimit = { type: "integer", minimum: 1, maximum: 100_000 } as const;

const objectOf = (properties: Record<string, unknown>) =>
  ({ type: "object", additionalProperties: false, properties }) as const;

const pageQuery = (extra: Record<string, unknown>) =>
  objectOf({
    limit: { type: "integer", minimum: 1, maximum: 500, default: 50 },
    after_id: afterId,
    ...filterFields(extra),
  });

/** The filter of a listing, counted: how many a bulk retry with it would touch. */
const countQuery = (extra: Record<string, unknown>) =>
  objectOf({ limit: bulkLimit, ...filterFields(extra) });

/** No minProperties: an empty body gets the handler's answer, which lists the filters. */
const retryBody = (extra: Record<string, unknown>) =>
  objectOf({
    all: { type: "boolean", const: true },
    ids: { type: "array", minItems: 1, maxItems: 10_000, items: id },
    limit: bulkLimit,
    ...filterFields(extra),
  });

type Query = Record<string, string | number | boolean | undefined>;

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

export async function registerAdminRoutes(
  server: FastifyInstance,
  app: App,
  sessions: ConsoleSessions,
): Promise<void> {
  const token = app.env.adminToken;
  if (!token) return;
  const { requireAdmin } = makeAdminAuth(token, sessions);

  await server.register(
    async (admin) => {
      admin.addHook("onRequest", requireAdmin);
      // Answers carry failed rows, payloads and, once, a new secret: never kept by a cache.
      admin.addHook("onSend", async (_req, reply) => {
        reply.header("cache-control", "no-store");
      });
      admin.setSchemaErrorFormatter(schemaErrors);
      admin.addHook("preHandler", async (req) => {
        const where = { params: req.params, querystring: req.query, body: req.body };
        for (const [name, value] of Object.entries(where)) {
          const path = nonFinite(value, name);
          if (path) throw badRequest(`${path} must be a finite number`);
        }
      });

      for (const { module } of app.modules) {
        const name = module.rows;
        const filters = Object.entries(module.failedRows.filters);
        const w = {
          rows: makeFailedRows(app.pool, module.queue(app.pool).spec, {
            columns: module.failedRows.columns,
            allowedEquals: Object.fromEntries(filters.map(([key, f]) => [key, f.column])),
            numberColumns: filters.filter(([, f]) => f.number).map(([key]) => key),
            createdColumn: module.failedRows.createdColumn,
          }),
          equals: filters.map(([key]) => key),
          // Free text never carries a NUL (PostgreSQL cannot hold one).
          extraQuery: Object.fromEntries(
            filters.map(([key, f]) => [
              key,
              f.schema.type === "string" ? { ...f.schema, pattern: NO_NUL } : f.schema,
            ]),
          ),
        };
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
        admin.get(
          `/${name}/failed/count`,
          { schema: { querystring: countQuery(w.extraQuery) } },
          async (req) => {
            const q = req.query as Query;
            const cap = (q.limit as number | undefined) ?? DEFAULT_BULK_RETRY_LIMIT;
            // One past the cap tells "exactly the cap" from "more than a retry would take".
            const n = await w.rows.count(toFilter(q, w.equals, "querystring"), cap + 1);
            // What the same filter sent to POST /<rows>/retry with this limit would retry.
            return { count: Math.min(n, cap), capped: n > cap };
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

      registerSettingsRoutes(admin, app);
      for (const { instance } of app.parts) instance.adminRoutes?.(admin);
    },
    { prefix: "/admin" },
  );
}
