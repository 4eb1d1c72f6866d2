// Process-level settings from the environment (docs/architecture.md §3). Runtime knobs live in
// configuration_params instead; see src/reactor/settings-spec.ts.
import { hostname } from "node:os";
import ipaddr from "ipaddr.js";
import { z } from "zod";

/** Thrown for a bad environment variable; main prints `message` as one line and exits 1. */
export class EnvError extends Error {
  override name = "EnvError";
}

const BOOL_TRUE = new Set(["true", "1", "yes", "on"]);
const BOOL_FALSE = new Set(["false", "0", "no", "off"]);
const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

const postgresUrl = z.string().refine((v) => /^postgres(ql)?:\/\//.test(v) && URL.canParse(v), {
  message: "a postgres:// or postgresql:// URL",
});
const httpUrl = z.string().refine((v) => /^https?:\/\//.test(v) && URL.canParse(v), {
  message: "an http:// or https:// URL",
});
/**
 * PUBLIC_URL gets the hook's path appended and is logged (without the token): no
 * credentials (they would be logged), no query or fragment (the token would land in them).
 */
const publicUrl = z.string().refine(
  (v) => {
    if (!/^https?:\/\//.test(v) || !URL.canParse(v) || /[?#]/.test(v)) return false;
    const u = new URL(v);
    return u.username === "" && u.password === "";
  },
  {
    message:
      "an http:// or https:// URL without user:password@, query or fragment (the hook's path is appended to it)",
  },
);
/**
 * One entry of WEBHOOK_ALLOWED_NETWORKS in canonical `address/prefix` form, or null. An
 * address alone is its own network (/32 or /128). IPv4 must be four decimal parts: the
 * shorthand forms ipaddr.js also accepts (`127.1`, hex, octal) would hide what is allowed.
 */
export function parseNetwork(entry: string): string | null {
  const [address = "", prefixText, extra] = entry.trim().split("/");
  if (extra !== undefined) return null;
  let parsed: ipaddr.IPv4 | ipaddr.IPv6;
  if (ipaddr.IPv4.isValidFourPartDecimal(address)) parsed = ipaddr.IPv4.parse(address);
  else if (ipaddr.IPv6.isValid(address) && !address.includes("%"))
    parsed = ipaddr.IPv6.parse(address);
  else return null;
  const bits = parsed.kind() === "ipv4" ? 32 : 128;
  if (prefixText !== undefined && !/^\d{1,3}$/.test(prefixText)) return null;
  const prefix = prefixText === undefined ? bits : Number(prefixText);
  if (prefix > bits) return null;
  return `${parsed.toString()}/${prefix}`;
}

const networkList = z.string().superRefine((v, ctx) => {
  for (const entry of v.split(",")) {
    if (entry.trim() === "" || parseNetwork(entry) === null) {
      ctx.addIssue({
        code: "custom",
        message: `comma-separated IP addresses or CIDR ranges like 127.0.0.1/32,10.0.0.0/8 (${JSON.stringify(entry.trim())} is neither)`,
      });
      return;
    }
  }
});

const bool = z
  .string()
  .refine((v) => BOOL_TRUE.has(v.toLowerCase()) || BOOL_FALSE.has(v.toLowerCase()), {
    message: "true or false (also 1/0, yes/no, on/off)",
  });

/** Each variable with the validator whose `message` names the expected form. */
const schema = {
  DATABASE_URL: postgresUrl.optional(),
  LISTEN_DATABASE_URL: postgresUrl.optional(),
  HTTP_HOST: z.string().min(1, "a host name or IP address").optional(),
  HTTP_PORT: z
    .string()
    .refine((v) => /^\d+$/.test(v) && Number(v) <= 65535, { message: "an integer from 0 to 65535" })
    .optional(),
  ADMIN_TOKEN: z.string().min(16, "at least 16 characters").optional(),
  SHIPSTATION_BASE_URL: httpUrl.optional(),
  SHIPSTATION_API_KEY: z.string().min(1).optional(),
  SHIPSTATION_API_SECRET: z.string().min(1).optional(),
  WEBHOOK_ALLOW_PRIVATE_NETWORKS: bool.optional(),
  WEBHOOK_ALLOWED_NETWORKS: networkList.optional(),
  SHIPSTATION_WEBHOOK_TOKEN: z
    .string()
    .regex(
      /^[A-Za-z0-9_-]{24,200}$/,
      "24-200 characters of letters, digits, _ and - (it is a URL path segment and a secret)",
    )
    .optional(),
  PUBLIC_URL: publicUrl.optional(),
  IMPORT_DIR: z
    .string()
    .refine((v) => !v.includes("\0") && v.trim() === v, {
      message: "a folder path (no NUL, no leading or trailing spaces)",
    })
    .optional(),
  LOG_LEVEL: z
    .string()
    .refine((v) => (LOG_LEVELS as readonly string[]).includes(v), {
      message: `one of ${LOG_LEVELS.join(", ")}`,
    })
    .optional(),
  INSTANCE_ID: z
    .string()
    .regex(/^[\w.:@-]{1,100}$/, "1-100 characters of letters, digits, and . : @ _ -")
    .optional(),
} as const;

/**
 * A value as it may be echoed in an error, with credentials replaced: the userinfo of a
 * URL (`user:password@`) and `password=` parameters. By pattern, not by URL parsing,
 * because the value being reported is often one that does not parse.
 */
export function redactValue(value: string): string {
  return (
    value
      // Everything between the scheme (if any) and the last "@" may hold a password.
      .replace(
        /^([a-z][a-z0-9+.-]*:\/\/)?[\s\S]*@/i,
        (_all, scheme?: string) => `${scheme ?? ""}***@`,
      )
      .replace(/((?:password|passwd|pwd|secret|token)\s*=\s*)('[^']*'|[^&\s]*)/gi, "$1***")
  );
}

export type EnvName = keyof typeof schema;

/** The validated process configuration. */
export interface Env {
  databaseUrl: string | undefined;
  listenDatabaseUrl: string | undefined;
  httpHost: string;
  httpPort: number;
  adminToken: string | undefined;
  shipstation: {
    baseUrl: string;
    apiKey: string | undefined;
    apiSecret: string | undefined;
    /** The secret path segment of POST /hooks/shipstation/:token; unset → the hook is off. */
    webhookToken: string | undefined;
  };
  /** Where ShipStation reaches this service (SHIP_NOTIFY is subscribed there at start), no trailing slash. */
  publicUrl: string | undefined;
  /** The folder XML order files are imported from, as given; unset → no file import. */
  importDir: string | undefined;
  webhookAllowPrivateNetworks: boolean;
  /** Networks webhooks may reach although they are not public, as `address/prefix`. */
  webhookAllowedNetworks: string[];
  logLevel: (typeof LOG_LEVELS)[number];
  instanceId: string;
}

export const SHIPSTATION_DEFAULT_BASE_URL = "https://ssapi.shipstation.com";

/**
 * Validates the environment. Empty strings count as unset, so `FOO=` in a compose file
 * means "use the default". Throws EnvError naming the first bad variable.
 */
export function loadEnv(source: NodeJS.ProcessEnv = process.env): Env {
  const raw: Partial<Record<EnvName, string>> = {};
  for (const name of Object.keys(schema) as EnvName[]) {
    const value = source[name];
    if (value !== undefined && value !== "") raw[name] = value;
  }
  for (const name of Object.keys(schema) as EnvName[]) {
    const result = schema[name].safeParse(raw[name]);
    if (!result.success) {
      const expected = result.error.issues[0]?.message ?? "a valid value";
      const hidden = name.includes("SECRET") || name.includes("TOKEN") || name.includes("KEY");
      const got = hidden || raw[name] === undefined ? "" : redactValue(raw[name]);
      throw new EnvError(`${name} must be ${expected}${got ? `, got ${JSON.stringify(got)}` : ""}`);
    }
  }
  if (Boolean(raw.SHIPSTATION_API_KEY) !== Boolean(raw.SHIPSTATION_API_SECRET)) {
    throw new EnvError(
      raw.SHIPSTATION_API_KEY
        ? "SHIPSTATION_API_KEY is set but SHIPSTATION_API_SECRET is not: set both, or neither to pause uploads"
        : "SHIPSTATION_API_SECRET is set but SHIPSTATION_API_KEY is not: set both, or neither to pause uploads",
    );
  }
  if (raw.PUBLIC_URL && !raw.SHIPSTATION_WEBHOOK_TOKEN) {
    throw new EnvError(
      "PUBLIC_URL is set but SHIPSTATION_WEBHOOK_TOKEN is not: set the token (the hook's secret path segment) to receive SHIP_NOTIFY, or unset PUBLIC_URL",
    );
  }
  return {
    databaseUrl: raw.DATABASE_URL,
    listenDatabaseUrl: raw.LISTEN_DATABASE_URL,
    httpHost: raw.HTTP_HOST ?? "127.0.0.1",
    httpPort: raw.HTTP_PORT === undefined ? 8080 : Number(raw.HTTP_PORT),
    adminToken: raw.ADMIN_TOKEN,
    shipstation: {
      baseUrl: (raw.SHIPSTATION_BASE_URL ?? SHIPSTATION_DEFAULT_BASE_URL).replace(/\/+$/, ""),
      apiKey: raw.SHIPSTATION_API_KEY,
      apiSecret: raw.SHIPSTATION_API_SECRET,
      webhookToken: raw.SHIPSTATION_WEBHOOK_TOKEN,
    },
    publicUrl: raw.PUBLIC_URL?.replace(/\/+$/, ""),
    importDir: raw.IMPORT_DIR,
    webhookAllowPrivateNetworks: BOOL_TRUE.has(
      (raw.WEBHOOK_ALLOW_PRIVATE_NETWORKS ?? "false").toLowerCase(),
    ),
    webhookAllowedNetworks: (raw.WEBHOOK_ALLOWED_NETWORKS ?? "")
      .split(",")
      .filter((entry) => entry.trim() !== "")
      .map((entry) => parseNetwork(entry) as string),
    logLevel: (raw.LOG_LEVEL as Env["logLevel"] | undefined) ?? "info",
    instanceId: raw.INSTANCE_ID ?? `${hostname()}:${process.pid}`,
  };
}

/** Documentation for each variable; the README table is checked against this list. */
export const ENV_DOCS: Record<EnvName, { default: string; doc: string }> = {
  DATABASE_URL: { default: "unset: embedded Postgres", doc: "Pool connection (may be PgBouncer)." },
  LISTEN_DATABASE_URL: {
    default: "DATABASE_URL",
    doc: "Direct or session-mode connection for LISTEN.",
  },
  HTTP_HOST: { default: "127.0.0.1", doc: "Status server bind address." },
  HTTP_PORT: { default: "8080", doc: "Status server port (0 picks a free one)." },
  ADMIN_TOKEN: {
    default: "unset: admin routes and the console off",
    doc: "Bearer token for /admin routes, and the login of /console (at least 16 characters).",
  },
  SHIPSTATION_BASE_URL: { default: SHIPSTATION_DEFAULT_BASE_URL, doc: "ShipStation v1 API." },
  SHIPSTATION_API_KEY: { default: "unset: uploads paused", doc: "ShipStation API key." },
  SHIPSTATION_API_SECRET: { default: "unset: uploads paused", doc: "ShipStation API secret." },
  WEBHOOK_ALLOW_PRIVATE_NETWORKS: {
    default: "false",
    doc: "Allow webhooks to every address, loopback and private ones included.",
  },
  WEBHOOK_ALLOWED_NETWORKS: {
    default: "empty: public addresses only",
    doc: "Comma-separated IPs or CIDRs (e.g. `10.0.0.0/8`) webhooks may reach besides public addresses.",
  },
  SHIPSTATION_WEBHOOK_TOKEN: {
    default: "unset: the ShipStation hook is off",
    doc: "Secret path segment of `POST /hooks/shipstation/:token` (24-200 of `A-Za-z0-9_-`); a wrong token is a 404.",
  },
  PUBLIC_URL: {
    default: "unset: no subscription",
    doc: "This service's public base URL, without credentials, query or fragment (needs the token); with the ShipStation credentials set, SHIP_NOTIFY is subscribed to `$PUBLIC_URL/hooks/shipstation/$SHIPSTATION_WEBHOOK_TOKEN` at start, once.",
  },
  IMPORT_DIR: {
    default: "unset: no file import",
    doc: "Folder watched for Custom Store order XML files (`*.xml`); imported files move to its `processed/`, refused ones to `failed/` with `<name>.error.txt`. The reactor needs to read, write and rename there.",
  },
  LOG_LEVEL: { default: "info", doc: "Initial pino level (the `log_level` key overrides it)." },
  INSTANCE_ID: { default: "host:pid", doc: "Name of this replica in leases and logs." },
};
