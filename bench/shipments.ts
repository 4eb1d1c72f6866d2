// `npm run bench:shipments`: how fast shipments come back.
//  1. Webhook path: for each of N orders, the fake ShipStation ships it and posts
//     SHIP_NOTIFY to the reactor's hook; measured per shipment: hook sent → order row
//     shipped (orders_inbox.updated_at, stamped by the row's trigger with clock_timestamp)
//     → order.shipped received by a webhook subscriber. One shipment at a time.
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
      "INSERT INTO webhook_subscriptions (url, secret, event_types) VALUES ($1, $2, '{order.shipped}')",
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
    fake.webhooks.push({
      id: 1,
      url: `${serverUrl(server)}/hooks/shipstation/${TOKEN}`,
      event: "SHIP_NOTIFY",
      active: true,
      friendlyName: "bench",
    } as (typeof fake.webhooks)[number]);
    const keys = await insertUploaded(db, "wh-", N);
    const toRow: number[] = [];
    const toSubscriber: number[] = [];
    for (const key of keys) {
      const sent = Date.now();
      const [shipment] = await fake.ship(key);
      const marker = `"shipmentId":${shipment?.shipmentId}`;
      await until(() => receiver.requests.some((r) => r.body.includes(marker)), 30_000);
      const got = receiver.requests.find((r) => r.body.includes(marker));
      const { rows } = await db.query(
        "SELECT (extract(epoch FROM updated_at) * 1000)::float8 AS at FROM orders_inbox WHERE order_key = $1",
        [key],
      );
      toRow.push(Number(rows[0].at) - sent);
      toSubscriber.push((got?.at ?? Number.NaN) - sent);
      receiver.requests.length = 0;
    }
    return { toRow: summary(toRow), toSubscriber: summary(toSubscriber) };
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
        "SELECT count(*)::int AS n, (extract(epoch FROM max(updated_at)) * 1000)::float8 AS last FROM orders_inbox WHERE status = 'shipped'",
      );
      if (rows[0].n === S) {
        done = Number(rows[0].last);
        break;
      }
      await new Promise((r) => setTimeout(r, 25));
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
say(`  hook sent → row shipped:          ${JSON.stringify(hook.toRow)}`);
say(`  hook sent → order.shipped at sub: ${JSON.stringify(hook.toSubscriber)}`);
const polls = [];
for (let i = 0; i < R; i++) polls.push(await pollPath());
for (const p of polls)
  say(
    `poll path: ${S} shipments in ${p.pages} pages, ${p.seconds.toFixed(2)} s, ${p.perSecond.toFixed(0)} shipments/s`,
  );
say(`poll path median: ${median(polls.map((p) => p.perSecond)).toFixed(0)} shipments/s`);
process.exit(0);
