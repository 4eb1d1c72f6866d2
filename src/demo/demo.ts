// `npm run demo`: the whole product in one process tree, in about ten seconds. Embedded
// Postgres, a fake ShipStation, a webhook receiver and a reactor; it inserts orders and
// events, ships an order at the fake ShipStation (SHIP_NOTIFY comes back as order.shipped),
// flips a flag, changes a setting, and prints what happened and how fast.
import { randomBytes } from "node:crypto";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import { makeApp } from "../app.js";
import { loadEnv } from "../config/env.js";
import { startEmbeddedPostgres } from "../db/embedded.js";
import { migrate } from "../db/migrate.js";
import { serverUrl, startStatusServer } from "../http/server.js";
import { makeLogger } from "../logger.js";
import { startFakeShipStation } from "./fake-shipstation.js";
import { newSecret, startReceiver } from "./receiver.js";
import { sampleOrderPayload } from "./sample-order.js";

const say = (line: string) => process.stdout.write(`${line}\n`);

async function until(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
): Promise<number> {
  const started = performance.now();
  while (!(await check())) {
    if (performance.now() - started > timeoutMs)
      throw new Error(`demo: timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
  return performance.now() - started;
}

const ms = (x: number) => `${x.toFixed(1)} ms`;

const ORDER = sampleOrderPayload();
/** The demo's hook token (production sets SHIPSTATION_WEBHOOK_TOKEN to a secret of its own). */
const DEMO_HOOK_TOKEN = "demo-hook-token-not-a-secret-0001";

async function main() {
  const t0 = performance.now();
  const dir = path.join(tmpdir(), `pg-reactor-demo-${randomBytes(4).toString("hex")}`);
  const db = await startEmbeddedPostgres({ dir, persistent: false, database: "demo" });
  const fake = await startFakeShipStation();
  const receiver = await startReceiver();
  try {
    await migrate(db.url);
    say(
      `1. embedded Postgres, migrated, fake ShipStation and webhook receiver up (${ms(performance.now() - t0)})`,
    );

    const env = loadEnv({
      DATABASE_URL: db.url,
      HTTP_PORT: "0",
      SHIPSTATION_BASE_URL: fake.url,
      SHIPSTATION_API_KEY: "demo-key",
      SHIPSTATION_API_SECRET: "demo-secret",
      WEBHOOK_ALLOW_PRIVATE_NETWORKS: "true",
      SHIPSTATION_WEBHOOK_TOKEN: DEMO_HOOK_TOKEN,
    });
    const app = makeApp({
      env,
      databaseUrl: db.url,
      logger: makeLogger(process.env.LOG_LEVEL ?? "silent"),
    });
    await app.start();
    const server = await startStatusServer(app, app.logger);
    const base = serverUrl(server);
    say(`2. reactor running; status server at ${base}`);
    // In production PUBLIC_URL makes the reactor subscribe SHIP_NOTIFY itself; the demo's
    // server port is only known now, so it points the fake's subscription at the hook.
    fake.addWebhook(`${base}/hooks/shipstation/${DEMO_HOOK_TOKEN}`, "demo");

    const sql = new pg.Client({ connectionString: db.url });
    await sql.connect();
    await sql.query(
      "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'upload_rate_limit_per_minute', '10000')",
    );
    await sql.query(
      "INSERT INTO webhook_subscriptions (url, secret, event_types) VALUES ($1, $2, '{order.*}')",
      [`${receiver.url}/hooks`, newSecret()],
    );

    let started = performance.now();
    await sql.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('DEMO-1', 'demo-1', $1)",
      [JSON.stringify(ORDER)],
    );
    await until("DEMO-1 at ShipStation", () => fake.received.has("demo-1"));
    say(`3. order DEMO-1 committed → at ShipStation in ${ms(performance.now() - started)}`);

    started = performance.now();
    await sql.query("BEGIN");
    await sql.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('DEMO-2', 'demo-2', $1)",
      [JSON.stringify(ORDER)],
    );
    const { rows } = await sql.query(
      `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
       VALUES ('order', 'DEMO-2', 'order.created', '{"orderNumber": "DEMO-2"}') RETURNING id`,
    );
    await sql.query("COMMIT");
    await until(
      "DEMO-2 and its webhook",
      () => fake.received.has("demo-2") && receiver.delivered.has(rows[0].id),
    );
    say(
      `4. order + outbox event in one transaction → both delivered in ${ms(performance.now() - started)} (signed webhook ${rows[0].id})`,
    );

    started = performance.now();
    await fake.ship("demo-1", { trackingNumber: "9400DEMO0000000001" });
    const shipped = await until("DEMO-1 shipped and order.shipped delivered", () =>
      receiver.requests.some(
        (r) => r.body.includes('"order.shipped"') && r.body.includes("9400DEMO0000000001"),
      ),
    );
    const row = await sql.query(
      "SELECT status, tracking_number FROM orders_inbox WHERE order_key = 'demo-1'",
    );
    say(
      `   ShipStation ships DEMO-1 → SHIP_NOTIFY → row ${row.rows[0].status} (${row.rows[0].tracking_number}) → order.shipped at the subscriber in ${ms(shipped)}`,
    );

    started = performance.now();
    await sql.query(
      "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'uploads_enabled', 'off')",
    );
    await until("uploads off", () => app.settings.current.uploads_enabled === false);
    say(`5. uploads_enabled = off, in force in ${ms(performance.now() - started)}`);
    await sql.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('DEMO-3', 'demo-3', $1)",
      [JSON.stringify(ORDER)],
    );
    await app.reactor.poll.pollNow();
    const pending = await sql.query(
      "SELECT upload_state FROM orders_inbox WHERE order_key = 'demo-3'",
    );
    say(
      `   order DEMO-3 inserted while off: ${pending.rows[0].upload_state}, ShipStation has ${fake.received.has("demo-3") ? "it (wrong!)" : "nothing"}`,
    );
    started = performance.now();
    await sql.query(
      "UPDATE configuration_params SET value = 'on' WHERE parameter_name = 'uploads_enabled'",
    );
    await until("DEMO-3 after re-enable", () => fake.received.has("demo-3"));
    say(
      `6. uploads_enabled = on → DEMO-3 at ShipStation ${ms(performance.now() - started)} after the UPDATE`,
    );

    started = performance.now();
    await sql.query(
      "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'upload_batch_size', '50')",
    );
    await until("batch size", () => app.settings.current.upload_batch_size === 50);
    say(`7. upload_batch_size = 50, in force in ${ms(performance.now() - started)}`);
    const bad = await sql
      .query(
        "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'poll_interval_seconds', 'soon')",
      )
      .catch((err: Error) => err.message);
    say(`   a bad value is refused at write time: ${bad}`);

    started = performance.now();
    const calls = fake.calls.length;
    await sql.query(
      "INSERT INTO orders_inbox (order_number, payload) SELECT 'BULK-' || g, $1::jsonb FROM generate_series(1, 2000) g",
      [JSON.stringify(ORDER)],
    );
    await until("2000 orders", () => fake.received.size >= 2003, 30_000);
    say(
      `8. 2,000 orders in one INSERT → all at ShipStation in ${ms(performance.now() - started)} (${fake.calls.length - calls} calls of ≤ 50)`,
    );
    await until("all uploads recorded", async () => {
      const done = (await app.metrics.completed.get()).values.find(
        (v) => v.labels.workload === "uploads" && v.labels.outcome === "success",
      );
      return done?.value === 2003;
    });

    const metrics = await (await fetch(`${base}/metrics`)).text();
    say("9. /metrics excerpt:");
    for (const line of metrics.split("\n")) {
      if (
        /^reactor_(completed_total|notifications_total|config_reloads_total|pickup_latency_seconds_count)/.test(
          line,
        )
      )
        say(`   ${line}`);
    }
    await sql.end();
    await server.close();
    await app.stop(2_000);
    say(
      `done in ${(performance.now() - t0) / 1000 < 60 ? ((performance.now() - t0) / 1000).toFixed(1) : "?"} s`,
    );
  } finally {
    await fake.close();
    await receiver.close();
    await db.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`demo failed: ${(err as Error).message}\n`);
    process.exit(1);
  },
);
