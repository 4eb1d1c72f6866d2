// ShipStation v1's date-times: US Pacific local time without a UTC offset, both ways.
// Orders go out in this form; shipments' createDate comes back in it, and the shipment
// poll's watermark is written back in it.

/**
 * An instant as ShipStation writes date-times: `2015-06-29T08:46:27.0000000`, US Pacific
 * local time without an offset (the last four fraction digits are always 0).
 */
export function toShipStationTime(instant: Date): string {
  const wall = new Date(instant.getTime() + pacificOffsetMs(instant.getTime()));
  // The wall-clock fields, read through UTC: `yyyy-MM-ddTHH:mm:ss.fff`, then 4 zeros.
  return `${wall.toISOString().slice(0, 23)}0000`;
}

/**
 * `yyyy-MM-ddTHH:mm[:ss[.f…]]` (a space may stand for the T; up to 9 fraction digits,
 * kept to the millisecond) with an optional `Z` or `±hh[:]mm`, which is honoured.
 */
const SHIPSTATION_TIME =
  /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})?$/i;

/**
 * Made on first use: the time-zone data it reads from ICU adds about 5 MiB to a process's
 * RSS (measured 2026-12-04), which a replica that never talks to ShipStation need not pay.
 */
let pacific: Intl.DateTimeFormat | null = null;
const pacificFormat = () =>
  (pacific ??= new Intl.DateTimeFormat("en-US", {
    timeZone: "America/Los_Angeles",
    hourCycle: "h23",
    year: "numeric",
    month: "numeric",
    day: "numeric",
    hour: "numeric",
    minute: "numeric",
    second: "numeric",
  }));

const HOUR_MS = 3_600_000;
/** Offsets by UTC hour: formatToParts costs tens of microseconds, and an upload needs several. */
const offsets = new Map<number, number>();

/**
 * How far Pacific wall-clock time is ahead of UTC at `ms` (negative: -7 h or -8 h). US
 * clocks change at 02:00 local, which is 09:00 or 10:00 UTC: always on a whole UTC hour,
 * so one UTC hour has one offset, and it is worked out once.
 */
function pacificOffsetMs(ms: number): number {
  const hour = Math.floor(ms / HOUR_MS);
  let offset = offsets.get(hour);
  if (offset === undefined) {
    offset = offsetAt(hour * HOUR_MS);
    if (offsets.size >= 10_000) offsets.clear();
    offsets.set(hour, offset);
  }
  return offset;
}

function offsetAt(ms: number): number {
  const at = Math.floor(ms / 1000) * 1000;
  const parts: Record<string, number> = {};
  for (const p of pacificFormat().formatToParts(new Date(at))) parts[p.type] = Number(p.value);
  const wall = Date.UTC(
    parts.year ?? 0,
    (parts.month ?? 1) - 1,
    parts.day ?? 1,
    parts.hour ?? 0,
    parts.minute ?? 0,
    parts.second ?? 0,
  );
  return wall - at;
}

/**
 * Reads ShipStation's offset-less US Pacific time as an instant, or null when `text` is
 * not a real date-time. Around a DST change: a time that happens twice (the repeated
 * hour in November) is the earlier instant; a time that never happens (the skipped hour
 * in March) is read with the offset before the change, i.e. one hour later on the clock.
 */
export function fromShipStationTime(text: string): Date | null {
  const m = SHIPSTATION_TIME.exec(text.trim());
  if (!m) return null;
  const [, y, mo, d, h, mi, s, fraction, zone] = m;
  const fields = [y, mo, d, h, mi, s ?? "0"].map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const [year, month, day, hour, minute, second] = fields;
  const ms = Number((fraction ?? "").padEnd(3, "0").slice(0, 3));
  const wall = Date.UTC(year, month - 1, day, hour, minute, second, ms);
  const check = new Date(wall);
  if (
    check.getUTCFullYear() !== year ||
    check.getUTCMonth() !== month - 1 ||
    check.getUTCDate() !== day ||
    hour > 23 ||
    minute > 59 ||
    second > 59
  ) {
    return null;
  }
  if (zone) {
    if (zone.toUpperCase() === "Z") return new Date(wall);
    const z = /^([+-])(\d{2}):?(\d{2})$/.exec(zone);
    if (!z || Number(z[3]) > 59) return null;
    const offset = (z[1] === "-" ? -1 : 1) * (Number(z[2]) * 60 + Number(z[3])) * 60_000;
    return new Date(wall - offset);
  }
  // The offsets in force a day either side cover any DST change near this wall time.
  const DAY = 86_400_000;
  const before = pacificOffsetMs(wall - DAY);
  const after = pacificOffsetMs(wall + DAY);
  const fits = [...new Set([before, after])]
    .map((offset) => wall - offset)
    .filter((at) => pacificOffsetMs(at) === wall - at);
  if (fits.length > 0) return new Date(Math.min(...fits));
  return new Date(wall - before); // skipped by the clock change
}
