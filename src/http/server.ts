// The status server (DESIGN.md §4 HTTP): probes, Prometheus metrics, a JSON status page
// and, when ADMIN_TOKEN is set, the admin API; in the reactor process.
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  LogController,
} from "fastify";
import type { App } from "../app.js";
import type { Logger } from "../logger.js";
import { registerAdminRoutes } from "./admin.js";
import { buildHealth } from "./health.js";
import { buildStatus } from "./status.js";

/** Postgres errors that mean "your input was refused", answered as 400 with the reason. */
const INPUT_ERROR_CODES = new Set(["23514", "23505", "23502", "22P02", "22007", "22008", "22001"]);

export async function buildStatusServer(app: App, logger: Logger): Promise<FastifyInstance> {
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
        return reply
          .code(err.statusCode ?? 400)
          .send({ statusCode: err.statusCode ?? 400, error: "Bad Request", message: err.message });
      }
      if (err.code && INPUT_ERROR_CODES.has(err.code)) {
        const message = err.constraint
          ? `refused by constraint ${err.constraint}: ${err.message}`
          : err.message;
        return reply.code(400).send({ statusCode: 400, error: "Bad Request", message });
      }
      req.log.error({ err: err.message, url: req.url }, "request failed");
      return reply.code(500).send({
        statusCode: 500,
        error: "Internal Server Error",
        message: "internal error; see the reactor log",
      });
    },
  );

  server.get("/health/live", async () => ({ status: "pass" }));

  const health = async (_req: unknown, reply: FastifyReply) => {
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

  await registerAdminRoutes(server, app);
  return server;
}

/** The base URL a listening server answers on (HTTP_PORT=0 picks the port). */
export function serverUrl(server: FastifyInstance): string {
  const address = server.server.address();
  if (!address || typeof address === "string")
    throw new Error("the status server is not listening");
  const host = address.family === "IPv6" ? `[${address.address}]` : address.address;
  return `http://${host}:${address.port}`;
}

export async function startStatusServer(app: App, logger: Logger): Promise<FastifyInstance> {
  const server = await buildStatusServer(app, logger);
  await server.listen({ host: app.env.httpHost, port: app.env.httpPort });
  return server;
}
