// The status server (docs/architecture.md §3, HTTP): probes, Prometheus metrics, a JSON status page
// and, when ADMIN_TOKEN is set, the admin API; in the reactor process.
import { STATUS_CODES } from "node:http";
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  LogController,
} from "fastify";
import type { App } from "../app.js";
import type { Logger } from "../logger.js";
import { VERSION } from "../version.js";
import { registerAdminRoutes } from "./admin.js";
import type { LiveFeed } from "./console/live.js";
import { registerConsoleRoutes } from "./console/routes.js";
import { makeConsoleSessions } from "./console/session.js";
import { buildHealth } from "./health.js";
import { buildStatus } from "./status.js";

/**
 * Why the process is not ready yet ("starting: database unreachable: …"), or null once
 * the app runs. main starts the server before the database answers, so probes see the
 * start instead of a refused connection.
 */
export type StartupReason = () => string | null;

/** Answered while starting: liveness, the metrics registry (it exists), and readiness. */
const SERVED_WHILE_STARTING = new Set(["/health/live", "/metrics", "/health", "/health/ready"]);

/** Postgres errors that mean "your input was refused", answered as 400 with the reason. */
const INPUT_ERROR_CODES = new Set(["23514", "23505", "23502", "22P02", "22007", "22008", "22001"]);

/** The console's live feed of a status server (tests count its consoles). */
export const consoleFeeds = new WeakMap<FastifyInstance, LiveFeed>();

export async function buildStatusServer(
  app: App,
  logger: Logger,
  startupReason: StartupReason = () => null,
): Promise<FastifyInstance> {
  const server: FastifyInstance = Fastify({
    loggerInstance: logger.child({ component: "http" }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 64 * 1024,
    // Reject unknown fields (400 naming them) instead of silently dropping them.
    ajv: { customOptions: { removeAdditional: false, allErrors: false } },
  });

  server.setErrorHandler(
    (
      err: Error & {
        statusCode?: number;
        validation?: unknown;
        code?: string;
        constraint?: string;
      },
      req,
      reply,
    ) => {
      if (err.validation || (err.statusCode && err.statusCode < 500)) {
        const code = err.statusCode ?? 400;
        return reply.code(code).send({
          statusCode: code,
          error: STATUS_CODES[code] ?? "Bad Request",
          message: err.message,
        });
      }
      if (err.code && INPUT_ERROR_CODES.has(err.code)) {
        const message = err.constraint
          ? `refused by constraint ${err.constraint}: ${err.message}`
          : err.message;
        return reply.code(400).send({ statusCode: 400, error: "Bad Request", message });
      }
      // The route pattern, not the URL: a path may hold a secret (the hook's token).
      req.log.error({ err: err.message, route: req.routeOptions.url }, "request failed");
      return reply.code(500).send({
        statusCode: 500,
        error: "Internal Server Error",
        message: "internal error; see the reactor log",
      });
    },
  );

  // Everything else waits for the app: /status and the admin API need a migrated database.
  server.addHook("onRequest", async (req, reply) => {
    const reason = startupReason();
    if (reason === null || SERVED_WHILE_STARTING.has(req.routeOptions.url ?? "")) return;
    return reply
      .code(503)
      .send({ statusCode: 503, error: "Service Unavailable", status: "starting", message: reason });
  });

  server.get("/health/live", async () => ({ status: "pass" }));

  const health = async (_req: unknown, reply: FastifyReply) => {
    const reason = startupReason();
    if (reason !== null) {
      // From memory, never the database: a probe answers at once even while it hangs.
      return reply.code(503).type("application/health+json").send(startingHealth(app, reason));
    }
    const result = await buildHealth(app);
    return reply
      .code(result.status === "fail" ? 503 : 200)
      .type("application/health+json")
      .send(result);
  };
  server.get("/health", health);
  server.get("/health/ready", health);

  server.get("/metrics", async (_req, reply) => {
    return reply.type(app.metrics.registry.contentType).send(await app.metrics.registry.metrics());
  });

  server.get("/status", async () => buildStatus(app));

  // Routes a workload or source brings (the ShipStation hook).
  for (const { instance } of app.parts) instance.routes?.(server);

  // One signing of console sessions for the admin API and the console pages.
  const sessions = app.env.adminToken ? makeConsoleSessions(app.env.adminToken) : null;
  if (sessions) {
    await registerAdminRoutes(server, app, sessions);
    const routes = await registerConsoleRoutes(server, app, sessions);
    if (routes) consoleFeeds.set(server, routes.feed);
  }
  return server;
}

/** /health while the process starts: one failing check that says what it is waiting for. */
function startingHealth(app: App, reason: string) {
  return {
    status: "fail",
    version: VERSION,
    serviceId: app.env.instanceId,
    description: "pg-reactor",
    output: reason,
    checks: {
      "startup:ready": [
        {
          status: "fail",
          componentType: "component",
          time: new Date().toISOString(),
          output: reason,
        },
      ],
    },
  };
}

/** The base URL a listening server answers on (HTTP_PORT=0 picks the port). */
export function serverUrl(server: FastifyInstance): string {
  const address = server.server.address();
  if (!address || typeof address === "string")
    throw new Error("the status server is not listening");
  const host = address.family === "IPv6" ? `[${address.address}]` : address.address;
  return `http://${host}:${address.port}`;
}

export async function startStatusServer(
  app: App,
  logger: Logger,
  startupReason?: StartupReason,
): Promise<FastifyInstance> {
  const server = await buildStatusServer(app, logger, startupReason);
  await server.listen({ host: app.env.httpHost, port: app.env.httpPort });
  return server;
}
