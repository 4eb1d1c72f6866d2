// JSON-schema pieces and error helpers shared by every route that takes input (the admin
// API, a workload's own routes), so each refuses bad input the same way: a 400 that
// names the field.
import type { FastifyReply, FastifySchemaValidationError } from "fastify";

/**
 * Every free-text field carries this pattern: PostgreSQL cannot store or compare a NUL
 * character, and would answer 500 with its own text.
 */
export const NO_NUL = "^[^\\u0000]*$";

/** Ids are bigint in the database but JSON numbers here: at most 2^53 - 1, exactly. */
export const id = { type: "integer", minimum: 1, maximum: Number.MAX_SAFE_INTEGER } as const;
export const afterId = { type: "integer", minimum: 0, maximum: Number.MAX_SAFE_INTEGER } as const;
export const text = (maxLength: number) =>
  ({ type: "string", minLength: 1, maxLength, pattern: NO_NUL }) as const;

export const idParams = {
  type: "object",
  required: ["id"],
  properties: { id },
} as const;

/** A 400 whose message names the field; the status server's error handler sends it. */
export function badRequest(message: string): Error {
  return Object.assign(new Error(message), { statusCode: 400 });
}

export function notFound(reply: FastifyReply, message: string) {
  return reply.code(404).send({ statusCode: 404, error: "Not Found", message });
}

/**
 * One schema error as `querystring/field must …`, like Fastify's own, but always naming
 * the field at fault (Ajv names an unknown field only in its params) and in words where
 * Ajv states a rule (the NUL pattern, a constant, the date-time format).
 */
function schemaError(e: FastifySchemaValidationError, dataVar: string): string {
  const field = `${dataVar}${e.instancePath}`;
  const params = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case "additionalProperties":
      return `${field}/${String(params.additionalProperty)} is not a field of this route (must NOT have additional properties)`;
    case "pattern":
      if (params.pattern === NO_NUL) return `${field} must not contain NUL characters`;
      break;
    case "const":
      return `${field} must be ${JSON.stringify(params.allowedValue)}`;
    case "format":
      if (params.format === "date-time") {
        // A literal + in a query string arrives as a space: the usual reason an offset fails.
        const plus = dataVar === "querystring" ? " (in a query string, write + as %2B)" : "";
        return `${field} must be a date-time with a zone, such as 2026-01-31T00:00:00Z${plus}`;
      }
      break;
  }
  return `${field} ${e.message}`;
}

/** Schema errors in words that name the field; see schemaError. */
export function schemaErrors(errors: FastifySchemaValidationError[], dataVar: string): Error {
  return new Error(errors.map((e) => schemaError(e, dataVar)).join(", "));
}

/**
 * The path of the first number in `value` that is not finite, or null. Ajv coerces the
 * text "Infinity" (or "1e400") to Infinity and then skips minimum and maximum, which it
 * checks on finite numbers only; PostgreSQL would refuse it in its own words.
 */
export function nonFinite(value: unknown, path: string): string | null {
  if (typeof value === "number") return Number.isFinite(value) ? null : path;
  // A raw body (an XML import) holds bytes, not numbers: never walk it byte by byte.
  if (value === null || typeof value !== "object" || ArrayBuffer.isView(value)) return null;
  for (const [key, inner] of Object.entries(value)) {
    const found = nonFinite(inner, `${path}/${key}`);
    if (found) return found;
  }
  return null;
}
