// /metrics as production serves it, and the alert rules built on it: every labelled counter
// exists at 0 from the start (so increase() sees the first failure), Prometheus' own
// linter accepts the exposition with the default process metrics, and the rules in ops/
// fire on the first burst of failures (promtool test rules).
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import type { FastifyInstance } from "fastify";
import { Counter, type Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { newSecret } from "../src/demo/receiver.js";
import { serverUrl, startStatusServer } from "../src/http/server.js";
import {
  COMPLETED_OUTCOMES,
  HTTP_CLASSES,
  makeMetrics,
  primeMetrics,
  WAKE_REASONS,
} from "../src/metrics.js";
import { CONFIG_CHANNEL } from "../src/reactor/reactor.js";
import { createTestDatabase, insertOrders, type TestDatabase, waitFor } from "./helpers/db.js";
import { promtool, requirePromtool } from "./helpers/promtool.js";
import { startReactor } from "./helpers/reactor.js";

const OPS = fileURLToPath(new URL("../ops/", import.meta.url));

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the samples of a Prometheus text exposition (label values here never hold quotes). */
function samples(text: string): Sample[] {
  return text
    .split("\n")
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => {
      const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
      if (!m) throw new Error(`not an exposition sample: ${line}`);
      const labels = Object.fromEntries(
        [...(m[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]),
      );
      return { name: m[1] as string, labels, value: Number(m[3]) };
    });
}

function value(text: string, name: string, labels: Record<string, string>): number | undefined {
  return samples(text).find(
    (s) =>
      s.name === name &&
      Object.keys(s.labels).length === Object.keys(labels).length &&
      Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  )?.value;
}

/** Every label combination of every labelled reactor counter that `text` does not expose. */
function unprimedCounterSeries(
  registry: Registry,
  text: string,
  values: Record<string, readonly string[]>,
): string[] {
  const exposed = new Set(
    samples(text).map((s) => `${s.name}${JSON.stringify(Object.entries(s.labels).sort())}`),
  );
  const missing: string[] = [];
  for (const metric of registry.getMetricsAsArray()) {
    const { name, labelNames = [] } = metric as unknown as { name: string; labelNames?: string[] };
    if (!name.startsWith("reactor_") || labelNames.length === 0) continue;
    if (!(metric instanceof Counter)) continue;
    let combos: Array<Array<[string, string]>> = [[]];
    for (const label of labelNames) {
      const domain = values[`${name}:${label}`] ?? values[label];
      if (!domain) {
        missing.push(`${name}: no known values for label "${label}" (prime it in primeMetrics)`);
        combos = [];
        break;
      }
      combos = combos.flatMap((c) => domain.map((v) => [...c, [label, v] as [string, string]]));
    }
    for (const combo of combos) {
      const key = `${name}${JSON.stringify([...combo].sort())}`;
      if (!exposed.has(key)) missing.push(`${name}{${combo.map(([k, v]) => `${k}="${v}"`)}}`);
    }
  }
  return missing;
}

const labelValues = (workloads: string[], channels: string[]) => ({
  workload: workloads,
  channel: channels,
  reason: WAKE_REASONS,
  outcome: COMPLETED_OUTCOMES,
  class: HTTP_CLASSES,
  source: ["webhook", "poll"],
  // A label whose values differ by metric is named with it.
  "reactor_import_files_total:outcome": ["imported", "duplicate", "failed"],
});

describe("primeMetrics", () => {
  it("creates every labelled counter at 0 for each of its label values", async () => {
    const metrics = makeMetrics();
    const workloads = ["uploads", "deliveries"];
    const channels = ["reactor_orders", "reactor_deliveries", "reactor_config"];
    const values = labelValues(workloads, channels);
    const before = await metrics.registry.metrics();
    // Without priming the failure series does not exist: the first failure would create it.
    expect(unprimedCounterSeries(metrics.registry, before, values)).toContain(
      'reactor_completed_total{workload="uploads",outcome="failed"}',
    );
    primeMetrics(metrics, { workloads, channels });
    primeMetrics(metrics, { workloads, channels }); // idempotent
    const text = await metrics.registry.metrics();
    expect(unprimedCounterSeries(metrics.registry, text, values)).toEqual([]);
    const reactorSamples = samples(text).filter((s) => s.name.startsWith("reactor_"));
    expect(reactorSamples.filter((s) => s.value !== 0)).toEqual([]);
    for (const workload of workloads) {
      expect(value(text, "reactor_in_flight", { workload })).toBe(0);
      expect(value(text, "reactor_processing_seconds_count", { workload })).toBe(0);
      expect(value(text, "reactor_pickup_latency_seconds_count", { workload })).toBe(0);
    }
  });
});

describe("/metrics as production serves it", () => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  let app: App;
  let server: FastifyInstance;
  let scrape: () => Promise<string>;

  beforeAll(async () => {
    db = await createTestDatabase();
    fake = await startFakeShipStation();
    app = await startReactor({
      databaseUrl: db.url,
      shipstationUrl: fake.url,
      // Production's SSRF guard: a subscription to a private address ends failed.
      env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: "false", WEBHOOK_ALLOWED_NETWORKS: "" },
    });
    server = await startStatusServer(app, app.logger);
    const url = `${serverUrl(server)}/metrics`;
    scrape = async () => {
      const res = await fetch(url);
      expect(res.status).toBe(200);
      return res.text();
    };
  });
  afterAll(async () => {
    await server?.close();
    await app?.stop(1_000);
    await fake?.close();
    await db?.drop();
  });

  it("exposes every labelled counter at 0 from the start, for each workload and channel", async () => {
    const text = await scrape();
    const workloads = app.reactor.workloads.map((w) => w.name);
    const channels = [...app.reactor.workloads.map((w) => w.channel), CONFIG_CHANNEL];
    expect(workloads).toEqual(expect.arrayContaining(["uploads", "deliveries"]));
    expect(
      unprimedCounterSeries(app.metrics.registry, text, labelValues(workloads, channels)),
    ).toEqual([]);
    for (const workload of workloads) {
      const failed = { workload, outcome: "failed" };
      expect(value(text, "reactor_completed_total", failed), workload).toBe(0);
      expect(value(text, "reactor_drain_errors_total", { workload }), workload).toBe(0);
    }
  });

  it("the first failed upload and the first failed delivery move their series from 0 to 1", async () => {
    // A payload that can never become a ShipStation order fails without a call.
    await insertOrders(db.pool, 1, { prefix: "bad", payload: {} });
    // Inserted directly: the admin API would refuse a private address up front.
    await db.pool.query("INSERT INTO webhook_subscriptions (url, secret) VALUES ($1, $2)", [
      "http://127.0.0.1:9/hook",
      newSecret(),
    ]);
    await db.pool.query(
      `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
       VALUES ('order', '1', 'order.created', '{}')`,
    );
    const text = await waitFor(
      async () => {
        const t = await scrape();
        const up = value(t, "reactor_completed_total", { workload: "uploads", outcome: "failed" });
        const del = value(t, "reactor_completed_total", {
          workload: "deliveries",
          outcome: "failed",
        });
        return (up ?? 0) > 0 && (del ?? 0) > 0 ? t : null;
      },
      { what: "a failed upload and a failed delivery on /metrics" },
    );
    expect(value(text, "reactor_completed_total", { workload: "uploads", outcome: "failed" })).toBe(
      1,
    );
    expect(
      value(text, "reactor_completed_total", { workload: "deliveries", outcome: "failed" }),
    ).toBe(1);
    const { rows } = await db.pool.query(
      `SELECT (SELECT count(*)::int FROM orders_inbox WHERE upload_state = 'failed') AS orders,
              (SELECT count(*)::int FROM webhook_deliveries WHERE state = 'failed') AS deliveries`,
    );
    expect(rows[0]).toEqual({ orders: 1, deliveries: 1 });
  });

  it("passes `promtool check metrics` after real work, default process metrics included", async (ctx) => {
    await requirePromtool(ctx);
    await insertOrders(db.pool, 3, { prefix: "ok" });
    await waitFor(
      async () =>
        (value(await scrape(), "reactor_completed_total", {
          workload: "uploads",
          outcome: "success",
        }) ?? 0) >= 3,
      { what: "three uploads on /metrics" },
    );
    const res = await fetch(`${serverUrl(server)}/metrics`);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    // The exposition production serves: prom-client's default process metrics are on.
    for (const name of [
      "process_cpu_seconds_total",
      "process_resident_memory_bytes",
      "nodejs_eventloop_lag_seconds",
      "nodejs_heap_size_used_bytes",
      "nodejs_active_handles",
    ]) {
      expect(text).toMatch(new RegExp(`^${name}[ {]`, "m"));
    }
    expect(
      value(text, "reactor_pickup_latency_seconds_count", { workload: "uploads" }),
    ).toBeGreaterThanOrEqual(3);
    const check = await promtool(["check", "metrics"], { input: text });
    expect(check.output).toBe("");
    expect(check.code).toBe(0);
  });
});

describe("ops/: alert rules, their unit tests and the scrape config", () => {
  const alertNames = async (): Promise<string[]> => {
    const rules = parse(await readFile(`${OPS}alerts.yml`, "utf8"));
    return rules.groups.flatMap((g: { rules: Array<{ alert?: string }> }) =>
      g.rules.map((r) => r.alert).filter(Boolean),
    );
  };

  it("promtool check rules accepts every rule in ops/alerts.yml", async (ctx) => {
    await requirePromtool(ctx);
    const names = await alertNames();
    const check = await promtool(["check", "rules", "alerts.yml"], { cwd: OPS });
    expect(check.output).toContain(`SUCCESS: ${names.length} rules found`);
    expect(check.code).toBe(0);
  });

  it("each alert has a case in ops/alerts.test.yml where it fires", async () => {
    const tests = parse(await readFile(`${OPS}alerts.test.yml`, "utf8"));
    const firing = new Set<string>(
      tests.tests.flatMap((t: { alert_rule_test: Array<{ alertname: string; exp_alerts: [] }> }) =>
        t.alert_rule_test.filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname),
      ),
    );
    expect((await alertNames()).filter((name) => !firing.has(name))).toEqual([]);
  });

  it("promtool test rules: failure alerts fire on the first burst, the others when they should", async (ctx) => {
    await requirePromtool(ctx);
    const result = await promtool(["test", "rules", "alerts.test.yml"], { cwd: OPS });
    expect(result.output).toMatch(/SUCCESS/);
    expect(result.code).toBe(0);
  });

  it("promtool check config accepts ops/prometheus.yml and the rule files it names", async (ctx) => {
    await requirePromtool(ctx);
    const check = await promtool(["check", "config", "prometheus.yml"], { cwd: OPS });
    expect(check.output).toMatch(/SUCCESS: prometheus\.yml is valid prometheus config file/);
    expect(check.code).toBe(0);
  });
});
