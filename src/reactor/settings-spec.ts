// The runtime knobs operators set in configuration_params (category 'reactor', sku null).
// This list is the single source of truth: the reactor's parser, the SQL validation
// trigger (sql/ is checked against it by a test) and the README table all come from here.

/** The Standard Webhooks retry schedule, in seconds (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h). */
export const STANDARD_WEBHOOKS_SCHEDULE = [5, 300, 1800, 7200, 18000, 36000, 36000] as const;

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
const TRUE_WORDS = ["true", "1", "yes", "on"];
const FALSE_WORDS = ["false", "0", "no", "off"];

type Kind =
  | { type: "boolean" }
  | { type: "integer"; min: number; max: number }
  | { type: "integer_list"; minItems: number; maxItems: number; min: number; max: number }
  | { type: "enum"; values: readonly string[] };

export interface SettingSpec<T> {
  kind: Kind;
  default: T;
  doc: string;
}

function boolean(def: boolean, doc: string): SettingSpec<boolean> {
  return { kind: { type: "boolean" }, default: def, doc };
}
function integer(min: number, max: number, def: number, doc: string): SettingSpec<number> {
  return { kind: { type: "integer", min, max }, default: def, doc };
}

export const SETTINGS = {
  uploads_enabled: boolean(true, "Upload orders to ShipStation."),
  deliveries_enabled: boolean(true, "Deliver outbox events as webhooks."),
  poll_interval_seconds: integer(1, 3600, 30, "Safety-net poll period."),
  lease_seconds: integer(
    5,
    3600,
    120,
    "How long a claimed row stays locked to this replica without a renewal (renewed every third of it while in flight).",
  ),
  upload_batch_size: integer(1, 100, 100, "Orders per createorders call."),
  upload_concurrency: integer(1, 16, 2, "createorders calls in flight per replica."),
  upload_rate_limit_per_minute: integer(
    1,
    100000,
    40,
    "ShipStation calls per minute, shared by all replicas (one budget in the database).",
  ),
  delivery_concurrency: integer(1, 256, 16, "Webhook requests in flight per replica."),
  delivery_timeout_seconds: integer(1, 60, 15, "Timeout of one webhook attempt."),
  delivery_retry_schedule_seconds: {
    kind: { type: "integer_list", minItems: 1, maxItems: 30, min: 1, max: 86400 },
    default: [...STANDARD_WEBHOOKS_SCHEDULE] as number[],
    doc: "Delays between webhook attempts (±20 % jitter); exhausted means failed.",
  } satisfies SettingSpec<number[]>,
  retention_days: integer(1, 365, 7, "Age after which final deliveries and events are deleted."),
  log_level: {
    kind: { type: "enum", values: LOG_LEVELS },
    default: "info" as (typeof LOG_LEVELS)[number],
    doc: "Log level, switched live.",
  } satisfies SettingSpec<string>,
} as const;

export type SettingName = keyof typeof SETTINGS;
export type Settings = { -readonly [K in SettingName]: (typeof SETTINGS)[K]["default"] };

export function isSettingName(name: string): name is SettingName {
  return Object.hasOwn(SETTINGS, name);
}

/** What a value must look like, as said in error messages and the README. */
export function describeExpected(kind: Kind): string {
  switch (kind.type) {
    case "boolean":
      return "a boolean (true/false, 1/0, yes/no, on/off)";
    case "integer":
      return `an integer from ${kind.min} to ${kind.max}`;
    case "integer_list":
      return `${kind.minItems} to ${kind.maxItems} comma-separated integers, each from ${kind.min} to ${kind.max}`;
    case "enum":
      return `one of ${kind.values.join(", ")}`;
  }
}

/** Thrown when a stored value does not parse; the message names key, value and expectation. */
export class SettingValueError extends Error {
  override name = "SettingValueError";
}

function parseInteger(text: string, min: number, max: number): number | undefined {
  const t = text.trim();
  if (!/^[+-]?\d+$/.test(t)) return undefined;
  const n = Number(t);
  return Number.isSafeInteger(n) && n >= min && n <= max ? n : undefined;
}

/** Parses one stored text value for `name`. Throws SettingValueError when it does not fit. */
export function parseSetting<K extends SettingName>(name: K, text: string | null): Settings[K] {
  const spec = SETTINGS[name];
  const kind: Kind = spec.kind;
  const fail = (): never => {
    throw new SettingValueError(
      // Quoted like SQL's quote_literal, so the reactor and the trigger say the same thing.
      `reactor.${name} must be ${describeExpected(kind)}, got ${text === null ? "NULL" : `'${text.replace(/'/g, "''")}'`}`,
    );
  };
  if (text === null) return fail();
  switch (kind.type) {
    case "boolean": {
      const t = text.trim().toLowerCase();
      if (TRUE_WORDS.includes(t)) return true as Settings[K];
      if (FALSE_WORDS.includes(t)) return false as Settings[K];
      return fail();
    }
    case "integer":
      return (parseInteger(text, kind.min, kind.max) ?? fail()) as Settings[K];
    case "integer_list": {
      const parts = text.split(",");
      if (parts.length < kind.minItems || parts.length > kind.maxItems) return fail();
      const values = parts.map((p) => parseInteger(p, kind.min, kind.max));
      if (values.some((v) => v === undefined)) return fail();
      return values as Settings[K];
    }
    case "enum": {
      const t = text.trim().toLowerCase();
      return (kind.values.includes(t) ? t : fail()) as Settings[K];
    }
  }
}

export function defaultSettings(): Settings {
  const out = {} as Record<SettingName, unknown>;
  for (const name of Object.keys(SETTINGS) as SettingName[]) {
    const d = SETTINGS[name].default;
    out[name] = Array.isArray(d) ? [...d] : d;
  }
  return out as Settings;
}

/** Renders a value the way an operator would write it in configuration_params.value. */
export function formatSetting(value: unknown): string {
  return Array.isArray(value) ? value.join(",") : String(value);
}

/** A configuration_params row as the reactor reads it (category 'reactor', sku NULL). */
export interface SettingRow {
  parameter_name: string;
  value: string | null;
}

/**
 * Parses stored rows: the values that fit, and a problem (with the message the trigger
 * would give) for each row that does not. Pure, so the reactor and the CLI agree.
 */
export function parseSettingRows(rows: readonly SettingRow[]): {
  values: Partial<Settings>;
  problems: Array<SettingRow & { message: string }>;
} {
  const values: Partial<Record<SettingName, unknown>> = {};
  const problems: Array<SettingRow & { message: string }> = [];
  for (const row of rows) {
    if (!isSettingName(row.parameter_name)) {
      problems.push({ ...row, message: `unknown setting reactor.${row.parameter_name}` });
      continue;
    }
    try {
      values[row.parameter_name] = parseSetting(row.parameter_name, row.value);
    } catch (err) {
      problems.push({ ...row, message: (err as Error).message });
    }
  }
  return { values: values as Partial<Settings>, problems };
}
