// Per-test-file databases: each is a fast clone of the migrated template made by
// global-setup, on whichever server the run uses.
import { randomBytes } from "node:crypto";
import pg from "pg";
import { inject } from "vitest";
import { newSecret } from "../../src/demo/receiver.js";
import { sampleOrderPayload } from "../../src/demo/sample-order.js";

export interface TestDatabase {
  url: string;
  name: string;
  pool: pg.Pool;
  drop(): Promise<void>;
}

export function urlFor(database: string): string {
  const u = new URL(inject("adminUrl"));
  u.pathname = `/${database}`;
  return u.toString();
}

async function admin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: inject("adminUrl") });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** A fresh database. `migrated: false` gives an empty one (for migrate tests). */
export async function createTestDatabase(
  options: { migrated?: boolean } = {},
): Promise<TestDatabase> {
  const template = inject("templateDb");
  const name = `pgr_t_${template.slice(8)}_${randomBytes(4).toString("hex")}`;
  await admin((c) =>
    c.query(
      options.migrated === false
        ? `CREATE DATABASE ${name}`
        : `CREATE DATABASE ${name} TEMPLATE ${template}`,
    ),
  );
  const url = urlFor(name);
  const pool = new pg.Pool({ connectionString: url, max: 5, application_name: "pg-reactor tests" });
  pool.on("error", () => undefined);
  return {
    url,
    name,
    pool,
    async drop() {
      await pool.end();
      await admin((c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
    },
  };
}

/** Polls `check` until it returns a truthy value or the deadline passes (then throws). */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  options: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + (options.timeoutMs ?? 20_000);
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out waiting for ${options.what ?? "condition"}${last ? `: ${(last as Error).message}` : ""}`,
      );
    }
    await new Promise((r) => setTimeout(r, options.intervalMs ?? 20));
  }
}

/** Inserts `count` valid orders in one statement; returns their ids. */
export async function insertOrders(
  pool: pg.Pool | pg.Client,
  count: number,
  options: { prefix?: string; status?: string; payload?: unknown } = {},
): Promise<number[]> {
  const prefix = options.prefix ?? `o-${randomBytes(3).toString("hex")}`;
  const payload = options.payload ?? validPayload();
  const { rows } = await pool.query<{ id: string }>(
    `INSERT INTO orders_inbox (order_number, status, payload)
     SELECT $1 || '-' || g, $2, $3::jsonb FROM generate_series(1, $4::int) g
     RETURNING id`,
    [prefix, options.status ?? "awaiting_shipment", JSON.stringify(payload), count],
  );
  return rows.map((r) => Number(r.id));
}

/** A valid order payload; see src/demo/sample-order.ts. */
export const validPayload = sampleOrderPayload;

export async function setSetting(pool: pg.Pool, name: string, value: string) {
  await pool.query(
    `INSERT INTO configuration_params (category, parameter_name, value)
     VALUES ('reactor', $1, $2)
     ON CONFLICT (category, parameter_name, sku) DO UPDATE SET value = excluded.value, updated_at = now()`,
    [name, value],
  );
}

/**
 * Terminates the reactor's LISTEN backend in this client's database. With waitMs > 0 it
 * returns only once the backend is gone, so a NOTIFY committed next reaches no one.
 */
export async function terminateListener(client: pg.Pool | pg.PoolClient, waitMs = 0) {
  const { rows } = await client.query(
    `SELECT pg_terminate_backend(pid, $1::bigint) AS ok FROM pg_stat_activity
     WHERE application_name = 'pg-reactor listener' AND datname = current_database()`,
    [waitMs],
  );
  return rows as Array<{ ok: boolean }>;
}

/** Subscribes `url` to events (all types unless given), with a fresh secret unless given. */
export async function subscribe(
  pool: pg.Pool,
  url: string,
  options: {
    eventTypes?: string[];
    secret?: string;
    previousSecret?: string | null;
    enabled?: boolean;
  } = {},
): Promise<number> {
  const { rows } = await pool.query(
    `INSERT INTO webhook_subscriptions (url, secret, previous_secret, event_types, enabled)
     VALUES ($1, $2, $3, $4, $5) RETURNING id`,
    [
      url,
      options.secret ?? newSecret(),
      options.previousSecret ?? null,
      options.eventTypes ?? [],
      options.enabled ?? true,
    ],
  );
  return Number(rows[0].id);
}
