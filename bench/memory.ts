// Memory of one replica as production runs it: its own process, the compiled service
// (`node dist/main.js`), uploading to a fake ShipStation in the bench process. RSS is read
// from /proc at idle and, every 100 ms, while a backlog of 100,000 orders drains.
import { type ChildProcess, spawn } from "node:child_process";
import pg from "pg";
import { startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { sampleOrderPayload } from "../src/demo/sample-order.js";
import { NODE_ENV_DEFAULTS, NODE_FLAGS } from "../src/runtime-flags.js";
import { freshDatabase, sleep } from "./lib.js";
import { buildChildren, ROOT, rssMiB } from "./procs.js";
import { withSettings } from "./reactor.js";

/** Idle is measured after the replica has been ready and quiet this long. */
const IDLE_SETTLE_MS = 15_000;

async function until(check: () => Promise<boolean>, what: string, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`bench: timed out waiting for ${what}`);
    await sleep(100);
  }
}

export async function replicaMemory(adminUrl: string, backlog: number) {
  // The image runs the compiled service; tsx would add its own transpiler to the RSS.
  await buildChildren();
  const url = await freshDatabase(adminUrl);
  await withSettings(url, { upload_rate_limit_per_minute: "100000" });
  const fake = await startFakeShipStation();
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  let child: ChildProcess | null = null;
  try {
    child = spawn(process.execPath, [...NODE_FLAGS, "dist/main.js"], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? "",
        HOME: process.env.HOME ?? "",
        ...NODE_ENV_DEFAULTS,
        DATABASE_URL: url,
        HTTP_PORT: "0",
        SHIPSTATION_BASE_URL: fake.url,
        SHIPSTATION_API_KEY: "bench",
        SHIPSTATION_API_SECRET: "bench",
        LOG_LEVEL: "warn",
      },
      stdio: ["ignore", "ignore", "ignore"],
    });
    const pid = child.pid as number;
    await until(
      async () =>
        ((
          await db.query(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pg-reactor listener'",
          )
        ).rowCount ?? 0) > 0,
      "the replica listening",
      60_000,
    );
    await sleep(IDLE_SETTLE_MS);
    const idle = await rssMiB(pid);
    await db.query(
      `INSERT INTO orders_inbox (order_number, payload)
       SELECT 'mem-' || g, $1::jsonb FROM generate_series(1, $2::int) g`,
      [JSON.stringify(sampleOrderPayload()), backlog],
    );
    const t0 = performance.now();
    let peak = idle ?? 0;
    const sampler = setInterval(() => {
      void rssMiB(pid).then((mib) => {
        if (mib !== null && mib > peak) peak = mib;
      });
    }, 100);
    try {
      await until(async () => fake.received.size >= backlog, `${backlog} orders uploaded`, 600_000);
    } finally {
      clearInterval(sampler);
    }
    const seconds = (performance.now() - t0) / 1000;
    const after = await rssMiB(pid);
    return {
      backlog,
      idleRssMiB: idle,
      backlogPeakRssMiB: peak,
      rssAfterDrainMiB: after,
      drainSeconds: Number(seconds.toFixed(2)),
      perSecond: Math.round(backlog / seconds),
      target: "RSS ≤ 100 MB idle, ≤ 150 MB with a 100,000-row backlog",
    };
  } finally {
    if (child && child.exitCode === null) {
      const exited = new Promise((resolve) => child?.once("exit", resolve));
      child.kill("SIGTERM");
      await Promise.race([exited, sleep(25_000)]);
      if (child.exitCode === null) child.kill("SIGKILL");
    }
    await db.end();
    await fake.close();
  }
}
