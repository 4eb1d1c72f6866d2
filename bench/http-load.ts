// `npm run bench:http`: /health/ready and /metrics under a 10 s autocannon load, and
// whether that load slows a drain of orders (drain alone vs drain under load, same run).
import autocannon from "autocannon";
import pg from "pg";
import { startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { sampleOrderPayload } from "../src/demo/sample-order.js";
import { serverUrl, startStatusServer } from "../src/http/server.js";
import { startReactor } from "../test/helpers/reactor.js";
import { freshDatabase, until } from "./lib.js";

const SECONDS = Number(process.env.BENCH_HTTP_SECONDS ?? 10);
const ORDERS = Number(process.env.BENCH_HTTP_ORDERS ?? 20_000);

async function load(url: string, seconds: number) {
  const r = await autocannon({ url, connections: 10, duration: seconds });
  return {
    reqPerSec: Math.round(r.requests.average),
    p50Ms: r.latency.p50,
    p99Ms: r.latency.p99,
    non2xx: r.non2xx,
    errors: r.errors,
  };
}

async function main() {
  const adminUrl = process.env.BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
  const url = await freshDatabase(adminUrl);
  const fake = await startFakeShipStation();
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  await db.query(
    "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'upload_rate_limit_per_minute', '100000')",
  );
  const app = await startReactor({ databaseUrl: url, shipstationUrl: fake.url });
  const server = await startStatusServer(app, app.logger);
  const base = serverUrl(server);
  const payload = JSON.stringify(sampleOrderPayload());

  const drain = async () => {
    const before = fake.received.size;
    const t0 = performance.now();
    await db.query(
      "INSERT INTO orders_inbox (order_number, payload) SELECT 'h-' || g, $1::jsonb FROM generate_series(1, $2::int) g",
      [payload, ORDERS],
    );
    await until(() => fake.received.size - before >= ORDERS);
    return Math.round(ORDERS / ((performance.now() - t0) / 1000));
  };
  const results: Record<string, unknown> = {};
  results.ready = await load(`${base}/health/ready`, SECONDS);
  results.metrics = await load(`${base}/metrics`, SECONDS);
  results.drainAlonePerSecond = await drain();
  const [underLoad, drainUnderLoad] = await Promise.all([
    load(`${base}/health/ready`, SECONDS),
    drain(),
  ]);
  results.readyDuringDrain = underLoad;
  results.drainUnderReadyLoadPerSecond = drainUnderLoad;
  console.log(JSON.stringify(results, null, 2));
  await server.close();
  await app.stop(1_000);
  await db.end();
  await fake.close();
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
