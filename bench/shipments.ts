// `npm run bench:shipments`: how fast shipments come back.
//  1. Webhook path: for each of N orders, the fake ShipStation ships it and posts
//     SHIP_NOTIFY to the reactor's hook; measured per shipment: hook sent → the apply
//     transaction (the order.shipped event's created_at: that transaction's start, which
//     marks the row shipped) → order.shipped received by a webhook subscriber. One
//     shipment at a time.
//  2. Poll path: S shipments exist only at the fake (no webhook); one watermark poll reads
//     them in pages of 500 and applies them. Measured: first listing request → every
//     order shipped; shipments per second. Repeated R times on fresh databases; median.
// Uses BENCH_DATABASE_URL (an admin URL; default the local server) for fresh databases.
import type { FastifyInstance } from "fastify";
import pg from "pg";
import type { App } from "../src/app.js";
import { startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { newSecret, startReceiver } from "../src/demo/receiver.js";
import { serverUrl, startStatusServer } from "../src/http/server.js";
import { startReactor } from "../test/helpers/reactor.js";
import { freshDatabase, summary, until } from "./lib.js";

const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const N = Number(process.env.BENCH_SHIPMENTS_WEBHOOK ?? 300);
const S = Number(process.env.BENCH_SHIPMENTS_POLL ?? 5000);
const R = Number(process.env.BENCH_REPEATS ?? 3);
const TOKEN = "bench-hook-token-000000000000000000";

const say = (line: string) => process.stdout.write(`${line}\n`);

async function insertUploaded(db: pg.Client, prefix: string, count: number): Promise<string[]> {
  // Already uploaded: the bench is about the way back, not the upload.
  const { rows } = await db.query(
    `INSERT INTO orders_inbox (order_number, order_key, payload, upload_state, uploaded_at)
     SELECT $1 || g, $1 || g, '{}'::jsonb, 'uploaded', now() FROM generate_series(1, $2::int) g
     RETURNING order_key`,
    [prefix, count],
  );
  return rows.map((r) => r.order_key as string);
}

async function webhookPath() {
  const url = await freshDatabase(ADMIN_URL);
  const fake = await startFakeShipStation();
  const receiver = await startReceiver();
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  let app: App | null = null;
  let server: FastifyInstance | null = null;
  try {
    await db.query(
      "INSERT INTO webhook_subscriptions (url, secret, event_types) VALUES ($1, $2, '{order.*}')",
      [`${receiver.url}/hooks`, newSecret()],
    );
    // The real budget (40 calls a minute) would make this bench about the rate limit:
    // each SHIP_NOTIFY costs one call.
    await db.query(
      "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'upload_rate_limit_per_minute', '100000')",
    );
    app = await startReactor({
      databaseUrl: url,
      shipstationUrl: fake.url,
      env: { SHIPSTATION_WEBHOOK_TOKEN: TOKEN },
    });
    server = await startStatusServer(app, app.logger);
    fake.addWebhook(`${serverUrl(server)}/hooks/shipstation/${TOKEN}`, "bench");
    const keys = await insertUploaded(db, "wh-", N);
    const toRow: number[] = [];
    const toSubscriber: number[] = [];
    for (const key of keys) {
      const sent = Date.now();
      const [shipment] = await fake.ship(key);
      // jsonb's text form puts a space after the colon.
      const marker = new RegExp(`"shipmentId": ?${shipment?.shipmentId}\\b`);
      await until(() => receiver.requests.some((r) => marker.test(r.body)), 30_000);
      const got = receiver.requests.find((r) => marker.test(r.body));
      const { rows } = await db.query(
        `SELECT (extract(epoch FROM created_at) * 1000)::float8 AS at FROM outbox_events
         WHERE aggregate_id = $1 AND event_type = 'order.shipped'`,
        [key],
      );
      toRow.push(Number(rows[0].at) - sent);
      toSubscriber.push((got?.at ?? Number.NaN) - sent);
      receiver.requests.length = 0;
    }
    // Baseline in the same process: an event committed by an app → the subscriber, the
    // deliveries path alone (what the shipment path adds is the hook, the fetch, the apply).
    const baseline: number[] = [];
    for (let i = 0; i < N; i++) {
      const sent = Date.now();
      const { rows } = await db.query(
        `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('order', $1, 'order.created', '{}') RETURNING id`,
        [`base-${i}`],
      );
      const id = rows[0].id as string;
      await until(() => receiver.delivered.has(id), 30_000);
      const got = receiver.requests.find((r) => r.headers["webhook-id"] === id);
      baseline.push((got?.at ?? Number.NaN) - sent);
      receiver.requests.length = 0;
    }
    return {
      toRow: summary(toRow),
      toSubscriber: summary(toSubscriber),
      baseline: summary(baseline),
    };
  } finally {
    await server?.close();
    await app?.stop(2_000);
    await db.end();
    await fake.close();
    await receiver.close();
  }
}

async function pollPath() {
  const url = await freshDatabase(ADMIN_URL);
  const fake = await startFakeShipStation();
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  let app: App | null = null;
  try {
    const keys = await insertUploaded(db, "poll-", S);
    for (let i = 0; i < keys.length; i += 1000) {
      await fake.ship(keys.slice(i, i + 1000), { notify: false });
    }
    // The real budget: S / 500 pages is well under 40 calls.
    app = await startReactor({ databaseUrl: url, shipstationUrl: fake.url });
    const started = await new Promise<number>((resolve) => {
      const tick = () => {
        const first = fake.gets.find((g) => g.path.startsWith("/shipments?createDateStart"));
        if (first) resolve(first.at);
        else setImmediate(tick);
      };
      tick();
    });
    let done = 0;
    for (;;) {
      const { rows } = await db.query(
        `SELECT (SELECT count(*)::int FROM orders_inbox WHERE status = 'shipped') AS n,
           (SELECT (extract(epoch FROM max(clock_timestamp())) * 1000)::float8) AS last`,
      );
      if (rows[0].n === S) {
        done = Number(rows[0].last);
        break;
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    const seconds = (done - started) / 1000;
    const pages = fake.gets.filter((g) => g.path.startsWith("/shipments?createDateStart")).length;
    return { seconds, perSecond: S / seconds, pages };
  } finally {
    await app?.stop(2_000);
    await db.end();
    await fake.close();
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

const hook = await webhookPath();
say(`webhook path, ${N} shipments one at a time (ms):`);
say(`  hook sent → row shipped (tx):     ${JSON.stringify(hook.toRow)}`);
say(`  hook sent → order.shipped at sub: ${JSON.stringify(hook.toSubscriber)}`);
say(`  baseline, event commit → sub:     ${JSON.stringify(hook.baseline)}`);
say(
  `  ratio of p50s (shipment path / baseline): ${(hook.toSubscriber.p50 / hook.baseline.p50).toFixed(2)}`,
);
const polls = [];
for (let i = 0; i < R; i++) polls.push(await pollPath());
for (const p of polls)
  say(
    `poll path: ${S} shipments in ${p.pages} pages, ${p.seconds.toFixed(2)} s, ${p.perSecond.toFixed(0)} shipments/s`,
  );
say(`poll path median: ${median(polls.map((p) => p.perSecond)).toFixed(0)} shipments/s`);
process.exit(0);
