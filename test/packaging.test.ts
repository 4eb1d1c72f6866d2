import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { ENV_DOCS } from "../src/config/env.js";
import { renderEnvTable } from "../src/gen-sql.js";
import { createTestDatabase, insertOrders, type TestDatabase } from "./helpers/db.js";
import { hasPromtool, run } from "./helpers/promtool.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const read = (p: string) => readFile(new URL(`../${p}`, import.meta.url), "utf8");

describe("packaging", () => {
  it("docker-compose.yml: postgres with a healthcheck and a volume, reactor with every documented variable, a demo profile", async () => {
    const compose = parse(await read("docker-compose.yml"));
    expect(Object.keys(compose.services).sort()).toEqual(["fakes", "postgres", "reactor"]);
    const { postgres, reactor, fakes } = compose.services;
    expect(postgres.image).toMatch(/^postgres:\d+/);
    expect(postgres.healthcheck.test.join(" ")).toContain("pg_isready");
    expect(postgres.volumes[0]).toMatch(/:\/var\/lib\/postgresql\/data$/);
    expect(reactor.build).toBe(".");
    expect(reactor.depends_on.postgres.condition).toBe("service_healthy");
    expect(Object.keys(reactor.environment).sort()).toEqual(Object.keys(ENV_DOCS).sort());
    expect(reactor.ports).toContain("8080:8080");
    expect(fakes.profiles).toEqual(["demo"]);
  });

  it("Dockerfile: multi-stage, production dependencies only, non-root, HEALTHCHECK on /health/live, exec-form CMD", async () => {
    const text = await read("Dockerfile");
    expect(text.match(/^FROM /gm)).toHaveLength(2);
    expect(text).toMatch(/npm ci --omit=dev/);
    expect(text).toMatch(/^USER node$/m);
    expect(text).toMatch(/^HEALTHCHECK .*\n?.*\/health\/live/m);
    const cmd = /^CMD (.*)$/m.exec(text)?.[1] ?? "";
    expect(JSON.parse(cmd)[0]).toBe("node");
  });

  it("the README's environment table is generated from the configuration schema", async () => {
    expect(await read("README.md")).toContain(renderEnvTable());
  });

  it("the example alert rules pass promtool check rules", async () => {
    if (!(await hasPromtool())) {
      console.warn(
        "promtool not installed: skipped `promtool check rules` (Debian package prometheus)",
      );
      return;
    }
    const { stdout } = await run("promtool", ["check", "rules", `${ROOT}/ops/alerts.yml`]);
    expect(stdout).toMatch(/SUCCESS: 5 rules found/);
  });

  it("npm run demo runs the whole product and exits 0", async () => {
    const { stdout } = await run(process.execPath, ["--import", "tsx", "src/demo/demo.ts"], {
      cwd: ROOT,
      timeout: 90_000,
    });
    for (const step of [
      "1. ",
      "3. order DEMO-1",
      "4. order + outbox",
      "5. uploads_enabled = off",
      "6. uploads_enabled = on",
      "7. upload_batch_size",
      "8. 2,000 orders",
      "9. /metrics",
      "done in",
    ]) {
      expect(stdout).toContain(step);
    }
    expect(stdout).toContain("ShipStation has nothing");
    expect(stdout).toMatch(/reactor_completed_total\{workload="uploads",outcome="success"\} 2003/);
  });
});

describe("the CLI", () => {
  let db: TestDatabase;
  const cli = (...args: string[]) =>
    run(process.execPath, ["bin/pg-reactor.js", ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? "", DATABASE_URL: db.url },
    }).catch((err: { stdout: string; stderr: string; code: number }) => ({ ...err, failed: true }));

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db.drop();
  });

  it("migrate, status, retry --failed, and subscriptions add|list|rotate|disable", async () => {
    expect((await cli("migrate")).stdout).toContain("(nothing to do)");
    const ids = await insertOrders(db.pool, 3);
    await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'failed', last_error = 'x' WHERE id = ANY($1)",
      [ids],
    );
    const status = JSON.parse((await cli("status")).stdout);
    expect(status.workloads.uploads.failed).toBe(3);
    expect(status.settings.poll_interval_seconds).toBe("30");
    expect((await cli("retry", "--failed", "orders", "--id", String(ids[0]))).stdout).toBe(
      "retried 1 failed orders\n",
    );
    expect((await cli("retry", "--failed", "orders")).stdout).toBe("retried 2 failed orders\n");

    const added = JSON.parse(
      (
        await cli(
          "subscriptions",
          "add",
          "https://hooks.example.com/x",
          "--event-types",
          "order.*,invoice.paid",
        )
      ).stdout,
    );
    expect(added.secret).toMatch(/^whsec_/);
    expect(added.event_types).toEqual(["order.*", "invoice.paid"]);
    const list = (await cli("subscriptions", "list")).stdout;
    expect(list).toContain("hooks.example.com");
    expect(list).not.toContain("whsec_");
    const rotated = JSON.parse((await cli("subscriptions", "rotate", String(added.id))).stdout);
    expect(rotated.secret).not.toBe(added.secret);
    const disabled = JSON.parse((await cli("subscriptions", "disable", String(added.id))).stdout);
    expect(disabled.enabled).toBe(false);
  });

  it("bad arguments fail with a clear message and exit 1", async () => {
    const r = (await cli("retry", "--failed", "everything")) as { stderr: string; code?: number };
    expect(r.stderr).toMatch(/expected orders or deliveries/);
    expect(r.code).toBe(1);
    const missing = (await cli("subscriptions", "rotate", "999999")) as {
      stderr: string;
      code?: number;
    };
    expect(missing.stderr).toMatch(/no subscription with id 999999/);
    expect(missing.code).toBe(1);
  });
});
