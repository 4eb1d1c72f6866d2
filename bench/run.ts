// `npm run bench`: measures the reactor on a real PostgreSQL (BENCH_DATABASE_URL, or
// embedded Postgres) and prints a table; the same numbers go to bench/results/<date>.json.
// Latency figures are medians/percentiles over sequential samples in this one process.
import { randomBytes } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { cpus, tmpdir, totalmem } from "node:os";
import path from "node:path";
import pg from "pg";
import type { App } from "../src/app.js";
import { startEmbeddedPostgres } from "../src/db/embedded.js";
import { migrate } from "../src/db/migrate.js";
import { startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { newSecret, startReceiver } from "../src/demo/receiver.js";
import { validPayload } from "../test/helpers/db.js";
import { startReactor } from "../test/helpers/reactor.js";

const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 1000);
const DRAIN_ORDERS = Number(process.env.BENCH_DRAIN_ORDERS ?? 10_000);
const DRAIN_EVENTS = Number(process.env.BENCH_DRAIN_EVENTS ?? 10_000);
const IDLE_SECONDS = Number(process.env.BENCH_IDLE_SECONDS ?? 60);
const CONFIG_CHANGES = Number(process.env.BENCH_CONFIG_CHANGES ?? 200);
const ONLY = process.env.BENCH_ONLY?.split(",");
const enabled = (part: string) => !ONLY || ONLY.includes(part);

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}
function summary(samples: number[]) {
  const s = [...samples].sort((a, b) => a - b);
  const r = (x: number) => Number(x.toFixed(3));
  return {
    n: s.length,
    p50: r(percentile(s, 50)),
    p95: r(percentile(s, 95)),
    p99: r(percentile(s, 99)),
    max: r(s.at(-1) ?? 0),
  };
}
async function until(check: () => boolean, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("bench step timed out");
    await new Promise((r) => setImmediate(r));
  }
}

async function freshDatabase(adminUrl: string): Promise<string> {
  const name = `pgr_bench_${randomBytes(4).toString("hex")}`;
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  await c.query(`CREATE DATABASE ${name}`);
  await c.end();
  const u = new URL(adminUrl);
  u.pathname = `/${name}`;
  await migrate(u.toString());
  return u.toString();
}

async function main() {
  let adminUrl = process.env.BENCH_DATABASE_URL;
  let stopEmbedded = async () => undefined as unknown;
  if (!adminUrl) {
    const dir = path.join(tmpdir(), `pg-reactor-bench-${randomBytes(4).toString("hex")}`);
    await mkdir(dir, { recursive: true, mode: 0o755 });
    const e = await startEmbeddedPostgres({ dir, persistent: false, database: "postgres" });
    adminUrl = e.url;
    stopEmbedded = e.stop;
  }
  const results: Record<string, unknown> = {};
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  const pgVersion = (await client.query("SHOW server_version")).rows[0].server_version;
  await client.end();

  // 1. Uploads: INSERT sent → fake ShipStation receives, sequential single-row inserts.
  if (enabled("uploads")) {
    const url = await freshDatabase(adminUrl);
    const fake = await startFakeShipStation();
    const db = new pg.Client({ connectionString: url });
    await db.connect();
    await db.query(
      "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'upload_rate_limit_per_minute', '100000')",
    );
    const app: App = await startReactor({ databaseUrl: url, shipstationUrl: fake.url });
    const payload = JSON.stringify(validPayload());
    const lat: number[] = [];
    for (let i = 0; i < SAMPLES; i++) {
      const key = `lat-${i}`;
      const t0 = performance.now();
      await db.query(
        "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ($1, $1, $2)",
        [key, payload],
      );
      await until(() => fake.received.has(key));
      lat.push(performance.now() - t0);
    }
    results.uploadLatencyMs = summary(lat);

    // Drain: one statement of DRAIN_ORDERS orders to the fast fake.
    const before = fake.received.size;
    const t0 = performance.now();
    await db.query(
      `INSERT INTO orders_inbox (order_number, payload) SELECT 'drain-' || g, $1::jsonb FROM generate_series(1, $2::int) g`,
      [payload, DRAIN_ORDERS],
    );
    await until(() => fake.received.size - before >= DRAIN_ORDERS);
    const seconds = (performance.now() - t0) / 1000;
    results.uploadDrain = {
      orders: DRAIN_ORDERS,
      seconds: Number(seconds.toFixed(2)),
      perSecond: Math.round(DRAIN_ORDERS / seconds),
      calls: fake.calls.length - SAMPLES,
    };

    // Idle: transactions committed in this database while nothing happens. Backends
    // report their counts lazily (up to ~10 s late), so let the drain's counts land first.
    await new Promise((r) => setTimeout(r, 15_000));
    const count = async () =>
      Number(
        (
          await db.query(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
          )
        ).rows[0].xact_commit,
      );
    await db.query("SELECT pg_stat_clear_snapshot()");
    const x0 = await count();
    await new Promise((r) => setTimeout(r, IDLE_SECONDS * 1000));
    await db.query("SELECT pg_stat_clear_snapshot()");
    const x1 = await count();
    // Our own two count queries (and the clear) are subtracted.
    const own = 2;
    results.idle = {
      seconds: IDLE_SECONDS,
      transactions: x1 - x0 - own,
      perHour: Math.round(((x1 - x0 - own) * 3600) / IDLE_SECONDS),
    };
    await app.stop(1_000);
    await db.end();
    await fake.close();
  }

  // 2. Deliveries: INSERT into outbox_events → receiver gets the request.
  if (enabled("deliveries")) {
    const url = await freshDatabase(adminUrl);
    const receiver = await startReceiver();
    const db = new pg.Client({ connectionString: url });
    await db.connect();
    await db.query("INSERT INTO webhook_subscriptions (url, secret) VALUES ($1, $2)", [
      `${receiver.url}/hook`,
      newSecret(),
    ]);
    const app = await startReactor({ databaseUrl: url });
    const lat: number[] = [];
    for (let i = 0; i < Math.max(500, Math.floor(SAMPLES / 2)); i++) {
      const t0 = performance.now();
      const { rows } = await db.query(
        "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) VALUES ('o', $1, 'order.created', '{}') RETURNING id",
        [String(i)],
      );
      const id = rows[0].id;
      await until(() => receiver.delivered.has(id));
      lat.push(performance.now() - t0);
    }
    results.deliveryLatencyMs = summary(lat);
    const before = receiver.delivered.size;
    const t0 = performance.now();
    await db.query(
      `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
       SELECT 'o', g::text, 'order.created', '{}' FROM generate_series(1, $1::int) g`,
      [DRAIN_EVENTS],
    );
    await until(() => receiver.delivered.size - before >= DRAIN_EVENTS, 300_000);
    const seconds = (performance.now() - t0) / 1000;
    results.deliveryDrain = {
      events: DRAIN_EVENTS,
      seconds: Number(seconds.toFixed(2)),
      perSecond: Math.round(DRAIN_EVENTS / seconds),
    };
    await app.stop(1_000);
    await db.end();
    await receiver.close();
  }

  // 3. Config propagation: UPDATE commit → value in force on two replicas.
  if (enabled("config")) {
    const url = await freshDatabase(adminUrl);
    const db = new pg.Client({ connectionString: url });
    await db.connect();
    await db.query(
      "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'retention_days', '1')",
    );
    const a = await startReactor({ databaseUrl: url, env: { INSTANCE_ID: "a" } });
    const b = await startReactor({ databaseUrl: url, env: { INSTANCE_ID: "b" } });
    const lat: number[] = [];
    for (let i = 0; i < CONFIG_CHANGES; i++) {
      const value = 2 + (i % 300);
      const t0 = performance.now();
      await db.query(
        "UPDATE configuration_params SET value = $1 WHERE parameter_name = 'retention_days'",
        [String(value)],
      );
      await until(
        () =>
          a.settings.current.retention_days === value &&
          b.settings.current.retention_days === value,
      );
      lat.push(performance.now() - t0);
      // Space the changes out so each is measured on its own, not coalesced into a burst.
      await new Promise((r) => setTimeout(r, 25));
    }
    results.configPropagationMs = summary(lat);
    await Promise.all([a.stop(1_000), b.stop(1_000)]);
    await db.end();
  }

  const report = {
    date: new Date().toISOString(),
    machine: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model,
      memoryGiB: Math.round(totalmem() / 2 ** 30),
    },
    node: process.version,
    postgres: pgVersion,
    database: process.env.BENCH_DATABASE_URL ? "BENCH_DATABASE_URL" : "embedded",
    results,
  };
  console.table(
    Object.entries(results).map(([name, v]) => ({
      measurement: name,
      ...(v as Record<string, unknown>),
    })),
  );
  const dir = new URL("./results/", import.meta.url);
  await mkdir(dir, { recursive: true });
  const file = new URL(`${report.date.slice(0, 10)}.json`, dir);
  await writeFile(file, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`written to bench/results/${report.date.slice(0, 10)}.json`);
  await stopEmbedded();
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
