// Resolves the database for `npm start` and `npm run migrate`: DATABASE_URL, or embedded
// Postgres in the gitignored .pg-reactor/ folder at the project root.
import { fileURLToPath } from "node:url";
import type { Env } from "../config/env.js";
import { type EmbeddedPostgres, findRunningEmbedded, startEmbeddedPostgres } from "./embedded.js";

export const EMBEDDED_DIR = fileURLToPath(new URL("../../.pg-reactor", import.meta.url));

const EMBEDDED_DATABASE = "pg_reactor";

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
