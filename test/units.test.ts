// Units: environment parsing, settings parsing, notification payloads, the SSRF guard and
// the webhook client's reading of Retry-After (against a real receiver on loopback), and
// webhook signatures against the standardwebhooks library.
import { Webhook } from "standardwebhooks";
import { describe, expect, it } from "vitest";
import { EnvError, loadEnv } from "../src/config/env.js";
import { newSecret, startReceiver } from "../src/demo/receiver.js";
import { makeAgent } from "../src/outbound/http.js";
import { makeAddressPolicy, PrivateAddressError } from "../src/outbound/ssrf.js";
import { scheduledDelayMs } from "../src/reactor/backoff.js";
import { parsePayload } from "../src/reactor/listener.js";
import { defaultSettings, parseSetting } from "../src/reactor/settings-spec.js";
import { STANDARD_WEBHOOKS_SCHEDULE } from "../src/workloads/deliveries/settings.js";
import { signedHeaders } from "../src/workloads/deliveries/signing.js";
import { sendWebhook } from "../src/workloads/deliveries/webhook-client.js";
import { SETTINGS } from "../src/workloads/index.js";

describe("environment", () => {
  it("has safe defaults", () => {
    const env = loadEnv({});
    expect(env).toMatchObject({
      databaseUrl: undefined,
      httpHost: "127.0.0.1",
      httpPort: 8080,
      adminToken: undefined,
      webhookAllowPrivateNetworks: false,
      webhookAllowedNetworks: [],
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
    [
      { WEBHOOK_ALLOWED_NETWORKS: "127.0.0.1/32,10.0.0.0/33" },
      /^WEBHOOK_ALLOWED_NETWORKS must be comma-separated IP addresses or CIDR ranges .*\("10\.0\.0\.0\/33" is neither\)/,
    ],
    [{ WEBHOOK_ALLOWED_NETWORKS: "localhost" }, /\("localhost" is neither\)/],
    [{ WEBHOOK_ALLOWED_NETWORKS: "127.1" }, /\("127\.1" is neither\)/],
    [{ WEBHOOK_ALLOWED_NETWORKS: "10.0.0.0/8,,fd00::/8" }, /\("" is neither\)/],
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
  it.each([
    [
      "DATABASE_URL",
      "postgres://rel:TopSecret-123@db.internal:99999/app",
      "postgres://***@db.internal:99999/app",
    ],
    ["DATABASE_URL", "postgres://rel:Top@Secret-123@[db/app", "postgres://***@[db/app"],
    ["LISTEN_DATABASE_URL", "rel:TopSecret-123@db.internal/app", "***@db.internal/app"],
    ["DATABASE_URL", "host=db user=rel password=TopSecret-123", "host=db user=rel password=***"],
    [
      "DATABASE_URL",
      "mysql://db/app?password=TopSecret-123&x=1",
      "mysql://db/app?password=***&x=1",
    ],
    ["SHIPSTATION_BASE_URL", "ftp://key:TopSecret-123@ssapi.example", "ftp://***@ssapi.example"],
    [
      "SHIPSTATION_BASE_URL",
      "https://key:TopSecret-123@ss api.example",
      "https://***@ss api.example",
    ],
  ])("%s: a malformed value is echoed without its password", (name, value, shown) => {
    let message = "";
    try {
      loadEnv({ [name]: value });
    } catch (err) {
      expect(err).toBeInstanceOf(EnvError);
      message = (err as Error).message;
    }
    expect(message).toMatch(new RegExp(`^${name} must be `));
    expect(message).toContain(`got ${JSON.stringify(shown)}`);
    expect(message).not.toContain("TopSecret-123");
  });
  it("WEBHOOK_ALLOWED_NETWORKS: IPs and CIDRs, spaces trimmed, in canonical form", () => {
    expect(
      loadEnv({ WEBHOOK_ALLOWED_NETWORKS: " 127.0.0.1, 10.0.0.0/8,FD00::/8 ,::1" })
        .webhookAllowedNetworks,
    ).toEqual(["127.0.0.1/32", "10.0.0.0/8", "fd00::/8", "::1/128"]);
  });
});

describe("settings values", () => {
  it("parses booleans the way the old pollers did", () => {
    for (const t of ["true", "TRUE", "1", "yes", "On"])
      expect(parseSetting(SETTINGS, "uploads_enabled", t)).toBe(true);
    for (const f of ["false", "0", "NO", "off"])
      expect(parseSetting(SETTINGS, "uploads_enabled", f)).toBe(false);
  });
  it("names key, value and expectation when a value does not fit", () => {
    expect(() => parseSetting(SETTINGS, "poll_interval_seconds", "abc")).toThrow(
      "reactor.poll_interval_seconds must be an integer from 1 to 3600, got 'abc'",
    );
    expect(() => parseSetting(SETTINGS, "upload_batch_size", "101")).toThrow(
      /from 1 to 100, got '101'/,
    );
    expect(() => parseSetting(SETTINGS, "delivery_retry_schedule_seconds", "5,x")).toThrow(
      /comma-separated integers/,
    );
    expect(() => parseSetting(SETTINGS, "log_level", "loud")).toThrow(/one of fatal/);
  });
  it("has the documented defaults", () => {
    expect(defaultSettings(SETTINGS)).toMatchObject({
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

const strict = makeAddressPolicy({
  webhookAllowPrivateNetworks: false,
  webhookAllowedNetworks: [],
});

describe("SSRF guard", () => {
  it.each([
    ["127.0.0.1", /^a loopback address$/],
    ["10.0.0.1", /^a private address$/],
    ["172.16.5.4", /^a private address$/],
    ["192.168.1.1", /^a private address$/],
    ["169.254.169.254", /^a linkLocal address$/],
    ["100.64.0.1", /^a carrierGradeNat address$/],
    ["224.0.0.1", /^a multicast address$/],
    ["0.0.0.0", /^an unspecified address$/],
    ["255.255.255.255", /^a broadcast address$/],
    ["198.18.0.1", /^a reserved address$/],
    ["::1", /^a loopback address$/],
    ["::", /^an unspecified address$/],
    ["fd00::1", /^a uniqueLocal address$/],
    ["fe80::1", /^a linkLocal address$/],
    ["fec0::1", /^a deprecatedSiteLocal address$/],
    ["ff02::1", /^a multicast address$/],
    ["2001:db8::1", /^a reserved address$/],
    ["100::1", /^a discard address$/],
    // IPv4-mapped: judged by the IPv4 address inside.
    ["::ffff:127.0.0.1", /^a loopback address \(127\.0\.0\.1 inside an IPv4-mapped/],
    ["::ffff:10.1.2.3", /^a private address \(10\.1\.2\.3 inside an IPv4-mapped/],
    ["::ffff:169.254.169.254", /^a linkLocal address \(169\.254\.169\.254 inside/],
    // IPv4-compatible (::/96): refused whatever it carries, public or not.
    ["::127.0.0.1", /^an IPv4-compatible IPv6 address \(embedding 127\.0\.0\.1/],
    ["::7f00:1", /^an IPv4-compatible IPv6 address \(embedding 127\.0\.0\.1/],
    ["::10.0.0.1", /^an IPv4-compatible IPv6 address \(embedding 10\.0\.0\.1/],
    ["::8.8.8.8", /^an IPv4-compatible IPv6 address \(embedding 8\.8\.8\.8/],
    // NAT64's well-known prefix: judged by the IPv4 address inside.
    ["64:ff9b::127.0.0.1", /^a loopback address \(127\.0\.0\.1 inside a NAT64/],
    ["64:ff9b::10.0.0.1", /^a private address \(10\.0\.0\.1 inside a NAT64/],
    ["64:ff9b::169.254.169.254", /^a linkLocal address \(169\.254\.169\.254 inside a NAT64/],
    // The other transition forms: refused whatever they carry.
    ["64:ff9b:1::8.8.8.8", /^a local-use NAT64 address/],
    ["2002:7f00:1::1", /^a 6to4 address \(embedding 127\.0\.0\.1/],
    ["2002:a00:1::1", /^a 6to4 address \(embedding 10\.0\.0\.1/],
    ["2002:808:808::1", /^a 6to4 address \(embedding 8\.8\.8\.8/],
    ["2001:0:4136:e378:8000:63bf:3fff:fdd2", /^a Teredo address/],
    ["::ffff:0:127.0.0.1", /^an IPv4-translated address \(embedding 127\.0\.0\.1/],
  ])("refuses %s (%s)", (address, why) => {
    expect(strict.refusal(address)).toMatch(why);
  });
  it.each([
    "93.184.216.34",
    "8.8.8.8",
    "2606:2800:220:1:248:1893:25c8:1946",
    "::ffff:93.184.216.34",
    "64:ff9b::93.184.216.34",
  ])("allows the public address %s", (address) => {
    expect(strict.refusal(address)).toBeNull();
  });
  it("refuses http://[::127.0.0.1]/h and other IPv6 spellings of loopback in a URL", async () => {
    for (const url of [
      "http://[::127.0.0.1]/h",
      "http://[::ffff:127.0.0.1]/h",
      "http://[0:0:0:0:0:ffff:7f00:1]/h",
      "http://[64:ff9b::7f00:1]/h",
      "http://[2002:7f00:1::]/h",
      "http://0x7f.1/h",
      "http://2130706433/h",
    ]) {
      await expect(strict.check(url), url).rejects.toThrow(/^refused: .* resolves to /);
    }
  });
  it("WEBHOOK_ALLOWED_NETWORKS widens the guard to the networks listed, and no further", () => {
    const policy = makeAddressPolicy(
      loadEnv({ WEBHOOK_ALLOWED_NETWORKS: "127.0.0.1/32,10.0.0.0/8,fd00::/16" }),
    );
    for (const a of ["127.0.0.1", "::ffff:127.0.0.1", "10.200.0.1", "fd00::5", "8.8.8.8"])
      expect(policy.refusal(a), a).toBeNull();
    for (const a of [
      "127.0.0.2",
      "::1",
      "192.168.0.1",
      "fd01::1",
      "169.254.169.254",
      // A NAT64 gateway dials the inner address on its own network: public only.
      "64:ff9b::7f00:1",
      "::7f00:1",
    ])
      expect(policy.refusal(a), a).not.toBeNull();
  });
  it("the pre-check refuses again with the same words (refusals are not kept), and allows again", async () => {
    const policy = makeAddressPolicy(loadEnv({ WEBHOOK_ALLOWED_NETWORKS: "127.0.0.2/32" }));
    const first = await policy.check("http://localhost:9/a").catch((e: Error) => e);
    expect(first).toBeInstanceOf(PrivateAddressError);
    const again = await policy.check("http://localhost:9/b").catch((e: Error) => e);
    // A new error each time (its own stack), saying the same.
    expect(again).toBeInstanceOf(PrivateAddressError);
    expect(again).not.toBe(first);
    expect((again as Error).message).toBe((first as Error).message);
    for (let i = 0; i < 2; i++) {
      await expect(policy.check("http://127.0.0.2:9/x")).resolves.toBeUndefined();
      await expect(policy.check("http://[::1]/x")).rejects.toThrow(/::1, a loopback address/);
    }
  });
  it("WEBHOOK_ALLOW_PRIVATE_NETWORKS=true allows every address", async () => {
    const open = makeAddressPolicy(loadEnv({ WEBHOOK_ALLOW_PRIVATE_NETWORKS: "true" }));
    expect(open.allowsAll).toBe(true);
    for (const a of ["127.0.0.1", "::7f00:1", "169.254.169.254"])
      expect(open.refusal(a)).toBeNull();
    await expect(open.check("http://[::1]/x")).resolves.toBeUndefined();
  });
  it("the agent's guard checks the address actually dialled, names and IP literals, without the pre-check", async () => {
    const agent = makeAgent({ guard: strict });
    try {
      for (const [url, why] of [
        ["http://localhost:9/x", /localhost resolves to .*a loopback address/],
        ["http://127.0.0.1:9/x", /127\.0\.0\.1 resolves to 127\.0\.0\.1, a loopback address/],
        ["http://[::127.0.0.1]:9/x", /::7f00:1, an IPv4-compatible IPv6 address/],
        ["http://[::ffff:10.0.0.1]:9/x", /a private address \(10\.0\.0\.1 inside an IPv4-mapped/],
      ] as const) {
        // No `policy`: only the connect step stands in the way.
        const result = await sendWebhook({ url, body: "{}", headers: {}, timeoutMs: 2_000, agent });
        expect(result.kind, url).toBe("refused");
        expect("error" in result ? result.error : "", url).toMatch(why);
      }
    } finally {
      await agent.close();
    }
  });
  it("a receiver inside WEBHOOK_ALLOWED_NETWORKS gets the webhook, through pre-check and connect guard", async () => {
    const receiver = await startReceiver();
    const policy = makeAddressPolicy(loadEnv({ WEBHOOK_ALLOWED_NETWORKS: "127.0.0.1/32" }));
    const agent = makeAgent({ guard: policy });
    try {
      const result = await sendWebhook({
        url: `${receiver.url}/ok`,
        body: "{}",
        headers: {},
        timeoutMs: 5_000,
        agent,
        policy,
      });
      expect(result).toEqual({ kind: "delivered", status: 204 });
      const refused = await sendWebhook({
        url: `http://localhost:${receiver.port}/no`,
        body: "{}",
        headers: {},
        timeoutMs: 5_000,
        agent,
        policy,
      });
      // localhost may resolve to ::1 as well as 127.0.0.1: every address must be allowed.
      if (refused.kind !== "delivered") expect(refused.kind).toBe("refused");
      expect(receiver.requests.map((r) => r.path)).toEqual(
        refused.kind === "delivered" ? ["/ok", "/no"] : ["/ok"],
      );
    } finally {
      await agent.close();
      await receiver.close();
    }
  });
});

describe("webhook client: Retry-After", () => {
  it.each([
    [500, "3000", "failed", null],
    [400, "3000", "failed", null],
    [404, "60", "failed", null],
    [502, "3000", "failed", 3_000_000],
    [503, "30", "failed", 30_000],
    [504, "7", "failed", 7_000],
    [429, "3000", "throttled", 3_000_000],
    [503, "soon", "failed", null],
  ] as const)(
    "HTTP %i with Retry-After: %s → %s, retry after %s ms",
    async (status, header, kind, ms) => {
      const receiver = await startReceiver();
      receiver.fallback = { status, headers: { "retry-after": header }, body: "busy" };
      const agent = makeAgent();
      try {
        const result = await sendWebhook({
          url: `${receiver.url}/h`,
          body: "{}",
          headers: {},
          timeoutMs: 5_000,
          agent,
        });
        expect(result.kind).toBe(kind);
        expect("retryAfterMs" in result ? result.retryAfterMs : "none").toBe(ms);
        expect(receiver.requests).toHaveLength(1);
      } finally {
        await agent.close();
        await receiver.close();
      }
    },
  );
  it("an HTTP date in Retry-After on a 503 is honoured as the time until then", async () => {
    const receiver = await startReceiver();
    const at = new Date(Date.now() + 120_000).toUTCString();
    receiver.fallback = { status: 503, headers: { "retry-after": at } };
    const agent = makeAgent();
    try {
      const result = await sendWebhook({
        url: `${receiver.url}/h`,
        body: "{}",
        headers: {},
        timeoutMs: 5_000,
        agent,
      });
      const ms = "retryAfterMs" in result ? (result.retryAfterMs ?? 0) : 0;
      expect(ms).toBeGreaterThan(100_000);
      expect(ms).toBeLessThanOrEqual(120_000);
    } finally {
      await agent.close();
      await receiver.close();
    }
  });
});

describe("subscription input", () => {
  it("refuses a URL with user:password@ (it would be stored and shown, and never sent)", async () => {
    const { subscriptionInputProblem } = await import(
      "../src/workloads/deliveries/subscriptions.js"
    );
    expect(subscriptionInputProblem({ url: "https://user:pw@hooks.example.com/h" })).toMatch(
      /must not contain user:password@/,
    );
    expect(subscriptionInputProblem({ url: "https://hooks.example.com/h" })).toBeNull();
  });
});

describe("webhook signatures", () => {
  it("match what standardwebhooks signs and verifies, for any body, both secrets in rotation", () => {
    const bodies = ['{"a":1}', '{"text":"é ✓ 𝄞 \\u0000"}', "x".repeat(70_000), ""];
    for (let i = 0; i < 20; i++) {
      const secret = newSecret();
      const previous = i % 2 ? newSecret() : null;
      const body = bodies[i % bodies.length] as string;
      const now = new Date(Date.UTC(2026, 0, 1, 0, 0, i));
      const event = { eventId: `${i}`, eventType: "t", createdAt: now, payloadJson: "{}" };
      const headers = signedHeaders(event, body, { secret, previousSecret: previous }, now);
      const [first, second] = headers["webhook-signature"]?.split(" ") ?? [];
      expect(first).toBe(new Webhook(secret).sign(`${i}`, now, body));
      if (previous) expect(second).toBe(new Webhook(previous).sign(`${i}`, now, body));
      else expect(second).toBeUndefined();
    }
  });

  it("a secret that is not base64 is refused with standardwebhooks' error", () => {
    const event = { eventId: "1", eventType: "t", createdAt: new Date(), payloadJson: "{}" };
    expect(() =>
      signedHeaders(event, "{}", { secret: "whsec_%%%", previousSecret: null }),
    ).toThrow();
  });
});
