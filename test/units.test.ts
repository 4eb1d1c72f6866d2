// Pure units: environment parsing, settings parsing, notification payloads, the SSRF guard.
import { describe, expect, it } from "vitest";
import { EnvError, loadEnv } from "../src/config/env.js";
import { scheduledDelayMs } from "../src/reactor/backoff.js";
import { parsePayload } from "../src/reactor/listener.js";
import {
  defaultSettings,
  parseSetting,
  STANDARD_WEBHOOKS_SCHEDULE,
} from "../src/reactor/settings-spec.js";

describe("environment", () => {
  it("has safe defaults", () => {
    const env = loadEnv({});
    expect(env).toMatchObject({
      databaseUrl: undefined,
      httpHost: "127.0.0.1",
      httpPort: 8080,
      adminToken: undefined,
      webhookAllowPrivateNetworks: false,
      logLevel: "info",
    });
    expect(env.shipstation.baseUrl).toBe("https://ssapi.shipstation.com");
  });
  it.each([
    [
      { DATABASE_URL: "mysql://x" },
      /^DATABASE_URL must be a postgres:\/\/ or postgresql:\/\/ URL, got "mysql:\/\/x"$/,
    ],
    [{ HTTP_PORT: "70000" }, /^HTTP_PORT must be an integer from 0 to 65535/],
    [
      { WEBHOOK_ALLOW_PRIVATE_NETWORKS: "maybe" },
      /^WEBHOOK_ALLOW_PRIVATE_NETWORKS must be true or false/,
    ],
    [{ LOG_LEVEL: "loud" }, /^LOG_LEVEL must be one of fatal, error/],
    [{ SHIPSTATION_API_KEY: "k" }, /^SHIPSTATION_API_KEY is set but SHIPSTATION_API_SECRET is not/],
    [{ ADMIN_TOKEN: "short" }, /^ADMIN_TOKEN must be at least 16 characters$/],
  ])("rejects %o with a message naming the variable", (vars, message) => {
    expect(() => loadEnv(vars)).toThrow(EnvError);
    expect(() => loadEnv(vars)).toThrow(message);
  });
  it("never echoes a secret value in its error", () => {
    expect(() => loadEnv({ ADMIN_TOKEN: "hunter2" })).toThrow(
      /^ADMIN_TOKEN must be at least 16 characters$/,
    );
  });
});

describe("settings values", () => {
  it("parses booleans the way the old pollers did", () => {
    for (const t of ["true", "TRUE", "1", "yes", "On"])
      expect(parseSetting("uploads_enabled", t)).toBe(true);
    for (const f of ["false", "0", "NO", "off"])
      expect(parseSetting("uploads_enabled", f)).toBe(false);
  });
  it("names key, value and expectation when a value does not fit", () => {
    expect(() => parseSetting("poll_interval_seconds", "abc")).toThrow(
      "reactor.poll_interval_seconds must be an integer from 1 to 3600, got 'abc'",
    );
    expect(() => parseSetting("upload_batch_size", "101")).toThrow(/from 1 to 100, got '101'/);
    expect(() => parseSetting("delivery_retry_schedule_seconds", "5,x")).toThrow(
      /comma-separated integers/,
    );
    expect(() => parseSetting("log_level", "loud")).toThrow(/one of fatal/);
  });
  it("has the documented defaults", () => {
    expect(defaultSettings()).toMatchObject({
      poll_interval_seconds: 30,
      lease_seconds: 120,
      upload_batch_size: 100,
      upload_concurrency: 2,
      upload_rate_limit_per_minute: 40,
      delivery_retry_schedule_seconds: [...STANDARD_WEBHOOKS_SCHEDULE],
    });
  });
  it("retry schedules end (null) when exhausted", () => {
    expect(scheduledDelayMs([5, 300], 1)).toBeGreaterThanOrEqual(4000);
    expect(scheduledDelayMs([5, 300], 2)).toBeLessThanOrEqual(360_000);
    expect(scheduledDelayMs([5, 300], 3)).toBeNull();
  });
});

describe("notification payloads", () => {
  it("accepts our tiny JSON and refuses garbage and oversized payloads", () => {
    expect(parsePayload('{"v":1,"table":"orders_inbox","op":"INSERT"}')).toEqual({
      v: 1,
      table: "orders_inbox",
      op: "INSERT",
    });
    expect(parsePayload("not json")).toBeNull();
    expect(parsePayload("[1]")).toBeNull();
    expect(parsePayload(`{"v":1,"x":"${"a".repeat(9000)}"}`)).toBeNull();
    expect(parsePayload(undefined)).toBeNull();
  });
});

describe("SSRF guard", () => {
  it("classifies addresses with ipaddr.js ranges", async () => {
    const { isPublicAddress } = await import("../src/deliveries/ssrf.js");
    for (const a of [
      "127.0.0.1",
      "10.0.0.1",
      "172.16.5.4",
      "192.168.1.1",
      "169.254.169.254",
      "100.64.0.1",
      "::1",
      "fd00::1",
      "fe80::1",
      "224.0.0.1",
      "0.0.0.0",
      "::",
      "::ffff:127.0.0.1",
    ]) {
      expect(isPublicAddress(a), a).toBe(false);
    }
    for (const a of ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
      expect(isPublicAddress(a), a).toBe(true);
  });
  it("checks the address actually dialled, even when the pre-check is skipped", async () => {
    const { makeAgent } = await import("../src/outbound/http.js");
    const { guardedLookup } = await import("../src/deliveries/ssrf.js");
    const { sendWebhook } = await import("../src/deliveries/webhook-client.js");
    const agent = makeAgent({ lookup: guardedLookup as never });
    // allowPrivate skips the pre-check: only the connect-time lookup stands in the way.
    const result = await sendWebhook({
      url: "http://localhost:9/x",
      body: "{}",
      headers: {},
      timeoutMs: 2_000,
      agent,
      allowPrivate: true,
    });
    expect(result.kind).toBe("refused");
    expect("error" in result ? result.error : "").toMatch(
      /localhost resolves to .*loopback address/,
    );
    await agent.close();
  });
});
