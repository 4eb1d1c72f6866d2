import { readFile } from "node:fs/promises";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { MIN_RELOAD_GAP_MS } from "../src/reactor/settings.js";
import { defaultSettings, formatSetting } from "../src/reactor/settings-spec.js";
import { renderSettingsSql, renderSettingsTable } from "../src/reactor/settings-sql.js";
import { SETTINGS, type SettingName } from "../src/workloads/index.js";
import {
  createTestDatabase,
  insertOrders,
  setSetting,
  type TestDatabase,
  terminateListener,
  waitFor,
} from "./helpers/db.js";
import { metricTotal, startReactor, startReplicas } from "./helpers/reactor.js";

/** A valid value different from each key's default. */
const CHANGED: Record<SettingName, string> = {
  uploads_enabled: "off",
  deliveries_enabled: "No",
  poll_interval_seconds: "7",
  lease_seconds: "60",
  upload_batch_size: "25",
  upload_concurrency: "3",
  upload_rate_limit_per_minute: "500",
  delivery_concurrency: "8",
  delivery_timeout_seconds: "5",
  delivery_retry_schedule_seconds: "1, 2,3",
  retention_days: "30",
  log_level: "DEBUG",
  shipments_enabled: "false",
  shipment_sync_interval_seconds: "600",
  // `wal` has tests of its own (test/wal.test.ts); the switch needs a logical server.
  wake_source: " NOTIFY ",
};

describe("live configuration", () => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  const apps: App[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    fake = await startFakeShipStation();
  });
  afterEach(async () => {
    await Promise.all(apps.splice(0).map((a) => a.stop(1_000)));
    await db.pool.query("DELETE FROM configuration_params");
    await db.pool.query("TRUNCATE orders_inbox");
    fake.received.clear();
    fake.calls.length = 0;
  });
  afterAll(async () => {
    await fake.close();
    await db.drop();
  });

  it("the committed SQL validation and the README table are generated from the one settings list", async () => {
    expect(
      await readFile(new URL("../sql/030_reactor_settings.sql", import.meta.url), "utf8"),
    ).toBe(renderSettingsSql(SETTINGS));
    expect(await readFile(new URL("../README.md", import.meta.url), "utf8")).toContain(
      renderSettingsTable(SETTINGS),
    );
  });

  it("every key takes effect on two running reactors without a restart, typed in /status", async () => {
    const [a, b] = (await startReplicas(2, { databaseUrl: db.url, shipstationUrl: fake.url })) as [
      App,
      App,
    ];
    apps.push(a, b);
    for (const [name, value] of Object.entries(CHANGED)) await setSetting(db.pool, name, value);
    const expected = {
      ...defaultSettings(SETTINGS),
      uploads_enabled: false,
      deliveries_enabled: false,
      poll_interval_seconds: 7,
      lease_seconds: 60,
      upload_batch_size: 25,
      upload_concurrency: 3,
      upload_rate_limit_per_minute: 500,
      delivery_concurrency: 8,
      delivery_timeout_seconds: 5,
      delivery_retry_schedule_seconds: [1, 2, 3],
      retention_days: 30,
      log_level: "debug",
      shipments_enabled: false,
      shipment_sync_interval_seconds: 600,
    };
    for (const app of [a, b]) {
      await waitFor(() => JSON.stringify(app.settings.current) === JSON.stringify(expected), {
        what: "settings",
      });
      const { buildStatus } = await import("../src/http/status.js");
      expect((await buildStatus(app)).settings).toEqual(expected);
      expect(app.reactor.workloads.every((w) => !w.enabled())).toBe(true);
      expect(app.reactor.workloads.find((w) => w.name === "uploads")?.unitSize()).toBe(25);
      expect(app.reactor.workloads.find((w) => w.name === "deliveries")?.concurrency()).toBe(8);
    }
    expect(Object.keys(CHANGED).sort()).toEqual(Object.keys(SETTINGS).sort());
  });

  it("uploads disabled: orders stay pending; enabled again: uploaded at once", async () => {
    await setSetting(db.pool, "upload_rate_limit_per_minute", "100000");
    const app = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(app);
    await setSetting(db.pool, "uploads_enabled", "false");
    await waitFor(() => app.settings.current.uploads_enabled === false);
    await insertOrders(db.pool, 5);
    // Nothing may be sent while disabled; the poll also sees the flag. A drain the poll or
    // the NOTIFY started would have sent them by the time the drainer is idle again.
    await app.reactor.poll.pollNow();
    await waitFor(() => app.reactor.drainers.get("uploads")?.state().running === false, {
      what: "the uploads drainer idle",
    });
    const pending = await db.pool.query(
      "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'pending'",
    );
    expect(pending.rows[0].n).toBe(5);
    expect(fake.calls).toHaveLength(0);
    await setSetting(db.pool, "uploads_enabled", "true");
    await waitFor(() => fake.received.size === 5, {
      timeoutMs: 5_000,
      what: "uploads after re-enable",
    });
  });

  it("a new poll interval reschedules the safety poll", async () => {
    await setSetting(db.pool, "poll_interval_seconds", "3600");
    const app = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(app);
    const before = app.reactor.poll.lastPollAt()?.getTime() ?? 0;
    await setSetting(db.pool, "poll_interval_seconds", "1");
    await waitFor(() => (app.reactor.poll.lastPollAt()?.getTime() ?? 0) > before, {
      timeoutMs: 5_000,
      what: "a poll",
    });
  });

  it("log_level switches the logger live", async () => {
    const app = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(app);
    await setSetting(db.pool, "log_level", "error");
    await waitFor(() => app.settings.current.log_level === "error");
    expect(app.logger.level).toBe("error");
  });

  it.each([
    [
      "poll_interval_seconds",
      "abc",
      "reactor.poll_interval_seconds must be an integer from 1 to 3600, got 'abc'",
    ],
    [
      "poll_interval_seconds",
      "0",
      "reactor.poll_interval_seconds must be an integer from 1 to 3600, got '0'",
    ],
    [
      "upload_batch_size",
      "101",
      "reactor.upload_batch_size must be an integer from 1 to 100, got '101'",
    ],
    [
      "uploads_enabled",
      "maybe",
      "reactor.uploads_enabled must be a boolean (true/false, 1/0, yes/no, on/off), got 'maybe'",
    ],
    [
      "log_level",
      "it's loud",
      "reactor.log_level must be one of fatal, error, warn, info, debug, trace, silent, got 'it''s loud'",
    ],
    [
      "log_level",
      null,
      "reactor.log_level must be one of fatal, error, warn, info, debug, trace, silent, got NULL",
    ],
    [
      "delivery_retry_schedule_seconds",
      "5,,10",
      "reactor.delivery_retry_schedule_seconds must be 1 to 30 comma-separated integers, each from 1 to 86400, got '5,,10'",
    ],
    [
      "nonsense",
      "1",
      /^unknown setting reactor\.nonsense: expected one of poll_interval_seconds, lease_seconds, /,
    ],
  ])(
    "refuses %s = %s at write time with a message naming key, value and expectation",
    async (name, value, message) => {
      const err = await db.pool
        .query(
          "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', $1, $2)",
          [name, value],
        )
        .then(
          () => null,
          (e: Error) => e,
        );
      expect(err).not.toBeNull();
      if (typeof message === "string") expect(err?.message).toBe(message);
      else expect(err?.message).toMatch(message);
      const { rows } = await db.pool.query("SELECT count(*)::int AS n FROM configuration_params");
      expect(rows[0].n).toBe(0);
    },
  );

  it("the reactor gives the same message as the trigger for a value that slipped past it", async () => {
    for (const [name, value] of [
      ["poll_interval_seconds", "abc"],
      ["log_level", "it's loud"],
    ] as const) {
      const client = new pg.Client({ connectionString: db.url });
      await client.connect();
      await client.query(
        "ALTER TABLE configuration_params DISABLE TRIGGER reactor_validate_setting",
      );
      await client.query(
        "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', $1, $2)",
        [name, value],
      );
      await client.query(
        "ALTER TABLE configuration_params ENABLE TRIGGER reactor_validate_setting",
      );
      await client.end();
    }
    const app = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(app);
    // The bad values are refused, counted, and the defaults (last good values) stay.
    expect(app.settings.current.poll_interval_seconds).toBe(30);
    expect(await metricTotal(app.metrics.configRejected)).toBe(2);
    // A good value is taken; a later bad one keeps that good value, not the default.
    await db.pool.query(
      "UPDATE configuration_params SET value = '45' WHERE parameter_name = 'poll_interval_seconds'",
    );
    await waitFor(() => app.settings.current.poll_interval_seconds === 45);
    await db.pool.query(
      "ALTER TABLE configuration_params DISABLE TRIGGER reactor_validate_setting",
    );
    await db.pool.query(
      "UPDATE configuration_params SET value = '-1' WHERE parameter_name = 'poll_interval_seconds'",
    );
    await db.pool.query("ALTER TABLE configuration_params ENABLE TRIGGER reactor_validate_setting");
    await waitFor(async () => (await metricTotal(app.metrics.configRejected)) >= 3);
    expect(app.settings.current.poll_interval_seconds).toBe(45);
  });

  it("ignores other categories and rows with a sku; DELETE returns a key to its default", async () => {
    const app = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(app);
    await db.pool.query(
      `INSERT INTO configuration_params (category, parameter_name, value, sku) VALUES
       ('shipping', 'poll_interval_seconds', 'abc', NULL),
       ('reactor', 'poll_interval_seconds', '999', 'SKU-1')`,
    );
    await setSetting(db.pool, "upload_concurrency", "5");
    await waitFor(() => app.settings.current.upload_concurrency === 5);
    expect(app.settings.current.poll_interval_seconds).toBe(30);
    await db.pool.query(
      "DELETE FROM configuration_params WHERE category = 'reactor' AND parameter_name = 'upload_concurrency'",
    );
    await waitFor(() => app.settings.current.upload_concurrency === 2);
  });

  it("a burst of 100 updates in one second causes a bounded number of reloads and ends on the last value", async () => {
    const app = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(app);
    await setSetting(db.pool, "retention_days", "1");
    await waitFor(() => app.settings.current.retention_days === 1);
    const before = await metricTotal(app.metrics.configReloads);
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    const started = Date.now();
    for (let i = 2; i <= 101; i++) {
      await client.query(
        "UPDATE configuration_params SET value = $1 WHERE parameter_name = 'retention_days'",
        [String(i)],
      );
    }
    await client.end();
    await waitFor(() => app.settings.current.retention_days === 101, { what: "the last value" });
    const reloads = (await metricTotal(app.metrics.configReloads)) - before;
    expect(reloads).toBeGreaterThan(0);
    // Coalesced: fewer reads than notifications, and never more than one per gap (plus
    // the first, read at once), however slowly the machine ran the burst.
    expect(reloads).toBeLessThan(100);
    expect(reloads).toBeLessThanOrEqual(Math.ceil((Date.now() - started) / MIN_RELOAD_GAP_MS) + 1);
  });

  it("a change made while the listener was disconnected is applied after the reconnect", async () => {
    await setSetting(db.pool, "poll_interval_seconds", "3600");
    const app = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(app);
    const client = await db.pool.connect();
    try {
      await client.query("BEGIN");
      // Waits until the listener's backend is gone, so this commit's NOTIFY reaches nobody.
      expect(await terminateListener(client, 5000)).toEqual([{ ok: true }]);
      await client.query(
        "UPDATE configuration_params SET value = '2' WHERE category = 'reactor' AND parameter_name = 'poll_interval_seconds'",
      );
      await client.query(
        "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'upload_batch_size', '9')",
      );
      await client.query("COMMIT");
    } finally {
      client.release();
    }
    await waitFor(() => app.settings.current.upload_batch_size === 9, {
      timeoutMs: 15_000,
      what: "reconnect reload",
    });
    expect(app.reactor.listener().state().reconnects).toBeGreaterThanOrEqual(1);
    expect(formatSetting(app.settings.current.poll_interval_seconds)).toBe("2");
  });
});
