// Resolves the database for `npm start` and `npm run migrate`: DATABASE_URL, or embedded
// Postgres in the gitignored .pg-reactor/ folder at the project root.
import { fileURLToPath } from "node:url";
import type { Env } from "../config/env.js";
import { type EmbeddedPostgres, startEmbeddedPostgres } from "./embedded.js";

export const EMBEDDED_DIR = fileURLToPath(new URL("../../.pg-reactor", import.meta.url));

export async function resolveDatabase(
  env: Env,
): Promise<{ url: string; embedded: EmbeddedPostgres | null }> {
  if (env.databaseUrl) return { url: env.databaseUrl, embedded: null };
  const embedded = await startEmbeddedPostgres({
    dir: EMBEDDED_DIR,
    persistent: true,
    database: "pg_reactor",
  });
  return { url: embedded.url, embedded };
}
