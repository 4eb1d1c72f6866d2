// Chooses the PostgreSQL server for the whole run, in the order the README documents:
// 1. TEST_DATABASE_URL; 2. testcontainers, when a Docker engine answers; 3. embedded
// Postgres. Then migrates a template database that each test file clones.
import { randomBytes } from "node:crypto";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { startEmbeddedPostgres } from "../../src/db/embedded.js";
import { migrate } from "../../src/db/migrate.js";

declare module "vitest" {
  export interface ProvidedContext {
    adminUrl: string;
    templateDb: string;
    serverKind: string;
  }
}

/** Docker answers within this long or we move on to embedded Postgres. */
const DOCKER_PROBE_MS = 3_000;

async function tryTestcontainers(): Promise<{ url: string; stop: () => Promise<void> } | null> {
  try {
    const { getContainerRuntimeClient } = await import("testcontainers");
    await Promise.race([
      getContainerRuntimeClient(),
      new Promise((_, reject) => setTimeout(() => reject(new Error("timeout")), DOCKER_PROBE_MS)),
    ]);
  } catch {
    return null; // no Docker engine: the normal case on machines without one
  }
  const { PostgreSqlContainer } = await import("@testcontainers/postgresql");
  const container = await new PostgreSqlContainer("postgres:16-alpine").start();
  return { url: container.getConnectionUri(), stop: async () => void (await container.stop()) };
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

export default async function setup(project: TestProject) {
  let adminUrl = process.env.TEST_DATABASE_URL;
  let serverKind = "TEST_DATABASE_URL";
  let stop: () => Promise<void> = async () => undefined;
  if (!adminUrl) {
    const container = await tryTestcontainers();
    if (container) {
      adminUrl = container.url;
      serverKind = "testcontainers";
      stop = container.stop;
    } else {
      const dir = path.join(tmpdir(), `pg-reactor-test-${randomBytes(4).toString("hex")}`);
      const embedded = await startEmbeddedPostgres({
        dir,
        persistent: false,
        database: "postgres",
      });
      adminUrl = embedded.url;
      serverKind = "embedded";
      stop = async () => {
        await embedded.stop();
        await rm(dir, { recursive: true, force: true });
      };
    }
  }
  const templateDb = `pgr_tpl_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  const server = await admin.query("SHOW server_version");
  await admin.query(`CREATE DATABASE ${templateDb}`);
  await admin.end();
  await migrate(withDatabase(adminUrl, templateDb));
  process.stdout.write(`tests use PostgreSQL ${server.rows[0].server_version} (${serverKind})\n`);

  project.provide("adminUrl", adminUrl);
  project.provide("templateDb", templateDb);
  project.provide("serverKind", serverKind);

  return async () => {
    const client = new pg.Client({ connectionString: adminUrl });
    await client.connect();
    const { rows } = await client.query<{ datname: string }>(
      "SELECT datname FROM pg_database WHERE datname LIKE $1 OR datname = $2",
      [`pgr_t_${templateDb.slice(8)}_%`, templateDb],
    );
    for (const { datname } of rows) {
      await client.query(`DROP DATABASE IF EXISTS ${datname} WITH (FORCE)`).catch(() => undefined);
    }
    await client.end();
    await stop();
  };
}
