// Runs a real reactor (the same makeApp main.ts uses) inside the test process.
import { type App, makeApp } from "../../src/app.js";
import { type Env, loadEnv } from "../../src/config/env.js";
import { makeLogger } from "../../src/logger.js";
import type { DrainerEvent } from "../../src/reactor/drainer.js";

export interface StartOptions {
  databaseUrl: string;
  shipstationUrl?: string;
  env?: Record<string, string>;
  listenerCheckIntervalMs?: number;
  onDrainerEvent?: (event: DrainerEvent) => void;
  /** Collects every log line (JSON text) the reactor writes, at debug level. */
  logLines?: string[];
}

export async function startReactor(options: StartOptions): Promise<App> {
  const env: Env = loadEnv({
    DATABASE_URL: options.databaseUrl,
    SHIPSTATION_BASE_URL: options.shipstationUrl ?? "http://127.0.0.1:9",
    SHIPSTATION_API_KEY: "test-key",
    SHIPSTATION_API_SECRET: "test-secret",
    // The SSRF guard stays on; the tests' own receivers listen on loopback.
    WEBHOOK_ALLOWED_NETWORKS: "127.0.0.1/32",
    HTTP_PORT: "0",
    ...options.env,
  });
  const app = makeApp({
    env,
    databaseUrl: options.databaseUrl,
    logger: options.logLines
      ? makeLogger("debug", { write: (line: string) => void options.logLines?.push(line) })
      : makeLogger(process.env.TEST_LOG_LEVEL ?? "silent"),
    listenerCheckIntervalMs: options.listenerCheckIntervalMs,
    onDrainerEvent: options.onDrainerEvent,
  });
  await app.start();
  return app;
}

/** The sum of a metric over all its label sets, as a scrape would add it up. */
export async function metricTotal(metric: {
  get(): Promise<{ values: Array<{ value: number }> }>;
}): Promise<number> {
  return (await metric.get()).values.reduce((sum, v) => sum + v.value, 0);
}

/** Replicas on one database, named a, b, c… (INSTANCE_ID), started one after another. */
export async function startReplicas(count: number, options: StartOptions): Promise<App[]> {
  const apps: App[] = [];
  for (let i = 0; i < count; i++) {
    const name = String.fromCharCode(97 + i);
    apps.push(await startReactor({ ...options, env: { ...options.env, INSTANCE_ID: name } }));
  }
  return apps;
}
