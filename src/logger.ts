// The one pino logger. Secrets are redacted here so no call site has to remember to.
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

export function makeLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "pg-reactor" },
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination,
  );
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
