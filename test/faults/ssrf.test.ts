// Scenario 6: the SSRF guard as production runs it. Deliveries to loopback, private,
// link-local (cloud metadata), IPv6 spellings of loopback and names that resolve to
// loopback are refused before any connection is made, with a message that says how to
// allow them; a receiver inside WEBHOOK_ALLOWED_NETWORKS gets its webhooks while every
// other private address stays refused.
import { describe, expect, it } from "vitest";
import { newSecret, startReceiver } from "../../src/demo/receiver.js";
import { createTestDatabase, type TestDatabase, waitFor } from "../helpers/db.js";
import { startReactor } from "../helpers/reactor.js";
import { report } from "./scale.js";

/** The guard with nothing allowed: no allowed networks, private networks not allowed. */
const STRICT = { WEBHOOK_ALLOW_PRIVATE_NETWORKS: "false", WEBHOOK_ALLOWED_NETWORKS: "" };

async function subscribe(db: TestDatabase, urls: string[]) {
  for (const url of urls) {
    await db.pool.query("INSERT INTO webhook_subscriptions (url, secret) VALUES ($1, $2)", [
      url,
      newSecret(),
    ]);
  }
  await db.pool.query(
    "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) VALUES ('o', '1', 'x.y', '{}')",
  );
}

/** Every delivery once settled (delivered or failed), with its subscription's URL. */
async function settled(db: TestDatabase, count: number) {
  return waitFor(
    async () => {
      const r = await db.pool.query(
        `SELECT s.url, d.state, d.last_error FROM webhook_deliveries d
         JOIN webhook_subscriptions s ON s.id = d.subscription_id ORDER BY d.id`,
      );
      return r.rows.length === count &&
        r.rows.every((x) => x.state === "failed" || x.state === "delivered")
        ? (r.rows as Array<{ url: string; state: string; last_error: string | null }>)
        : null;
    },
    { timeoutMs: 20_000, what: "all deliveries settled" },
  );
}

describe("fault: SSRF", () => {
  it("refuses loopback, private, link-local, IPv4-compatible/mapped/NAT64/6to4 forms and a name resolving to loopback", async () => {
    const db = await createTestDatabase();
    const receiver = await startReceiver();
    const app = await startReactor({ databaseUrl: db.url, env: STRICT });
    try {
      const targets = [
        `http://127.0.0.1:${receiver.port}/a`,
        `http://[::1]:${receiver.port}/b`,
        "http://10.0.0.1/c",
        "http://169.254.169.254/latest/meta-data/",
        `http://localhost:${receiver.port}/d`,
        "http://100.64.0.1/cgnat",
        "http://[fd00::1]/ula",
        `http://[::127.0.0.1]:${receiver.port}/compatible`,
        `http://[::ffff:127.0.0.1]:${receiver.port}/mapped`,
        "http://[64:ff9b::169.254.169.254]/nat64",
        "http://[2002:7f00:1::1]/6to4",
        `http://2130706433:${receiver.port}/decimal`,
      ];
      await subscribe(db, targets);
      const rows = await settled(db, targets.length);
      for (const r of rows) {
        expect(r.state, r.url).toBe("failed");
        expect(r.last_error, r.url).toMatch(
          /^refused: .* resolves to .*, an? [\w -]+ address.*; .*WEBHOOK_ALLOWED_NETWORKS .*WEBHOOK_ALLOW_PRIVATE_NETWORKS=true/,
        );
      }
      expect(receiver.requests).toHaveLength(0);
      report("ssrf", {
        targets: targets.length,
        refused: rows.length,
        reachedReceiver: receiver.requests.length,
      });
    } finally {
      await app.stop(1_000);
      await receiver.close();
      await db.drop();
    }
  });

  it("WEBHOOK_ALLOWED_NETWORKS=127.0.0.1/32 lets the loopback receiver in and keeps every other private address out", async () => {
    const db = await createTestDatabase();
    const receiver = await startReceiver();
    const app = await startReactor({
      databaseUrl: db.url,
      env: { ...STRICT, WEBHOOK_ALLOWED_NETWORKS: "127.0.0.1/32" },
    });
    try {
      const allowed = `http://127.0.0.1:${receiver.port}/allowed`;
      const refused = [
        `http://127.0.0.2:${receiver.port}/other-loopback`,
        `http://[::1]:${receiver.port}/v6-loopback`,
        "http://10.0.0.1/private",
        "http://169.254.169.254/latest/meta-data/",
        `http://[::127.0.0.1]:${receiver.port}/compatible`,
        `http://[64:ff9b::127.0.0.1]:${receiver.port}/nat64`,
      ];
      await subscribe(db, [allowed, ...refused]);
      const rows = await settled(db, refused.length + 1);
      for (const r of rows) {
        if (r.url === allowed) expect(r.state).toBe("delivered");
        else {
          expect(r.state, r.url).toBe("failed");
          expect(r.last_error, r.url).toMatch(/^refused: /);
        }
      }
      expect(receiver.requests.map((r) => r.path)).toEqual(["/allowed"]);
    } finally {
      await app.stop(1_000);
      await receiver.close();
      await db.drop();
    }
  });
});
