// Servers with a given wal_level, for the wake source tests: the run's own server when it
// already has it (embedded runs with wal_level = logical), else an embedded cluster of
// the test file's own (the machine's PostgreSQL here runs wal_level = replica, and tests
// never restart it). Also a database for either wake source, for suites that run in both.
import { randomBytes } from "node:crypto";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import { expect, inject } from "vitest";
import type { App } from "../../src/app.js";
import { startEmbeddedPostgres } from "../../src/db/embedded.js";
import { migrate } from "../../src/db/migrate.js";
import { switchWakeSource } from "../../src/reactor/wake-source.js";
import { createTestDatabase, type TestDatabase, waitFor } from "./db.js";

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

/** The wake sources a suite can run in (the setting `wake_source`). */
export const WAKE_SOURCES = ["notify", "wal"] as const;
export type WakeSourceMode = (typeof WAKE_SOURCES)[number];

/**
 * A fresh migrated database whose writers wake the reactors through `mode`, set before any
 * reactor starts: notify → a clone on the run's server (createTestDatabase); wal → a
 * database on a server with wal_level = logical, switched to wal. drop() also stops a
 * server this started.
 */
export async function databaseForWakeSource(mode: WakeSourceMode): Promise<TestDatabase> {
  if (mode === "notify") return createTestDatabase();
  const server = await serverWithWalLevel("logical");
  try {
    const { url, pool } = await server.database();
    const before = await switchWakeSource(pool, "wal");
    if (before !== "notify") throw new Error(`a fresh database was already in ${before} mode`);
    return {
      url,
      name: new URL(url).pathname.slice(1),
      pool,
      drop: () => server.stop(),
    };
  } catch (err) {
    await server.stop();
    throw err;
  }
}

/**
 * Empties configuration_params between cases except the wake_source row: removing that row
 * (TRUNCATE or DELETE) would switch the database back to notify.
 */
export async function clearSettingsKeepingWakeSource(pool: pg.Pool): Promise<void> {
  await pool.query(
    `DELETE FROM configuration_params
     WHERE NOT (category = 'reactor' AND parameter_name = 'wake_source' AND sku IS NULL)`,
  );
}

/**
 * Checks that every replica runs `mode` and returns once that source is live. app.start()
 * returns with LISTEN up, so in notify mode every later commit is woken by its NOTIFY; the
 * WAL stream comes up after it, and a commit made before that is found by the stream's
 * start catch-up instead. Waiting for the stream makes a wal case exercise the WAL wake,
 * as its notify twin exercises NOTIFY.
 */
export async function wakeSourceLive(apps: readonly App[], mode: WakeSourceMode): Promise<void> {
  expect(apps.map((a) => a.reactor.wakeSource())).toEqual(apps.map(() => mode));
  if (mode === "wal") {
    await waitFor(() => apps.every((a) => a.reactor.wal.state().connected), {
      what: "every replica reading the WAL",
    });
  }
}
