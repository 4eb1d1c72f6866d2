// `npm run soak` (not in CI): 100,000 orders and 100,000 deliveries through two reactor
// processes. Reports time to drain, max RSS per replica, database connections over time
// and heap before/after, so unbounded growth would show.
import { readFile } from "node:fs/promises";
import pg from "pg";
import { startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { newSecret, startReceiver } from "../src/demo/receiver.js";
import { sampleOrderPayload } from "../src/demo/sample-order.js";
import { spawnEntry } from "../test/helpers/process.js";
import { freshDatabase, sleep } from "./lib.js";

const ORDERS = Number(process.env.SOAK_ORDERS ?? 100_000);
const EVENTS = Number(process.env.SOAK_EVENTS ?? 100_000);
const PORTS = [18181, 18182];

async function peakRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
}

async function statusOf(port: number) {
  return (await fetch(`http://127.0.0.1:${port}/status`)).json() as Promise<{
    process: { rssBytes: number; heapUsedBytes: number };
  }>;
}

async function main() {
  const adminUrl = process.env.BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
  const url = await freshDatabase(adminUrl);
  const fake = await startFakeShipStation();
  const receiver = await startReceiver();
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  await db.query(
    "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'upload_rate_limit_per_minute', '100000')",
  );
  await db.query("INSERT INTO webhook_subscriptions (url, secret) VALUES ($1, $2)", [
    `${receiver.url}/soak`,
    newSecret(),
  ]);
  const replicas = PORTS.map((port, i) =>
    spawnEntry("src/main.ts", {
      DATABASE_URL: url,
      HTTP_PORT: String(port),
      INSTANCE_ID: `soak-${i}`,
      SHIPSTATION_BASE_URL: fake.url,
      SHIPSTATION_API_KEY: "k",
      SHIPSTATION_API_SECRET: "s",
      WEBHOOK_ALLOW_PRIVATE_NETWORKS: "true",
      LOG_LEVEL: "warn",
    }),
  );
  for (const port of PORTS) {
    for (;;) {
      if (
        await fetch(`http://127.0.0.1:${port}/health/live`).then(
          (r) => r.ok,
          () => false,
        )
      )
        break;
      await sleep(200);
    }
  }
  const before = await Promise.all(PORTS.map(statusOf));
  const connections: number[] = [];
  const t0 = Date.now();
  const payload = JSON.stringify(sampleOrderPayload());
  for (let done = 0; done < ORDERS; done += 10_000) {
    await db.query(
      "INSERT INTO orders_inbox (order_number, payload) SELECT 'soak-' || g, $1::jsonb FROM generate_series(1, 10000) g",
      [payload],
    );
    await db.query(
      "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) SELECT 'o', g::text, 'order.created', '{}' FROM generate_series(1, $1::int) g",
      [Math.min(10_000, EVENTS - done)],
    );
  }
  for (;;) {
    const { rows } = await db.query(
      `SELECT (SELECT count(*) FROM orders_inbox WHERE upload_state = 'pending')::int AS orders,
              (SELECT count(*) FROM webhook_deliveries WHERE state = 'pending')::int AS deliveries,
              (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'pg-reactor%')::int AS conns`,
    );
    connections.push(rows[0].conns);
    process.stderr.write(
      `soak: ${Math.round((Date.now() - t0) / 1000)} s, pending orders ${rows[0].orders}, deliveries ${rows[0].deliveries}, connections ${rows[0].conns}\n`,
    );
    if (rows[0].orders === 0 && rows[0].deliveries === 0) break;
    await sleep(2_000);
  }
  const seconds = (Date.now() - t0) / 1000;
  await sleep(5_000);
  const after = await Promise.all(PORTS.map(statusOf));
  const peaks = await Promise.all(replicas.map((r) => peakRss(r.child.pid ?? 0)));
  const result = {
    orders: ORDERS,
    deliveries: EVENTS,
    seconds,
    backlogAfter: 0,
    lostOrders: ORDERS - fake.received.size,
    maxRssMiB: peaks.map((b) => Math.round(b / 2 ** 20)),
    heapUsedMiB: {
      before: before.map((s) => Math.round(s.process.heapUsedBytes / 2 ** 20)),
      after: after.map((s) => Math.round(s.process.heapUsedBytes / 2 ** 20)),
    },
    connections: { min: Math.min(...connections), max: Math.max(...connections) },
    receiverRequests: receiver.requests.length,
  };
  console.log(JSON.stringify(result, null, 2));
  for (const r of replicas) r.child.kill("SIGTERM");
  await Promise.all(replicas.map((r) => r.exited));
  await db.end();
  await fake.close();
  await receiver.close();
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
