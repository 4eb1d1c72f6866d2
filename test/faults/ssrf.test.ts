// Scenario 6: with private networks not allowed, deliveries to loopback, private,
// link-local (cloud metadata) and names that resolve to loopback are refused before any
// connection is made, with a message that says how to allow them.
import { describe, expect, it } from "vitest";
import { newSecret, startReceiver } from "../../src/demo/receiver.js";
import { createTestDatabase, waitFor } from "../helpers/db.js";
import { startReactor } from "../helpers/reactor.js";
import { report } from "./scale.js";

describe("fault: SSRF", () => {
  it("refuses 127.0.0.1, [::1], 10.0.0.1, 169.254.169.254 and a name resolving to loopback", async () => {
    const db = await createTestDatabase();
    const receiver = await startReceiver();
    const app = await startReactor({
      databaseUrl: db.url,
      env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: "false" },
    });
    try {
      const targets = [
        `http://127.0.0.1:${receiver.port}/a`,
        `http://[::1]:${receiver.port}/b`,
        "http://10.0.0.1/c",
        "http://169.254.169.254/latest/meta-data/",
        `http://localhost:${receiver.port}/d`,
        "http://100.64.0.1/cgnat",
        "http://[fd00::1]/ula",
      ];
      for (const url of targets) {
        await db.pool.query("INSERT INTO webhook_subscriptions (url, secret) VALUES ($1, $2)", [
          url,
          newSecret(),
        ]);
      }
      await db.pool.query(
        "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) VALUES ('o', '1', 'x.y', '{}')",
      );
      const rows = await waitFor(
        async () => {
          const r = await db.pool.query(
            `SELECT s.url, d.state, d.last_error FROM webhook_deliveries d JOIN webhook_subscriptions s ON s.id = d.subscription_id`,
          );
          return r.rows.length === targets.length && r.rows.every((x) => x.state === "failed")
            ? r.rows
            : null;
        },
        { timeoutMs: 20_000, what: "all refused" },
      );
      for (const r of rows) {
        expect(r.last_error, r.url).toMatch(
          /^refused: .* resolves to .*, a \w+ address; .*WEBHOOK_ALLOW_PRIVATE_NETWORKS=true/,
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
});
