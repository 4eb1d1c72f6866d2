// Keeps secrets out of anything the reactor stores or shows (last_error, logs, the
// admin API): a target's error body may echo the request's Authorization header, or
// the credentials themselves.

// `Authorization: x`, `"authorization": "x"`, and the array form `"Authorization":["x"]`.
const AUTH_VALUE = /(authorization["']?\s*[:=]\s*\[?\s*["']?)((?:basic|bearer)\s+)?[^\s"',;}\]]+/gi;
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
    if (!secret || secret.length < 4) continue;
    for (const form of spellings(secret)) out = out.split(form).join(REDACTED);
  }
  return out;
}

/**
 * The ways a JSON encoder may write a secret back: as is, JSON-escaped, with `/`
 * escaped, and with `+` (base64) as \u002B, as .NET's encoder does.
 */
function spellings(secret: string): string[] {
  const known = spellingsOf.get(secret);
  if (known) return known;
  // Every answer of a delivery is redacted with its subscription's secrets: computed once.
  if (spellingsOf.size >= 1000) spellingsOf.clear();
  const forms = spellingsNow(secret);
  spellingsOf.set(secret, forms);
  return forms;
}

const spellingsOf = new Map<string, string[]>();

function spellingsNow(secret: string): string[] {
  const json = JSON.stringify(secret).slice(1, -1);
  const forms = [secret, json, json.replace(/\//g, "\\/")];
  for (const f of [...forms]) forms.push(f.replace(/\+/g, "\\u002B"), f.replace(/\+/g, "\\u002b"));
  return [...new Set(forms)];
}
