// The deliveries workload (outbox_events → signed webhooks) as one module, with what only
// it has: webhook subscriptions, managed through the admin API and the CLI, and the
// record of every delivery attempt, read through the admin API.
import type { FastifyInstance } from "fastify";
import { afterId, badRequest, idParams, NO_NUL, notFound } from "../../http/validation.js";
import { makeAgent } from "../../outbound/http.js";
import { type AddressPolicy, makeAddressPolicy, PrivateAddressError } from "../../outbound/ssrf.js";
import type { WorkloadContext, WorkloadModule } from "../module.js";
import { type AttemptViews, makeAttemptViews } from "./attempts.js";
import { deliveryRoutes } from "./delivery-routes.js";
import { DELIVERIES_CHANNEL, makeDeliveriesQueue } from "./queue.js";
import { DELIVERIES_SETTINGS } from "./settings.js";
import {
  makeSubscriptions,
  SUBSCRIPTION_RULES,
  SubscriptionInputError,
  subscriptionInputProblem,
} from "./subscriptions.js";
import { makeDeliveriesWorkload } from "./workload.js";

/**
 * null when webhooks may go to `url`, else why not: the same guard deliveries pass, so a
 * subscription that could never be delivered is refused when it is made.
 */
async function urlRefusal(policy: AddressPolicy, url: string): Promise<string | null> {
  if (!URL.canParse(url)) return "body/url is not a valid URL";
  try {
    await policy.check(url);
    return null;
  } catch (err) {
    if (err instanceof PrivateAddressError) return `body/url ${err.message}`;
    return `body/url host does not resolve: ${(err as Error).message}`;
  }
}

function subscriptionRoutes(admin: FastifyInstance, ctx: WorkloadContext, views: AttemptViews) {
  const urlRefused = (url: string) => urlRefusal(ctx.addressPolicy, url);
  const subs = makeSubscriptions(ctx.pool);
  /** Subscriptions as listed, each with its attempts of the last day (one query for all). */
  const withRecent = async <T extends { id: number }>(items: T[]) => {
    const recent = await views.recentBySubscription(items.map((s) => s.id));
    return items.map((s) => ({ ...s, recent: recent.get(s.id) }));
  };
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
      return { items: await withRecent(page.items), next_after_id: page.nextAfterId };
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
      const refused = await urlRefused(body.url);
      if (refused) throw badRequest(refused);
      const created = await subs.create(body);
      return reply.code(201).send(created);
    },
  );
  admin.get("/subscriptions/:id", { schema: { params: idParams } }, async (req, reply) => {
    const { id } = req.params as { id: number };
    const sub = await subs.get(id);
    return sub ? (await withRecent([sub]))[0] : notFound(reply, `no subscription with id ${id}`);
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
        const refused = await urlRefused(body.url);
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
}

export const deliveriesModule: WorkloadModule<typeof DELIVERIES_SETTINGS> = {
  name: "deliveries",
  channel: DELIVERIES_CHANNEL,
  rows: "deliveries",
  settings: DELIVERIES_SETTINGS,
  queue: makeDeliveriesQueue,
  failedRows: {
    columns: `t.id, t.event_id, t.subscription_id, e.event_type, s.url,
      t.attempts, t.last_status, t.last_error, t.created_at`,
    filters: {
      subscription_id: {
        column: "t.subscription_id",
        schema: { type: "integer", minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
        number: true,
      },
      event_type: {
        column: "e.event_type",
        schema: { type: "string", minLength: 1, maxLength: 200 },
      },
    },
  },
  create: (ctx) => ({
    workload: makeDeliveriesWorkload({
      pool: ctx.pool,
      queue: makeDeliveriesQueue(ctx.pool),
      settings: ctx.settings,
      // The SSRF guard checks the address actually dialled, so DNS rebinding cannot reach a
      // private network; WEBHOOK_ALLOWED_NETWORKS widens it, ..._ALLOW_PRIVATE_NETWORKS lifts it.
      agent: makeAgent({ connections: 64, guard: ctx.addressPolicy }),
      addressPolicy: ctx.addressPolicy,
      logger: ctx.logger,
      metrics: ctx.metrics,
    }),
    adminRoutes: (admin) => {
      const views = makeAttemptViews(ctx.pool);
      subscriptionRoutes(admin, ctx, views);
      deliveryRoutes(admin, views);
    },
  }),
  cli(program, kit) {
    // A refused input is an expected refusal: one line, as the admin API words it.
    const withPool = <R>(fn: Parameters<typeof kit.withPool<R>>[0]) =>
      kit.withPool(async (pool, env) => {
        try {
          return await fn(pool, env);
        } catch (err) {
          if (err instanceof SubscriptionInputError) kit.fail(err.message);
          throw err;
        }
      });
    const subscriptions = program
      .command("subscriptions")
      .description("manage webhook subscriptions");
    subscriptions
      .command("add <url>")
      .description(
        "create a subscription; prints its secret once. Private addresses are refused unless WEBHOOK_ALLOWED_NETWORKS lists them (or WEBHOOK_ALLOW_PRIVATE_NETWORKS=true)",
      )
      .option(
        "--event-types <list>",
        "comma-separated event types or prefix.* (default: all)",
        (v) =>
          v
            .split(",")
            .map((s) => s.trim())
            .filter(Boolean),
      )
      .option("--description <text>")
      .option("--disabled", "create it disabled")
      .action(
        (url: string, opts: { eventTypes?: string[]; description?: string; disabled?: boolean }) =>
          withPool(async (pool, env) => {
            const input = {
              url,
              event_types: opts.eventTypes,
              description: opts.description,
              enabled: !opts.disabled,
            };
            const problem = subscriptionInputProblem(input);
            if (problem) kit.fail(problem);
            try {
              await makeAddressPolicy(env).check(url);
            } catch (err) {
              if (err instanceof PrivateAddressError) throw err;
              kit.fail(`url host does not resolve: ${(err as Error).message}`);
            }
            kit.print(await makeSubscriptions(pool).create(input));
          }),
      );
    subscriptions
      .command("list")
      .description("list subscriptions (secrets are never shown)")
      .action(() =>
        withPool(async (pool) =>
          kit.print((await makeSubscriptions(pool).list({ limit: 1000 })).items),
        ),
      );
    subscriptions
      .command("rotate")
      .description("new secret; the old one keeps signing for the grace period")
      .argument("<id>", "subscription id", kit.positiveInt)
      .option("--grace-hours <n>", "hours the old secret keeps signing", kit.positiveInt, 24)
      .action((id: number, opts: { graceHours: number }) =>
        withPool(async (pool) => {
          const sub = await makeSubscriptions(pool).rotate(id, opts.graceHours);
          if (!sub) kit.fail(`no subscription with id ${id}`);
          kit.print(sub);
        }),
      );
    for (const [name, enabled, what] of [
      ["disable", false, "stop delivering to a subscription"],
      ["enable", true, "deliver to a subscription again (clears why it was disabled)"],
    ] as const) {
      subscriptions
        .command(name)
        .description(what)
        .argument("<id>", "subscription id", kit.positiveInt)
        .action((id: number) =>
          withPool(async (pool) => {
            const sub = await makeSubscriptions(pool).update(id, { enabled });
            if (!sub) kit.fail(`no subscription with id ${id}`);
            kit.print(sub);
          }),
        );
    }
    subscriptions
      .command("delete")
      .description("delete a subscription and its deliveries")
      .argument("<id>", "subscription id", kit.positiveInt)
      .action((id: number) =>
        withPool(async (pool) => {
          if (!(await makeSubscriptions(pool).remove(id)))
            kit.fail(`no subscription with id ${id}`);
          process.stdout.write(`deleted subscription ${id}\n`);
        }),
      );
  },
};
