// Builds the exact bytes and Standard Webhooks headers of one delivery attempt. The
// body is serialised once and those bytes are both signed and sent.
import { createHmac } from "node:crypto";
import { Webhook } from "standardwebhooks";
import { USER_AGENT } from "../../version.js";

/** Decoded signing keys by secret; a few per subscription at most, so rarely cleared. */
const keys = new Map<string, Buffer>();
const MAX_KEYS = 10_000;

/**
 * The HMAC key of a `whsec_…` secret. standardwebhooks decodes it (and refuses a secret
 * that is not base64, with its own message); the key is kept, because that library
 * computes HMAC-SHA256 in JavaScript, about 30 µs a signature, where node:crypto takes
 * a few.
 */
function keyOf(secret: string): Buffer {
  let key = keys.get(secret);
  if (!key) {
    new Webhook(secret); // validates the secret
    key = Buffer.from(secret.startsWith("whsec_") ? secret.slice(6) : secret, "base64");
    if (keys.size >= MAX_KEYS) keys.clear();
    keys.set(secret, key);
  }
  return key;
}

/** `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, as the Standard Webhooks spec defines it. */
export function signV1(secret: string, id: string, timestampSeconds: number, body: string): string {
  const mac = createHmac("sha256", keyOf(secret))
    .update(`${id}.${timestampSeconds}.${body}`)
    .digest("base64");
  return `v1,${mac}`;
}

export interface EventForDelivery {
  eventId: string;
  eventType: string;
  createdAt: Date;
  /** The event's payload as the JSON text PostgreSQL stored. */
  payloadJson: string;
}

/**
 * `{"type","timestamp","data"}`: the body every subscriber receives. The payload's stored
 * JSON text is spliced in as is: numbers keep every digit, and no payload, however deeply
 * nested, has to be walked to be sent.
 */
export function deliveryBody(event: EventForDelivery): string {
  const head = JSON.stringify({
    type: event.eventType,
    timestamp: new Date(event.createdAt).toISOString(),
  });
  return `${head.slice(0, -1)},"data":${event.payloadJson}}`;
}

/**
 * Headers for one attempt: webhook-id is the event id (stable across retries, so
 * receivers can de-duplicate); the timestamp is fresh; while a previous secret is set,
 * a second v1 signature lets receivers that still hold it verify during rotation.
 */
export function signedHeaders(
  event: EventForDelivery,
  body: string,
  secrets: { secret: string; previousSecret: string | null },
  now = new Date(),
): Record<string, string> {
  const timestamp = Math.floor(now.getTime() / 1000);
  const signatures = [signV1(secrets.secret, event.eventId, timestamp, body)];
  if (secrets.previousSecret) {
    signatures.push(signV1(secrets.previousSecret, event.eventId, timestamp, body));
  }
  return {
    "content-type": "application/json",
    "user-agent": USER_AGENT,
    "webhook-id": event.eventId,
    "webhook-timestamp": String(timestamp),
    "webhook-signature": signatures.join(" "),
  };
}
