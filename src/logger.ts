// The one pino logger. Secrets are redacted here so no call site has to remember to.
// JSON lines for machines; pino-pretty when stdout is a terminal, for people.
import { createRequire } from "node:module";
import pino from "pino";

/** Paths censored in every log line, wherever they appear in the logged objects. */
export const REDACT_PATHS = [
  "secret",
  "*.secret",
  "previous_secret",
  "*.previous_secret",
  "previousSecret",
  "*.previousSecret",
  "apiSecret",
  "*.apiSecret",
  "apiKey",
  "*.apiKey",
  "authorization",
  "*.authorization",
  "headers.authorization",
  "req.headers.authorization",
  "adminToken",
  "*.adminToken",
  "password",
  "*.password",
];

export type Logger = pino.Logger;

/**
 * The process logger: JSON lines on stdout, or (stdout being a terminal, and no explicit
 * destination) the same records through pino-pretty. Both write synchronously, so the
 * last lines before process.exit are never lost.
 */
export function makeLogger(level: string, destination?: pino.DestinationStream): Logger {
  const options: pino.LoggerOptions = {
    level,
    base: { service: "pg-reactor" },
    redact: { paths: REDACT_PATHS, censor: "[redacted]" },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return pino(
    options,
    destination ??
      (process.stdout.isTTY ? prettyStdout() : pino.destination({ dest: 1, sync: true })),
  );
}

/**
 * pino-pretty, loaded only for a terminal (production never pays for it), in the main
 * thread: a transport would add a worker thread for a developer's console.
 */
function prettyStdout(): pino.DestinationStream {
  const pretty = createRequire(import.meta.url)("pino-pretty") as typeof import("pino-pretty");
  return pretty.build({
    sync: true,
    colorize: true,
    translateTime: "SYS:HH:MM:ss.l",
    ignore: "pid,hostname,service",
  });
}

/**
 * Sends process warnings (deprecations, experimental features, MaxListeners) through the
 * logger as JSON instead of Node's default plain-text line on stderr, which would break
 * a log pipeline that parses every line.
 */
export function logProcessWarnings(logger: Logger): void {
  process.removeAllListeners("warning");
  process.on("warning", (warning: Error & { code?: string }) => {
    logger.warn(
      { warning: { name: warning.name, code: warning.code, message: warning.message } },
      "process warning",
    );
  });
}

/** Removes the password from a connection URL so it can be printed or logged. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "[unparseable url]";
  }
}
