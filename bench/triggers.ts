// What waking the reactors costs writers: pgbench single-row INSERTs into orders_inbox at
// several client counts, in the three states production can be in, each set the way
// production sets it (the wake_source setting, whose triggers create or drop the notify
// triggers):
//   notify: the notify triggers (transition table + NOTIFY, whose commit-time lock is
//           cluster-wide) and a replica LISTENing;
//   wal:    no notify trigger; a replica reading the WAL, so the walsender's decoding runs;
//   none:   no notify trigger and no reader (wal with no replica attached): the baseline.
// The replica has uploads_enabled = false: it still wakes at every commit, but uploads nothing.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import type { App } from "../src/app.js";
import { NOTIFY_TRIGGERS, wakeReaders } from "../src/reactor/wake-source.js";
import { startReactor } from "../test/helpers/reactor.js";
import { freshDatabase } from "./lib.js";
import { setWakeSource, walUnavailable, withSettings } from "./reactor.js";
import { waitFor } from "./wal.js";

const run = promisify(execFile);

type Mode = "notify" | "wal" | "none";
const MODES: readonly Mode[] = ["notify", "wal", "none"];
const CLIENTS = [1, 8, 32];
/** The triggers wake_source = notify creates (sql/070_wake_source.sql) and wal drops. */

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

/** CPU seconds a process has used (utime + stime from /proc, 100 ticks a second), or null. */
async function processCpuSeconds(pid: number): Promise<number | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return null;
  }
}

/** Puts the database and the one replica in `mode`'s state, and checks it is exactly that. */
function makeModes(url: string, pool: pg.Pool) {
  let app: App | null = null;

  async function notifyTriggers(): Promise<number> {
    const { rows } = await pool.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM pg_trigger WHERE tgname = ANY($1)",
      [NOTIFY_TRIGGERS],
    );
    return rows[0]?.n ?? 0;
  }

  /** Holds when the triggers and the readers the server sees are `mode`'s. */
  async function inState(mode: Mode): Promise<boolean> {
    const [triggers, readers] = await Promise.all([notifyTriggers(), wakeReaders(pool)]);
    switch (mode) {
      case "notify":
        return (
          triggers === NOTIFY_TRIGGERS.length && readers.listening === 1 && readers.readingWal === 0
        );
      case "wal":
        return triggers === 0 && readers.readingWal === 1;
      case "none":
        return triggers === 0 && readers.listening === 0 && readers.readingWal === 0;
    }
  }

  return {
    async enter(mode: Mode) {
      if (mode === "none") {
        await app?.stop(1_000);
        app = null;
        await setWakeSource(url, "wal");
      } else {
        await setWakeSource(url, mode);
        app ??= await startReactor({ databaseUrl: url, env: { INSTANCE_ID: "bench" } });
        const reactor = app.reactor;
        await waitFor(
          () =>
            reactor.wakeSource() === mode &&
            (mode === "wal" ? reactor.wal.state().connected : reactor.listener().state().connected),
          `the replica on ${mode}`,
        );
      }
      await waitFor(() => inState(mode), `the ${mode} state on the server`);
    },
    /** The replica's walsender (wal mode), whose decoding CPU the writers compete with. */
    walsenderPid: () => app?.reactor.wal.backendPid() ?? null,
    /** Stops the replica; resolves once the server sees no reader of it. */
    async close() {
      await app?.stop(1_000);
      app = null;
      await waitFor(async () => {
        const readers = await wakeReaders(pool);
        return readers.listening === 0 && readers.readingWal === 0;
      }, "no reader left");
    },
  };
}

export async function triggerCost(adminUrl: string, seconds: number, repeats: number) {
  const pgbench = findPgbench();
  if (!pgbench) return { skipped: "pgbench not found (Debian package postgresql-client)" };
  const url = await freshDatabase(adminUrl);
  const missing = await walUnavailable(url);
  if (missing) return { skipped: `wal mode unavailable: ${missing}` };
  await withSettings(url, { uploads_enabled: "false" });
  const script = path.join(tmpdir(), `pgr-bench-${process.pid}.sql`);
  await writeFile(
    script,
    `INSERT INTO orders_inbox (order_number, payload) VALUES ('bench', '{"a":1}');\n`,
  );
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  const modes = makeModes(url, pool);
  const results: Array<Record<string, number>> = [];
  const samples: Array<{ clients: number } & Record<Mode, number[]>> = [];
  let checkpoints = true;
  try {
    for (const clients of CLIENTS) {
      const runs: Record<Mode, number[]> = { notify: [], wal: [], none: [] };
      // Cores used during the runs: the walsender decoding (wal), the reactor process.
      const walsenderCores: number[] = [];
      const reactorCores: Record<Mode, number[]> = { notify: [], wal: [], none: [] };
      for (let r = 0; r < repeats; r++) {
        // Modes interleaved, the first one rotating: drift and position hit all alike.
        for (let m = 0; m < MODES.length; m++) {
          const mode = MODES[(r + m) % MODES.length] as Mode;
          await modes.enter(mode);
          // Every run starts alike: an empty table, and no checkpoint due mid-run (the
          // full-page writes after one would burden whichever mode ran then).
          await pool.query("TRUNCATE orders_inbox");
          if (checkpoints) {
            await pool.query("CHECKPOINT").catch(() => {
              checkpoints = false;
            });
          }
          const sender = mode === "wal" ? modes.walsenderPid() : null;
          const senderBefore = sender ? await processCpuSeconds(sender) : null;
          const reactorBefore = process.cpuUsage();
          runs[mode].push(await tps(pgbench, url, script, clients, seconds));
          const used = process.cpuUsage(reactorBefore);
          reactorCores[mode].push((used.user + used.system) / 1e6 / seconds);
          const senderAfter = sender ? await processCpuSeconds(sender) : null;
          if (senderBefore !== null && senderAfter !== null) {
            walsenderCores.push((senderAfter - senderBefore) / seconds);
          }
        }
      }
      const median = (xs: number[]) =>
        [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
      const none = median(runs.none);
      const percent = (x: number) => Number(((x / none) * 100).toFixed(1));
      results.push({
        clients,
        tpsNone: Math.round(none),
        tpsWal: Math.round(median(runs.wal)),
        tpsNotify: Math.round(median(runs.notify)),
        walPercentOfNone: percent(median(runs.wal)),
        notifyPercentOfNone: percent(median(runs.notify)),
        ...(walsenderCores.length
          ? { walsenderCores: Number(median(walsenderCores).toFixed(2)) }
          : {}),
        reactorCoresWal: Number(median(reactorCores.wal).toFixed(2)),
        reactorCoresNotify: Number(median(reactorCores.notify).toFixed(2)),
      });
      samples.push({ clients, ...runs });
    }
  } finally {
    await modes.close();
    await pool.end();
    await rm(script, { force: true });
  }
  return {
    seconds,
    repeats,
    checkpointBeforeEachRun: checkpoints,
    target: "wal within 10 % of none at 8 and 32 writers",
    results,
    samples,
  };
}
