// "Only one replica at a time" without a leader: a session advisory lock, taken on a
// short-lived connection of its own to the direct database URL. A pooled connection
// would not do: through PgBouncer in transaction mode, the lock and the unlock could
// land on different server connections and the lock would leak. If the process dies,
// its connection closes and the lock is released with it.
import pg from "pg";

/** Connecting for the lock gives up after this long (the job runs again next interval). */
const CONNECT_TIMEOUT_MS = 5_000;
/**
 * A lock or unlock query gives up after this long (plus any lock wait): a server, pooler or
 * network path that stops answering must not hold a job (or shutdown) for ever.
 */
const QUERY_TIMEOUT_MS = 10_000;
/** Closing politely waits this long before the socket is destroyed (a frozen peer never answers). */
const END_TIMEOUT_MS = 1_000;

export type Locked<T> = { locked: true; value: T } | { locked: false };

/** Tries one lock on an open session: runs `run` while holding it, or returns at once. */
export type TryLock = <T>(key: bigint, run: () => Promise<T>) => Promise<Locked<T>>;

async function connect(url: string, name: string, waitMs = 0): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: url,
    application_name: `pg-reactor ${name}`,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    query_timeout: QUERY_TIMEOUT_MS + waitMs,
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
  });
  // An error on the idle connection surfaces as the failure of the next query.
  client.on("error", () => undefined);
  try {
    await client.connect();
  } catch (err) {
    await close(client);
    throw err;
  }
  return client;
}

/** Ends the connection, or destroys its socket when the peer does not answer the goodbye. */
async function close(client: pg.Client): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const ended = client.end().then(
    () => true,
    () => false,
  );
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), END_TIMEOUT_MS);
  });
  const ok = await Promise.race([ended, late]);
  clearTimeout(timer);
  if (!ok)
    (
      client as unknown as { connection?: { stream?: { destroy(): void } } }
    ).connection?.stream?.destroy();
}

async function holding<T>(client: pg.Client, key: bigint, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } finally {
    await client.query("SELECT pg_advisory_unlock($1)", [key.toString()]).catch(() => undefined);
  }
}

/**
 * Runs `fn` while holding advisory lock `key`, or returns `{ locked: false }` at once if
 * another session holds it (wait: false) or after `waitMs` (wait: true).
 */
export async function withDirectLock<T>(
  url: string,
  key: bigint,
  options: { name: string; waitMs?: number },
  fn: () => Promise<T>,
): Promise<Locked<T>> {
  const client = await connect(url, options.name, options.waitMs);
  try {
    let locked: boolean;
    if (options.waitMs) {
      await client.query(`SET lock_timeout = ${Math.max(1, Math.round(options.waitMs))}`);
      try {
        await client.query("SELECT pg_advisory_lock($1)", [key.toString()]);
        locked = true;
      } catch (err) {
        if ((err as { code?: string }).code !== "55P03") throw err;
        locked = false;
      }
    } else {
      const { rows } = await client.query<{ ok: boolean }>(
        "SELECT pg_try_advisory_lock($1) AS ok",
        [key.toString()],
      );
      locked = rows[0]?.ok === true;
    }
    if (!locked) return { locked: false };
    return { locked: true, value: await holding(client, key, fn) };
  } finally {
    await close(client);
  }
}

/** A direct connection kept for a series of short locks (one per file of a folder). */
export interface DirectSession {
  tryLock: TryLock;
  /** Closes the connection now (shutdown); a later tryLock opens a new one. */
  close(): Promise<void>;
}

/**
 * One direct connection for many short locks, so each costs a round trip rather than a
 * connection (tens of ms). Opened on first use and closed after `idleMs` without one, so
 * an idle reactor holds no extra connection. Never waits for a lock: another session
 * holding it means another replica is doing that piece of work. A failed query drops the
 * connection (and with it any lock it held); the next tryLock connects again.
 */
export function makeDirectSession(
  url: string,
  name: string,
  options: { idleMs: number },
): DirectSession {
  let client: Promise<pg.Client> | null = null;
  let idle: NodeJS.Timeout | null = null;
  let busy = 0;

  async function drop() {
    const current = client;
    client = null;
    const open = await current?.catch(() => null);
    if (open) await close(open);
  }

  return {
    async tryLock(key, run) {
      if (idle) clearTimeout(idle);
      idle = null;
      busy++;
      try {
        client ??= connect(url, name);
        const c = await client.catch(async (err) => {
          client = null;
          throw err;
        });
        let locked: boolean;
        try {
          const { rows } = await c.query<{ ok: boolean }>("SELECT pg_try_advisory_lock($1) AS ok", [
            key.toString(),
          ]);
          locked = rows[0]?.ok === true;
        } catch (err) {
          await drop();
          throw err;
        }
        if (!locked) return { locked: false };
        try {
          return { locked: true, value: await run() };
        } finally {
          // An unlock that failed leaves the lock held on that connection: drop it.
          await c.query("SELECT pg_advisory_unlock($1)", [key.toString()]).catch(() => drop());
        }
      } finally {
        busy--;
        if (busy === 0 && client) {
          idle = setTimeout(() => void drop(), options.idleMs);
          idle.unref();
        }
      }
    },
    async close() {
      if (idle) clearTimeout(idle);
      idle = null;
      await drop();
    },
  };
}
