// The reactor of the pickup benchmark, in a process of its own as production runs it: the
// whole service (makeApp, every workload), configured from its environment like
// `node dist/main.js`, plus the drainer's event hook. Each event goes to the bench over
// IPC with its time on the shared clock (performance.timeOrigin + now, epoch ms with
// microseconds), so the bench computes stages without sharing this event loop.
import { monitorEventLoopDelay } from "node:perf_hooks";
import { makeApp } from "../src/app.js";
import { loadEnv } from "../src/config/env.js";
import { makeLogger } from "../src/logger.js";

if (!process.send) {
  process.stderr.write("pickup-child: run by the bench, with an IPC channel\n");
  process.exit(2);
}
const tell = (message: Record<string, unknown>) => process.send?.(message);
const now = () => performance.timeOrigin + performance.now();

const env = loadEnv(process.env);
const app = makeApp({
  env,
  databaseUrl: env.databaseUrl as string,
  logger: makeLogger("silent"),
  onDrainerEvent(e) {
    const at = now();
    if (e.type === "claimed") tell({ type: "claimed", workload: e.workload, ids: e.ids, at });
    else if (e.type === "woken")
      tell({ type: "woken", workload: e.workload, reason: e.reason, at });
    else if (e.type === "claiming") tell({ type: "claiming", workload: e.workload, at });
    else if (e.type === "finalized")
      tell({ type: "finalized", workload: e.workload, ids: e.outcomes.map((o) => o.id), at });
  },
});

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await app.stop(1_000).catch(() => undefined);
  process.exit(0);
}
process.on("SIGTERM", () => void stop());
process.on("disconnect", () => void stop());

await app.start();
// In `wal` mode the first sample must find the WAL stream read already.
const deadline = Date.now() + 30_000;
while (app.reactor.wakeSource() === "wal" && !app.reactor.wal.state().connected) {
  if (Date.now() > deadline) throw new Error("pickup-child: the WAL stream did not connect");
  await new Promise((r) => setTimeout(r, 20));
}
// The reactor's own event-loop delay over the samples, asked for at the end.
const eld = monitorEventLoopDelay({ resolution: 1 });
eld.enable();
process.on("message", (m: { type?: string }) => {
  if (m?.type !== "eventLoopDelay") return;
  const ms = (ns: number) => Number((ns / 1e6).toFixed(3));
  tell({
    type: "eventLoopDelay",
    p50: ms(eld.percentile(50)),
    p99: ms(eld.percentile(99)),
    max: ms(eld.max),
  });
});
tell({ type: "ready" });
