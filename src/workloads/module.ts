// What a workload folder exports (docs/architecture.md §6): everything the rest of the
// service needs to run, watch and operate one kind of work. The app, the status server,
// the admin API, the CLI and the settings generator loop over the list in index.ts, so
// a new workload is a folder plus one line there (and its tables).
import type { Command } from "commander";
import type { FastifyInstance } from "fastify";
import type { Env } from "../config/env.js";
import type { Pool } from "../db/pool.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { ShipStationAccount } from "../outbound/shipstation-account.js";
import type { AddressPolicy } from "../outbound/ssrf.js";
import type { ClaimedRow, LeaseQueue } from "../reactor/lease-queue.js";
import type { PeriodicJob } from "../reactor/periodic.js";
import type { CoreSettings, SettingsOf, SettingsSpec } from "../reactor/settings-spec.js";
import type { Workload, WorkloadCheck } from "../reactor/workload.js";

/** What a running workload is given: shared connections, settings in force, outside accounts. */
export interface WorkloadContext<T = unknown> {
  env: Env;
  pool: Pool;
  /** The settings in force (read at the point of use: they change live). */
  settings: Readonly<T & CoreSettings>;
  logger: Logger;
  metrics: Metrics;
  /** Lease owner of this process. */
  owner: string;
  /** ShipStation: one client and one budget for every workload that calls it (invariant 9). */
  shipstation: ShipStationAccount;
  /** The SSRF policy for targets operators configure. */
  addressPolicy: AddressPolicy;
  /** The direct database URL (LISTEN_DATABASE_URL, else DATABASE_URL): session state works there. */
  directDatabaseUrl: string;
}

/** One extra filter of the failed-rows listing and bulk retry: a query field → a column. */
export interface FailedRowsFilter {
  /** SQL expression compared for equality (`t.status`, `e.event_type`). */
  column: string;
  /** JSON schema of the field in querystrings and bodies. */
  schema: Readonly<Record<string, unknown>>;
  /** A bigint column returned as a JSON number. */
  number?: boolean;
}

/** What a module runs in one process besides (or instead of) a queue. */
export interface ModuleParts {
  /** Public routes (an inbound hook); their own auth is their own business. */
  routes?(server: FastifyInstance): void;
  /** Routes under /admin, behind the admin token. */
  adminRoutes?(admin: FastifyInstance): void;
  jobs?: PeriodicJob[];
  /** Runs once after the reactor started (e.g. a webhook subscription); must not throw. */
  afterStart?(): Promise<void>;
  /** Extra /status fields (a watermark and its age). */
  status?(): Promise<Record<string, unknown>>;
  /** Runs once on shutdown, before the reactor stops (closes a folder watch). */
  stop?(): Promise<void>;
}

/** A workload as it runs in one process. */
export interface WorkloadInstance extends ModuleParts {
  workload: Workload;
}

/** Helpers the CLI hands a module that adds commands. */
export interface CliKit {
  withPool<R>(fn: (pool: Pool, env: Env) => Promise<R>): Promise<R>;
  print(value: unknown): void;
  /** An expected refusal, printed as it is. */
  fail(message: string): never;
  positiveInt(value: string): number;
}

export interface WorkloadModule<S extends SettingsSpec = SettingsSpec> {
  /** The `workload` label of every metric, the key in /status and /health. */
  name: string;
  /** NOTIFY channel whose messages wake it. */
  channel: string;
  /** Its rows, as admin routes and the CLI name them: /admin/<rows>/failed. */
  rows: string;
  /** Its runtime settings (configuration_params, category reactor). */
  settings: S;
  /** Its table as a lease queue (claims, finalize, stats, counts). */
  queue(pool: Pool): LeaseQueue<ClaimedRow>;
  /** What GET /admin/<rows>/failed returns, and the filters it takes beyond the common ones. */
  failedRows: {
    columns: string;
    filters: Readonly<Record<string, FailedRowsFilter>>;
    /** What created_after/created_before compare, when the table has no created_at. */
    createdColumn?: string;
  };
  /** Builds it for one process. */
  create(context: WorkloadContext<SettingsOf<S>>): WorkloadInstance;
  /** Extra CLI commands (webhook subscriptions). */
  cli?(program: Command, kit: CliKit): void;
}

/**
 * An inbound source without a queue of its own (the XML folder import): it writes rows a
 * workload then takes through the usual NOTIFY. It has no `workload` label and no failed
 * rows; what it does shows in /status and /health under its name.
 */
export interface SourceModule {
  name: string;
  create(context: WorkloadContext): SourceInstance;
  cli?(program: Command, kit: CliKit): void;
}

export interface SourceInstance extends ModuleParts {
  /** /health checks, keyed `<name>:<check>`. */
  checks?(): WorkloadCheck[];
}
