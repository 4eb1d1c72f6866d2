// Process entry for `npm start`: validate the environment, answer probes at once, then
// find or start the database, migrate, run the reactor, and shut down gracefully on
// SIGTERM. While the database is unreachable the process stays up (live, not ready) and
// keeps trying: a pod that starts during an outage becomes ready when the outage ends.
import type { FastifyInstance } from "fastify";
import { makeApp } from "./app.js";
import { type Env, EnvError, loadEnv } from "./config/env.js";
import { describeDbError, isTransientDbError, planDatabase } from "./db/connect.js";
import { type EmbeddedPostgres, EmbeddedUnavailableError } from "./db/embedded.js";
import { migrate } from "./db/migrate.js";
import { serverUrl, startStatusServer } from "./http/server.js";
import { type Logger, logProcessWarnings, makeLogger, redactUrl } from "./logger.js";
import { exponentialBackoff, sleep } from "./reactor/backoff.js";
import { VERSION } from "./version.js";

/** Waits between database attempts while starting: 0.25 s doubling to 5 s, for ever. */
const RETRY_BASE_MS = 250;
const RETRY_CAP_MS = 5_000;
/** A second stop signal this soon after the first is the same one delivered twice. */
const DUPLICATE_SIGNAL_MS = 1_000;

/** Set once the environment is valid; from then on even the last words are log records. */
let logger: Logger | null = null;

/** One line for a person, then exit 1: for setups that cannot work as they are. */
function exitWith(message: string): never {
  if (logger) logger.fatal(message);
  else process.stderr.write(`pg-reactor: ${message}\n`);
  process.exit(1);
}

function loadEnvOrExit(): Env {
  try {
    return loadEnv();
  } catch (err) {
    if (err instanceof EnvError) exitWith(err.message);
    throw err;
  }
}

/**
 * Runs `attempt` until it succeeds, waiting out errors that mean "the database is not
 * reachable yet" and setting `setReason` to each; any other error is thrown. Ends early
 * (resolves false) when `signal` aborts.
 */
async function untilReachable(
  what: string,
  attempt: () => Promise<void>,
  setReason: (reason: string) => void,
  log: Logger,
  signal: AbortSignal,
): Promise<boolean> {
  for (let n = 0; !signal.aborted; n++) {
    try {
      await attempt();
      return true;
    } catch (err) {
      if (signal.aborted) return false;
      if (!isTransientDbError(err)) throw err;
      const reason = `database unreachable: ${describeDbError(err)}`;
      setReason(`starting: ${reason}`);
      const retryInMs = exponentialBackoff(n, RETRY_BASE_MS, RETRY_CAP_MS);
      log.warn(
        { err: describeDbError(err), attempt: n + 1, retryInMs },
        `${what}: database unreachable; retrying`,
      );
      await sleep(retryInMs, signal);
    }
  }
  return false;
}

async function main() {
  const env = loadEnvOrExit();
  const log = makeLogger(env.logLevel);
  logger = log;
  logProcessWarnings(log);

  let reason: string | null = "starting";
  const setReason = (next: string) => {
    reason = next;
  };
  const plan = await planDatabase(env);
  const app = makeApp({ env, databaseUrl: plan.url, logger: log });

  let server: FastifyInstance;
  try {
    server = await startStatusServer(app, log, () => reason);
  } catch (err) {
    exitWith(
      `the status server could not listen on ${env.httpHost}:${env.httpPort}: ${(err as Error).message}`,
    );
  }
  log.info(
    {
      version: VERSION,
      instanceId: env.instanceId,
      http: serverUrl(server),
      database: plan.embedded ? "embedded" : redactUrl(plan.url),
    },
    "pg-reactor starting",
  );

  const starting = new AbortController();
  let embedded: EmbeddedPostgres | null = null;
  let appStarted = false;
  let shutdownAt = 0;
  const shutdown = async (signal: string) => {
    if (shutdownAt > 0) {
      // Ctrl-C under `npm start` arrives twice at once (from the terminal and forwarded by
      // npm): only a signal sent after that is a person asking to stop at once.
      if (Date.now() - shutdownAt < DUPLICATE_SIGNAL_MS) return;
      log.warn(`${signal} again: exiting without waiting`);
      process.exit(1);
    }
    shutdownAt = Date.now();
    starting.abort();
    log.info({ signal }, "shutting down: finishing in-flight work");
    try {
      await server.close();
      // During app.start() too: it stops whatever has started. Before it there is nothing
      // to finish (and no database to release leases in).
      if (appStarted) await app.stop();
      await embedded?.stop();
      log.info("stopped cleanly");
      process.exit(0);
    } catch (err) {
      log.error({ err: (err as Error).message }, "shutdown failed");
      process.exit(1);
    }
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));

  if (plan.embedded) {
    setReason("starting: starting embedded Postgres");
    embedded = await plan.start();
    if (starting.signal.aborted) return;
    // The URL to paste into psql (its password is the embedded server's fixed, public one).
    log.info({ psql: `psql ${plan.url}` }, "embedded Postgres is running");
  }

  setReason("starting: migrating the database");
  const migrated = await untilReachable(
    "migrate",
    async () => {
      // Over the direct connection when there is one: migrate holds a session advisory
      // lock, which PgBouncer in transaction mode would not keep on one server connection.
      const { sqlApplied } = await migrate(env.listenDatabaseUrl ?? plan.url);
      log.info({ sqlApplied }, "database schema is current");
      setReason("starting: starting the reactor (settings, LISTEN connection)");
      // Only its first step (reading the settings) can fail; then nothing has started.
      appStarted = true;
      await app.start();
    },
    setReason,
    log,
    starting.signal,
  );
  if (!migrated || starting.signal.aborted) return;
  reason = null;
  log.info({ http: serverUrl(server) }, "pg-reactor ready");
}

main().catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof EmbeddedUnavailableError) exitWith(message);
  exitWith(`failed to start: ${message.split("\n")[0]}`);
});
