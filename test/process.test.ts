import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { NODE_ENV_DEFAULTS, NODE_FLAGS } from "../src/runtime-flags.js";
import {
  createTestDatabase,
  setSetting,
  type TestDatabase,
  validPayload,
  waitFor,
} from "./helpers/db.js";
import { spawnCommand, spawnEntry, statusUrl } from "./helpers/process.js";

describe("the process", () => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  beforeAll(async () => {
    db = await createTestDatabase();
    fake = await startFakeShipStation();
  });
  afterAll(async () => {
    await fake.close();
    await db.drop();
  });

  it("SIGTERM lets the in-flight upload finish, releases nothing it finished, and exits 0", async () => {
    await setSetting(db.pool, "upload_rate_limit_per_minute", "100000");
    fake.script.push({ status: 200, delayMs: 1_500 });
    const proc = spawnEntry("src/main.ts", {
      DATABASE_URL: db.url,
      HTTP_PORT: "0",
      SHIPSTATION_BASE_URL: fake.url,
      SHIPSTATION_API_KEY: "k",
      SHIPSTATION_API_SECRET: "s",
    });
    await waitFor(() => proc.output().includes("pg-reactor ready"), {
      timeoutMs: 30_000,
      what: "ready",
    });
    await db.pool.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('SIG-1', 'sig1', $1)",
      [JSON.stringify(validPayload())],
    );
    await waitFor(() => fake.calls.length === 1, { what: "the slow call to start" });
    proc.child.kill("SIGTERM");
    const { code } = await proc.exited;
    expect(code, proc.output()).toBe(0);
    const { rows } = await db.pool.query(
      "SELECT upload_state, locked_by FROM orders_inbox WHERE order_key = 'sig1'",
    );
    expect(rows[0]).toEqual({ upload_state: "uploaded", locked_by: null });
    expect(proc.output()).toContain("stopped cleanly");
  });

  it("npm start builds and runs the compiled service, and a SIGTERM sent to npm stops it cleanly", async () => {
    // Orchestrators and people signal npm, which forwards to its child: that child must be
    // the service itself, not a shell that dies and leaves the service running.
    const proc = spawnCommand("npm", ["start"], { DATABASE_URL: db.url, HTTP_PORT: "0" });
    try {
      const base = await waitFor(() => statusUrl(proc), {
        what: "the status server",
        timeoutMs: 60_000,
      });
      await waitFor(async () => (await fetch(`${base}/health/ready`)).status === 200, {
        what: "ready",
        timeoutMs: 30_000,
      });
      expect(proc.output()).toContain(`node ${NODE_FLAGS.join(" ")} dist/main.js`);
      // npm's child is the service (the script execs it), started with the defaults.
      const service = execFileSync("ps", ["-o", "pid=", "--ppid", String(proc.child.pid)])
        .toString()
        .trim();
      const environ = readFileSync(`/proc/${service}/environ`, "utf8").split("\0");
      for (const [name, value] of Object.entries(NODE_ENV_DEFAULTS))
        expect(environ).toContain(`${name}=${value}`);
      proc.child.kill("SIGTERM");
      const { code } = await proc.exited;
      expect(code, proc.output()).toBe(0);
      expect(proc.output()).toContain("stopped cleanly");
    } finally {
      if (proc.child.exitCode === null) {
        // npm's child (the service) outlives a SIGKILL of npm: end it first.
        const children = (() => {
          try {
            return execFileSync("ps", ["-o", "pid=", "--ppid", String(proc.child.pid)]).toString();
          } catch {
            return ""; // ps exits 1 when there is none
          }
        })();
        for (const pid of children.trim().split(/\s+/).filter(Boolean)) {
          process.kill(Number(pid), "SIGKILL");
        }
        proc.child.kill("SIGKILL");
      }
    }
  });

  it("an invalid environment variable exits 1 with one line naming it", async () => {
    const proc = spawnEntry("src/main.ts", { DATABASE_URL: db.url, HTTP_PORT: "eighty" });
    const { code } = await proc.exited;
    expect(code).toBe(1);
    expect(proc.output().trim()).toBe(
      'pg-reactor: HTTP_PORT must be an integer from 0 to 65535, got "eighty"',
    );
  });

  it("migrate run by three processes at once is safe, and a second run is a no-op", async () => {
    const empty = await createTestDatabase({ migrated: false });
    try {
      const runs = [1, 2, 3].map(() =>
        spawnEntry("src/cli.ts", { DATABASE_URL: empty.url }, ["migrate"]),
      );
      const results = await Promise.all(runs.map((r) => r.exited));
      for (const [i, r] of results.entries()) expect(r.code, runs[i]?.output()).toBe(0);
      const applied = runs.filter((r) => /applied .*010_orders_inbox\.sql/.test(r.output()));
      expect(applied).toHaveLength(1);
      const again = spawnEntry("src/cli.ts", { DATABASE_URL: empty.url }, ["migrate"]);
      expect((await again.exited).code).toBe(0);
      expect(again.output()).toContain("(nothing to do)");
      const client = new pg.Client({ connectionString: empty.url });
      await client.connect();
      const tables = await client.query(
        "SELECT count(*)::int AS n FROM pg_trigger WHERE tgrelid = 'orders_inbox'::regclass AND NOT tgisinternal",
      );
      // Before insert (own keys), before update (re-queue), after insert and after update (NOTIFY).
      expect(tables.rows[0].n).toBe(4);
      const migrations = await client.query(
        "SELECT count(*)::int AS n FROM drizzle.__drizzle_migrations",
      );
      expect(migrations.rows[0].n).toBeGreaterThanOrEqual(1);
      await client.end();
    } finally {
      await empty.drop();
    }
  });
});
