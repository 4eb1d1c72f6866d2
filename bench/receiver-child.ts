// The HTTP end of the drain benchmark, in a process of its own: the fake ShipStation
// (RECEIVER=shipstation) or a webhook receiver that verifies every request's Standard
// Webhooks signature with WEBHOOK_SECRET, as a subscriber would (RECEIVER=webhooks).
// Started by bench/reactor.ts with an IPC channel: it says where it listens, when EXPECT
// orders or deliveries have arrived (and when WARM have), and its counts when asked.
import { Webhook } from "standardwebhooks";
import { startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { startReceiver } from "../src/demo/receiver.js";

const kind = process.env.RECEIVER;
const expect = Number(process.env.EXPECT);
const secret = process.env.WEBHOOK_SECRET;
if (!process.send || !Number.isInteger(expect) || (kind !== "shipstation" && kind !== "webhooks")) {
  process.stderr.write("receiver-child: run by the bench, with RECEIVER, EXPECT and IPC\n");
  process.exit(2);
}
if (kind === "webhooks" && !secret) {
  process.stderr.write("receiver-child: RECEIVER=webhooks needs WEBHOOK_SECRET\n");
  process.exit(2);
}
const tell = (message: Record<string, unknown>) => process.send?.(message);

/** The drain's warm-up: `warm` is said once this many have arrived (0: never). */
const warmup = Number(process.env.WARM ?? 0);

let badSignatures = 0;
let told = false;
let warmTold = warmup <= 0;
/** Runs after each request's orders or delivery are counted: says `warm`, then `done` at EXPECT. */
const check = () =>
  setImmediate(() => {
    if (!warmTold && distinct() >= warmup) {
      warmTold = true;
      tell({ type: "warm", distinct: distinct() });
    }
    if (told || distinct() < expect) return;
    told = true;
    tell({ type: "done", distinct: distinct() });
  });
let distinct: () => number;
let counts: () => { distinct: number; received: number; calls: number };
let close: () => Promise<void>;
let url: string;

if (kind === "shipstation") {
  const fake = await startFakeShipStation();
  // Nothing reads the calls' bodies here; holding every one would only grow this process.
  const calls = fake.calls;
  let callCount = 0;
  calls.push = (...items) => {
    callCount += items.length;
    // The call's orders are counted in the same turn, right after this.
    check();
    return calls.length;
  };
  distinct = () => fake.received.size;
  counts = () => ({
    distinct: fake.received.size,
    received: [...fake.received.values()].reduce((a, b) => a + b, 0),
    calls: callCount,
  });
  close = fake.close;
  url = fake.url;
} else {
  const receiver = await startReceiver();
  const webhook = new Webhook(secret as string);
  receiver.fallback = (req) => {
    try {
      webhook.verify(req.body, req.headers as Record<string, string>);
      // The delivery is counted in the same turn, right after this answer is chosen.
      check();
      return { status: 204 };
    } catch (err) {
      if (badSignatures++ === 0) {
        tell({
          type: "error",
          message: `a delivery failed verification: ${(err as Error).message}`,
        });
      }
      return { status: 401 };
    }
  };
  // The recorded requests are not read here either.
  receiver.requests.push = () => 0;
  distinct = () => receiver.delivered.size;
  counts = () => ({
    distinct: receiver.delivered.size,
    received: [...receiver.delivered.values()].reduce((a, b) => a + b, 0),
    calls: 0,
  });
  close = receiver.close;
  url = receiver.url;
}

process.on("message", (m: { type?: string }) => {
  if (m?.type === "counts") tell({ type: "counts", ...counts(), badSignatures });
});
let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await close();
  process.exit(0);
}
process.on("SIGTERM", () => void stop());
process.on("disconnect", () => void stop());

tell({ type: "ready", url });
