// Resolves the database for `npm start` and the CLI: DATABASE_URL, or embedded Postgres
// in the gitignored .pg-reactor/ folder at the project root. Also says which connection
// errors are worth waiting out (the server is down or starting) and which are not.
import { fileURLToPath } from "node:url";
import pg from "pg";
import type { Env } from "../config/env.js";
import {
  type EmbeddedPostgres,
  findRunningEmbedded,
  planEmbeddedPostgres,
  startEmbeddedPostgres,
} from "./embedded.js";

export const EMBEDDED_DIR = fileURLToPath(new URL("../../.pg-reactor", import.meta.url));

const EMBEDDED_DATABASE = "pg_reactor";

/** Connect timeout of every connection opened outside the pool (migrate, CLI, listener). */
export const CONNECT_TIMEOUT_MS = 5_000;

/**
 * DATABASE_URL; else the embedded server `npm start` already runs; else a newly started
 * embedded server (returned so the caller stops it).
 */
export async function resolveDatabase(
  env: Env,
): Promise<{ url: string; embedded: EmbeddedPostgres | null }> {
  if (env.databaseUrl) return { url: env.databaseUrl, embedded: null };
  const running = await findRunningEmbedded(EMBEDDED_DIR, EMBEDDED_DATABASE);
  if (running) return { url: running, embedded: null };
  const embedded = await startEmbeddedPostgres({
    dir: EMBEDDED_DIR,
    persistent: true,
    database: EMBEDDED_DATABASE,
  });
  return { url: embedded.url, embedded };
}

export interface DatabasePlan {
  url: string;
  /** True when start() launches embedded Postgres (so the URL answers only after it). */
  embedded: boolean;
  /** Starts the embedded server when there is one to start; the caller stops it. */
  start(): Promise<EmbeddedPostgres | null>;
}

/**
 * Like resolveDatabase, but returns the URL before anything is started, so `npm start`
 * can answer probes while embedded Postgres initialises.
 */
export async function planDatabase(env: Env): Promise<DatabasePlan> {
  const ready = (url: string): DatabasePlan => ({ url, embedded: false, start: async () => null });
  if (env.databaseUrl) return ready(env.databaseUrl);
  const running = await findRunningEmbedded(EMBEDDED_DIR, EMBEDDED_DATABASE);
  if (running) return ready(running);
  const planned = await planEmbeddedPostgres({
    dir: EMBEDDED_DIR,
    persistent: true,
    database: EMBEDDED_DATABASE,
  });
  return { url: planned.url, embedded: true, start: planned.start };
}

/**
 * SQLSTATEs that mean "not now": connection exceptions (08), insufficient resources (53),
 * shutting down or starting (57P01-57P04), and lock_not_available (55P03, a migration's
 * lock_timeout behind an app's transaction).
 */
const TRANSIENT_SQLSTATE = /^(08|53|57P0[1-4]|55P03)/;

/**
 * Whether an error means the database cannot be reached right now (refused, reset,
 * silent, starting up, shutting down, out of connections), so waiting may fix it. A
 * wrong password, a missing database or a failed migration is not: waiting fixes nothing.
 */
export function isTransientDbError(err: unknown): boolean {
  // drizzle wraps the driver's error (DrizzleQueryError): judge the original.
  const cause = (err as { cause?: unknown } | null)?.cause;
  if (cause instanceof Error && !(err instanceof pg.DatabaseError))
    return isTransientDbError(cause);
  if (err instanceof pg.DatabaseError) return TRANSIENT_SQLSTATE.test(err.code ?? "");
  const e = err as { code?: unknown; message?: unknown };
  // Socket and DNS errors (ECONNREFUSED, ECONNRESET, ETIMEDOUT, ENOTFOUND, EAI_AGAIN, …).
  if (typeof e.code === "string" && /^E[A-Z_]+$/.test(e.code)) return true;
  const message = typeof e.message === "string" ? e.message : "";
  return /timeout expired|Connection terminated|Query read timeout|connection timeout/i.test(
    message,
  );
}

/** A connection error in words a person can act on (pg's own "timeout expired" is not). */
export function describeDbError(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  if (message === "timeout expired") {
    return `no answer within ${CONNECT_TIMEOUT_MS / 1000} s (connect timeout: the server accepts TCP but does not speak)`;
  }
  if (message === "Query read timeout") return "the server stopped answering (query timeout)";
  return message;
}
