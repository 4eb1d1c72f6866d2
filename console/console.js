// The operator console (served by the reactor at /console). Plain ES module, no build
// step: it calls the admin API with the session cookie (and the page's CSRF token on
// anything that changes something) and follows /console/events for live figures.
// Every text that comes from data (errors, payloads, URLs) is set as textContent, never
// parsed as HTML: a receiver's error page or an event payload cannot inject markup.

const config = JSON.parse(document.body.dataset.config || "{}");
const csrf = document.querySelector('meta[name="csrf-token"]')?.getAttribute("content") ?? "";
const $ = (selector) => document.querySelector(selector);

/** Builds an element: h("td", { class: "n" }, "text", child…). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** The admin API. A 401 means the session ended: back to the login page. */
async function api(path, { method = "GET", body } = {}) {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-csrf-token"] = csrf;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401) {
    location.assign("/console");
    throw new Error("logged out");
  }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.message || `HTTP ${res.status}`);
  return data;
}

/**
 * Runs `fn` unless the same `key` (a form, a button) is still running it: a double click
 * or a second Enter does it once (two subscriptions with two secrets, or a second bulk
 * retry, otherwise). A flag, not `disabled`: disabling the focused button would drop the
 * keyboard focus.
 */
const running = new WeakSet();
async function exclusive(key, fn) {
  if (running.has(key)) return;
  running.add(key);
  key.setAttribute("aria-busy", "true");
  try {
    return await fn();
  } finally {
    running.delete(key);
    key.removeAttribute("aria-busy");
  }
}

// ---- formatting -------------------------------------------------------------------

const num = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s === 0) return "0 s";
  if (s < 1) return `${(s * 1000).toPrecision(3)} ms`;
  if (s < 120) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}
const ms = (s) => (s === null || s === undefined ? "–" : `${(s * 1000).toPrecision(3)} ms`);
function ago(at) {
  if (!at) return "never";
  const s = (Date.now() - new Date(at).getTime()) / 1000;
  return s < 1 ? "just now" : `${seconds(s)} ago`;
}
const when = (at) => (at ? new Date(at).toLocaleString() : "–");

// ---- views ------------------------------------------------------------------------

const views = ["now", "failed", "delivery", "subscriptions", "settings"];

/** A part of the address, decoded; kept as typed where it is not valid percent-encoding. */
function decodePart(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

function route() {
  // #view, #view/arg, #view?query (the query is read by the view itself).
  const [path] = location.hash.replace(/^#/, "").split("?");
  const [name, raw] = path.split("/");
  const arg = raw === undefined ? undefined : decodePart(raw);
  const view = views.includes(name) ? name : "now";
  for (const v of views) $(`#view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === view || (view === "delivery" && a.dataset.nav === "failed"))
      a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (view === "failed") loadFailed();
  if (view === "delivery") loadDelivery(arg);
  if (view === "subscriptions") loadSubscriptions();
  if (view === "settings") loadSettings();
  if (view === "now") resizeCharts();
}

// ---- confirmation -----------------------------------------------------------------

/**
 * Asks before a change; resolves true only for the confirm button (Cancel and Esc: false).
 * Focus starts on Cancel, Tab cycles inside the dialog (a modal dialog would otherwise
 * let it leave for the browser's own controls), and goes back to the opener on close.
 */
function confirmAction(text, okLabel = "Confirm") {
  const dialog = $("#confirm");
  const opener = document.activeElement;
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  dialog.querySelector('button[value="cancel"]').focus();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        if (opener instanceof HTMLElement && opener.isConnected) opener.focus();
        resolve(dialog.returnValue === "ok");
      },
      { once: true },
    );
  });
}

function trapDialogFocus() {
  const dialog = $("#confirm");
  dialog.addEventListener("keydown", (e) => {
    if (e.key !== "Tab") return;
    const buttons = [...dialog.querySelectorAll("button")];
    const at = buttons.indexOf(document.activeElement);
    const next = (at + (e.shiftKey ? -1 : 1) + buttons.length) % buttons.length;
    e.preventDefault();
    buttons[next].focus();
  });
}

// ---- Now: live figures ------------------------------------------------------------

/**
 * The figures, labelled with their names in /status (workloads.<name>.…) and, in the
 * tooltip, the metric each comes from, so what an operator reads here is what a
 * dashboard or a script sees.
 */
const FIGURES = [
  ["backlog", "backlog", num, "/status backlog · reactor_backlog"],
  ["inFlight", "inFlight", num, "/status inFlight · reactor_in_flight"],
  ["failed", "failed", num, "/status failed (failed rows in the table)"],
  [
    "oldestPendingAgeSeconds",
    "oldestPendingAge",
    seconds,
    "/status oldestPendingAgeSeconds · reactor_oldest_pending_age_seconds",
  ],
  ["completedPerSecond", "completed/s", num, "rate of reactor_completed_total (every outcome)"],
  [
    "pickupLatencyP50Seconds",
    "pickup p50",
    ms,
    "reactor_pickup_latency_seconds, median of the last 10 s",
  ],
  [
    "pickupLatencyP99Seconds",
    "pickup p99",
    ms,
    "reactor_pickup_latency_seconds, 99th percentile of the last 10 s",
  ],
];

/** The charts of one workload: which figures each plots, and its unit. */
const CHARTS = [
  { title: "Rows", keys: ["backlog", "inFlight", "failed"] },
  { title: "Completed per second", keys: ["completedPerSecond"] },
  {
    title: "Pickup (ms)",
    keys: ["pickupLatencyP50Seconds", "pickupLatencyP99Seconds"],
    scale: 1000,
  },
  { title: "Oldest pending (s)", keys: ["oldestPendingAgeSeconds"] },
];
const COLORS = ["#2563eb", "#16a34a", "#dc2626", "#9333ea"];
const HISTORY = 15 * 60;

const live = { samples: [], status: null, charts: [], cards: new Map() };

function buildWorkloadCards() {
  const root = $("#workloads");
  for (const w of config.workloads ?? []) {
    const figures = h("dl", { class: "figures" });
    const values = {};
    for (const [key, label, , source] of FIGURES) {
      values[key] = h("dd", { "data-figure": key }, "–");
      figures.append(h("div", { title: source }, h("dt", {}, label), values[key]));
    }
    const state = h("span", { class: "badge", "data-state": "" }, "…");
    const note = h("p", { class: "note" });
    const charts = h("div", { class: "charts" });
    const card = h(
      "article",
      { class: "card", id: `workload-${w.name}`, "data-workload": w.name },
      h("header", {}, h("h2", {}, w.name), state),
      note,
      figures,
      charts,
    );
    root.append(card);
    live.cards.set(w.name, { values, state, note });
    for (const chart of CHARTS) {
      const caption = h("figcaption", {}, chart.title);
      if (chart.keys.length > 1) {
        chart.keys.forEach((key, i) => {
          const label = FIGURES.find((f) => f[0] === key)?.[1] ?? key;
          caption.append(" ", h("span", { class: `swatch s${i}` }, label.replace("pickup ", "")));
        });
      }
      const holder = h("figure", { class: "chart" }, caption);
      charts.append(holder);
      live.charts.push({ workload: w.name, chart, holder, plot: null });
    }
  }
}

function chartData(workload, chart) {
  const t = live.samples.map((s) => s.t / 1000);
  const series = chart.keys.map((key) =>
    live.samples.map((s) => {
      const v = s.workloads[workload]?.[key];
      return v === null || v === undefined ? null : v * (chart.scale ?? 1);
    }),
  );
  return [t, ...series];
}

function makePlot(entry) {
  const width = Math.max(200, entry.holder.clientWidth || 280);
  const opts = {
    width,
    height: 110,
    legend: { show: false },
    cursor: { show: false },
    scales: { x: { time: true }, y: { range: (_u, min, max) => [0, Math.max(1, max, min)] } },
    axes: [
      { size: 22, space: 60, font: "10px system-ui", ticks: { size: 3 } },
      { size: 40, space: 24, font: "10px system-ui", ticks: { size: 3 } },
    ],
    series: [
      {},
      ...entry.chart.keys.map((key, i) => ({
        label: FIGURES.find((f) => f[0] === key)?.[1] ?? key,
        stroke: COLORS[i],
        width: 1.5,
        spanGaps: false,
        points: { show: false },
      })),
    ],
  };
  entry.plot = new globalThis.uPlot(opts, chartData(entry.workload, entry.chart), entry.holder);
}

function drawCharts() {
  if (!globalThis.uPlot || $("#view-now").hidden) return;
  for (const entry of live.charts) {
    if (!entry.plot) makePlot(entry);
    else entry.plot.setData(chartData(entry.workload, entry.chart));
  }
}

function resizeCharts() {
  for (const entry of live.charts) {
    if (!entry.plot) continue;
    const width = Math.max(200, entry.holder.clientWidth);
    if (width !== entry.plot.width) entry.plot.setSize({ width, height: 110 });
  }
  drawCharts();
}

/** What a workload is doing, in one word, and why when it is not flowing. */
function workloadState(name, sample) {
  const st = live.status?.status?.workloads?.[name];
  if (st && !st.enabled) return ["disabled", st.disabledReason ?? "disabled"];
  if (st?.pausedUntil) return ["paused", st.pauseReason ?? `paused until ${when(st.pausedUntil)}`];
  if (st?.lastError) return ["failing", `since ${when(st.failingSince)}: ${st.lastError}`];
  const bad = live.status?.health?.checks?.filter(
    (c) => c.name.startsWith(`${name}:`) && c.status !== "pass",
  );
  if (bad?.length) return ["warn", bad.map((c) => c.output ?? c.name).join("; ")];
  if (sample && (sample.inFlight > 0 || sample.completedPerSecond > 0)) return ["flowing", ""];
  if (sample?.backlog > 0)
    return ["waiting", "rows pending, none due yet or none claimed this second"];
  return ["idle", "nothing pending"];
}

function renderFigures() {
  const sample = live.samples.at(-1);
  for (const [name, card] of live.cards) {
    const figures = sample?.workloads[name];
    for (const [key, , format] of FIGURES) {
      card.values[key].textContent = figures ? format(figures[key]) : "–";
    }
    const [state, why] = workloadState(name, figures);
    card.state.textContent = state;
    card.state.dataset.state = state;
    card.note.textContent = why;
  }
}

function renderStatus() {
  const snap = live.status;
  if (!snap) return;
  const health = $("#health");
  const failing = snap.health.checks.filter((c) => c.status !== "pass");
  // It is a live region: rebuilt only when it changes, or a screen reader would read the
  // same health aloud every five seconds.
  const said = JSON.stringify([snap.health.status, failing]);
  if (health.dataset.said !== said) {
    health.dataset.said = said;
    health.dataset.status = snap.health.status;
    health.replaceChildren(
      h("strong", {}, `Health: ${snap.health.status}`),
      ...failing.map((c) =>
        h("span", { class: `check ${c.status}` }, `${c.name}: ${c.output ?? c.status}`),
      ),
    );
  }
  const st = snap.status;
  const items = [
    [
      "Listener",
      st.listener.connected
        ? `connected since ${when(st.listener.since)}; last notification ${ago(st.listener.lastNotificationAt)}; ${st.listener.reconnects} reconnects`
        : `DISCONNECTED since ${when(st.listener.since)} (${st.listener.reconnects} reconnects)`,
    ],
    [
      "Wake source",
      st.wakeSource === "wal"
        ? `wal: ${st.wal?.connected ? "reading the write-ahead log" : `not connected${st.wal?.lastError ? `: ${st.wal.lastError}` : ""}`}`
        : "notify (statement triggers send NOTIFY)",
    ],
    [
      "Safety poll",
      `every ${snap.pollIntervalSeconds} s; ${st.lastPollAt ? `last ${ago(st.lastPollAt)}` : "none yet (the first runs one interval after start)"}`,
    ],
  ];
  const ship = st.workloads?.shipments;
  if (ship) {
    items.push([
      "Shipment watermark",
      ship.watermark
        ? `${when(ship.watermark)} (${seconds(ship.watermarkAgeSeconds)} behind); last poll ${ago(ship.lastShipmentPollAt)}`
        : `none yet; last poll ${ago(ship.lastShipmentPollAt)}`,
    ]);
    items.push(["ShipStation hook", String(ship.hook ?? "–")]);
  }
  const imports = st.sources?.imports;
  if (imports) {
    items.push([
      "Import folder",
      imports.folder && imports.watching !== undefined
        ? `${imports.folder}: ${imports.problem ? `PROBLEM: ${imports.problem}` : imports.watching ? "watching" : "not watching"}; last scan ${ago(imports.lastScanAt)}; ${imports.waiting?.length ?? 0} waiting, ${imports.unreadable?.length ?? 0} unreadable`
        : String(imports.folder ?? imports.statusError ?? "–"),
    ]);
  }
  $("#system").replaceChildren(
    ...items.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-system": k }, v)]),
  );
}

/** Waits between our own reconnects once EventSource has given up: 2 s, 4 s … at most 30 s. */
const stream = { source: null, retryMs: 2_000, timer: null };

/** The stream indicator; on a narrow screen it may be cut, so the full text is its title. */
function streamState(state, text) {
  const status = $("#stream");
  status.dataset.state = state;
  status.textContent = text;
  status.title = text;
}

function connectStream() {
  const source = new EventSource("/console/events");
  stream.source = source;
  source.addEventListener("open", () => {
    streamState("live", "live");
    stream.retryMs = 2_000;
  });
  source.addEventListener("error", () => {
    // A session that ended shows as an error too: this request finds out (a 401 goes to
    // the login form).
    api("/console/session").catch(() => {});
    if (source.readyState !== EventSource.CLOSED) {
      streamState("down", "reconnecting…");
      return;
    }
    // EventSource gives up for good on an answer other than 200 (a reactor still starting
    // answers 503): retry ourselves, and say when.
    const wait = stream.retryMs;
    stream.retryMs = Math.min(stream.retryMs * 2, 30_000);
    streamState("down", `disconnected; retrying in ${Math.round(wait / 1000)} s`);
    clearTimeout(stream.timer);
    stream.timer = setTimeout(connectStream, wait);
  });
  source.addEventListener("history", (e) => {
    // Columns (see columns() in live.ts) back into one sample per second.
    const { t, workloads } = JSON.parse(e.data);
    live.samples = t.map((at, i) => ({
      t: at,
      workloads: Object.fromEntries(
        Object.entries(workloads).map(([name, figures]) => [
          name,
          Object.fromEntries(Object.entries(figures).map(([key, list]) => [key, list[i]])),
        ]),
      ),
    }));
    renderFigures();
    drawCharts();
  });
  source.addEventListener("sample", (e) => {
    live.samples.push(JSON.parse(e.data));
    // How many samples arrived: lets a test (or a curious operator) see the stream move.
    document.body.dataset.samples = String(Number(document.body.dataset.samples ?? 0) + 1);
    if (live.samples.length > HISTORY) live.samples.shift();
    renderFigures();
    drawCharts();
  });
  source.addEventListener("status", (e) => {
    live.status = JSON.parse(e.data);
    renderStatus();
    renderFigures();
  });
  source.addEventListener("refused", (e) => {
    streamState("down", e.data);
    source.close();
  });
}

// ---- Failed -----------------------------------------------------------------------

/**
 * The failed list's position: the after_id of this page, of the pages before it (for
 * "Previous"), of the next one; `seq` drops answers to requests overtaken by a newer one.
 */
const failed = { afterId: 0, next: null, pages: [], seq: 0 };

function firstPage() {
  failed.afterId = 0;
  failed.pages = [];
  failed.next = null;
}

function failedWorkload() {
  const rows = $("#failed-rows").value;
  return (config.workloads ?? []).find((w) => w.rows === rows) ?? config.workloads?.[0];
}

function setupFailedFilters() {
  const select = $("#failed-rows");
  for (const w of config.workloads ?? []) select.append(h("option", { value: w.rows }, w.rows));
  const params = new URLSearchParams(location.hash.split("?")[1] ?? "");
  if (params.get("rows")) select.value = params.get("rows");
  select.addEventListener("change", () => {
    renderExtraFilters();
    firstPage();
    loadFailed();
  });
  renderExtraFilters();
  $("#failed-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    firstPage();
    loadFailed();
  });
  $("#failed-next").addEventListener("click", () => {
    if (failed.next === null) return;
    failed.pages.push(failed.afterId);
    failed.afterId = failed.next;
    loadFailed();
  });
  $("#failed-previous").addEventListener("click", () => {
    if (!failed.pages.length) return;
    failed.afterId = failed.pages.pop();
    loadFailed();
  });
  $("#failed-first").addEventListener("click", () => {
    firstPage();
    loadFailed();
  });
  $("#retry-matching").addEventListener("click", (e) => exclusive(e.currentTarget, retryMatching));
}

function renderExtraFilters() {
  const w = failedWorkload();
  const extra = $("#failed-extra");
  extra.replaceChildren(
    ...Object.entries(w?.filters ?? {}).map(([key, f]) =>
      h(
        "label",
        {},
        key.replace(/_/g, " "),
        " ",
        // Text, not type=number: a number field reports "1e" or "abc" as empty, which
        // would silently drop the filter (and widen a bulk retry); the API says what is wrong.
        h("input", {
          name: key,
          type: "text",
          inputmode: f.type === "integer" ? "numeric" : null,
          maxlength: 200,
        }),
      ),
    ),
  );
}

/**
 * The filter as the admin API takes it, from the form (empty fields left out). Values go
 * as typed (the API validates them and says what is wrong); only a well-formed integer
 * becomes a number, for the JSON body of a bulk retry.
 */
function failedFilter() {
  const form = new FormData($("#failed-filter"));
  const filter = {};
  const w = failedWorkload();
  for (const [key, raw] of form) {
    const value = String(raw).trim();
    if (key === "rows" || value === "") continue;
    if (key === "created_after" || key === "created_before") {
      const at = new Date(value);
      filter[key] = Number.isNaN(at.getTime()) ? value : at.toISOString();
    } else if (w?.filters?.[key]?.type === "integer" && /^\d{1,15}$/.test(value))
      filter[key] = Number(value);
    else filter[key] = value;
  }
  return filter;
}

/** Lists a page of failed rows; `note` (what was just done) stays above the count. */
async function loadFailed(note = "") {
  const w = failedWorkload();
  if (!w) return;
  const message = $("#failed-message");
  const seq = ++failed.seq;
  const query = new URLSearchParams({
    ...failedFilter(),
    limit: "50",
    after_id: String(failed.afterId),
  });
  try {
    const page = await api(`/admin/${w.rows}/failed?${query}`);
    if (seq !== failed.seq) return;
    failed.next = page.next_after_id;
    renderFailed(w, page.items);
    const listed = page.items.length
      ? `${page.items.length} failed ${w.rows} on this page${page.next_after_id ? "; more on the next" : ""}.`
      : `No failed ${w.rows} match.`;
    message.textContent = note ? `${note} ${listed}` : listed;
  } catch (err) {
    if (seq !== failed.seq) return;
    // No rows rather than the last list: it would look filtered by what was refused.
    failed.next = null;
    renderFailed(w, []);
    message.textContent = `Could not list failed ${w.rows}: ${err.message}`;
  }
  $("#failed-next").disabled = failed.next === null;
  $("#failed-previous").disabled = failed.pages.length === 0;
  $("#failed-first").disabled = failed.afterId === 0;
}

function renderFailed(w, items) {
  const columns = items.length ? Object.keys(items[0]).filter((c) => c !== "last_error") : ["id"];
  $("#failed-table thead").replaceChildren(
    h("tr", {}, ...columns.map((c) => h("th", {}, c)), h("th", {}, "last_error"), h("th", {}, "")),
  );
  $("#failed-table tbody").replaceChildren(
    ...items.map((row) =>
      h(
        "tr",
        { "data-id": row.id },
        ...columns.map((c) =>
          h(
            "td",
            {},
            c === "id" && w.rows === "deliveries"
              ? h("a", { href: `#delivery/${row.id}` }, String(row.id))
              : c.endsWith("_at") && row[c]
                ? when(row[c])
                : String(row[c] ?? "–"),
          ),
        ),
        h("td", { class: "error-text" }, String(row.last_error ?? "")),
        h(
          "td",
          {},
          h(
            "button",
            {
              type: "button",
              "aria-label": `Retry ${w.rows} ${row.id}`,
              onclick: (e) => exclusive(e.currentTarget, () => retryOne(w, row.id)),
            },
            "Retry",
          ),
        ),
      ),
    ),
  );
}

async function retryOne(w, id) {
  const message = $("#failed-message");
  try {
    await api(`/admin/${w.rows}/${id}/retry`, { method: "POST" });
    await loadFailed(`${w.rows} ${id} is pending again.`);
  } catch (err) {
    message.textContent = `Retry of ${id} refused: ${err.message}`;
  }
}

async function retryMatching() {
  const w = failedWorkload();
  const message = $("#failed-message");
  const filter = failedFilter();
  try {
    const { count, capped } = await api(
      `/admin/${w.rows}/failed/count?${new URLSearchParams(filter)}`,
    );
    if (count === 0) {
      message.textContent = `No failed ${w.rows} match; nothing to retry.`;
      return;
    }
    const described = Object.keys(filter).length
      ? `matching ${Object.entries(filter)
          .map(([k, v]) => `${k} = ${v}`)
          .join(", ")}`
      : "(no filter: every failed row)";
    const ok = await confirmAction(
      `Retry ${capped ? "at least " : ""}${count} failed ${w.rows} ${described}?`,
      `Retry ${count}`,
    );
    if (!ok) return;
    const body = Object.keys(filter).length ? filter : { all: true };
    const { retried } = await api(`/admin/${w.rows}/retry`, { method: "POST", body });
    firstPage();
    await loadFailed(`${retried} ${w.rows} are pending again.`);
  } catch (err) {
    message.textContent = `Bulk retry refused: ${err.message}`;
  }
}

// ---- One delivery -----------------------------------------------------------------

async function loadDelivery(id) {
  const message = $("#delivery-message");
  $("#delivery-title").textContent = `Delivery ${id ?? ""}`;
  $("#delivery-facts").replaceChildren();
  $("#attempts-table tbody").replaceChildren();
  $("#delivery-payload").textContent = "";
  message.textContent = "";
  try {
    const [d, attempts] = await Promise.all([
      api(`/admin/deliveries/${encodeURIComponent(id)}`),
      api(`/admin/deliveries/${encodeURIComponent(id)}/attempts`),
    ]);
    const facts = [
      ["State", d.state],
      ["Attempts", d.attempts],
      ["Last status", d.last_status ?? "–"],
      ["Last error", d.last_error ?? "–"],
      ["Next attempt", when(d.next_attempt_at)],
      ["Created", when(d.created_at)],
      ["Delivered", when(d.delivered_at)],
      [
        "Subscription",
        d.subscription
          ? `${d.subscription.id}: ${d.subscription.url}${d.subscription.enabled ? "" : " (disabled)"}`
          : "deleted",
      ],
      [
        "Event",
        d.event
          ? `${d.event.event_type} ${d.event.id} (${d.event.aggregate_type} ${d.event.aggregate_id})`
          : "–",
      ],
    ];
    $("#delivery-facts").replaceChildren(
      ...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]),
    );
    if (d.state === "failed") {
      $("#delivery-facts").append(
        h("dt", {}, "Action"),
        h(
          "dd",
          {},
          h(
            "button",
            {
              type: "button",
              onclick: async () => {
                try {
                  await api(`/admin/deliveries/${d.id}/retry`, { method: "POST" });
                  message.textContent = "Pending again; the reactor sends it now.";
                  loadDelivery(id);
                } catch (err) {
                  message.textContent = `Retry refused: ${err.message}`;
                }
              },
            },
            "Retry",
          ),
        ),
      );
    }
    $("#attempts-table tbody").replaceChildren(
      ...attempts.items.map((a) =>
        h(
          "tr",
          {},
          h("td", {}, String(a.attempt)),
          h("td", {}, when(a.started_at)),
          h("td", {}, a.duration_ms === null ? "–" : `${a.duration_ms} ms`),
          h("td", {}, a.status === null ? "no answer" : String(a.status)),
          h("td", { class: "error-text" }, a.error ?? ""),
          h("td", {}, h("pre", { class: "excerpt" }, a.response_excerpt ?? "")),
        ),
      ),
    );
    if (!attempts.items.length) message.textContent = "No HTTP attempt recorded for this delivery.";
    $("#delivery-payload").textContent = JSON.stringify(d.event?.payload ?? null, null, 2);
  } catch (err) {
    message.textContent = `Could not load delivery ${id}: ${err.message}`;
  }
}

// ---- Subscriptions ----------------------------------------------------------------

async function loadSubscriptions() {
  const message = $("#subs-message");
  try {
    const { items } = await api("/admin/subscriptions");
    $("#subs-table tbody").replaceChildren(...items.map(subscriptionRow));
    message.textContent = items.length ? "" : "No subscriptions yet.";
  } catch (err) {
    message.textContent = `Could not list subscriptions: ${err.message}`;
  }
}

function subscriptionRow(s) {
  const rate = s.recent?.success_rate;
  // null: the day's attempts were too many to count in time (the list answers without them).
  const recent =
    s.recent === null
      ? "not counted (too many attempts to count quickly)"
      : s.recent?.attempts
        ? `${(rate * 100).toFixed(rate === 1 ? 0 : 1)}% of ${s.recent.attempts} attempts`
        : "no attempts";
  const act = (label, fn) => h("button", { type: "button", class: "quiet", onclick: fn }, label);
  return h(
    "tr",
    { "data-id": s.id },
    h("td", {}, String(s.id)),
    h(
      "td",
      { class: "url" },
      s.url,
      s.description ? h("div", { class: "hint" }, s.description) : null,
    ),
    h("td", {}, s.event_types?.length ? s.event_types.join(", ") : "all"),
    h(
      "td",
      {},
      s.enabled ? "enabled" : `disabled${s.disabled_reason ? `: ${s.disabled_reason}` : ""}`,
    ),
    h("td", {}, recent),
    h(
      "td",
      { class: "actions" },
      act(s.enabled ? "Disable" : "Enable", () =>
        subscriptionAction(`/admin/subscriptions/${s.id}`, "PATCH", { enabled: !s.enabled }),
      ),
      act("Rotate secret", async () => {
        if (
          await confirmAction(
            `Rotate the secret of subscription ${s.id}? The old one keeps verifying for a grace period.`,
            "Rotate",
          )
        )
          subscriptionAction(`/admin/subscriptions/${s.id}/rotate`, "POST");
      }),
      act("Delete", async () => {
        if (
          await confirmAction(
            `Delete subscription ${s.id} (${s.url})? Its deliveries, pending ones and their history, are deleted with it; disable it instead to keep them.`,
            "Delete",
          )
        )
          subscriptionAction(`/admin/subscriptions/${s.id}`, "DELETE");
      }),
    ),
  );
}

function showSecret(result) {
  const box = $("#sub-secret");
  if (!result?.secret) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.replaceChildren(
    h("strong", {}, `Secret of subscription ${result.id}, shown once: `),
    h("code", { "data-secret": "" }, result.secret),
    h(
      "p",
      { class: "hint" },
      "Give it to the receiver to verify signatures; it cannot be shown again.",
    ),
  );
}

async function subscriptionAction(path, method, body) {
  const message = $("#subs-message");
  try {
    const result = await api(path, { method, body });
    showSecret(result);
    message.textContent = "Done.";
    await loadSubscriptions();
  } catch (err) {
    // A secret shown by an earlier action is not left beside a refusal.
    showSecret(null);
    message.textContent = `Refused: ${err.message}`;
  }
}

function setupSubscriptionForm() {
  $("#sub-create").addEventListener("submit", (e) => {
    e.preventDefault();
    exclusive(e.target, () => createSubscription(e.target));
  });
}

async function createSubscription(target) {
  const form = new FormData(target);
  const types = String(form.get("event_types") ?? "")
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean);
  const body = { url: String(form.get("url")), event_types: types };
  if (form.get("description")) body.description = String(form.get("description"));
  await subscriptionAction("/admin/subscriptions", "POST", body);
  if (!$("#sub-secret").hidden) target.reset();
}

// ---- Settings ---------------------------------------------------------------------

async function loadSettings() {
  try {
    const { items } = await api("/admin/settings");
    $("#settings-table tbody").replaceChildren(...items.map(settingRow));
  } catch (err) {
    $("#settings-table tbody").replaceChildren(
      h("tr", {}, h("td", { colspan: 4 }, `Could not load settings: ${err.message}`)),
    );
  }
}

function settingRow(s) {
  const input = h("input", {
    name: s.name,
    value: s.stored ?? "",
    placeholder: s.default,
    "aria-label": `New value of ${s.name}`,
    maxlength: 1000,
  });
  const error = h("p", { class: "error", role: "alert", "data-error": s.name });
  const form = h(
    "form",
    {
      class: "setting-form",
      onsubmit: async (e) => {
        e.preventDefault();
        error.textContent = "";
        try {
          const updated = await api(`/admin/settings/${s.name}`, {
            method: "PUT",
            body: { value: input.value },
          });
          replaceRow(row, updated);
        } catch (err) {
          error.textContent = err.message;
        }
      },
    },
    input,
    h("button", { type: "submit" }, "Save"),
    s.stored !== null && s.name !== "wake_source"
      ? h(
          "button",
          {
            type: "button",
            class: "quiet",
            onclick: async () => {
              try {
                const updated = await api(`/admin/settings/${s.name}`, { method: "DELETE" });
                replaceRow(row, updated);
              } catch (err) {
                error.textContent = err.message;
              }
            },
          },
          "Reset",
        )
      : null,
    error,
  );
  const row = h(
    "tr",
    { "data-setting": s.name },
    h(
      "td",
      {},
      h("code", {}, s.name),
      h("div", { class: "hint" }, s.doc),
      h("div", { class: "hint" }, `Expects ${s.expected}.`),
    ),
    h("td", { "data-value": "" }, s.value),
    h("td", {}, s.default),
    h("td", {}, form),
  );
  return row;
}

/** Shows a setting's new state; the keyboard stays in its field if it was in the row. */
function replaceRow(row, setting) {
  const hadFocus = row.contains(document.activeElement);
  const next = settingRow(setting);
  row.replaceWith(next);
  if (hadFocus) next.querySelector("input").focus();
}

// ---- start ------------------------------------------------------------------------

$("#logout").addEventListener("click", async () => {
  await api("/console/logout", { method: "POST" }).catch(() => {});
  location.assign("/console");
});
buildWorkloadCards();
trapDialogFocus();
setupFailedFilters();
setupSubscriptionForm();
window.addEventListener("hashchange", route);
new ResizeObserver(() => resizeCharts()).observe($("#workloads"));
route();
connectStream();
// Relative times ("3 s ago") stay true between snapshots.
setInterval(renderStatus, 5_000);
