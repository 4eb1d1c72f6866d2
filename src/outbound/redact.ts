// Keeps secrets out of anything the reactor stores or shows (last_error, logs, the
// admin API): a target's error body may echo the request's Authorization header, or
// the credentials themselves.

const AUTH_VALUE = /(authorization["']?\s*[:=]\s*["']?)((?:basic|bearer)\s+)?[^\s"',;}]+/gi;
const REDACTED = "[redacted]";

/**
 * Returns `text` with every occurrence of the given secrets (and of any
 * `Authorization: …` value) replaced by [redacted]. Secrets shorter than 4 characters are
 * not searched for: replacing them would mangle ordinary text and hide nothing.
 */
export function redactSecrets(
  text: string,
  secrets: ReadonlyArray<string | null | undefined>,
): string {
  let out = text.replace(
    AUTH_VALUE,
    (_m, prefix: string, scheme?: string) => `${prefix}${scheme ?? ""}${REDACTED}`,
  );
  for (const secret of secrets) {
    if (secret && secret.length >= 4) out = out.split(secret).join(REDACTED);
  }
  return out;
}
