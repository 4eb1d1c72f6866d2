// `npm run bench:console`: what the console's live stream costs the reactor. The
// compiled service runs in its own process (as `npm start` runs it, idle, ADMIN_TOKEN
// set); this process opens 0 or 10 server-sent-event streams to it, alternating, and
// reads the service's CPU time from /proc over each window; a second service without
// ADMIN_TOKEN runs beside it as the baseline. Reported: CPU per second without the
// console, with it and 0 consoles, and with 10 (medians over the repeats), the difference, the
// bytes each console receives per second, the history a console gets when it connects,
// and the database transactions per minute in each case.
import { createServer } from "node:net";
import pg from "pg";
import { NODE_ENV_DEFAULTS, NODE_FLAGS } from "../src/runtime-flags.js";
import { freshDatabase, sleep, xactCommits } from "./lib.js";
import { buildChildren, clockTicks, cpuTicks, spawnChild } from "./procs.js";

const CONSOLES = Number(process.env.BENCH_CONSOLES ?? 10);
const WINDOW_SECONDS = Number(process.env.BENCH_CONSOLE_SECONDS ?? 20);
const REPEATS = Number(process.env.BENCH_CONSOLE_REPEATS ?? 3);
const TOKEN = "bench-console-admin-token-0123456789";

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
};

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      srv.close(() =>
        typeof address === "object" && address
          ? resolve(address.port)
          : reject(new Error("no port")),
      );
    });
  });
}

/** One console: reads the stream and counts its bytes until aborted. */
function openConsole(base: string) {
  const abort = new AbortController();
  const counted = { bytes: 0, firstEventBytes: 0 };
  const done = (async () => {
    const res = await fetch(`${base}/console/events`, {
      headers: { authorization: `Bearer ${TOKEN}` },
      signal: abort.signal,
    });
    if (!res.body) throw new Error(`no stream: HTTP ${res.status}`);
    const reader = res.body.getReader();
    let first = "";
    for (;;) {
      const { done: end, value } = await reader.read();
      if (end) break;
      counted.bytes += value.byteLength;
      if (counted.firstEventBytes === 0) {
        // The first event (the history) ends at its first blank line.
        first += Buffer.from(value).toString("latin1");
        const cut = first.indexOf("\n\n");
        if (cut >= 0) counted.firstEventBytes = cut + 2;
      }
    }
  })().catch((err: Error) => {
    if (err.name !== "AbortError") throw err;
  });
  return { counted, close: () => abort.abort(), done };
}

async function main() {
  const adminUrl = process.env.BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
  await buildChildren();
  const url = await freshDatabase(adminUrl);
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const service = spawnChild("reactor", [...NODE_FLAGS, "dist/main.js"], {
    ...NODE_ENV_DEFAULTS,
    DATABASE_URL: url,
    ADMIN_TOKEN: TOKEN,
    HTTP_PORT: String(port),
    LOG_LEVEL: "warn",
  });
  // The same service without ADMIN_TOKEN (no console, no sampler) on its own database, in
  // the same windows: what the console costs before anyone opens it.
  const bareUrl = await freshDatabase(adminUrl);
  const bare = spawnChild("reactor-without-console", [...NODE_FLAGS, "dist/main.js"], {
    ...NODE_ENV_DEFAULTS,
    DATABASE_URL: bareUrl,
    HTTP_PORT: String(await freePort()),
    LOG_LEVEL: "warn",
  });
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  try {
    for (let i = 0; i < 100; i++) {
      const ok = await fetch(`${base}/health/live`).then(
        (r) => r.ok,
        () => false,
      );
      if (ok) break;
      await sleep(200);
    }
    // Past the first safety poll (30 s) and its hourly retention, like the idle bench.
    await sleep(35_000);
    const hz = await clockTicks();
    const measure = async (consoles: number) => {
      const open = Array.from({ length: consoles }, () => openConsole(base));
      await sleep(2_000);
      const bytes0 = open.reduce((sum, c) => sum + c.counted.bytes, 0);
      const x0 = await xactCommits(db);
      const t0 = await cpuTicks(service.pid);
      const b0 = await cpuTicks(bare.pid);
      const started = performance.now();
      await sleep(WINDOW_SECONDS * 1000);
      const t1 = await cpuTicks(service.pid);
      const b1 = await cpuTicks(bare.pid);
      const seconds = (performance.now() - started) / 1000;
      const x1 = await xactCommits(db);
      const bytes1 = open.reduce((sum, c) => sum + c.counted.bytes, 0);
      const history = open[0]?.counted.firstEventBytes ?? 0;
      for (const c of open) c.close();
      await Promise.all(open.map((c) => c.done));
      return {
        cpuMsPerSecond: (((t1 ?? 0) - (t0 ?? 0)) / hz / seconds) * 1000,
        withoutConsoleCpuMsPerSecond: (((b1 ?? 0) - (b0 ?? 0)) / hz / seconds) * 1000,
        // Two of them are this bench's own reads of the counter.
        transactionsPerMinute: ((x1 - x0 - 2) / seconds) * 60,
        bytesPerConsolePerSecond: consoles ? (bytes1 - bytes0) / consoles / seconds : 0,
        historyBytes: history,
      };
    };
    const none: Array<Awaited<ReturnType<typeof measure>>> = [];
    const some: Array<Awaited<ReturnType<typeof measure>>> = [];
    for (let r = 0; r < REPEATS; r++) {
      none.push(await measure(0));
      some.push(await measure(CONSOLES));
    }
    const pick = (list: typeof none, key: keyof (typeof none)[number]) =>
      Number(median(list.map((m) => m[key])).toFixed(2));
    const result = {
      consoles: CONSOLES,
      windowSeconds: WINDOW_SECONDS,
      repeats: REPEATS,
      withoutConsoleCpuMsPerSecond: pick(none, "withoutConsoleCpuMsPerSecond"),
      idleCpuMsPerSecond: pick(none, "cpuMsPerSecond"),
      withConsolesCpuMsPerSecond: pick(some, "cpuMsPerSecond"),
      costCpuMsPerSecond: Number(
        (pick(some, "cpuMsPerSecond") - pick(none, "cpuMsPerSecond")).toFixed(2),
      ),
      idleTransactionsPerMinute: pick(none, "transactionsPerMinute"),
      withConsolesTransactionsPerMinute: pick(some, "transactionsPerMinute"),
      bytesPerConsolePerSecond: pick(some, "bytesPerConsolePerSecond"),
      historyBytesAtConnect: pick(some, "historyBytes"),
      runs: { none, some },
    };
    console.log(JSON.stringify(result, null, 2));
  } finally {
    await db.end();
    await service.stop();
    await bare.stop();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
