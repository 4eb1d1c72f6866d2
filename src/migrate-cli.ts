// `npm run migrate`: apply drizzle migrations and sql/ triggers to DATABASE_URL (or the
// embedded database), then exit. Safe to run from several replicas at once.
import { EnvError, loadEnv } from "./config/env.js";
import { resolveDatabase } from "./db/connect.js";
import { migrate } from "./db/migrate.js";
import { redactUrl } from "./logger.js";

try {
  const env = loadEnv();
  const { url, embedded } = await resolveDatabase(env);
  try {
    const { sqlApplied } = await migrate(url);
    process.stdout.write(
      `pg-reactor: ${redactUrl(url)} is migrated${sqlApplied.length ? ` (applied ${sqlApplied.join(", ")})` : " (nothing to do)"}\n`,
    );
  } finally {
    await embedded?.stop();
  }
} catch (err) {
  process.stderr.write(
    `pg-reactor: migrate failed: ${err instanceof EnvError ? err.message : (err as Error).message}\n`,
  );
  process.exit(1);
}
