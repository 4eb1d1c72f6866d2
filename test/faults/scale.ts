// Fault scenarios run small in `npm test` and at full size in `npm run test:faults`
// (FAULTS=full). Both sizes assert the same outcomes.
export const FULL = process.env.FAULTS === "full";
export const scale = (fast: number, full: number) => (FULL ? full : fast);

/** One line per scenario for the closing report: printed, never asserted on. */
export function report(scenario: string, figures: Record<string, unknown>) {
  process.stdout.write(`FAULT-REPORT ${JSON.stringify({ scenario, ...figures })}\n`);
}
