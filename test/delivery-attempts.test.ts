// Every HTTP attempt of a delivery is recorded in webhook_delivery_attempts (time,
// duration, status or error, the first 1 KiB of the answer, secrets redacted), written
// by the finalize that records the outcome, deleted with its delivery, and shown through
// the admin API with the delivery, its event and subscription, and each subscription's
// success rate over the last day.
import type { FastifyInstance } from "fastify";
import type pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { newSecret, type Receiver, startReceiver } from "../src/demo/receiver.js";
import { serverUrl, startStatusServer } from "../src/http/server.js";
import { applyRetention } from "../src/workloads/deliveries/maintenance.js";
import { makeDeliveriesQueue } from "../src/workloads/deliveries/queue.js";
import {
  createTestDatabase,
  setSetting,
  subscribe,
  type TestDatabase,
  waitFor,
} from "./helpers/db.js";
import { startReactor } from "./helpers/reactor.js";

const ADMIN_TOKEN = "test-admin-token-attempts-0123456789";

interface AttemptItem {
  id: number;
  attempt: number;
  started_at: string;
  duration_ms: number;
  status: number | null;
  error: string | null;
  response_excerpt: string | null;
}

async function emit(pool: pg.Pool, payload: string = '{"n": 1}'): Promise<string> {
  const { rows } = await pool.query(
    `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
     VALUES ('order', '42', 'order.created', $1::jsonb) RETURNING id`,
    [payload],
  );
  return rows[0].id;
}

async function deliveryOf(pool: pg.Pool, eventId: string): Promise<number> {
  const { rows } = await pool.query("SELECT id FROM webhook_deliveries WHERE event_id = $1", [
    eventId,
  ]);
  return Number(rows[0].id);
}

/** Waits until the event's delivery is in `state` (the finalize has recorded it). */
async function settled(pool: pg.Pool, eventId: string, state: string, timeoutMs = 20_000) {
  return waitFor(
    async () => {
      const { rows } = await pool.query(
        "SELECT id FROM webhook_deliveries WHERE event_id = $1 AND state = $2",
        [eventId, state],
      );
      return rows[0] ? Number(rows[0].id) : null;
    },
    { timeoutMs, what: `the delivery to be ${state}` },
  );
}

async function attemptRows(pool: pg.Pool, deliveryId: number) {
  const { rows } = await pool.query(
    `SELECT attempt, status, error, response_excerpt, octet_length(response_excerpt) AS bytes
     FROM webhook_delivery_attempts WHERE delivery_id = $1 ORDER BY id`,
    [deliveryId],
  );
  return rows;
}

describe("webhook delivery attempts", () => {
  let db: TestDatabase;
  let receiver: Receiver;
  let app: App;
  let server: FastifyInstance;
  let base: string;

  const api = async (path: string, token: string | null = ADMIN_TOKEN) => {
    const res = await fetch(`${base}${path}`, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });
    const text = await res.text();
    return { status: res.status, text, json: text ? JSON.parse(text) : null };
  };

  beforeAll(async () => {
    db = await createTestDatabase();
    receiver = await startReceiver();
    await setSetting(db.pool, "delivery_retry_schedule_seconds", "1,1,1");
    app = await startReactor({ databaseUrl: db.url, env: { ADMIN_TOKEN } });
    server = await startStatusServer(app, app.logger);
    base = serverUrl(server);
  });
  afterEach(async () => {
    await db.pool.query("UPDATE webhook_subscriptions SET enabled = false");
    await waitFor(
      async () =>
        (
          await db.pool.query(
            "SELECT 1 FROM webhook_deliveries WHERE locked_by IS NOT NULL LIMIT 1",
          )
        ).rows.length === 0,
      { what: "no delivery in flight" },
    );
    await db.pool.query(
      "TRUNCATE webhook_delivery_attempts, webhook_deliveries, outbox_events, webhook_subscriptions",
    );
    receiver.requests.length = 0;
    receiver.script.length = 0;
    receiver.fallback = { status: 204 };
  });
  afterAll(async () => {
    await server?.close();
    await app?.stop(1_000);
    await receiver?.close();
    await db?.drop();
  });

  it("a delivery that fails with a 500, then a reset, then succeeds has three attempts, shown oldest first", async () => {
    const sub = await subscribe(db.pool, `${receiver.url}/hook`);
    const idle = await subscribe(db.pool, `${receiver.url}/idle`, { eventTypes: ["other.*"] });
    receiver.script.push(
      { status: 500, body: "database is down, try later" },
      { reset: true },
      { status: 200, body: '{"ok":true}' },
    );
    const event = await emit(db.pool);
    const id = await settled(db.pool, event, "delivered");

    const res = await api(`/admin/deliveries/${id}/attempts`);
    expect(res.status).toBe(200);
    const items = res.json.items as AttemptItem[];
    expect(items.map(({ id: _, started_at: __, duration_ms: ___, ...rest }) => rest)).toEqual([
      {
        attempt: 1,
        status: 500,
        error: "HTTP 500",
        response_excerpt: "database is down, try later",
      },
      {
        attempt: 2,
        status: null,
        error: expect.stringMatching(/^connection failed: /),
        response_excerpt: null,
      },
      { attempt: 3, status: 200, error: null, response_excerpt: '{"ok":true}' },
    ]);
    expect(res.json.next_after_id).toBeNull();
    const starts = items.map((a) => Date.parse(a.started_at));
    // The schedule waits a second (±20 %) between attempts.
    expect(starts[1] as number).toBeGreaterThan((starts[0] as number) + 750);
    expect(starts[2] as number).toBeGreaterThan((starts[1] as number) + 750);
    for (const a of items) {
      expect(a.duration_ms).toBeGreaterThanOrEqual(0);
      expect(a.duration_ms).toBeLessThan(5_000);
    }
    // Pages of one, in the same order.
    const first = await api(`/admin/deliveries/${id}/attempts?limit=1`);
    expect(first.json.items.map((a: AttemptItem) => a.attempt)).toEqual([1]);
    const next = await api(
      `/admin/deliveries/${id}/attempts?limit=2&after_id=${first.json.next_after_id}`,
    );
    expect(next.json.items.map((a: AttemptItem) => a.attempt)).toEqual([2, 3]);
    expect(next.json.next_after_id).toBeNull();

    // The subscription's last day: one success in three attempts; an older one not counted.
    await db.pool.query(
      `INSERT INTO webhook_delivery_attempts (delivery_id, attempt, started_at, duration_ms, status)
       VALUES ($1, 1, now() - interval '25 hours', 3, 200)`,
      [id],
    );
    const list = await api("/admin/subscriptions");
    const recent = Object.fromEntries(
      list.json.items.map((s: { id: number; recent: unknown }) => [s.id, s.recent]),
    );
    expect(recent).toEqual({
      [sub]: { attempts: 3, succeeded: 1, success_rate: 0.3333 },
      [idle]: { attempts: 0, succeeded: 0, success_rate: null },
    });
    const one = await api(`/admin/subscriptions/${sub}`);
    expect(one.json.recent).toEqual({ attempts: 3, succeeded: 1, success_rate: 0.3333 });

    // Rates that cannot be counted in time (here: the table locked by another transaction;
    // in production, millions of attempts a day) are left out; the list still answers.
    const locker = await db.pool.connect();
    try {
      await locker.query("BEGIN");
      await locker.query("LOCK TABLE webhook_delivery_attempts IN ACCESS EXCLUSIVE MODE");
      const slow = await api("/admin/subscriptions");
      expect(slow.status).toBe(200);
      expect(slow.json.items.map((s: { recent: unknown }) => s.recent)).toEqual([null, null]);
    } finally {
      await locker.query("ROLLBACK");
      locker.release();
    }
  });

  it("a timeout is an attempt without a status", async () => {
    await setSetting(db.pool, "delivery_timeout_seconds", "1");
    await waitFor(() => app.settings.current.delivery_timeout_seconds === 1);
    try {
      await subscribe(db.pool, `${receiver.url}/slow`);
      receiver.script.push({ status: 204, delayMs: 2_500 });
      const event = await emit(db.pool);
      const id = await deliveryOf(db.pool, event);
      const rows = await waitFor(async () => {
        const r = await attemptRows(db.pool, id);
        return r.length >= 1 ? r : null;
      });
      expect(rows[0]).toMatchObject({
        attempt: 1,
        status: null,
        error: "timed out after 1 s",
        response_excerpt: null,
      });
    } finally {
      await db.pool.query(
        "DELETE FROM configuration_params WHERE parameter_name = 'delivery_timeout_seconds'",
      );
    }
  });

  it("keeps at most 1 KiB of an answer, cut between characters", async () => {
    await subscribe(db.pool, `${receiver.url}/big`);
    // 1 + 2 × 1000 bytes: byte 1024 falls inside an é.
    const accented = `a${"é".repeat(1000)}`;
    receiver.script.push(
      { status: 500, body: accented },
      { status: 200, body: "x".repeat(100_000) },
    );
    const event = await emit(db.pool);
    const id = await settled(db.pool, event, "delivered");
    const rows = await attemptRows(db.pool, id);
    expect(rows.map((r) => [r.status, r.bytes])).toEqual([
      [500, 1023],
      [200, 1024],
    ]);
    expect(accented.startsWith(rows[0].response_excerpt)).toBe(true);
    expect(rows[1].response_excerpt).toBe("x".repeat(1024));
  });

  it("a secret the receiver echoes is redacted from the excerpt and the error, NULs are dropped", async () => {
    const secret = newSecret();
    const sub = await subscribe(db.pool, `${receiver.url}/echo`, { secret });
    const base64 = secret.slice("whsec_".length);
    // Copies of the secret, the last one cut by the end of the 4 KiB read: once the copies
    // before it shrink to [redacted], its first 20 characters would be in the first KiB.
    const copies = 79;
    const straddling = `${`${secret} `.repeat(copies)}${"z".repeat(4096 - copies * (secret.length + 1) - 20)}${secret}`;
    expect(straddling.indexOf(secret, 4000)).toBe(4076);
    expect(copies * "[redacted] ".length).toBeLessThan(1024 - 20 - 47);
    receiver.script.push(
      {
        status: 400,
        body: `bad signature; expected key ${secret} ("${JSON.stringify(secret).slice(1, -1).replace(/\+/g, "\\u002B")}"), Authorization: Bearer abc123\u0000 end`,
      },
      { status: 500, body: straddling },
    );
    const event = await emit(db.pool);
    const id = await deliveryOf(db.pool, event);
    const rows = await waitFor(async () => {
      const r = await attemptRows(db.pool, id);
      return r.length >= 2 ? r : null;
    });
    expect(rows[0].status).toBe(400);
    expect(rows[0].response_excerpt).toBe(
      'bad signature; expected key [redacted] ("[redacted]"), Authorization: Bearer [redacted] end',
    );
    const { rows: stored } = await db.pool.query(
      `SELECT string_agg(coalesce(a.error, '') || ' ' || coalesce(a.response_excerpt, ''), ' ') AS attempts,
         max(d.last_error) AS last_error
       FROM webhook_delivery_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
       WHERE d.subscription_id = $1`,
      [sub],
    );
    const text = `${stored[0].attempts} ${stored[0].last_error}`;
    // No ten characters of the secret's random part, anywhere.
    for (let i = 0; i + 10 <= base64.length; i++)
      expect(text).not.toContain(base64.slice(i, i + 10));
    expect(rows[1].status).toBe(500);
    expect(text).not.toContain("\u0000");
  });

  it("rows that never made a request log no attempt (subscription disabled, payload too large)", async () => {
    const sub = await subscribe(db.pool, `${receiver.url}/none`);
    await setSetting(db.pool, "deliveries_enabled", "false");
    await waitFor(() => app.settings.current.deliveries_enabled === false);
    try {
      const waitingEvent = await emit(db.pool);
      const huge = await emit(db.pool, JSON.stringify({ blob: "x".repeat(300 * 1024) }));
      await db.pool.query(
        "UPDATE webhook_subscriptions SET enabled = false, disabled_reason = 'test' WHERE id = $1",
        [sub],
      );
      // Both are cancelled for the disabled subscription before the payload is looked at.
      await setSetting(db.pool, "deliveries_enabled", "true");
      await settled(db.pool, waitingEvent, "cancelled");
      await settled(db.pool, huge, "cancelled");
      await db.pool.query("UPDATE webhook_subscriptions SET enabled = true WHERE id = $1", [sub]);
      const again = await emit(db.pool, JSON.stringify({ blob: "x".repeat(300 * 1024) }));
      await settled(db.pool, again, "failed");
      const { rows } = await db.pool.query(
        "SELECT count(*)::int AS n FROM webhook_delivery_attempts",
      );
      expect(rows[0].n).toBe(0);
      expect(receiver.requests).toHaveLength(0);
    } finally {
      await db.pool.query(
        "DELETE FROM configuration_params WHERE parameter_name = 'deliveries_enabled'",
      );
    }
  });

  it("GET /admin/deliveries/:id shows the delivery, its subscription without secrets, and the exact payload", async () => {
    const secret = newSecret();
    const previous = newSecret();
    const sub = await subscribe(db.pool, `${receiver.url}/view`, {
      secret,
      previousSecret: previous,
      eventTypes: ["order.*"],
    });
    const event = await emit(db.pool, '{"big": 12345678901234567890, "note": "ünï"}');
    const id = await settled(db.pool, event, "delivered");
    const res = await api(`/admin/deliveries/${id}`);
    expect(res.status).toBe(200);
    expect(res.text).toContain('"payload":{"big": 12345678901234567890, "note": "ünï"}');
    expect(res.text).not.toContain(secret.slice(6));
    expect(res.text).not.toContain(previous.slice(6));
    expect(res.text).not.toMatch(/secret/);
    expect(res.json).toEqual({
      id,
      state: "delivered",
      attempts: 1,
      next_attempt_at: expect.any(String),
      last_status: 204,
      last_error: null,
      delivered_at: expect.any(String),
      created_at: expect.any(String),
      subscription: {
        id: sub,
        url: `${receiver.url}/view`,
        description: null,
        enabled: true,
        disabled_reason: null,
        event_types: ["order.*"],
      },
      event: {
        id: event,
        event_type: "order.created",
        aggregate_type: "order",
        aggregate_id: "42",
        created_at: expect.any(String),
        payload: { big: Number("12345678901234567890"), note: "ünï" },
      },
    });
  });

  it("the new routes answer 404 for a missing delivery, 400 for a bad id or page, 401 without the token", async () => {
    for (const path of ["/admin/deliveries/987654", "/admin/deliveries/987654/attempts"]) {
      const res = await api(path);
      expect(res.status, path).toBe(404);
      expect(res.json.message).toBe("no delivery with id 987654");
    }
    for (const path of [
      "/admin/deliveries/abc",
      "/admin/deliveries/0",
      "/admin/deliveries/1.5",
      "/admin/deliveries/99999999999999999999/attempts",
      "/admin/deliveries/-1/attempts",
      "/admin/deliveries/1/attempts?limit=0",
      "/admin/deliveries/1/attempts?limit=1001",
      "/admin/deliveries/1/attempts?after_id=x",
      "/admin/deliveries/1/attempts?what=1",
    ]) {
      const res = await api(path);
      expect(res.status, path).toBe(400);
      expect(res.json.message, path).toMatch(/^(params|querystring)\//);
    }
    expect((await api("/admin/deliveries/1", null)).status).toBe(401);
    expect((await api("/admin/deliveries/1/attempts", "wrong-token")).status).toBe(401);
  });
});

describe("attempt log in the finalize", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });

  const attempt = (n: number) => ({
    number: n,
    startedAt: new Date(),
    durationMs: 7,
    status: 503,
    error: "HTTP 503",
    excerpt: "busy",
  });

  it("logs the attempts of recorded rows only: a locked row's once it is recorded, a lost row's never", async () => {
    await subscribe(db.pool, "https://receiver.example/hook");
    for (let i = 0; i < 3; i++) await emit(db.pool);
    // A plain pool: statements go unnamed, as through PgBouncer.
    const queue = makeDeliveriesQueue(db.pool as never);
    const rows = await queue.claim("me", { limit: 10, leaseSeconds: 60, maxAttempts: 5 });
    expect(rows).toHaveLength(3);
    const [mine, locked, lost] = rows.map((r) => r.id) as [number, number, number];
    await db.pool.query("UPDATE webhook_deliveries SET locked_by = 'someone else' WHERE id = $1", [
      lost,
    ]);
    const app = await db.pool.connect();
    try {
      await app.query("BEGIN");
      await app.query("SELECT 1 FROM webhook_deliveries WHERE id = $1 FOR UPDATE", [locked]);
      const outcomes = rows.map((r) => ({
        id: r.id,
        kind: "retry" as const,
        at: new Date(Date.now() + 60_000),
        error: "HTTP 503",
        extra: { last_status: 503 },
        attempt: attempt(r.attempts),
      }));
      const result = await queue.finalize("me", outcomes);
      expect(result).toEqual({ done: [mine], locked: [locked], lost: [lost] });
      const logged = async () =>
        (
          await db.pool.query(
            "SELECT delivery_id::int AS id, attempt, status FROM webhook_delivery_attempts ORDER BY id",
          )
        ).rows;
      expect(await logged()).toEqual([{ id: mine, attempt: 1, status: 503 }]);
      await app.query("COMMIT");
      const again = await queue.finalize(
        "me",
        outcomes.filter((o) => o.id === locked),
      );
      expect(again.done).toEqual([locked]);
      expect(await logged()).toEqual([
        { id: mine, attempt: 1, status: 503 },
        { id: locked, attempt: 1, status: 503 },
      ]);
      // An outcome without an attempt (a hand-back) logs nothing.
      const next = await queue.claim("me", { limit: 10, leaseSeconds: 60, maxAttempts: 5 });
      expect(next).toEqual([]);
    } finally {
      app.release();
    }
  });

  it("retention deletes a delivery's attempts with it", async () => {
    await db.pool.query("TRUNCATE webhook_delivery_attempts, webhook_deliveries, outbox_events");
    const oldEvent = await emit(db.pool);
    const newEvent = await emit(db.pool);
    const queue = makeDeliveriesQueue(db.pool as never);
    const rows = await queue.claim("me", { limit: 10, leaseSeconds: 60, maxAttempts: 5 });
    const result = await queue.finalize(
      "me",
      rows.map((r) => ({
        id: r.id,
        kind: "success" as const,
        extra: { last_status: 200 },
        attempt: { ...attempt(r.attempts), status: 200, error: null },
      })),
    );
    expect(result.done).toHaveLength(2);
    const [oldId, newId] = [
      await deliveryOf(db.pool, oldEvent),
      await deliveryOf(db.pool, newEvent),
    ];
    await db.pool.query(
      `UPDATE webhook_deliveries SET delivered_at = now() - interval '8 days',
         created_at = now() - interval '8 days' WHERE id = $1`,
      [oldId],
    );
    const removed = await applyRetention(db.pool as never, 7);
    expect(removed.deliveries).toBe(1);
    const { rows: left } = await db.pool.query(
      "SELECT delivery_id::int AS id FROM webhook_delivery_attempts",
    );
    expect(left).toEqual([{ id: newId }]);
  });
});
