// The operator console attacked in a real browser (Debian's Chromium via playwright-core)
// by a hostile user and a demanding operator: markup and script in every text that
// reaches the page, the CSP on every view, a session that ends while the page is open, a
// reactor restarted under an open page, long failed lists, every setting, subscription
// refusals, keyboard and screen-reader basics, a phone-sized screen. Real reactor, real
// PostgreSQL, a fake ShipStation and a webhook receiver on loopback.
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import type { FastifyInstance } from "fastify";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { type Receiver, startReceiver } from "../src/demo/receiver.js";
import { HISTORY_SECONDS, makeLiveFeed } from "../src/http/console/live.js";
import {
  makeConsoleSessions,
  SESSION_COOKIE,
  SESSION_SECONDS,
} from "../src/http/console/session.js";
import { consoleFeeds, serverUrl, startStatusServer } from "../src/http/server.js";
import { makeLogger } from "../src/logger.js";
import { makeMetrics } from "../src/metrics.js";
import { walMissing } from "../src/reactor/wake-source.js";
import {
  chromiumForTests,
  logInToConsole,
  samplesFromNow,
  skipWithoutChromium,
} from "./helpers/browser.js";
import {
  createTestDatabase,
  setSetting,
  subscribe,
  type TestDatabase,
  waitFor,
} from "./helpers/db.js";
import { ROOT } from "./helpers/process.js";
import { startReactor } from "./helpers/reactor.js";

const ADMIN_TOKEN = "console-hostile-admin-token-0123456789";
/** Markup that runs script if it is ever parsed as HTML (and shows as itself if not). */
const XSS = `<img src=x onerror="window.__pwned=1">`;
const XSS_SCRIPT = `<script>window.__pwned=2</script>`;
const XSS_SVG = `"><svg onload="window.__pwned=3">`;
const SHOTS = path.join(ROOT, "test-results", "console");

/** A free TCP port on loopback: the status server must come back on the same one. */
async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const address = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  if (!address || typeof address === "string") throw new Error("no port");
  return address.port;
}

/** What a page did that it must never do: script errors, dialogs, CSP violations. */
interface Watched {
  errors: string[];
  dialogs: string[];
  csp: string[];
}

function watch(p: Page): Watched {
  const w: Watched = { errors: [], dialogs: [], csp: [] };
  p.on("pageerror", (err) => w.errors.push(err.message));
  p.on("dialog", (d) => {
    w.dialogs.push(d.message());
    void d.dismiss();
  });
  p.on("console", (m) => {
    if (m.type() === "error" && /Content.Security.Policy/i.test(m.text())) w.csp.push(m.text());
  });
  return w;
}

/** Nothing hostile became markup, nothing ran, nothing broke the CSP. */
async function expectClean(p: Page, w: Watched) {
  const injected = await p.evaluate(() => ({
    pwned: (window as unknown as { __pwned?: number }).__pwned ?? null,
    elements: document.querySelectorAll('img[src="x"], [onerror], [onload], main script, main svg')
      .length,
  }));
  expect(injected).toEqual({ pwned: null, elements: 0 });
  expect(w.errors).toEqual([]);
  expect(w.dialogs).toEqual([]);
  expect(w.csp).toEqual([]);
}

describe("operator console under attack, in a browser", () => {
  let chromiumPath: string | null;
  let db: TestDatabase;
  let fake: FakeShipStation;
  let receiver: Receiver;
  let app: App;
  let server: FastifyInstance;
  let base: string;
  let browser: Browser;
  let importRoot: string;
  const contexts: BrowserContext[] = [];

  async function loggedIn(options: Parameters<Browser["newContext"]>[0] = {}) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...options });
    contexts.push(ctx);
    const p = await ctx.newPage();
    const w = watch(p);
    await logInToConsole(p, base, ADMIN_TOKEN);
    return { ctx, p, w };
  }

  beforeAll(async () => {
    chromiumPath = await chromiumForTests();
    if (!chromiumPath) return;
    db = await createTestDatabase();
    fake = await startFakeShipStation();
    receiver = await startReceiver();
    importRoot = await mkdtemp(path.join(tmpdir(), "pgr-console-hostile-"));
    app = await startReactor({
      databaseUrl: db.url,
      shipstationUrl: fake.url,
      env: {
        ADMIN_TOKEN,
        HTTP_PORT: String(await freePort()),
        // A folder that does not exist, with markup in its name: its problem reaches the page.
        IMPORT_DIR: path.join(importRoot, XSS),
      },
    });
    server = await startStatusServer(app, app.logger);
    base = serverUrl(server);
    browser = await chromium.launch({ executablePath: chromiumPath });
  });

  afterEach(async () => {
    for (const ctx of contexts.splice(0)) await ctx.close();
  });

  afterAll(async () => {
    if (!chromiumPath) return;
    await browser?.close();
    await server?.close();
    await app?.stop(1_000);
    await fake?.close();
    await receiver?.close();
    await db?.drop();
    await rm(importRoot, { recursive: true, force: true });
  });

  it("hostile text from every source shows literally, runs nothing, and no view breaks the CSP", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    // A failed delivery whose receiver answers with markup, of an event whose payload is markup.
    await setSetting(db.pool, "delivery_retry_schedule_seconds", "1");
    receiver.fallback = {
      status: 500,
      headers: { "content-type": "text/html" },
      body: `${XSS_SCRIPT}${XSS}`,
    };
    const sub = await subscribe(db.pool, `${receiver.url}/hostile`, { eventTypes: ["hostile.*"] });
    await db.pool.query(`UPDATE webhook_subscriptions SET description = $2 WHERE id = $1`, [
      sub,
      `${XSS} ${XSS_SVG}`,
    ]);
    const odd = await subscribe(db.pool, `http://127.0.0.1:9/${XSS}`, {
      eventTypes: ["never.sent"],
      enabled: false,
    });
    await db.pool.query(
      `UPDATE webhook_subscriptions SET description = $2, disabled_reason = $3 WHERE id = $1`,
      [odd, XSS_SCRIPT, XSS_SVG],
    );
    await db.pool.query(
      `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
       VALUES ($1, $2, 'hostile.event', $3)`,
      [XSS, XSS_SVG, JSON.stringify({ note: XSS_SCRIPT, [XSS]: XSS_SVG })],
    );
    const delivery = await waitFor(
      async () =>
        (
          await db.pool.query(
            "SELECT id FROM webhook_deliveries WHERE subscription_id = $1 AND state = 'failed'",
            [sub],
          )
        ).rows[0]?.id,
      { what: "the hostile delivery failed", timeoutMs: 20_000 },
    );
    await db.pool.query(
      `INSERT INTO orders_inbox (order_number, order_key, payload, upload_state, last_error)
       VALUES ($1, 'hostile-1', '{}'::jsonb, 'failed', $2)`,
      [XSS, `${XSS_SCRIPT} ${XSS_SVG}`],
    );
    await db.pool.query(
      `INSERT INTO shipstation_notifications (resource_type, resource_url, state, last_error)
       VALUES ($1, $2, 'failed', $3)`,
      [XSS_SVG, `https://ssapi.shipstation.com/shipments?x=${XSS}`, XSS_SCRIPT],
    );

    const { p, w } = await loggedIn();
    // Now: the import folder's problem names the hostile folder.
    await expect
      .poll(() => p.textContent('#system [data-system="Import folder"]'), { timeout: 15_000 })
      .toContain(XSS);
    await expectClean(p, w);

    // Failed: each kind of rows.
    await p.goto(`${base}/console#failed`);
    await p.selectOption("#failed-rows", "orders");
    await expect.poll(() => p.textContent("#failed-table tbody")).toContain(XSS);
    expect(await p.textContent("#failed-table tbody")).toContain(`${XSS_SCRIPT} ${XSS_SVG}`);
    await p.selectOption("#failed-rows", "deliveries");
    await expect.poll(() => p.textContent("#failed-table tbody")).toContain("HTTP 500");
    await p.selectOption("#failed-rows", "notifications");
    // The deliveries' rows carry the script too: wait for the notification's own
    // resource type, which only its table shows, before reading the rest.
    await expect.poll(() => p.textContent("#failed-table tbody")).toContain(XSS_SVG);
    expect(await p.textContent("#failed-table tbody")).toContain(XSS_SCRIPT);
    await expectClean(p, w);

    // A filter typed by the user is echoed back in the confirmation as text.
    await p.selectOption("#failed-rows", "orders");
    await p.fill('#failed-filter input[name="error_contains"]', XSS_SCRIPT);
    await p.click("#retry-matching");
    await p.waitForSelector("#confirm[open]");
    expect(await p.textContent("#confirm-text")).toContain(`error_contains = ${XSS_SCRIPT}`);
    await p.keyboard.press("Escape");
    await p.waitForSelector("#confirm:not([open])", { state: "attached" });
    await expectClean(p, w);

    // One delivery: the receiver's answer, the payload, the subscription.
    await p.goto(`${base}/console#delivery/${delivery}`);
    await expect.poll(() => p.locator("#attempts-table tbody tr").count()).toBe(2);
    expect(await p.locator("#attempts-table pre.excerpt").first().textContent()).toBe(
      `${XSS_SCRIPT}${XSS}`,
    );
    const payload = await p.textContent("#delivery-payload");
    expect(JSON.parse(payload ?? "null")).toEqual({ note: XSS_SCRIPT, [XSS]: XSS_SVG });
    expect(await p.textContent("#delivery-facts")).toContain(`(${XSS} ${XSS_SVG})`);
    await expectClean(p, w);

    // A hostile route argument is echoed as text and refused by the API.
    await p.goto(`${base}/console#delivery/${encodeURIComponent(XSS)}`);
    await expect.poll(() => p.textContent("#delivery-message")).toMatch(/Could not load delivery/);
    expect(await p.textContent("#delivery-title")).toContain(XSS);
    await expectClean(p, w);

    // Subscriptions: URL, description, disabled reason.
    await p.goto(`${base}/console#subscriptions`);
    const oddRow = p.locator(`#subs-table tr[data-id="${odd}"]`);
    await oddRow.waitFor();
    expect(await oddRow.textContent()).toContain(`http://127.0.0.1:9/${XSS}`);
    expect(await oddRow.textContent()).toContain(XSS_SCRIPT);
    expect(await oddRow.textContent()).toContain(`disabled: ${XSS_SVG}`);
    expect(await p.locator(`#subs-table tr[data-id="${sub}"]`).textContent()).toContain(
      `${XSS} ${XSS_SVG}`,
    );
    await expectClean(p, w);

    // Settings: the database's refusal quotes the value; it shows as text.
    await p.goto(`${base}/console#settings`);
    const row = p.locator('tr[data-setting="lease_seconds"]');
    await row.locator("input").fill(XSS);
    await row.locator("button", { hasText: "Save" }).click();
    await expect
      .poll(() => p.locator('[data-error="lease_seconds"]').textContent())
      .toContain(`got '${XSS}'`);
    await expectClean(p, w);

    // The subscriptions' own refusal echoes the URL as text too.
    await p.goto(`${base}/console#subscriptions`);
    await p.fill('#sub-create input[name="url"]', `javascript:${XSS}`);
    await p.click('#sub-create button[type="submit"]');
    await expect.poll(() => p.textContent("#subs-message")).toMatch(/^Refused: /);
    await expectClean(p, w);
    receiver.fallback = { status: 204 };
  });

  it("the login page shows a hostile-looking wrong token as nothing but a refusal, within the CSP", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    const c = await browser.newContext();
    contexts.push(c);
    const p = await c.newPage();
    const w = watch(p);
    await p.goto(`${base}/console`);
    await p.fill("#token", `${XSS_SCRIPT}${XSS}`);
    await p.click("button[type=submit]");
    await expect.poll(() => p.textContent("#login-error")).toMatch(/not the ADMIN_TOKEN/);
    await expectClean(p, w);
  });

  it("a session deleted while the page is open: the next action lands on the login form, which says why", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    const { ctx: c, p, w } = await loggedIn();
    await p.goto(`${base}/console#now`);
    await expect.poll(() => p.textContent("#stream")).toBe("live");
    await c.clearCookies();
    await p.click('[data-nav="settings"]');
    await p.waitForSelector("#token", { timeout: 10_000 });
    // No cookie at all: nothing to explain.
    expect(await p.textContent("#login-error")).toBe("");
    expect(w.errors).toEqual([]);
  });

  it("a session that expires while the page is open: the page goes to the login form by itself", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    const sessions = makeConsoleSessions(ADMIN_TOKEN);
    // Valid for 4 more seconds.
    const cookie = sessions.issue(Date.now() - SESSION_SECONDS * 1000 + 4_000);
    const c = await browser.newContext();
    contexts.push(c);
    await c.addCookies([
      {
        name: SESSION_COOKIE,
        value: cookie,
        domain: new URL(base).hostname,
        path: "/",
        httpOnly: true,
      },
    ]);
    const p = await c.newPage();
    const w = watch(p);
    await p.goto(`${base}/console#now`);
    await p.waitForSelector("#workloads .card");
    await expect.poll(() => p.textContent("#stream")).toBe("live");
    // Nobody clicks: the stream ends with the session, and the page finds out.
    await p.waitForSelector("#token", { timeout: 15_000 });
    expect(await p.textContent("#login-error")).toMatch(/session (has )?ended/i);
    expect(w.errors).toEqual([]);
  });

  it("an action on an expired session lands on the login form, not a refusal inside the page", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    const sessions = makeConsoleSessions(ADMIN_TOKEN);
    const cookie = sessions.issue(Date.now() - SESSION_SECONDS * 1000 + 3_000);
    const c = await browser.newContext();
    contexts.push(c);
    await c.addCookies([
      { name: SESSION_COOKIE, value: cookie, domain: new URL(base).hostname, path: "/" },
    ]);
    const p = await c.newPage();
    await p.goto(`${base}/console#settings`);
    const row = p.locator('tr[data-setting="log_level"]');
    await row.waitFor();
    await row.locator("input").fill("info");
    await waitFor(() => !sessions.valid(cookie), { what: "the session expired", timeoutMs: 6_000 });
    // The session's end also ends the live stream, and the page asks the server why and
    // goes to the login form: that can come before the click lands (a clean-clone CI run
    // saw the button leave the page under the click). Either way ends on the login form.
    await row
      .locator("button", { hasText: "Save" })
      .click({ timeout: 5_000 })
      .catch(async (err: Error) => {
        if ((await p.locator("#token").count()) === 0) throw err;
      });
    await p.waitForSelector("#token", { timeout: 10_000 });
  });

  it("after the status server restarts on the same port, the stream reconnects and the figures resume; the indicator tells the truth", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    const { p, w } = await loggedIn();
    await expect.poll(() => p.textContent("#stream")).toBe("live");
    await samplesFromNow(p, 2);

    await server.close();
    await expect.poll(() => p.textContent("#stream"), { timeout: 10_000 }).not.toBe("live");
    expect(await p.getAttribute("#stream", "data-state")).toBe("down");

    // Back on the same port, but "starting" for a few seconds (as main serves the probes
    // before the database answers): the stream is answered 503 meanwhile. EventSource gives
    // up for good on a non-200 answer; the page must not.
    let starting = true;
    server = await startStatusServer(app, app.logger, () =>
      starting ? "starting: waiting for the database" : null,
    );
    expect(serverUrl(server)).toBe(base);
    await waitFor(
      async () =>
        (
          await fetch(`${base}/console/events`, {
            headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
          })
        ).status === 503,
      { what: "the restarted server answering 503" },
    );
    // EventSource gives up on the 503; the page says so, and when it tries again.
    await expect
      .poll(() => p.textContent("#stream"), { timeout: 15_000 })
      .toMatch(/^disconnected; retrying in \d+ s$/);
    expect(await p.getAttribute("#stream", "data-state")).toBe("down");
    starting = false;
    await expect.poll(() => p.textContent("#stream"), { timeout: 40_000 }).toBe("live");
    await samplesFromNow(p, 2);
    expect(w.errors).toEqual([]);
  });

  it("failed orders: pages of 50 with next, previous and first; filters by status, order number, error and time", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    await db.pool.query("DELETE FROM orders_inbox");
    await db.pool.query(
      `INSERT INTO orders_inbox (order_number, order_key, status, payload, upload_state, last_error, created_at)
       SELECT 'P-' || g, 'p-' || g, CASE WHEN g % 10 = 0 THEN 'on_hold' ELSE 'awaiting_shipment' END,
              '{}'::jsonb, 'failed',
              CASE WHEN g <= 7 THEN 'HTTP 400 weight missing' ELSE 'HTTP 500 upstream' END,
              CASE WHEN g <= 3 THEN timestamptz '2020-06-01 12:00Z' ELSE now() END
       FROM generate_series(1, 120) g`,
    );
    const { p, w } = await loggedIn();
    await p.goto(`${base}/console#failed`);
    await p.selectOption("#failed-rows", "orders");
    const rows = p.locator("#failed-table tbody tr");
    const ids = async () =>
      await rows.evaluateAll((trs) => trs.map((tr) => Number(tr.getAttribute("data-id"))));
    await expect.poll(() => rows.count()).toBe(50);
    const first = await ids();
    expect(await p.isDisabled("#failed-first")).toBe(true);
    await p.click("#failed-next");
    await expect.poll(async () => (await ids())[0]).not.toBe(first[0]);
    const second = await ids();
    expect(second).toHaveLength(50);
    expect(Math.min(...second)).toBeGreaterThan(Math.max(...first));
    await p.click("#failed-next");
    await expect.poll(() => rows.count()).toBe(20);
    expect(await p.isDisabled("#failed-next")).toBe(true);
    await p.click("#failed-previous");
    await expect.poll(ids).toEqual(second);
    await p.click("#failed-first");
    await expect.poll(ids).toEqual(first);

    const filterBy = async (fields: Record<string, string>) => {
      for (const [name, value] of Object.entries(fields))
        await p.fill(`#failed-filter input[name="${name}"]`, value);
      await p.click('#failed-filter button[type="submit"]');
    };
    await filterBy({ status: "on_hold" });
    await expect.poll(() => rows.count()).toBe(12);
    await filterBy({ status: "", order_number: "P-42" });
    await expect.poll(ids).toHaveLength(1);
    expect(await rows.first().textContent()).toContain("P-42");
    await filterBy({ order_number: "", error_contains: "weight" });
    await expect.poll(() => rows.count()).toBe(7);
    await filterBy({ created_before: "2021-01-01T00:00:00" });
    await expect.poll(() => rows.count()).toBe(3);
    await filterBy({
      error_contains: "",
      created_before: "",
      created_after: "2021-01-01T00:00:00",
    });
    await expect.poll(() => rows.count()).toBe(50);
    await expect.poll(() => p.textContent("#failed-message")).toMatch(/more on the next/);
    await filterBy({ created_after: "" });

    // Switching the kind of rows starts again at the first page.
    await p.click("#failed-next");
    await expect.poll(() => p.isDisabled("#failed-first")).toBe(false);
    await p.selectOption("#failed-rows", "notifications");
    await expect.poll(() => p.isDisabled("#failed-first")).toBe(true);
    await p.selectOption("#failed-rows", "orders");
    await expect.poll(ids).toEqual(first);
    expect(w.errors).toEqual([]);
  });

  it("failed deliveries: filters by subscription and event type; a bad filter value shows the API's message", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    await db.pool.query("DELETE FROM webhook_deliveries");
    const a = await subscribe(db.pool, `${receiver.url}/a`, { eventTypes: ["never.a"] });
    const b = await subscribe(db.pool, `${receiver.url}/b`, { eventTypes: ["never.b"] });
    // Failed rows written directly (no subscription matches these events, so none is sent).
    await db.pool.query(
      `WITH e AS (
         INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
         SELECT 'order', 'F-' || g, CASE WHEN g % 2 = 0 THEN 'page.even' ELSE 'page.odd' END, '{}'
         FROM generate_series(1, 8) g RETURNING id, aggregate_id)
       INSERT INTO webhook_deliveries (event_id, subscription_id, state, attempts, last_error)
       SELECT e.id, CASE WHEN split_part(e.aggregate_id, '-', 2)::int <= 5 THEN $1::bigint ELSE $2::bigint END,
              'failed', 3, 'HTTP 410 gone'
       FROM e`,
      [a, b],
    );
    const { p, w } = await loggedIn();
    // An address that names the kind of rows opens the Failed view on it.
    await p.goto(`${base}/console#failed?rows=deliveries`);
    await p.reload();
    await p.waitForSelector("#view-failed:not([hidden])");
    expect(await p.inputValue("#failed-rows")).toBe("deliveries");
    const rows = p.locator("#failed-table tbody tr");
    await expect.poll(() => rows.count()).toBe(8);
    const filterBy = async (fields: Record<string, string>) => {
      for (const [name, value] of Object.entries(fields))
        await p.fill(`#failed-filter input[name="${name}"]`, value);
      await p.click('#failed-filter button[type="submit"]');
    };
    await filterBy({ subscription_id: String(a) });
    await expect.poll(() => rows.count()).toBe(5);
    await filterBy({ subscription_id: String(b), event_type: "page.even" });
    await expect.poll(() => rows.count()).toBe(2);

    for (const bad of ["0", "abc", "1e"]) {
      await filterBy({ subscription_id: bad, event_type: "" });
      await expect
        .poll(() => p.textContent("#failed-message"))
        .toMatch(/^Could not list failed deliveries: querystring\/subscription_id must be/);
      // The list does not pretend the filter applied.
      expect(await rows.count()).toBe(0);
    }
    // Retry all matching with a bad filter: the API's refusal, never "every failed row".
    await p.click("#retry-matching");
    await expect
      .poll(() => p.textContent("#failed-message"))
      .toMatch(/querystring\/subscription_id must be/);
    expect(await p.isVisible("#confirm")).toBe(false);

    // Cancel (button or Esc) in the count dialog retries nothing.
    await filterBy({ subscription_id: String(a) });
    await expect.poll(() => rows.count()).toBe(5);
    const failedNow = async () =>
      (
        await db.pool.query(
          "SELECT count(*)::int AS n FROM webhook_deliveries WHERE state = 'failed' AND subscription_id = $1",
          [a],
        )
      ).rows[0].n;
    for (const how of ["button", "escape"]) {
      await p.click("#retry-matching");
      await p.waitForSelector("#confirm[open]");
      expect(await p.textContent("#confirm-text")).toMatch(/Retry 5 failed deliveries/);
      if (how === "button") await p.click('#confirm button[value="cancel"]');
      else await p.keyboard.press("Escape");
      await p.waitForSelector("#confirm:not([open])", { state: "attached" });
      expect(await failedNow()).toBe(5);
      expect(await rows.count()).toBe(5);
    }

    // A double click asks once and retries once.
    const retries: string[] = [];
    p.on("request", (r) => {
      if (r.method() === "POST" && r.url().endsWith("/admin/deliveries/retry"))
        retries.push(r.url());
    });
    await p.dblclick("#retry-matching");
    await p.waitForSelector("#confirm[open]");
    await p.click("#confirm-ok");
    await expect
      .poll(() => p.textContent("#failed-message"))
      .toMatch(/^5 deliveries are pending again/);
    expect(retries).toHaveLength(1);
    expect(await failedNow()).toBe(0);
    expect(w.errors).toEqual([]);
  });

  it("settings: every one can be edited and reset; spaces are trimmed; wal is refused inline; the in-force value follows", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    await db.pool.query("DELETE FROM configuration_params WHERE category = 'reactor'");
    await app.settings.reload();
    const { p, w } = await loggedIn();
    await p.goto(`${base}/console#settings`);
    await p.locator("tr[data-setting]").first().waitFor();
    const names = await p
      .locator("tr[data-setting]")
      .evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-setting") ?? ""));
    expect(names.length).toBeGreaterThan(5);
    const storedValue = async (name: string) =>
      (
        await db.pool.query(
          "SELECT value FROM configuration_params WHERE category = 'reactor' AND parameter_name = $1",
          [name],
        )
      ).rows[0]?.value ?? null;

    for (const name of names) {
      if (name === "wake_source") continue;
      const row = () => p.locator(`tr[data-setting="${name}"]`);
      // The default is always a value the database accepts.
      const fallback = (await row().locator("input").getAttribute("placeholder")) ?? "";
      await row().locator("input").fill(fallback);
      await row().locator("input").press("Enter");
      await expect.poll(() => storedValue(name), { timeout: 5_000 }).toBe(fallback);
      await expect.poll(() => row().locator("button", { hasText: "Reset" }).count()).toBe(1);
      expect(await row().locator("[data-error]").textContent()).toBe("");
      // The keyboard stays where it was.
      expect(await p.evaluate(() => document.activeElement?.getAttribute("name"))).toBe(name);
      await row().locator("button", { hasText: "Reset" }).click();
      await expect.poll(() => storedValue(name), { timeout: 5_000 }).toBeNull();
      await expect.poll(() => row().locator("button", { hasText: "Reset" }).count()).toBe(0);
    }

    // Leading and trailing spaces: the database trims; the page shows what is in force.
    const lease = p.locator('tr[data-setting="lease_seconds"]');
    await lease.locator("input").fill("  75  ");
    await lease.locator("button", { hasText: "Save" }).click();
    await expect.poll(() => lease.locator("[data-value]").textContent()).toBe("75");
    expect(app.settings.current.lease_seconds).toBe(75);
    await p.locator('tr[data-setting="lease_seconds"] button', { hasText: "Reset" }).click();
    await expect
      .poll(() => p.locator('tr[data-setting="lease_seconds"] [data-value]').textContent())
      .not.toBe("75");

    // wal: where the server cannot run it (the machine's PostgreSQL: wal_level=replica), the
    // refusal says what is missing, inline, and notify stays; where it can (embedded
    // PostgreSQL may have wal_level=logical), the switch is made and undone from the page.
    const missing = await walMissing(db.pool);
    const wake = p.locator('tr[data-setting="wake_source"]');
    await wake.locator("input").fill("wal");
    await wake.locator("button", { hasText: "Save" }).click();
    if (missing) {
      await expect
        .poll(() => p.locator('[data-error="wake_source"]').textContent())
        .toBe(`wal refused: ${missing}`);
      expect(await wake.locator("[data-value]").textContent()).toBe("notify");
    } else {
      const switched = p.locator('tr[data-setting="wake_source"]');
      await expect.poll(() => switched.locator("[data-value]").textContent()).toBe("wal");
      await switched.locator("input").fill("notify");
      await switched.locator("button", { hasText: "Save" }).click();
      await expect
        .poll(() => p.locator('tr[data-setting="wake_source"] [data-value]').textContent())
        .toBe("notify");
    }
    expect(w.errors).toEqual([]);
  });

  it("subscriptions: rotate shows the new secret once; a private or invalid URL shows the API's refusal", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    const { p, w } = await loggedIn();
    await p.goto(`${base}/console#subscriptions`);
    await p.fill('#sub-create input[name="url"]', `${receiver.url}/rotate-me`);
    await p.click('#sub-create button[type="submit"]');
    const created = await p.locator("[data-secret]").textContent();
    const { rows } = await db.pool.query("SELECT id FROM webhook_subscriptions WHERE url = $1", [
      `${receiver.url}/rotate-me`,
    ]);
    const id = Number(rows[0].id);
    const row = p.locator(`#subs-table tr[data-id="${id}"]`);
    await row.locator("button", { hasText: "Rotate" }).click();
    await p.click("#confirm-ok");
    await expect.poll(() => p.locator("[data-secret]").textContent()).not.toBe(created);
    const rotated = await p.locator("[data-secret]").textContent();
    const stored = await db.pool.query(
      "SELECT secret, previous_secret FROM webhook_subscriptions WHERE id = $1",
      [id],
    );
    expect(stored.rows[0]).toEqual({ secret: rotated, previous_secret: created });
    expect(await p.textContent("#sub-secret")).toContain(`subscription ${id}`);
    // Once: the next action (a refusal here) hides it, and a reload never shows it.
    await p.fill('#sub-create input[name="url"]', "http://10.0.0.1/");
    await p.click('#sub-create button[type="submit"]');
    await expect
      .poll(() => p.textContent("#subs-message"))
      .toMatch(/^Refused: .*(private|not allowed)/i);
    expect(await p.isVisible("#sub-secret")).toBe(false);
    // The refused URL stays in the field to be corrected.
    expect(await p.inputValue('#sub-create input[name="url"]')).toBe("http://10.0.0.1/");

    for (const bad of ["not a url", ""]) {
      await p.fill('#sub-create input[name="url"]', bad);
      await p.click('#sub-create button[type="submit"]');
      await expect
        .poll(() => p.textContent("#subs-message"), { timeout: 5_000 })
        .toMatch(/^Refused: .*url/i);
      // Cleared, so the next refusal is seen to arrive.
      await p.evaluate(() => {
        const m = document.querySelector("#subs-message");
        if (m) m.textContent = "";
      });
    }
    // A double click on Create creates one subscription, whose secret is the one shown.
    await p.fill('#sub-create input[name="url"]', `${receiver.url}/twice`);
    await p.dblclick('#sub-create button[type="submit"]');
    await p.locator("[data-secret]").waitFor();
    await expect.poll(() => p.inputValue('#sub-create input[name="url"]')).toBe("");
    const twice = await db.pool.query("SELECT secret FROM webhook_subscriptions WHERE url = $1", [
      `${receiver.url}/twice`,
    ]);
    expect(twice.rows).toEqual([{ secret: await p.locator("[data-secret]").textContent() }]);

    await p.reload();
    await p.waitForSelector(`#subs-table tr[data-id="${id}"]`);
    expect(await p.textContent("body")).not.toContain(rotated ?? "none");
    expect(w.errors).toEqual([]);
  });

  it("every control has an accessible name on every view; the dialog keeps focus and Esc cancels; focus is visible", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    // A row in every list, so its buttons are checked too.
    await subscribe(db.pool, `${receiver.url}/named`, { eventTypes: ["named.*"] });
    await db.pool.query(
      `INSERT INTO orders_inbox (order_number, order_key, payload, upload_state, last_error)
       VALUES ('N-1', 'named-1', '{}'::jsonb, 'failed', 'HTTP 400')`,
    );
    const { p, w } = await loggedIn();
    const cdp = await p.context().newCDPSession(p);
    const unnamed = async () => {
      const { nodes } = (await cdp.send("Accessibility.getFullAXTree")) as {
        nodes: Array<{ ignored: boolean; role?: { value: string }; name?: { value: string } }>;
      };
      const controls = nodes.filter(
        (n) =>
          !n.ignored &&
          ["button", "textbox", "combobox", "spinbutton", "link", "searchbox", "checkbox"].includes(
            n.role?.value ?? "",
          ),
      );
      // The tree is read at all: the header's links and buttons are always in it.
      expect(controls.length).toBeGreaterThanOrEqual(5);
      return controls.filter((n) => !n.name?.value?.trim()).map((n) => n.role?.value);
    };
    for (const view of ["now", "failed", "subscriptions", "settings"]) {
      await p.goto(`${base}/console#${view}`);
      await p.waitForSelector(`#view-${view}:not([hidden])`);
      if (view === "settings") await p.locator("tr[data-setting]").first().waitFor();
      if (view === "subscriptions") await p.locator("#subs-table tbody tr").first().waitFor();
      expect({ view, unnamed: await unnamed() }).toEqual({ view, unnamed: [] });
    }
    for (const kind of ["orders", "deliveries", "notifications"]) {
      await p.goto(`${base}/console#failed`);
      await p.selectOption("#failed-rows", kind);
      await expect.poll(() => p.textContent("#failed-message")).toContain(`failed ${kind}`);
      expect({ kind, unnamed: await unnamed() }).toEqual({ kind, unnamed: [] });
    }

    // The confirmation dialog: focus starts inside, Tab and Shift+Tab stay inside, Esc cancels
    // and focus goes back to the button that opened it.
    await p.goto(`${base}/console#failed`);
    await p.selectOption("#failed-rows", "orders");
    await p.focus("#retry-matching");
    await p.keyboard.press("Enter");
    await p.waitForSelector("#confirm[open]");
    const inDialog = () => p.evaluate(() => Boolean(document.activeElement?.closest("#confirm")));
    expect(await inDialog()).toBe(true);
    for (const key of ["Tab", "Tab", "Tab", "Shift+Tab", "Shift+Tab", "Shift+Tab", "Shift+Tab"]) {
      await p.keyboard.press(key);
      expect({ key, inside: await inDialog() }).toEqual({ key, inside: true });
    }
    await p.keyboard.press("Escape");
    await p.waitForSelector("#confirm:not([open])", { state: "attached" });
    expect(await p.evaluate(() => document.activeElement?.id)).toBe("retry-matching");

    // Focus is visible: a keyboard-focused control draws an outline (or a ring).
    await p.keyboard.press("Tab");
    const ring = await p.evaluate(() => {
      const el = document.activeElement as HTMLElement;
      const s = getComputedStyle(el);
      return {
        tag: el.tagName,
        outline: s.outlineStyle !== "none" && s.outlineWidth !== "0px",
        shadow: s.boxShadow !== "none",
      };
    });
    expect(ring.outline || ring.shadow).toBe(true);
    expect(w.errors).toEqual([]);
  });

  it("the Now view at 320 px wide has no horizontal scroll; every view fits too", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    const { p, w } = await loggedIn({ viewport: { width: 320, height: 640 } });
    for (const view of ["now", "failed", "subscriptions", "settings"]) {
      await p.goto(`${base}/console#${view}`);
      await p.waitForSelector(`#view-${view}:not([hidden])`);
      // Wait for the view's content, whatever it is.
      await p.waitForFunction((v) => {
        const ready: Record<string, string> = {
          now: "#workloads canvas",
          failed: "#failed-table thead th",
          subscriptions: "#subs-table tbody tr, #subs-message:not(:empty)",
          settings: "tr[data-setting]",
        };
        return document.querySelector(ready[v] ?? "body") !== null;
      }, view);
      const overflow = await p.evaluate(
        () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
      );
      expect({ view, overflow }).toEqual({ view, overflow: 0 });
    }
    // The stream indicator's longest words move nothing: the header keeps its height.
    await p.goto(`${base}/console#now`);
    const header = () =>
      p.evaluate(() => document.querySelector("body > header")?.getBoundingClientRect().height);
    const live = await header();
    // A sticky header that fits in two rows, not a quarter of the screen.
    expect(live).toBeLessThan(90);
    await mkdir(SHOTS, { recursive: true });
    await p.screenshot({ path: path.join(SHOTS, "now-320.png") });
    console.log(`screenshot: ${path.relative(ROOT, path.join(SHOTS, "now-320.png"))}`);
    for (const text of [
      "reconnecting…",
      "disconnected; retrying in 30 s",
      "too many consoles are connected to this replica",
    ]) {
      await p.evaluate((t) => {
        const el = document.querySelector("#stream");
        if (el instanceof HTMLElement) {
          el.textContent = t;
          el.dataset.state = "down";
        }
      }, text);
      expect({ text, height: await header() }).toEqual({ text, height: live });
      expect(
        await p.evaluate(
          () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
        ),
      ).toBe(0);
    }
    expect(w.errors).toEqual([]);
    expect(w.csp).toEqual([]);
  });

  it("the health box, a live region, is not rewritten while nothing changes", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    const { p, w } = await loggedIn();
    await p.waitForSelector("#health strong");
    await p.evaluate(() => {
      const box = document.querySelector("#health");
      const seen = { mutations: 0 };
      (window as unknown as { __health: typeof seen }).__health = seen;
      if (box)
        new MutationObserver(() => seen.mutations++).observe(box, {
          childList: true,
          subtree: true,
          characterData: true,
        });
    });
    // Two more status snapshots (every 5 s) and the page's own 5 s refresh.
    await samplesFromNow(p, 11, 20_000);
    expect(
      await p.evaluate(
        () => (window as unknown as { __health: { mutations: number } }).__health.mutations,
      ),
    ).toBe(0);
    expect(w.errors).toEqual([]);
  });

  it("live updates do not take the focus or the typing away from a settings field", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    const { p, w } = await loggedIn();
    await p.goto(`${base}/console#settings`);
    const input = p.locator('tr[data-setting="poll_interval_seconds"] input');
    await input.waitFor();
    await input.click();
    await p.keyboard.type("12");
    // Six seconds: six samples and at least one status snapshot.
    await samplesFromNow(p, 6);
    await p.keyboard.type("3");
    expect(await p.evaluate(() => document.activeElement?.getAttribute("name"))).toBe(
      "poll_interval_seconds",
    );
    expect(await input.inputValue()).toBe("123");
    expect(w.errors).toEqual([]);
  });
});

describe("the console's event stream over HTTP", () => {
  let db: TestDatabase;
  let app: App;
  let server: FastifyInstance;
  let base: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    app = await startReactor({ databaseUrl: db.url, env: { ADMIN_TOKEN } });
    server = await startStatusServer(app, app.logger);
    base = serverUrl(server);
  });
  afterAll(async () => {
    await server?.close();
    await app?.stop(1_000);
    await db?.drop();
  });

  it("HEAD /console/events answers at once and holds no console slot", async () => {
    const feed = consoleFeeds.get(server);
    const status = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(`${base}/console/events`, {
        method: "HEAD",
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
        agent: false,
        timeout: 3_000,
      });
      req.on("response", (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on("timeout", () => req.destroy(new Error("no answer to HEAD within 3 s")));
      req.on("error", reject);
      req.end();
    });
    expect([200, 404, 405]).toContain(status);
    expect(feed?.clients()).toBe(0);
  });

  it("a stream opened with a session ends when the session expires", async () => {
    const sessions = makeConsoleSessions(ADMIN_TOKEN);
    const cookie = sessions.issue(Date.now() - SESSION_SECONDS * 1000 + 2_000);
    const controller = new AbortController();
    const res = await fetch(`${base}/console/events`, {
      headers: { cookie: `${SESSION_COOKIE}=${cookie}` },
      signal: controller.signal,
    });
    expect(res.status).toBe(200);
    const reader = res.body?.getReader();
    const started = Date.now();
    try {
      for (;;) {
        const { done } = await Promise.race([
          reader?.read() ?? Promise.resolve({ done: true }),
          new Promise<never>((_, reject) =>
            setTimeout(() => reject(new Error("the stream outlived its session")), 8_000),
          ),
        ]);
        if (done) break;
      }
    } finally {
      controller.abort();
    }
    expect(Date.now() - started).toBeGreaterThan(1_000);
    await waitFor(() => consoleFeeds.get(server)?.clients() === 0, { what: "its slot freed" });
  });
});

describe("the live feed's memory", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("keeps at most 15 minutes of samples, one a second, however long it runs", async () => {
    vi.useFakeTimers();
    const metrics = makeMetrics();
    const stub = {
      reactor: { workloads: [{ name: "uploads" }, { name: "deliveries" }], drainers: new Map() },
      metrics,
      modules: [],
      logger: makeLogger("silent"),
    } as unknown as App;
    const feed = makeLiveFeed(stub);
    try {
      await vi.advanceTimersByTimeAsync(60_000);
      expect(feed.history()).toHaveLength(60);
      await vi.advanceTimersByTimeAsync((HISTORY_SECONDS + 300) * 1000);
      const history = feed.history();
      expect(HISTORY_SECONDS).toBe(900);
      expect(history).toHaveLength(HISTORY_SECONDS);
      // The newest second is last, and they are a second apart.
      const t = history.map((s) => s.t);
      expect(t.at(-1)).toBe(Date.now());
      expect(t.slice(1).every((at, i) => at - (t[i] ?? 0) === 1_000)).toBe(true);
    } finally {
      feed.stop();
    }
  });
});
