// Servers with a given wal_level, for the wake source tests: the run's own server when it
// already has it (embedded runs with wal_level = logical), else an embedded cluster of
// the test file's own (the machine's PostgreSQL here runs wal_level = replica, and tests
// never restart it).
import { randomBytes } from "node:crypto";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import { inject } from "vitest";
import { startEmbeddedPostgres } from "../../src/db/embedded.js";
import { migrate } from "../../src/db/migrate.js";

export interface Server {
  /** A superuser URL of the server's `postgres` database. */
  adminUrl: string;
  /** A fresh migrated database on it. */
  database(): Promise<{ url: string; pool: pg.Pool }>;
  stop(): Promise<void>;
}

async function walLevel(adminUrl: string): Promise<string> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    return (await client.query<{ wal_level: string }>("SHOW wal_level")).rows[0]?.wal_level ?? "";
  } finally {
    await client.end();
  }
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/** A server running `level` (logical or replica). */
export async function serverWithWalLevel(level: "logical" | "replica"): Promise<Server> {
  let adminUrl = inject("adminUrl");
  let stopServer = async () => undefined;
  if ((await walLevel(adminUrl)) !== level) {
    const dir = path.join(tmpdir(), `pg-reactor-wal-${randomBytes(4).toString("hex")}`);
    const embedded = await startEmbeddedPostgres({
      dir,
      persistent: false,
      database: "postgres",
      settings: { wal_level: level },
    });
    adminUrl = embedded.url;
    stopServer = async () => {
      await embedded.stop();
      await rm(dir, { recursive: true, force: true });
    };
  }
  const pools: pg.Pool[] = [];
  const names: string[] = [];
  return {
    adminUrl,
    async database() {
      const name = `pgr_w_${randomBytes(5).toString("hex")}`;
      const admin = new pg.Client({ connectionString: adminUrl });
      await admin.connect();
      await admin.query(`CREATE DATABASE ${name}`);
      await admin.end();
      const url = withDatabase(adminUrl, name);
      await migrate(url);
      const pool = new pg.Pool({ connectionString: url, max: 5 });
      pool.on("error", () => undefined);
      pools.push(pool);
      names.push(name);
      return { url, pool };
    },
    async stop() {
      await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
      const admin = new pg.Client({ connectionString: adminUrl });
      await admin.connect().catch(() => undefined);
      for (const name of names) {
        await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => undefined);
      }
      await admin.end().catch(() => undefined);
      await stopServer();
    },
  };
}
