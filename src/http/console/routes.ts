// GET /console: the operator console, served by the reactor itself when ADMIN_TOKEN is
// set. Plain HTML, CSS and ES modules from console/ plus uPlot from its npm package, all
// read and compressed once at start and served from here (nothing from the internet, no
// build step). The page calls the admin API with its session cookie and CSRF token, and
// follows /console/events (server-sent events) for its live figures.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import type { ServerResponse } from "node:http";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { App } from "../../app.js";
import { VERSION } from "../../version.js";
import { makeAdminAuth } from "../auth.js";
import { type LiveFeed, makeLiveFeed } from "./live.js";
import {
  type ConsoleSessions,
  readCookies,
  SESSION_COOKIE,
  sameSecret,
  sessionCookie,
} from "./session.js";

const CONSOLE_DIR = new URL("../../../console/", import.meta.url);

/** The login form's note when the browser still sent a session cookie that is no longer valid. */
const SESSION_ENDED =
  "Your session has ended (it lasts 12 hours, and a new ADMIN_TOKEN ends it); log in again.";

/** Failed logins allowed per client address per minute; more are refused with 429. */
const LOGIN_FAILURES_PER_MINUTE = 10;

interface Asset {
  body: Buffer;
  gzip: Buffer;
  type: string;
  /** Short content hash, in the asset's URL: a changed file is a new URL. */
  hash: string;
}

const TYPES: Record<string, string> = {
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
};

function loadAssets(): Map<string, Asset> {
  const require = createRequire(import.meta.url);
  const files: Record<string, string> = {
    "console.js": fileURLToPath(new URL("console.js", CONSOLE_DIR)),
    "console.css": fileURLToPath(new URL("console.css", CONSOLE_DIR)),
    "uPlot.min.js": require.resolve("uplot/dist/uPlot.iife.min.js"),
    "uPlot.min.css": require.resolve("uplot/dist/uPlot.min.css"),
  };
  const assets = new Map<string, Asset>();
  for (const [name, file] of Object.entries(files)) {
    const body = readFileSync(file);
    assets.set(name, {
      body,
      gzip: gzipSync(body, { level: 9 }),
      type: TYPES[name.slice(name.lastIndexOf("."))] ?? "application/octet-stream",
      hash: createHash("sha256").update(body).digest("hex").slice(0, 12),
    });
  }
  return assets;
}

/** No inline script or style, nothing from elsewhere, never in a frame. */
const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join("; ");

const escapeHtml = (s: string) =>
  s.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] ?? c,
  );

function sendCompressed(req: FastifyRequest, reply: FastifyReply, body: Buffer, gzip: Buffer) {
  reply.header("vary", "accept-encoding");
  if (/\bgzip\b/.test(String(req.headers["accept-encoding"] ?? ""))) {
    return reply.header("content-encoding", "gzip").send(gzip);
  }
  return reply.send(body);
}

export interface ConsoleRoutes {
  feed: LiveFeed;
}

export async function registerConsoleRoutes(
  server: FastifyInstance,
  app: App,
  sessions: ConsoleSessions,
): Promise<ConsoleRoutes | null> {
  const token = app.env.adminToken;
  if (!token) return null;
  const auth = makeAdminAuth(token, sessions);
  const assets = loadAssets();
  const template = (name: string) => readFileSync(new URL(name, CONSOLE_DIR), "utf8");
  const pageHtml = template("index.html");
  const loginHtml = template("login.html");
  const assetUrl = (name: string) => `/console/assets/${name}?v=${assets.get(name)?.hash ?? ""}`;
  const fill = (html: string, values: Record<string, string>) =>
    html
      .replace(/\{\{asset:([\w.-]+)\}\}/g, (_, name: string) => assetUrl(name))
      .replace(/\{\{(\w+)\}\}/g, (_, key: string) => escapeHtml(values[key] ?? ""));
  // What the page needs to know about the workloads (from the one list, never named here).
  const pageConfig = JSON.stringify({
    workloads: app.modules.map(({ module }) => ({
      name: module.name,
      rows: module.rows,
      filters: Object.fromEntries(
        Object.entries(module.failedRows.filters).map(([key, f]) => [key, { type: f.schema.type }]),
      ),
    })),
  });
  const feed = makeLiveFeed(app);
  server.addHook("preClose", async () => feed.stop());

  const failures = new Map<string, { count: number; since: number }>();
  function tooManyFailures(ip: string): boolean {
    const entry = failures.get(ip);
    if (!entry || Date.now() - entry.since > 60_000) return false;
    return entry.count >= LOGIN_FAILURES_PER_MINUTE;
  }
  function countFailure(ip: string) {
    const entry = failures.get(ip);
    if (!entry || Date.now() - entry.since > 60_000) {
      if (failures.size > 10_000) failures.clear();
      failures.set(ip, { count: 1, since: Date.now() });
    } else entry.count++;
  }

  const secure = (req: FastifyRequest) =>
    req.protocol === "https" || req.headers["x-forwarded-proto"] === "https";

  function html(reply: FastifyReply, code: number, body: string) {
    reply
      .code(code)
      .type("text/html; charset=utf-8")
      .header("content-security-policy", CSP)
      .header("x-frame-options", "DENY")
      .header("x-content-type-options", "nosniff")
      .header("referrer-policy", "no-referrer")
      .header("cache-control", "no-store");
    // A page is a few kilobytes and carries its session's CSRF token: compressed per answer.
    const bytes = Buffer.from(body);
    return sendCompressed(reply.request, reply, bytes, gzipSync(bytes));
  }

  function login(reply: FastifyReply, code: number, message: string) {
    return html(reply, code, fill(loginHtml, { message, version: VERSION }));
  }

  await server.register(async (scope) => {
    // The login form posts application/x-www-form-urlencoded (no script needed to log in).
    scope.addContentTypeParser(
      "application/x-www-form-urlencoded",
      { parseAs: "string", bodyLimit: 4096 },
      (_req, body, done) => done(null, Object.fromEntries(new URLSearchParams(String(body)))),
    );

    scope.get("/console", async (req, reply) => {
      const who = auth.identify(req);
      if (who === null) {
        // A cookie that no longer opens anything: the page (or a bookmark) outlived its
        // session, and the operator should know why the form is back.
        const ended = readCookies(req.headers.cookie, SESSION_COOKIE).some(Boolean);
        return login(reply, 200, ended ? SESSION_ENDED : "");
      }
      // The copy that authenticated (a planted same-named cookie may be sent first).
      let cookie = sessions.fromHeader(req.headers.cookie);
      if (!sessions.valid(cookie)) {
        // Proven with a Bearer header: the page's own requests need the cookie.
        cookie = sessions.issue();
        reply.header("set-cookie", sessionCookie(cookie, secure(req)));
      }
      return html(
        reply,
        200,
        fill(pageHtml, {
          csrf: sessions.csrfFor(cookie),
          config: pageConfig,
          instance: app.env.instanceId,
          version: VERSION,
        }),
      );
    });

    scope.post("/console/login", async (req, reply) => {
      const ip = req.ip;
      if (tooManyFailures(ip))
        return login(reply, 429, "Too many wrong tokens from this address; wait a minute.");
      const body = req.body as Record<string, unknown> | undefined;
      const given = typeof body?.token === "string" ? body.token : "";
      if (!given || !sameSecret(given, token)) {
        countFailure(ip);
        req.log.warn({ ip }, "console login refused: wrong token");
        return login(reply, 401, "That is not the ADMIN_TOKEN of this reactor.");
      }
      failures.delete(ip);
      return reply
        .code(303)
        .header("set-cookie", sessionCookie(sessions.issue(), secure(req)))
        .header("location", "/console")
        .send();
    });

    scope.post("/console/logout", { preHandler: auth.requireAdmin }, async (req, reply) => {
      return reply.header("set-cookie", sessionCookie(null, secure(req))).send({ loggedOut: true });
    });

    // Whether this browser's session still holds (the page asks when its stream breaks):
    // answered from the cookie alone, no query.
    scope.get("/console/session", { preHandler: auth.requireAdmin }, async () => ({ valid: true }));

    // No HEAD: Node sends a HEAD answer's headers only with its end, which a stream never
    // reaches, so the client would wait forever while holding a console slot.
    scope.get(
      "/console/events",
      { preHandler: auth.requireAdmin, exposeHeadRoute: false },
      async (req, reply) => {
        const res: ServerResponse = reply.raw;
        reply.hijack();
        res.writeHead(200, {
          "content-type": "text/event-stream; charset=utf-8",
          "cache-control": "no-store",
          "x-accel-buffering": "no",
          connection: "keep-alive",
        });
        // A stream is authorised when it opens; one opened with a session ends when that
        // session does (EventSource then reconnects, gets 401, and the page goes to login).
        // A Bearer token stays valid for the life of the process.
        const session =
          auth.identify(req) === "session" ? sessions.fromHeader(req.headers.cookie) : null;
        const authorised = session ? () => sessions.valid(session) : () => true;
        if (!feed.attach(res, authorised)) {
          res.end("event: refused\ndata: too many consoles are connected to this replica\n\n");
          return;
        }
        req.raw.on("close", () => res.end());
      },
    );

    scope.get("/console/assets/:name", async (req, reply) => {
      const { name } = req.params as { name: string };
      const asset = assets.get(name);
      if (!asset) {
        return reply
          .code(404)
          .send({ statusCode: 404, error: "Not Found", message: `no console asset ${name}` });
      }
      reply
        .type(asset.type)
        .header("x-content-type-options", "nosniff")
        // The URL carries the content hash, so a browser may keep it.
        .header(
          "cache-control",
          (req.query as { v?: string }).v === asset.hash
            ? "public, max-age=31536000, immutable"
            : "no-cache",
        );
      return sendCompressed(req, reply, asset.body, asset.gzip);
    });
  });
  return { feed };
}
