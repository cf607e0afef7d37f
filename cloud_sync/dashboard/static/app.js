// The fleet page: renders the server's snapshots, which arrive live over server-sent events.
// Everything is written with textContent (never innerHTML), so no message can inject markup.
"use strict";

let role = "read-only";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function money(list) {
  return list.length ? list.map((m) => m.text).join(" + ") : "-";
}

function ago(ms, now) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return new Date(ms).toLocaleString();
}

function fillTable(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    for (const c of cells) tr.append(c instanceof Node ? c : el("td", c));
    return tr;
  }));
  return body;
}

function td(text, cls) { return el("td", text, cls); }

function health(h) {
  return h.ok ? td("ok") : td("fault" + (h.detail ? ": " + h.detail : ""), "bad");
}

function skew(ms) {
  if (ms === null || ms === undefined) return td("-");
  return td((ms >= 0 ? "+" : "") + Math.round(ms / 1000) + " s", Math.abs(ms) > 60000 ? "num bad" : "num");
}

function renderBuses(snap) {
  const body = fillTable("buses", snap.buses.map((b) => [
    td(b.bus_id), td(b.state, "state-" + b.state), td(ago(b.last_seen_ms, snap.now_ms)), td(b.route_id || "-"),
    td(b.outbox_backlog, "num"), td(b.gallery_version, "num"),
    td(b.pending_erasures, b.pending_erasures ? "num bad" : "num"), health(b.camera), health(b.disk),
    td(b.fares_today, "num"), td(money(b.revenue_today), "num"), skew(b.clock_skew_ms), health(b.sync || {ok: true}),
  ]));
  snap.buses.forEach((b, i) => { body.children[i].id = "bus-" + b.bus_id; });
}

function renderAlerts(snap) {
  const list = document.getElementById("alerts");
  if (!snap.alerts.length) {
    list.replaceChildren(el("li", "No alerts.", "none"));
    return;
  }
  list.replaceChildren(...snap.alerts.map((a) => {
    const li = el("li", null, a.severity + (a.acknowledged ? " acknowledged" : ""));
    li.dataset.alert = a.id;
    li.append(el("strong", a.kind), el("span", a.message));
    if (a.acknowledged) li.append(el("em", "acknowledged"));
    else if (role === "admin") {
      const button = el("button", "Acknowledge");
      button.addEventListener("click", () => acknowledge(a.id));
      li.append(button);
    }
    return li;
  }));
}

function svgNode(tag, attrs, text) {
  const n = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}

function hhmm(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// Revenue per time bucket of the service day, in the fleet's first currency, on a time axis that
// runs from the first fare (or the last 12 buckets) to now.
function renderChart(snap) {
  const points = snap.chart.points;
  const bucket = snap.chart.bucket_s * 1000;
  const currency = snap.revenue_today.length ? snap.revenue_today[0].currency : null;
  const amount = (p) => p.money.find((m) => m.currency === currency);
  const values = points.map((p) => (amount(p) || { minor: 0 }).minor);
  const max = Math.max(1, ...values);
  const end = snap.now_ms - (snap.now_ms % bucket) + bucket;
  const begin = Math.min(points.length ? points[0].start_ms : end, end - 12 * bucket);
  const slots = Math.round((end - begin) / bucket);
  const left = 60, right = 595, base = 175, width = (right - left) / slots;
  const nodes = [svgNode("line", { x1: left, y1: base, x2: right, y2: base })];
  if (!points.length) nodes.push(svgNode("text", { x: 250, y: 100 }, "no fares yet today"));
  points.forEach((p, i) => {
    const h = Math.max((values[i] / max) * 150, 1);
    const x = left + ((p.start_ms - begin) / bucket) * width;
    const bar = svgNode("rect", { x: x + 0.5, y: base - h, width: Math.max(width - 1, 1), height: h });
    bar.append(svgNode("title", {}, hhmm(p.start_ms) + ": " + (amount(p) ? amount(p).text : "-")));
    nodes.push(bar);
  });
  const step = Math.ceil(slots / 6);
  for (let i = 0; i <= slots; i += step) {
    nodes.push(svgNode("text", { x: left + i * width - 12, y: base + 15 }, hhmm(begin + i * bucket)));
  }
  const top = points[values.indexOf(max)];
  if (top && amount(top)) nodes.push(svgNode("text", { x: 0, y: base - 150 + 4 }, amount(top).text));
  document.getElementById("chart").replaceChildren(...nodes);
}

function pct(x) { return x === null || x === undefined ? "-" : (100 * x).toFixed(1) + " %"; }
function secs(x) { return x === null || x === undefined ? "-" : x.toFixed(1) + " s"; }
function ratio(x) { return x === null || x === undefined ? "-" : x.toFixed(2); }
function reasons(list) {
  return list.length ? list.map((r) => r.reason + " " + r.count).join(", ") : "-";
}

// Door KPIs of the service day: one row per bus and a fleet line; a bus out of line is marked.
function renderDoor(snap) {
  const door = snap.door;
  const f = door.fleet;
  const alerted = new Set(snap.alerts.filter((a) => a.kind === "refusals").map((a) => a.bus_id));
  document.getElementById("door-fleet").textContent = f.boardings
    ? "Fleet: " + f.boardings + " boardings, " + f.charged + " charged, " + f.refused + " refused, " + f.see_driver +
      " sent to the driver (" + pct(f.see_driver_rate) + "); wait median " + secs(f.wait_p50_s) + ", p95 " +
      secs(f.wait_p95_s) + "; " + ratio(f.smile_attempts_per_charge) + " smiles per charge"
    : "No door decisions yet today.";
  const body = fillTable("door", door.buses.map((b) => [
    td(b.bus_id), td(b.boardings, "num"), td(b.charged, "num"), td(b.refused, "num"), td(b.see_driver, "num"),
    td(pct(b.see_driver_rate), "num"), td(pct(b.not_charged_rate), alerted.has(b.bus_id) ? "num bad" : "num"),
    td(secs(b.wait_p50_s), "num"), td(secs(b.wait_p95_s), "num"), td(ratio(b.smile_attempts_per_charge), "num"),
    td(reasons(b.by_reason)),
  ]));
  door.buses.forEach((b, i) => { body.children[i].id = "door-" + b.bus_id; });
  renderDoorHours(f.hours);
}

// The fleet's boardings per hour of the day, stacked: charged, refused, sent to the driver.
function renderDoorHours(hours) {
  const left = 60, right = 595, base = 105, height = 90;
  const nodes = [svgNode("line", { x1: left, y1: base, x2: right, y2: base })];
  const shown = hours.slice(-24);
  const max = Math.max(1, ...shown.map((h) => h.boardings));
  const width = (right - left) / Math.max(shown.length, 12);
  shown.forEach((h, i) => {
    let y = base;
    for (const [key, cls] of [["charged", "charged"], ["refused", "refused"], ["see_driver", "driver"]]) {
      const bar = (h[key] / max) * height;
      if (!bar) continue;
      y -= bar;
      const rect = svgNode("rect", { x: left + i * width + 1, y: y, width: Math.max(width - 2, 1), height: bar, class: cls });
      rect.append(svgNode("title", {}, hhmm(h.start_ms) + ": " + h[key] + " " + key.replace("_", " ")));
      nodes.push(rect);
    }
    const hour = String(new Date(h.start_ms).getHours()).padStart(2, "0") + ":00";
    nodes.push(svgNode("text", { x: left + i * width + 2, y: base + 14 }, hour));
  });
  if (!shown.length) nodes.push(svgNode("text", { x: 250, y: 60 }, "no boardings yet today"));
  else nodes.push(svgNode("text", { x: 0, y: base - height + 4 }, max + " / h"));
  const legend = [["charged", "charged"], ["refused", "refused"], ["driver", "see the driver"]];
  legend.forEach(([cls, label], i) => {
    nodes.push(svgNode("rect", { x: 380 + i * 72, y: 2, width: 9, height: 9, class: cls }));
    nodes.push(svgNode("text", { x: 392 + i * 72, y: 10 }, label));
  });
  document.getElementById("door-hours").replaceChildren(...nodes);
}

function render(snap) {
  renderBuses(snap);
  renderDoor(snap);
  renderAlerts(snap);
  renderChart(snap);
  fillTable("routes", snap.routes.map((r) => [td(r.route_id), td(r.fares_today, "num"), td(money(r.revenue_today), "num")]));
  fillTable("decisions", snap.decisions.map((d) => [
    td(new Date(d.at_ms).toLocaleTimeString()), td(d.bus_id), td(d.action), td(d.reason), td(d.rider_id || "-"),
    td(d.amount || "-", "num"),
  ]));
  fillTable("rejects", snap.rejects.map((r) => [td(r.bus_id), td(r.reason), td(r.count, "num")]));
  document.getElementById("service-day").textContent = snap.service_day;
  document.getElementById("fares-today").textContent = snap.fares_today;
  document.getElementById("revenue-today").textContent = money(snap.revenue_today);
  document.getElementById("summary").textContent =
    snap.online + " of " + snap.buses.length + " buses online, " + snap.alerts.filter((a) => !a.acknowledged).length + " alert(s)";
  document.body.dataset.version = snap.version;
}

async function acknowledge(id) {
  const r = await fetch("/api/alerts/" + encodeURIComponent(id) + "/ack",
    { method: "POST", headers: { "X-Requested-With": "facefare" } });
  if (!r.ok) alert("Could not acknowledge: " + (await r.json()).detail);
}

async function start() {
  const me = await fetch("/api/me");
  if (me.status === 401) { location.href = "/login"; return; }
  const who = await me.json();
  role = who.role;
  document.getElementById("who").textContent = who.user + " (" + who.role + ")";
  const badge = document.getElementById("live");
  const events = new EventSource("/events");
  events.addEventListener("state", (e) => {
    badge.textContent = "live";
    badge.className = "badge live";
    render(JSON.parse(e.data));
  });
  events.addEventListener("logout", () => { events.close(); location.href = "/login"; });
  events.addEventListener("error", () => { badge.textContent = "reconnecting"; badge.className = "badge"; });
}

start();
