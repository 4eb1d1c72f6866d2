// Secrets never reach stored errors, whatever form a target echoes them in.
import { describe, expect, it } from "vitest";
import { redactSecrets } from "../src/outbound/redact.js";

describe("redactSecrets", () => {
  const token = Buffer.from("k+y/1:se+cr/et").toString("base64");
  it.each([
    ["a header line", `authorization: Basic ${token}`],
    ["a JSON object", `{"Authorization":"Basic ${token}"}`],
    ["the array form", `{"Authorization":["Basic ${token}"]}`],
    ["with + as \\u002B", `{"Authorization":["Basic ${token.replace(/\+/g, "\\u002B")}"]}`],
    ["a bearer token", `Authorization: Bearer ${token}`],
  ])("redacts the Authorization value in %s", (_name, text) => {
    const out = redactSecrets(text, []);
    expect(out).toContain("[redacted]");
    expect(out).not.toContain(token.slice(0, 8));
  });
  it("redacts known secrets as is, JSON-escaped, with \\/ and with \\u002B", () => {
    const secret = "whsec_ab+cd/ef+gh/ij";
    const text = [secret, secret.replace(/\//g, "\\/"), secret.replace(/\+/g, "\\u002B")].join(
      " | ",
    );
    expect(redactSecrets(text, [secret])).toBe("[redacted] | [redacted] | [redacted]");
  });
  it("leaves ordinary text alone", () => {
    expect(redactSecrets("HTTP 500: upstream timeout", ["abc", "secret-value"])).toBe(
      "HTTP 500: upstream timeout",
    );
  });
});
