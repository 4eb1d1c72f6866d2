// Process entry for `npm start`: validate the environment, find or start the database,
// migrate, run the reactor and the status server, and shut down gracefully on SIGTERM.
import type { FastifyInstance } from "fastify";
import { makeApp } from "./app.js";
import { EnvError, loadEnv } from "./config/env.js";
import { resolveDatabase } from "./db/connect.js";
import { migrate } from "./db/migrate.js";
import { serverUrl, startStatusServer } from "./http/server.js";
import { makeLogger, redactUrl } from "./logger.js";
import { exponentialBackoff, sleep } from "./reactor/backoff.js";
import { VERSION } from "./version.js";

/** How long to keep retrying the first migrate while the database comes up. */
const STARTUP_DB_WAIT_MS = 60_000;

async function main() {
  let env: ReturnType<typeof loadEnv>;
  try {
    env = loadEnv();
  } catch (err) {
    if (err instanceof EnvError) {
      process.stderr.write(`pg-reactor: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
  const logger = makeLogger(env.logLevel);
  const { url, embedded } = await resolveDatabase(env);
  if (embedded) {
    // One plain line, for people: where to point psql.
    process.stdout.write(`pg-reactor: embedded Postgres is running; connect with: psql ${url}\n`);
  }

  const deadline = Date.now() + STARTUP_DB_WAIT_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      const { sqlApplied } = await migrate(url);
      logger.info({ sqlApplied }, "database schema is current");
      break;
    } catch (err) {
      const code = (err as { code?: string }).code;
      const transient = code === "ECONNREFUSED" || code === "57P03" || code === "ETIMEDOUT";
      if (!transient || Date.now() > deadline) throw err;
      logger.warn(
        { err: (err as Error).message, database: redactUrl(url) },
        "database not ready; retrying",
      );
      await sleep(exponentialBackoff(attempt, 250, 5_000));
    }
  }

  const app = makeApp({ env, databaseUrl: url, logger });
  await app.start();
  let server: FastifyInstance | null = null;
  try {
    server = await startStatusServer(app, logger);
  } catch (err) {
    logger.error(
      { err: (err as Error).message },
      `status server could not listen on ${env.httpHost}:${env.httpPort}`,
    );
    await app.stop(0);
    await embedded?.stop();
    process.exit(1);
  }
  logger.info(
    {
      version: VERSION,
      instanceId: env.instanceId,
      http: serverUrl(server),
      database: redactUrl(url),
    },
    "pg-reactor ready",
  );

  let shuttingDown = false;
  const shutdown = async (signal: string) => {
    if (shuttingDown) {
      logger.warn(`${signal} again: exiting without waiting`);
      process.exit(1);
    }
    shuttingDown = true;
    logger.info({ signal }, "shutting down: finishing in-flight work");
    try {
      await server?.close();
      await app.stop();
      await embedded?.stop();
      logger.info("stopped cleanly");
      process.exit(0);
    } catch (err) {
      logger.error({ err: (err as Error).message }, "shutdown failed");
      process.exit(1);
    }
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));
}

main().catch((err: unknown) => {
  process.stderr.write(
    `pg-reactor: failed to start: ${err instanceof Error ? err.message : String(err)}\n`,
  );
  process.exit(1);
});
