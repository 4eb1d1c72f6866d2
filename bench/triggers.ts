// The cost of the notify triggers on writers: pgbench single-row INSERTs into
// orders_inbox with the triggers on and off, at several client counts. NOTIFY takes a
// cluster-wide lock at commit, so this is where it would show.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { freshDatabase } from "./lib.js";

const run = promisify(execFile);

function findPgbench(): string | null {
  for (const dir of [
    "/usr/lib/postgresql/18/bin",
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
  ]) {
    if (existsSync(path.join(dir, "pgbench"))) return path.join(dir, "pgbench");
  }
  return null;
}

async function tps(
  pgbench: string,
  url: string,
  script: string,
  clients: number,
  seconds: number,
): Promise<number> {
  const { stdout } = await run(
    pgbench,
    [
      "-n",
      "-f",
      script,
      "-c",
      String(clients),
      "-j",
      String(Math.min(clients, 2)),
      "-T",
      String(seconds),
      url,
    ],
    {
      maxBuffer: 1 << 20,
    },
  );
  const m = /tps = ([\d.]+)/.exec(stdout);
  if (!m) throw new Error(`no tps in pgbench output: ${stdout}`);
  return Number(m[1]);
}

export async function triggerCost(adminUrl: string, seconds: number, repeats: number) {
  const pgbench = findPgbench();
  if (!pgbench) return { skipped: "pgbench not found (Debian package postgresql-client)" };
  const url = await freshDatabase(adminUrl);
  const script = path.join(tmpdir(), `pgr-bench-${process.pid}.sql`);
  await writeFile(
    script,
    `INSERT INTO orders_inbox (order_number, payload) VALUES ('bench', '{"a":1}');\n`,
  );
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  // A listener is attached, as in production.
  const listener = new pg.Client({ connectionString: url });
  await listener.connect();
  await listener.query("LISTEN reactor_orders");
  const results: Array<Record<string, number>> = [];
  for (const clients of [1, 8, 32]) {
    const on: number[] = [];
    const off: number[] = [];
    // Alternate on/off runs so drift on a noisy machine hits both alike; report medians.
    for (let r = 0; r < repeats; r++) {
      await db.query("ALTER TABLE orders_inbox ENABLE TRIGGER reactor_orders_notify_insert");
      on.push(await tps(pgbench, url, script, clients, seconds));
      await db.query("ALTER TABLE orders_inbox DISABLE TRIGGER reactor_orders_notify_insert");
      off.push(await tps(pgbench, url, script, clients, seconds));
      await db.query("TRUNCATE orders_inbox");
    }
    const median = (xs: number[]) =>
      [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
    const tOn = median(on);
    const tOff = median(off);
    results.push({
      clients,
      tpsTriggersOn: Math.round(tOn),
      tpsTriggersOff: Math.round(tOff),
      overheadPercent: Number((((tOff - tOn) / tOff) * 100).toFixed(1)),
    });
  }
  await db.query("ALTER TABLE orders_inbox ENABLE TRIGGER reactor_orders_notify_insert");
  await listener.end();
  await db.end();
  return { seconds, repeats, results };
}
