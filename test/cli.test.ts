// The operator CLI as people run it: a child process (`node --import tsx src/cli.ts …`)
// against a fresh database. It agrees with the admin API (retry refusals, the SSRF
// policy, input rules in words), bounds every connection and statement in time, and
// reports every failure as one line on stderr, with no stack and no password.
import { once } from "node:events";
import { type AddressInfo, createServer, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SETTINGS, WORKLOADS } from "../src/workloads/index.js";
import { createTestDatabase, type TestDatabase, validPayload } from "./helpers/db.js";
import { spawnEntry } from "./helpers/process.js";

/** Runs the CLI to its end; returns the exit code and everything it printed. */
async function cli(args: string[], env: Record<string, string>) {
  const proc = spawnEntry("src/cli.ts", env, args);
  const { code } = await proc.exited;
  return { code, output: proc.output() };
}

/** A failure: exit 1 and exactly one line, `pg-reactor: …` (or commander's `error: …`). */
function expectOneLineError(result: { code: number | null; output: string }, message: RegExp) {
  expect(result.code, result.output).toBe(1);
  const lines = result.output.trimEnd().split("\n");
  expect(lines, result.output).toHaveLength(1);
  expect(lines[0]).toMatch(message);
  expect(result.output).not.toMatch(/^\s+at /m);
}

/** A TCP server on 127.0.0.1 that accepts connections and never says a word. */
async function silentServer() {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => undefined);
    socket.on("close", () => sockets.delete(socket));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    port: (server.address() as AddressInfo).port,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe("CLI", () => {
  let db: TestDatabase;
  let env: Record<string, string>;

  beforeAll(async () => {
    db = await createTestDatabase();
    env = { DATABASE_URL: db.url };
  });
  afterAll(async () => {
    await db.drop();
  });

  async function insertOrder(state: "pending" | "failed", error = "ShipStation refused") {
    const { rows } = await db.pool.query(
      `INSERT INTO orders_inbox (order_number, payload, upload_state, last_error)
       VALUES ('cli-' || gen_random_uuid(), $1::jsonb, $2, $3) RETURNING id::int AS id`,
      [JSON.stringify(validPayload()), state, state === "failed" ? error : null],
    );
    return rows[0].id as number;
  }
  const stateOf = async (id: number) =>
    (await db.pool.query("SELECT upload_state FROM orders_inbox WHERE id = $1", [id])).rows[0]
      ?.upload_state;

  it("status before migrate says to run migrate, in one line, and exits 1", async () => {
    const empty = await createTestDatabase({ migrated: false });
    try {
      expectOneLineError(
        await cli(["status"], { DATABASE_URL: empty.url }),
        /^pg-reactor: the database is not migrated: run `pg-reactor migrate` first$/,
      );
    } finally {
      await empty.drop();
    }
  });

  it("retry --id: a missing row or one that is not failed exits 1 with the reason; a failed row goes back to pending", async () => {
    const pending = await insertOrder("pending");
    const failed = await insertOrder("failed");
    const [missing, notFailed, ok] = await Promise.all([
      cli(["retry", "--failed", "orders", "--id", "999999999"], env),
      cli(["retry", "--failed", "orders", "--id", String(pending)], env),
      cli(["retry", "--failed", "orders", "--id", String(failed)], env),
    ]);
    expectOneLineError(missing, /^pg-reactor: no orders row with id 999999999$/);
    expectOneLineError(
      notFailed,
      new RegExp(
        `^pg-reactor: orders row ${pending} is pending, not failed; only failed rows can be retried$`,
      ),
    );
    expect(ok.code, ok.output).toBe(0);
    expect(ok.output).toBe(`retried orders row ${failed}\n`);
    expect(await stateOf(failed)).toBe("pending");
  });

  it("a retry with no filter needs --all; --error-contains and --all retry what they say", async () => {
    const a = await insertOrder("failed", "invalid order: bad sku");
    const b = await insertOrder("failed", "HTTP 500 from ShipStation");
    const noFilter = await cli(["retry", "--failed", "deliveries"], env);
    expectOneLineError(
      noFilter,
      /^pg-reactor: say which failed rows to retry: --id <id>, --error-contains <text> or --all$/,
    );
    const conflict = await cli(["retry", "--failed", "orders", "--id", "1", "--all"], env);
    expectOneLineError(conflict, /^error: option '--id <id>' cannot be used with option '--all'$/);
    expect(await stateOf(a)).toBe("failed");

    const some = await cli(["retry", "--failed", "orders", "--error-contains", "BAD SKU"], env);
    expect(some.output).toBe("retried 1 failed orders\n");
    expect([await stateOf(a), await stateOf(b)]).toEqual(["pending", "failed"]);
    const all = await cli(["retry", "--failed", "orders", "--all"], env);
    expect(all.code, all.output).toBe(0);
    expect(await stateOf(b)).toBe("pending");
  });

  it("status shows every workload of the list, shipments included, and every setting with its value", async () => {
    const r = await cli(["status"], env);
    expect(r.code, r.output).toBe(0);
    const status = JSON.parse(r.output);
    expect(Object.keys(status.workloads)).toEqual(WORKLOADS.map((m) => m.name));
    expect(Object.keys(status.workloads)).toContain("shipments");
    expect(Object.keys(status.settings)).toEqual(Object.keys(SETTINGS));
    expect(status.settings).toMatchObject({
      shipments_enabled: "true",
      shipment_sync_interval_seconds: "120",
      upload_rate_limit_per_minute: "40",
    });
    expect(status.invalidSettings).toEqual([]);
  });

  it("retry --failed notifications: --id (missing, not failed, failed), --error-contains and --all, like the other rows", async () => {
    const { rows } = await db.pool.query<{ id: number }>(
      `INSERT INTO shipstation_notifications (resource_type, resource_url, state, last_error)
       VALUES ('SHIP_NOTIFY', 'https://ssapi.shipstation.com/shipments?batchId=1', 'failed', 'HTTP 503 from ShipStation'),
              ('SHIP_NOTIFY', 'https://ssapi.shipstation.com/shipments?batchId=2', 'failed', 'HTTP 400: bad batch'),
              ('SHIP_NOTIFY', 'https://ssapi.shipstation.com/shipments?batchId=3', 'failed', 'HTTP 400: bad batch'),
              ('SHIP_NOTIFY', 'https://ssapi.shipstation.com/shipments?batchId=4', 'done', NULL)
       RETURNING id::int AS id`,
    );
    const [first, second, third, done] = rows.map((r) => r.id) as [number, number, number, number];
    const stateOfNotification = async (id: number) =>
      (await db.pool.query("SELECT state FROM shipstation_notifications WHERE id = $1", [id]))
        .rows[0]?.state;

    const [missing, notFailed, one] = await Promise.all([
      cli(["retry", "--failed", "notifications", "--id", "999999999"], env),
      cli(["retry", "--failed", "notifications", "--id", String(done)], env),
      cli(["retry", "--failed", "notifications", "--id", String(first)], env),
    ]);
    expectOneLineError(missing, /^pg-reactor: no notifications row with id 999999999$/);
    expectOneLineError(
      notFailed,
      new RegExp(
        `^pg-reactor: notifications row ${done} is done, not failed; only failed rows can be retried$`,
      ),
    );
    expect(one.output).toBe(`retried notifications row ${first}\n`);
    expect(await stateOfNotification(first)).toBe("pending");

    expectOneLineError(
      await cli(["retry", "--failed", "notifications"], env),
      /^pg-reactor: say which failed rows to retry: --id <id>, --error-contains <text> or --all$/,
    );
    const some = await cli(
      ["retry", "--failed", "notifications", "--error-contains", "BAD BATCH", "--limit", "1"],
      env,
    );
    expect(some.output).toBe("retried 1 failed notifications\n");
    expect([await stateOfNotification(second), await stateOfNotification(third)]).toEqual([
      "pending",
      "failed",
    ]);
    const all = await cli(["retry", "--failed", "notifications", "--all"], env);
    expect(all.output).toBe("retried 1 failed notifications\n");
    expect(await stateOfNotification(third)).toBe("pending");
    expect(await stateOfNotification(done)).toBe("done");
  });

  it("retry --failed with an unknown kind of row names the choices, and which workload's rows they are", async () => {
    for (const kind of ["bogus", "shipments"]) {
      expectOneLineError(
        await cli(["retry", "--failed", kind, "--all"], env),
        new RegExp(
          `^error: option '--failed <rows>' argument '${kind}' is invalid\\. expected orders, deliveries or notifications \\(workload uploads → orders, shipments → notifications\\)$`,
        ),
      );
    }
  });

  it("subscriptions add refuses private addresses unless allowed, by the same policy as deliveries", async () => {
    const refused = await Promise.all(
      [
        "http://127.0.0.1:9/x",
        "http://localhost:9/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest",
        "http://[::127.0.0.1]/h",
        "http://[::ffff:10.0.0.1]/h",
      ].map((url) => cli(["subscriptions", "add", url], env)),
    );
    for (const r of refused)
      expectOneLineError(
        r,
        /^pg-reactor: refused: .* resolves to .*; webhooks only go to public addresses and to the networks listed in WEBHOOK_ALLOWED_NETWORKS/,
      );
    const count = async () =>
      (await db.pool.query("SELECT count(*)::int AS n FROM webhook_subscriptions")).rows[0].n;
    expect(await count()).toBe(0);

    const [listed, unlisted, open] = await Promise.all([
      cli(["subscriptions", "add", "http://127.0.0.1:9/listed"], {
        ...env,
        WEBHOOK_ALLOWED_NETWORKS: "127.0.0.1/32",
      }),
      cli(["subscriptions", "add", "http://10.0.0.1/unlisted"], {
        ...env,
        WEBHOOK_ALLOWED_NETWORKS: "127.0.0.1/32",
      }),
      cli(["subscriptions", "add", "http://10.0.0.1/open"], {
        ...env,
        WEBHOOK_ALLOW_PRIVATE_NETWORKS: "true",
      }),
    ]);
    expect(listed.code, listed.output).toBe(0);
    expect(JSON.parse(listed.output).secret).toMatch(/^whsec_/);
    expectOneLineError(unlisted, /^pg-reactor: refused: 10\.0\.0\.1 resolves to 10\.0\.0\.1/);
    expect(open.code, open.output).toBe(0);
    expect(await count()).toBe(2);
  });

  it("subscriptions add refuses bad input in words, never in PostgreSQL's", async () => {
    const open = { ...env, WEBHOOK_ALLOW_PRIVATE_NETWORKS: "true" };
    const results = await Promise.all([
      cli(["subscriptions", "add", "ftp://files.example/x"], open),
      cli(["subscriptions", "add", "http://x.example/a b"], open),
      cli(["subscriptions", "add", "http://10.0.0.9/x", "--event-types", "order..x"], open),
      cli(["subscriptions", "add", "http://10.0.0.9/x", "--description", "d".repeat(501)], open),
    ]);
    const expected = [
      /^pg-reactor: url must be an http:\/\/ or https:\/\/ URL without spaces or control characters$/,
      /^pg-reactor: url must be an http:\/\/ or https:\/\/ URL without spaces or control characters$/,
      /^pg-reactor: event type "order\.\.x" must be a dot-separated name/,
      /^pg-reactor: description must be at most 500 characters$/,
    ];
    for (const [i, r] of results.entries()) {
      expectOneLineError(r, expected[i] as RegExp);
      expect(r.output).not.toMatch(/violates|constraint "|relation "/);
    }
  });

  it("subscriptions: list, disable, enable, rotate and delete; a missing id exits 1", async () => {
    const created = await cli(
      ["subscriptions", "add", "http://10.0.0.7/life", "--event-types", "order.*"],
      {
        ...env,
        WEBHOOK_ALLOW_PRIVATE_NETWORKS: "true",
      },
    );
    const { id, secret } = JSON.parse(created.output) as { id: number; secret: string };
    const list = await cli(["subscriptions", "list"], env);
    expect(list.output).not.toContain("whsec_");
    expect(JSON.parse(list.output).map((s: { id: number }) => s.id)).toContain(id);

    const disabled = JSON.parse((await cli(["subscriptions", "disable", String(id)], env)).output);
    expect(disabled).toMatchObject({
      id,
      enabled: false,
      disabled_reason: "disabled by an operator",
    });
    const enabled = JSON.parse((await cli(["subscriptions", "enable", String(id)], env)).output);
    expect(enabled).toMatchObject({ id, enabled: true, disabled_reason: null });
    const rotated = JSON.parse(
      (await cli(["subscriptions", "rotate", String(id), "--grace-hours", "2"], env)).output,
    );
    expect(rotated.secret).toMatch(/^whsec_/);
    expect(rotated.secret).not.toBe(secret);

    const deleted = await cli(["subscriptions", "delete", String(id)], env);
    expect(deleted.output).toBe(`deleted subscription ${id}\n`);
    const again = await Promise.all([
      cli(["subscriptions", "delete", String(id)], env),
      cli(["subscriptions", "enable", String(id)], env),
      cli(["subscriptions", "rotate", String(id)], env),
    ]);
    for (const r of again)
      expectOneLineError(r, new RegExp(`^pg-reactor: no subscription with id ${id}$`));
    expectOneLineError(
      await cli(["subscriptions", "delete", "abc"], env),
      /^error: command-argument value 'abc' is invalid for argument 'id'\. expected a positive integer$/,
    );
  });

  it("a database that accepts TCP and never answers: a clear error, not a hang, and no password", async () => {
    const silent = await silentServer();
    try {
      const url = `postgres://rel:TopSecret-123@127.0.0.1:${silent.port}/app`;
      const results = await Promise.all(
        [
          ["status"],
          ["retry", "--failed", "orders", "--all"],
          ["subscriptions", "list"],
          ["migrate"],
        ].map((args) => cli(args, { DATABASE_URL: url })),
      );
      for (const r of results) {
        expectOneLineError(
          r,
          new RegExp(
            `^pg-reactor: cannot reach the database at postgres://rel:\\*\\*\\*@127\\.0\\.0\\.1:${silent.port}/app: no answer within 5 s \\(connect timeout`,
          ),
        );
        expect(r.output).not.toContain("TopSecret-123");
      }
    } finally {
      await silent.close();
    }
  });

  it("a statement the database does not answer (a table locked by an app) fails after --statement-timeout", async () => {
    const locker = await db.pool.connect();
    try {
      await locker.query("BEGIN");
      await locker.query("LOCK TABLE orders_inbox IN ACCESS EXCLUSIVE MODE");
      const r = await cli(["--statement-timeout", "1", "status"], env);
      expectOneLineError(
        r,
        /^pg-reactor: the database did not answer within 1 s \(statement timeout; --statement-timeout changes it\)$/,
      );
    } finally {
      await locker.query("ROLLBACK");
      locker.release();
    }
  });

  it.each([
    [
      "SHIPSTATION_WEBHOOK_TOKEN",
      "TopSecret-123",
      /^pg-reactor: SHIPSTATION_WEBHOOK_TOKEN must be 24-200 characters of letters, digits, _ and - \(it is a URL path segment and a secret\)$/,
    ],
    [
      "SHIPSTATION_WEBHOOK_TOKEN",
      "TopSecret-123/with-a-slash-in-the-middle",
      /^pg-reactor: SHIPSTATION_WEBHOOK_TOKEN must be 24-200 characters/,
    ],
    [
      "PUBLIC_URL",
      "ftp://reactor.example.com",
      /^pg-reactor: PUBLIC_URL must be an http:\/\/ or https:\/\/ URL.*, got "ftp:\/\/reactor\.example\.com"$/,
    ],
    [
      "PUBLIC_URL",
      "reactor.example.com",
      /^pg-reactor: PUBLIC_URL must be an http:\/\/ or https:\/\/ URL.*, got "reactor\.example\.com"$/,
    ],
  ])(
    "a bad %s is one line naming it, and a token is never echoed",
    async (name, value, message) => {
      const r = await cli(["status"], { DATABASE_URL: db.url, [name]: value });
      expectOneLineError(r, message);
      expect(r.output).not.toContain("TopSecret-123");
    },
  );

  // PUBLIC_URL is the base of the SHIP_NOTIFY target, which is logged (a password would
  // be) and gets the hook's path appended (after a query or a fragment, the token would
  // land in them).
  it.each([
    ["https://user:TopSecret-123@reactor.example.com"],
    ["https://reactor.example.com/?via=proxy"],
    ["https://reactor.example.com/#hooks"],
  ])("PUBLIC_URL %s (credentials, a query or a fragment) is refused in one line", async (value) => {
    const r = await cli(["status"], { DATABASE_URL: db.url, PUBLIC_URL: value });
    expectOneLineError(r, /^pg-reactor: PUBLIC_URL must be an http:\/\/ or https:\/\/ URL/);
    expect(r.output).not.toContain("TopSecret-123");
  });

  it.each([
    ["DATABASE_URL", "postgres://rel:TopSecret-123@db.internal:99999/app"],
    ["DATABASE_URL", "postgres://rel:TopSecret-123@[db.internal/app"],
    ["LISTEN_DATABASE_URL", "mysql://rel:TopSecret-123@db.internal/app"],
    ["SHIPSTATION_BASE_URL", "ftp://key:TopSecret-123@ssapi.example"],
  ])("a malformed %s is reported in one line without its password", async (name, value) => {
    const r = await cli(["status"], { DATABASE_URL: db.url, [name]: value });
    expectOneLineError(r, new RegExp(`^pg-reactor: ${name} must be .*, got ".*\\*\\*\\*@`));
    expect(r.output).not.toContain("TopSecret-123");
  });
});
