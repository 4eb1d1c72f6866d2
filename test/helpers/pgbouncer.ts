// A real PgBouncer (Debian's `pgbouncer`) in transaction mode in front of the test server,
// for the pooled path: DATABASE_URL through PgBouncer, LISTEN_DATABASE_URL direct. One per
// test file, on a free loopback port, with its config in a temporary folder. Outside CI a
// missing pgbouncer skips the tests with the reason; under CI=true it fails them.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { access, chown, constants, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import type { TestContext } from "vitest";

const run = promisify(execFile);

/**
 * Server connections per (database, user) pair: fewer than the clients two replicas open,
 * so server connections really are shared between clients, as in production.
 */
export const PGBOUNCER_POOL_SIZE = 4;
/** Two replicas (pool max 10 each), the tests' own pools and the admin console, with room. */
const MAX_CLIENT_CONN = 200;
/** Debian installs it in /usr/sbin, which is not on every PATH. */
const EXTRA_DIRS = ["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"];
/** PgBouncer refuses to run as root; as root we start it as this OS user. */
const RUN_AS = "postgres";
const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;
/** A port another process took between our probe and PgBouncer's bind: try another one. */
const PORT_ATTEMPTS = 5;
/** Log lines kept for error messages. */
const LOG_LINES_KEPT = 200;

const MISSING = "pgbouncer not installed (Debian package `pgbouncer`)";

/** The pgbouncer executable, or null where it is not installed. */
export async function findPgbouncer(): Promise<string | null> {
  const dirs = [...(process.env.PATH ?? "").split(path.delimiter).filter(Boolean), ...EXTRA_DIRS];
  for (const dir of dirs) {
    const candidate = path.join(dir, "pgbouncer");
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this folder
    }
  }
  return null;
}

/**
 * The pgbouncer executable for a test file's setup: null where it is missing (the tests
 * then skip with the reason), but under CI=true a missing pgbouncer throws, so CI never
 * passes without running the pooled path.
 */
export async function pgbouncerForTests(): Promise<string | null> {
  const bin = await findPgbouncer();
  if (!bin && process.env.CI === "true")
    throw new Error(`${MISSING}: CI must run the pooled-path tests`);
  return bin;
}

/** Skips the calling test with the reason when the file's setup found no pgbouncer. */
export function skipWithoutPgbouncer<T>(ctx: TestContext, bouncer: T | null): asserts bouncer is T {
  if (bouncer === null) ctx.skip(`${MISSING}: skipped`);
}

export interface PgBouncer {
  port: number;
  /** A client URL for one of the databases it routes, through PgBouncer. */
  urlFor(database: string): string;
  /** Rows of an admin console command (SHOW POOLS, SHOW STATS, …). */
  show(what: "POOLS" | "STATS" | "SERVERS" | "CLIENTS"): Promise<Array<Record<string, unknown>>>;
  /** What PgBouncer logged so far (the last lines). */
  log(): string;
  stop(): Promise<void>;
}

export interface StartPgBouncerOptions {
  /** The test server's admin URL (inject("adminUrl")): its host, port, user and password. */
  adminUrl: string;
  /** Databases to route (each a [databases] entry of the same name). */
  databases: string[];
  bin: string;
}

/** The uid and gid PgBouncer runs as: the postgres OS user when we are root, else us. */
async function runAs(): Promise<{ uid: number; gid: number } | null> {
  if (process.getuid?.() !== 0) return null;
  try {
    const [uid, gid] = await Promise.all([run("id", ["-u", RUN_AS]), run("id", ["-g", RUN_AS])]);
    return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
  } catch {
    throw new Error(
      `pgbouncer refuses to run as root and there is no '${RUN_AS}' OS user to run it as`,
    );
  }
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (!address || typeof address === "string") throw new Error("no free port");
  return address.port;
}

/** A value in pgbouncer.ini's connection strings and userlist.txt, quoted. */
const quoted = (value: string) => `'${value.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;

function iniText(options: {
  port: number;
  host: string;
  serverPort: string;
  user: string;
  databases: string[];
  authFile: string;
}): string {
  const routes = options.databases.map(
    (db) =>
      `${db} = host=${options.host} port=${options.serverPort} dbname=${quoted(db)} user=${quoted(options.user)}`,
  );
  return [
    "[databases]",
    ...routes,
    "",
    "[pgbouncer]",
    "listen_addr = 127.0.0.1",
    `listen_port = ${options.port}`,
    // TCP only: no socket file in a shared folder to collide with another run's.
    "unix_socket_dir =",
    "pool_mode = transaction",
    `default_pool_size = ${PGBOUNCER_POOL_SIZE}`,
    "min_pool_size = 0",
    "reserve_pool_size = 0",
    `max_client_conn = ${MAX_CLIENT_CONN}`,
    // SCRAM from clients; the auth_file holds the plain password, which PgBouncer also uses
    // to log in to a server that asks for one (embedded Postgres) and ignores under trust.
    "auth_type = scram-sha-256",
    `auth_file = ${options.authFile}`,
    `admin_users = ${options.user}`,
    // node-postgres sends user, database, application_name and client_encoding, all of
    // which PgBouncer handles. Nothing is ignored on purpose: a pool that starts sending
    // statement_timeout or options must fail here (PgBouncer 1.18 refuses the login),
    // because ignoring them would silently drop the timeout in production.
    "ignore_startup_parameters =",
    "",
  ].join("\n");
}

/** Starts PgBouncer routing `databases` of the test server; resolves once it answers. */
export async function startPgBouncer(options: StartPgBouncerOptions): Promise<PgBouncer> {
  const admin = new URL(options.adminUrl);
  const user = decodeURIComponent(admin.username || "postgres");
  // The server's password when it has one (embedded Postgres); under trust any password
  // works towards the server, and clients still authenticate to PgBouncer with it.
  const password = admin.password
    ? decodeURIComponent(admin.password)
    : randomBytes(12).toString("hex");
  const owner = await runAs();
  const dir = await mkdtemp(path.join(tmpdir(), "pg-reactor-pgbouncer-"));
  const authFile = path.join(dir, "userlist.txt");
  const ini = path.join(dir, "pgbouncer.ini");
  const host = admin.hostname.replace(/^\[|\]$/g, "") || "127.0.0.1";
  const serverPort = admin.port || "5432";
  await writeFile(authFile, `"${user.replace(/"/g, '""')}" "${password.replace(/"/g, '""')}"\n`, {
    mode: 0o600,
  });
  if (owner) {
    await chown(dir, owner.uid, owner.gid);
    await chown(authFile, owner.uid, owner.gid);
  }

  const clientUrl = (port: number, database: string) => {
    const u = new URL(`postgres://127.0.0.1:${port}/`);
    u.username = encodeURIComponent(user);
    u.password = encodeURIComponent(password);
    u.pathname = `/${encodeURIComponent(database)}`;
    return u.toString();
  };

  let lines: string[] = [];
  const log = () => lines.join("\n");
  let child: ChildProcess | null = null;
  let port = 0;
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    await writeFile(
      ini,
      iniText({ port, host, serverPort, user, databases: options.databases, authFile }),
      { mode: 0o600 },
    );
    if (owner) await chown(ini, owner.uid, owner.gid);
    lines = [];
    const started = await launch(options.bin, ini, dir, owner, (line) => {
      lines.push(line);
      if (lines.length > LOG_LINES_KEPT) lines.shift();
    });
    if (started.ok) {
      child = started.child;
      break;
    }
    const collided = /Address already in use/i.test(log());
    if (!collided || attempt >= PORT_ATTEMPTS) {
      await rm(dir, { recursive: true, force: true });
      throw new Error(`pgbouncer did not start (${started.reason}):\n${log()}`);
    }
  }
  const proc = child;
  // A test process that dies without stop() must not leave PgBouncer running.
  const killOnExit = () => proc.kill("SIGKILL");
  process.once("exit", killOnExit);

  const stop = async () => {
    process.off("exit", killOnExit);
    if (proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
      // SIGTERM: immediate shutdown (SIGINT would wait for clients to disconnect).
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };

  const bouncer: PgBouncer = {
    port,
    urlFor: (database) => {
      if (!options.databases.includes(database))
        throw new Error(`pgbouncer does not route database ${database}`);
      return clientUrl(port, database);
    },
    async show(what) {
      const client = new pg.Client({ connectionString: clientUrl(port, "pgbouncer") });
      await client.connect();
      try {
        // The admin console speaks only the simple query protocol (no parameters).
        return (await client.query(`SHOW ${what}`)).rows;
      } finally {
        await client.end();
      }
    },
    log,
    stop,
  };

  // Authentication and routing work end to end before any test relies on them.
  try {
    for (const database of options.databases) {
      const client = new pg.Client({ connectionString: clientUrl(port, database) });
      await client.connect();
      await client.query("SELECT 1").finally(() => client.end());
    }
  } catch (err) {
    await stop();
    throw new Error(
      `pgbouncer started but a query through it failed: ${(err as Error).message}\n${log()}`,
    );
  }
  return bouncer;
}

type Launched = { ok: true; child: ChildProcess } | { ok: false; reason: string };

/** Runs pgbouncer in the foreground until it says it is up, or exits, or the deadline. */
function launch(
  bin: string,
  ini: string,
  cwd: string,
  owner: { uid: number; gid: number } | null,
  onLine: (line: string) => void,
): Promise<Launched> {
  return new Promise((resolve) => {
    const child = spawn(bin, [ini], {
      cwd,
      stdio: ["ignore", "pipe", "pipe"],
      ...(owner ?? {}),
    });
    let settled = false;
    const settle = (result: Launched) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(result);
    };
    let partial = "";
    const onData = (chunk: Buffer) => {
      partial += chunk.toString("utf8");
      const parts = partial.split("\n");
      partial = parts.pop() ?? "";
      for (const line of parts) {
        onLine(line);
        // PgBouncer prints this once it listens and accepts clients.
        if (/LOG process up/.test(line)) settle({ ok: true, child });
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    child.once("error", (err) => settle({ ok: false, reason: err.message }));
    child.once("exit", (code, signal) =>
      settle({ ok: false, reason: `exited with ${signal ?? `code ${code}`}` }),
    );
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      settle({ ok: false, reason: `not up within ${START_TIMEOUT_MS / 1000} s` });
    }, START_TIMEOUT_MS);
  });
}
