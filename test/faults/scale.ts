// Fault scenarios run small in `npm test` and at full size in `npm run test:faults`
// (FAULTS=full). Both sizes assert the same outcomes.
export const FULL = process.env.FAULTS === "full";
export const scale = (fast: number, full: number) => (FULL ? full : fast);

/** One line per scenario for the closing report: printed, never asserted on. */
export function report(scenario: string, figures: Record<string, unknown>) {
  const rssMiB = Math.round(process.memoryUsage().rss / 2 ** 20);
  process.stdout.write(
    `FAULT-REPORT ${JSON.stringify({ scenario, ...figures, testProcessRssMiB: rssMiB })}\n`,
  );
}

/** The reactor's sessions on the database right now (pool and listener). */
export async function reactorConnections(pool: {
  query: (sql: string) => Promise<{ rows: Array<{ n: number }> }>;
}) {
  const { rows } = await pool.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'pg-reactor%'",
  );
  return rows[0]?.n ?? 0;
}
