// `npm run bench:imports`: how fast XML order files become orders.
//  1. Latency: N files of 3 orders each, one at a time, written under a temporary name
//     and renamed into IMPORT_DIR (the documented way). Measured per file: landed (the
//     rename returned) → moved to processed/ (imported), and → its last order received
//     by the fake ShipStation. Baseline in the same process: the same 3 orders INSERTed
//     by an app → received by the fake (the upload path alone).
//  2. Volume: one file of V orders; landed → imported (orders per second), the peak
//     RSS while it imports (sampled every 5 ms) against the RSS before, and → every
//     order received. R runs, each in a fresh process on a fresh database; medians.
// ShipStation's real budget (40 calls a minute) would make part 1 about the rate limit
// (one call per file), so the bench raises it; part 2 is about the import, not the
// upload, and says how long the upload took under the raised budget.
// Uses BENCH_DATABASE_URL (an admin URL; default the local server) for fresh databases.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { validPayload } from "../test/helpers/db.js";
import { startReactor } from "../test/helpers/reactor.js";
import { doc, order } from "../test/helpers/xml.js";
import { freshDatabase, summary, until } from "./lib.js";

const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const N = Number(process.env.BENCH_IMPORT_FILES ?? 200);
const V = Number(process.env.BENCH_IMPORT_ORDERS ?? 10_000);
const R = Number(process.env.BENCH_REPEATS ?? 3);

const say = (line: string) => process.stdout.write(`${line}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

/** When the fake last received each order key (a call's arrival time). */
function receivedAt(fake: FakeShipStation, keys: string[]): number | null {
  let last = 0;
  for (const key of keys) {
    const call = fake.calls.find((c) => c.orders.some((o) => o.orderKey === key));
    if (!call || !fake.received.has(key)) return null;
    last = Math.max(last, call.at);
  }
  return last;
}

async function withReactor<T>(
  fn: (ctx: { app: App; fake: FakeShipStation; db: pg.Client; dir: string }) => Promise<T>,
): Promise<T> {
  const url = await freshDatabase(ADMIN_URL);
  const fake = await startFakeShipStation();
  const dir = await mkdtemp(path.join(tmpdir(), "pg-reactor-bench-import-"));
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  let app: App | null = null;
  try {
    await db.query(
      "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'upload_rate_limit_per_minute', '100000')",
    );
    app = await startReactor({
      databaseUrl: url,
      shipstationUrl: fake.url,
      env: { IMPORT_DIR: dir },
    });
    // The start rescan has made processed/ and failed/.
    await until(() => existsSync(path.join(dir, "processed")), 30_000);
    return await fn({ app, fake, db, dir });
  } finally {
    await app?.stop(2_000);
    await db.end();
    await fake.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Writes `text` under a dot-name the watch ignores, then renames it in; returns when it landed. */
async function land(dir: string, name: string, text: string): Promise<number> {
  const tmp = path.join(dir, `.${name}.tmp`);
  await writeFile(tmp, text);
  await rename(tmp, path.join(dir, name));
  return Date.now();
}

async function latency() {
  return withReactor(async ({ fake, db, dir }) => {
    const toImported: number[] = [];
    const toShipStation: number[] = [];
    for (let i = 0; i < N; i++) {
      const keys = [`f${i}-1`, `f${i}-2`, `f${i}-3`];
      const name = `file-${i}.xml`;
      const landed = await land(dir, name, doc(...keys.map((k) => order(k))));
      await until(() => existsSync(path.join(dir, "processed", name)), 30_000);
      toImported.push(Date.now() - landed);
      await until(() => receivedAt(fake, keys) !== null, 30_000);
      toShipStation.push((receivedAt(fake, keys) ?? Number.NaN) - landed);
    }
    const baseline: number[] = [];
    for (let i = 0; i < N; i++) {
      const keys = [`b${i}-1`, `b${i}-2`, `b${i}-3`];
      const sent = Date.now();
      await db.query(
        `INSERT INTO orders_inbox (order_key, order_number, status, payload)
         SELECT k, 'N-' || k, 'awaiting_shipment', $2::jsonb FROM unnest($1::text[]) k`,
        [keys, JSON.stringify(validPayload())],
      );
      await until(() => receivedAt(fake, keys) !== null, 30_000);
      baseline.push((receivedAt(fake, keys) ?? Number.NaN) - sent);
    }
    return {
      toImported: summary(toImported),
      toShipStation: summary(toShipStation),
      baseline: summary(baseline),
    };
  });
}

async function volume() {
  const keys = Array.from({ length: V }, (_, i) => `v${i}`);
  const text = doc(...keys.map((k) => order(k)));
  return withReactor(async ({ fake, dir }) => {
    if (global.gc) global.gc();
    const rssBefore = process.memoryUsage().rss;
    let peak = rssBefore;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().rss);
    }, 5);
    const landed = await land(dir, "big.xml", text);
    await until(() => existsSync(path.join(dir, "processed", "big.xml")), 120_000);
    const imported = Date.now();
    clearInterval(sampler);
    await until(() => fake.received.size === V, 300_000);
    const uploaded = Math.max(...fake.calls.map((c) => c.at));
    return {
      bytes: Buffer.byteLength(text),
      importSeconds: (imported - landed) / 1000,
      ordersPerSecond: V / ((imported - landed) / 1000),
      rssBeforeMiB: rssBefore / 2 ** 20,
      rssPeakMiB: peak / 2 ** 20,
      uploadedSeconds: (uploaded - landed) / 1000,
    };
  });
}

// One volume run per child process: RSS never shrinks back, so a second run in the same
// process would start from the first one's peak.
if (process.argv.includes("--volume-run")) {
  process.stdout.write(`${JSON.stringify(await volume())}\n`);
  process.exit(0);
}

async function volumeInChild(): Promise<Awaited<ReturnType<typeof volume>>> {
  const child = spawn(
    process.execPath,
    [...process.execArgv, fileURLToPath(import.meta.url), "--volume-run"],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  let out = "";
  child.stdout.on("data", (chunk) => {
    out += chunk;
  });
  const [code] = await once(child, "exit");
  if (code !== 0) throw new Error(`volume run exited ${code}`);
  return JSON.parse(out.trim().split("\n").at(-1) ?? "");
}

const l = await latency();
say(`latency, ${N} files of 3 orders, one at a time (ms):`);
say(`  landed → imported (in processed/):  ${JSON.stringify(l.toImported)}`);
say(`  landed → orders at ShipStation:     ${JSON.stringify(l.toShipStation)}`);
say(`  baseline, INSERT → at ShipStation:  ${JSON.stringify(l.baseline)}`);
say(`  ratio of p50s (file / INSERT): ${(l.toShipStation.p50 / l.baseline.p50).toFixed(2)}`);
const runs = [];
for (let i = 0; i < R; i++) runs.push(await volumeInChild());
for (const v of runs) {
  say(
    `volume: ${V} orders (${(v.bytes / 2 ** 20).toFixed(1)} MiB) imported in ${v.importSeconds.toFixed(2)} s = ${v.ordersPerSecond.toFixed(0)} orders/s; RSS ${v.rssBeforeMiB.toFixed(0)} → peak ${v.rssPeakMiB.toFixed(0)} MiB; all at ShipStation after ${v.uploadedSeconds.toFixed(2)} s`,
  );
}
say(
  `volume median (a fresh process each): ${median(runs.map((v) => v.ordersPerSecond)).toFixed(0)} orders/s, peak RSS ${median(runs.map((v) => v.rssPeakMiB)).toFixed(0)} MiB, +${median(runs.map((v) => v.rssPeakMiB - v.rssBeforeMiB)).toFixed(0)} MiB over the process before`,
);
process.exit(0);
