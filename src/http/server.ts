// The status server (DESIGN.md §4 HTTP): probes, Prometheus metrics and a JSON status
// page, in the reactor process. Read-only; admin routes live in their own module.
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from "fastify";
import type { App } from "../app.js";
import type { Logger } from "../logger.js";
import { buildHealth } from "./health.js";
import { buildStatus } from "./status.js";

export async function startStatusServer(app: App, logger: Logger): Promise<FastifyInstance> {
  const server: FastifyInstance = Fastify({
    loggerInstance: logger.child({ component: "http" }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 64 * 1024,
  });

  server.get("/health/live", async () => ({ status: "pass" }));

  const health = async (_req: unknown, reply: import("fastify").FastifyReply) => {
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

  await server.listen({ host: app.env.httpHost, port: app.env.httpPort });
  return server;
}
