// How runtime knobs (configuration_params, category 'reactor', sku null) are declared,
// parsed and defaulted. The core declares its own; each workload module declares the
// rest, and src/workloads/index.ts joins them into the one spec that the reactor's
// parser, the SQL validation trigger and the README table are all made from.

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export const WAKE_SOURCES = ["notify", "wal"] as const;
export type WakeSource = (typeof WAKE_SOURCES)[number];
const TRUE_WORDS = ["true", "1", "yes", "on"];
const FALSE_WORDS = ["false", "0", "no", "off"];

export type Kind =
  | { type: "boolean" }
  | { type: "integer"; min: number; max: number }
  | { type: "integer_list"; minItems: number; maxItems: number; min: number; max: number }
  | { type: "enum"; values: readonly string[] };

export interface SettingSpec<T> {
  kind: Kind;
  default: T;
  doc: string;
}

export function boolean(def: boolean, doc: string): SettingSpec<boolean> {
  return { kind: { type: "boolean" }, default: def, doc };
}
export function integer(min: number, max: number, def: number, doc: string): SettingSpec<number> {
  return { kind: { type: "integer", min, max }, default: def, doc };
}

/** Settings of the generic machinery; each workload module adds its own (src/workloads). */
export const CORE_SETTINGS = {
  poll_interval_seconds: integer(1, 3600, 30, "Safety-net poll period."),
  lease_seconds: integer(
    5,
    3600,
    120,
    "How long a claimed row stays locked to this replica without a renewal (renewed every third of it while in flight).",
  ),
  log_level: {
    kind: { type: "enum", values: LOG_LEVELS },
    default: "info" as (typeof LOG_LEVELS)[number],
    doc: "Log level, switched live.",
  } satisfies SettingSpec<string>,
  wake_source: {
    kind: { type: "enum", values: WAKE_SOURCES },
    default: "notify" as WakeSource,
    doc: "How writers wake the reactors: `notify` (triggers send NOTIFY) or `wal` (each replica reads the write-ahead log; writers pay nothing). Set with `npx pg-reactor wake-source`, which checks the server first; see Wake source.",
  } satisfies SettingSpec<string>,
} as const;

/** Any set of declared settings: name → spec. */
export type SettingsSpec = Readonly<Record<string, SettingSpec<unknown>>>;
/** The values a spec declares, typed by their defaults. */
export type SettingsOf<S extends SettingsSpec> = { -readonly [K in keyof S]: S[K]["default"] };
export type CoreSettings = SettingsOf<typeof CORE_SETTINGS>;

/** An integer list setting (retry schedules). */
export function integerList(
  limits: { minItems: number; maxItems: number; min: number; max: number },
  def: number[],
  doc: string,
): SettingSpec<number[]> {
  return { kind: { type: "integer_list", ...limits }, default: def, doc };
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

/**
 * A value as PostgreSQL's quote_literal writes it: quotes doubled, and with a backslash
 * in it, backslashes doubled in an E'…' string.
 */
export function quoteLiteral(text: string): string {
  const quoted = `'${text.replace(/'/g, "''").replace(/\\/g, "\\\\")}'`;
  return text.includes("\\") ? `E${quoted}` : quoted;
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
export function parseSetting(spec: SettingsSpec, name: string, text: string | null): unknown {
  const setting = spec[name];
  if (!setting) throw new SettingValueError(`unknown setting reactor.${name}`);
  const kind: Kind = setting.kind;
  const fail = (): never => {
    throw new SettingValueError(
      // Quoted like SQL's quote_literal, so the reactor and the trigger say the same thing.
      `reactor.${name} must be ${describeExpected(kind)}, got ${text === null ? "NULL" : quoteLiteral(text)}`,
    );
  };
  if (text === null) return fail();
  switch (kind.type) {
    case "boolean": {
      const t = text.trim().toLowerCase();
      if (TRUE_WORDS.includes(t)) return true;
      if (FALSE_WORDS.includes(t)) return false;
      return fail();
    }
    case "integer":
      return parseInteger(text, kind.min, kind.max) ?? fail();
    case "integer_list": {
      const parts = text.split(",");
      if (parts.length < kind.minItems || parts.length > kind.maxItems) return fail();
      const values = parts.map((p) => parseInteger(p, kind.min, kind.max));
      if (values.some((v) => v === undefined)) return fail();
      return values;
    }
    case "enum": {
      const t = text.trim().toLowerCase();
      return kind.values.includes(t) ? t : fail();
    }
  }
}

export function defaultSettings<S extends SettingsSpec>(spec: S): SettingsOf<S> {
  const out: Record<string, unknown> = {};
  for (const [name, setting] of Object.entries(spec)) {
    const d = setting.default;
    out[name] = Array.isArray(d) ? [...d] : d;
  }
  return out as SettingsOf<S>;
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
export function parseSettingRows(
  spec: SettingsSpec,
  rows: readonly SettingRow[],
): {
  values: Record<string, unknown>;
  problems: Array<SettingRow & { message: string }>;
} {
  const values: Record<string, unknown> = {};
  const problems: Array<SettingRow & { message: string }> = [];
  for (const row of rows) {
    if (!Object.hasOwn(spec, row.parameter_name)) {
      problems.push({ ...row, message: `unknown setting reactor.${row.parameter_name}` });
      continue;
    }
    try {
      values[row.parameter_name] = parseSetting(spec, row.parameter_name, row.value);
    } catch (err) {
      problems.push({ ...row, message: (err as Error).message });
    }
  }
  return { values, problems };
}
