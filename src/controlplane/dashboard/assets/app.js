"use strict";
// The Skein dashboard. It reads its JSON views under `dashboard/` (same origin, relative URLs,
// so the page works under the debug server and through the Kubernetes apiserver alike) every
// few seconds and draws them. Verdicts, rates and reasons come from dashboard/stats as the
// control plane computed them: the page shows them, it never recomputes.

const REFRESH_MS = 3000;
const TAP_ROWS = 200;
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

/** An element with attributes (`class`, `data-*`, ...) and children (strings become text). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

const percent = (rate) => (rate === null || rate === undefined ? "-" : (rate * 100).toFixed(2) + "%");
const millis = (ms) => (ms === null || ms === undefined ? "-" : ms >= 10 ? ms.toFixed(0) + "ms" : ms.toFixed(1) + "ms");
/** `87.5%`, `100%`: short enough for an edge's label. */
const shortPercent = (rate) => (rate === null || rate === undefined ? "-" : `${Number((rate * 100).toFixed(1))}%`);
const verdictText = (verdict) => (verdict === "NO_TRAFFIC" ? "NO TRAFFIC" : verdict || "NO TRAFFIC");

/** A reason as `skein stat` prints it. */
function reasonText(reason) {
  switch (reason.kind) {
    case "local": return `x-skein-error ${reason.detail} x${reason.count}`;
    case "upstream": return `calls to ${reason.detail} failing x${reason.count}`;
    default: return `${reason.detail} x${reason.count}`;
  }
}

/** `31.9% failing — 503 x23, calls to demo/middleware failing x40`, as `skein stat`'s FAIL line. */
function failingText(workload) {
  const failing = 100 - (workload.successRate || 0) * 100;
  return `${failing.toFixed(1)}% failing — ${(workload.topReasons || []).map(reasonText).join(", ")}`;
}

/** `GET backend/api 503 (backend-v1-7f9c-x2x, inbound, 4s ago)`, as `skein stat`'s sample line. */
function sampleText(sample) {
  const reason = sample.reason ? ` x-skein-error ${sample.reason}` : "";
  const age = Math.max(0, Math.round(sample.ageSeconds || 0));
  return `${sample.method} ${sample.authority}${sample.path} ${sample.status}${reason} ` +
    `(${sample.pod}, ${sample.direction}, ${age}s ago)`;
}

/** The MeshConfig's tracing UI links (`dashboard/settings`), as of the last refresh. */
let links = { traceUrl: null, searchUrl: null };

/** `template` with each `{name}` replaced, or null when there is no http(s) template. */
function linkTo(template, values) {
  if (!template || !/^https?:\/\//.test(template)) return null;
  return template.replace(/\{(traceId|service|namespace)\}/g, (_, key) => encodeURIComponent(values[key] || ""));
}

/** A link to the tracing UI, opened beside the dashboard. */
const traceLink = (href, attrs, text) =>
  el("a", { href, target: "_blank", rel: "noopener noreferrer", class: "trace-link", ...attrs }, text);

/** A FAIL row's why: its reasons, and under them its sample request when there is one (linked
 * to its trace when the proxy sampled it and the MeshConfig names a trace UI). */
function whyCell(workload) {
  if (workload.verdict !== "FAIL") return [];
  const why = [failingText(workload)];
  if (workload.sample) {
    const sample = workload.sample;
    const href = sample.traceId ? linkTo(links.traceUrl, { traceId: sample.traceId }) : null;
    why.push(el("div", { class: "sample", "data-sample": workload.name, "data-status": sample.status },
      `sample: ${sampleText(sample)}`,
      ...(href ? [" ", traceLink(href, { "data-trace": workload.name }, "trace")] : [])));
  }
  return why;
}

/** A workload's name, linked to its traces when the MeshConfig names a trace search. */
function workloadCell(workload, name) {
  const href = linkTo(links.searchUrl, { service: workload.name, namespace: workload.namespace });
  if (!href) return el("td", {}, name);
  return el("td", {}, name, " ", traceLink(href, { "data-traces": workload.name }, "traces"));
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 0) return "expired";
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  return hours > 0 ? `${hours}h${minutes}m` : `${minutes}m`;
}

// The settings live in the page's URL, so a link shows the same view.
const settings = new URLSearchParams(location.search);

function readSettings() {
  const windowSelect = $("window");
  const chosen = settings.get("window") || "1m";
  if (![...windowSelect.options].some((o) => o.value === chosen)) {
    windowSelect.append(el("option", { value: chosen }, chosen));
  }
  windowSelect.value = chosen;
  $("namespace").value = settings.get("namespace") || "";
  $("tap-namespace").value = settings.get("namespace") || "";
}

function saveSettings() {
  settings.set("window", $("window").value);
  const namespace = $("namespace").value.trim();
  if (namespace) settings.set("namespace", namespace);
  else settings.delete("namespace");
  history.replaceState(null, "", "?" + settings.toString());
}

/** A refusal's words: a Kubernetes `Status`'s message (through the apiserver), else the body. */
async function errorText(response) {
  const body = (await response.text()).trim();
  try {
    const status = JSON.parse(body);
    if (status && status.kind === "Status" && status.message) return status.message;
  } catch (_) {
    // Not JSON: the debug server's plain text.
  }
  return body;
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) {
    const error = new Error(`${path}: ${response.status} ${await errorText(response)}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

// ---- tiers ----

function renderTiers(report) {
  const showNamespace = !$("namespace").value.trim();
  const rows = (report.workloads || []).map((w) => {
    const name = showNamespace ? `${w.namespace}/${w.name}` : w.name;
    return el("tr", { "data-workload": w.name, "data-namespace": w.namespace },
      workloadCell(w, name),
      el("td", { class: "verdict", "data-workload": w.name, "data-namespace": w.namespace, "data-verdict": w.verdict },
        verdictText(w.verdict)),
      el("td", { class: "num" }, percent(w.successRate)),
      el("td", { class: "num" }, (w.rps || 0).toFixed(1)),
      el("td", { class: "num" }, millis(w.p50Ms)),
      el("td", { class: "num" }, millis(w.p95Ms)),
      el("td", { class: "num" }, millis(w.p99Ms)),
      el("td", { class: "num" }, w.proxies),
      el("td", { class: "reasons", "data-reasons": w.name }, ...whyCell(w)));
  });
  if (rows.length === 0) {
    rows.push(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No proxy has reported yet.")));
  }
  $("tiers").tBodies[0].replaceChildren(...rows);
  $("tiers-note").textContent =
    `PASS at ${report.threshold}% success or more over the last ${report.windowSeconds}s`;
}

// ---- service graph ----

const OUTSIDE = "(outside the mesh)";
const NODE_W = 150;
const NODE_H = 36;
const COLUMN = 250;
const ROW = 64;

const nodeKey = (namespace, name) => (name ? `${namespace}/${name}` : OUTSIDE);

/**
 * An edge's caller. Only a caller that proved no identity is outside the mesh (the kubelet's
 * probes, a pod without a proxy); a meshed one its callee could not name (the control plane
 * names it when it can) is its namespace and service account, one node per identity.
 */
function sourceKey(edge) {
  if (edge.source || !edge.sourceIdentity) return nodeKey(edge.sourceNamespace, edge.source);
  const account = edge.sourceIdentity.split("/sa/")[1] || edge.sourceIdentity;
  return `${edge.sourceNamespace || "?"}/(unnamed, sa ${account})`;
}

/** Columns by depth: each workload one column right of its deepest caller (cycles cut). */
function layers(keys, edges) {
  const depth = new Map(keys.map((k) => [k, 0]));
  const named = edges.filter((e) => e.from !== OUTSIDE && e.from !== e.to);
  for (let pass = 0; pass < keys.length; pass++) {
    let moved = false;
    for (const e of named) {
      const wanted = depth.get(e.from) + 1;
      if (wanted > depth.get(e.to) && wanted < keys.length) {
        depth.set(e.to, wanted);
        moved = true;
      }
    }
    if (!moved) break;
  }
  // Unnamed callers (probes, clients without a proxy) stand left of everything.
  if (depth.has(OUTSIDE)) {
    for (const k of keys) if (k !== OUTSIDE) depth.set(k, depth.get(k) + 1);
    depth.set(OUTSIDE, 0);
  }
  return depth;
}

function renderGraph(report) {
  const threshold = (report.threshold || 0) / 100;
  const verdicts = new Map((report.workloads || []).map((w) => [nodeKey(w.namespace, w.name), w.verdict]));
  const edges = (report.edges || []).map((e) => ({
    from: sourceKey(e),
    to: nodeKey(e.destinationNamespace, e.destination),
    stats: e,
  }));
  const keys = [...new Set([...verdicts.keys(), ...edges.flatMap((e) => [e.from, e.to])])].sort();
  const depth = layers(keys, edges);
  const position = new Map();
  const perColumn = new Map();
  for (const key of keys.filter((k) => k !== OUTSIDE)) {
    const column = depth.get(key);
    const row = perColumn.get(column) || 0;
    perColumn.set(column, row + 1);
    position.set(key, { x: 20 + column * COLUMN, y: 20 + row * ROW });
  }
  // Unnamed callers sit below the first column, their edges rising to the workloads.
  if (depth.has(OUTSIDE)) {
    const below = Math.max(0, ...perColumn.values());
    perColumn.set(0, below + 1);
    position.set(OUTSIDE, { x: 20, y: 20 + below * ROW });
  }
  const width = 40 + Math.max(1, ...[...perColumn.keys()].map((c) => c + 1)) * COLUMN;
  const height = 40 + Math.max(1, ...perColumn.values()) * ROW;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "service graph" });
  root.append(svg("defs"));
  for (const edge of edges) {
    const a = position.get(edge.from);
    const b = position.get(edge.to);
    const e = edge.stats;
    const rate = e.successRate;
    const health = rate === null || rate === undefined ? "none" : rate >= threshold ? "ok" : "bad";
    const x1 = a.x + NODE_W;
    const y1 = a.y + NODE_H / 2;
    const x2 = b.x;
    const y2 = b.y + NODE_H / 2;
    // Backward or same-column edges bow out below, so they do not cross the nodes.
    const outside = edge.from === OUTSIDE;
    const bow = x2 > x1 ? 0 : ROW;
    const cx = (x1 + x2) / 2;
    const cy = (y1 + y2) / 2 + bow;
    const path = svg("path", {
      class: `edge ${health}`,
      d: `M${x1},${y1} Q${cx},${cy} ${x2},${y2}`,
      "stroke-width": Math.min(6, 1.5 + Math.log2(1 + (e.rps || 0))).toFixed(1),
      "data-source": edge.from,
      "data-destination": edge.to,
      "data-secured": e.secured,
      "data-success": rate === null || rate === undefined ? "" : rate,
    });
    path.append(svg("title", {}, `${edge.from} → ${edge.to}: ${percent(rate)} success, ` +
      `${(e.rps || 0).toFixed(1)} rps, mTLS ${e.secured}` +
      (e.sourceIdentity ? `, client ${e.sourceIdentity}` : "")));
    root.append(path);
    if (outside) continue; // their numbers are in the tooltip, not over the chain's labels
    root.append(svg("text", { class: "edge-label", x: cx, y: (y1 + y2) / 2 + bow / 2 - 4, "text-anchor": "middle" },
      `${shortPercent(rate)} ${(e.rps || 0).toFixed(1)}/s`));
  }
  for (const key of keys) {
    const { x, y } = position.get(key);
    const verdict = verdicts.get(key) || "";
    const group = svg("g", { class: "node", "data-node": key, "data-verdict": verdict });
    group.append(svg("rect", { x, y, width: NODE_W, height: NODE_H }));
    const label = key.length > 22 ? key.slice(key.indexOf("/") + 1) : key;
    group.append(svg("text", { x: x + 8, y: y + 15 }, label.slice(0, 22)));
    group.append(svg("text", { x: x + 8, y: y + 29 }, verdict ? verdictText(verdict) : ""));
    group.append(svg("title", {}, key));
    root.append(group);
  }
  if (keys.length === 0) {
    root.append(svg("text", { x: 20, y: 30 }, "No traffic in the window."));
  }
  $("graph").replaceChildren(root);
}

// ---- proxies and rules ----

function proxyStatus(proxy) {
  if (proxy.lastNack) return ["NACK", `NACK: ${proxy.lastNack}`];
  return proxy.ackedVersion === proxy.sentVersion ? ["SYNCED", "SYNCED"] : ["STALE", "STALE"];
}

function renderProxies(proxies) {
  const namespace = $("namespace").value.trim();
  const rows = proxies
    .filter((p) => !namespace || p.namespace === namespace)
    .map((p) => {
      const [status, text] = proxyStatus(p);
      return el("tr", { "data-pod": `${p.namespace}/${p.pod}`, "data-status": status },
        el("td", {}, p.namespace),
        el("td", {}, p.pod),
        el("td", { class: `status-${status}` }, text),
        el("td", {}, p.sentVersion),
        el("td", {}, p.ackedVersion),
        el("td", { class: "num" }, p.resources),
        el("td", {}, duration(p.certExpiresInSeconds)),
        el("td", {}, p.connectedSince));
    });
  if (rows.length === 0) {
    rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No proxy is connected to this control plane.")));
  }
  $("proxies").tBodies[0].replaceChildren(...rows);
}

function renderRules(rules) {
  const namespace = $("namespace").value.trim();
  const rows = rules
    .filter((r) => !namespace || r.namespace === namespace)
    .map((r) => el("tr", { "data-rule": `${r.namespace}/${r.kind}/${r.name}` },
      el("td", {}, r.namespace),
      el("td", {}, r.kind),
      el("td", {}, r.name),
      el("td", {}, ...r.conditions.map((c) =>
        el("div", { class: `condition-${c.status}` },
          `${c.type}=${c.status} (${c.reason})` + (c.message ? `: ${c.message}` : ""))))));
  if (rows.length === 0) {
    rows.push(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "No traffic rules.")));
  }
  $("rules").tBodies[0].replaceChildren(...rows);
}

function unavailable(table, columns, text) {
  $(table).tBodies[0].replaceChildren(el("tr", {}, el("td", { colspan: columns, class: "muted" }, text)));
}

// ---- refresh loop ----

let timer = null;

async function refresh() {
  clearTimeout(timer);
  try {
    await refreshOnce();
  } catch (error) {
    const box = $("problems");
    box.textContent = `The page failed to draw: ${error.message}`;
    box.hidden = false;
  } finally {
    clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
  }
}

async function refreshOnce() {
  const query = new URLSearchParams({ window: $("window").value });
  const namespace = $("namespace").value.trim();
  if (namespace) query.set("namespace", namespace);
  if (settings.get("threshold")) query.set("threshold", settings.get("threshold"));
  const [stats, proxies, rules, tracing] = await Promise.allSettled([
    getJson("dashboard/stats?" + query.toString()),
    getJson("dashboard/proxies"),
    getJson("dashboard/rules"),
    getJson("dashboard/settings"),
  ]);
  const problems = [];
  if (tracing.status === "fulfilled") links = tracing.value;
  else problems.push(`Settings: ${tracing.reason.message}`);
  if (stats.status === "fulfilled") {
    renderTiers(stats.value);
    renderGraph(stats.value);
    for (const proxy of stats.value.unreachable || []) problems.push(`No metrics from ${proxy}.`);
  } else {
    problems.push(`Stats: ${stats.reason.message}`);
  }
  if (proxies.status === "fulfilled") renderProxies(proxies.value);
  else problems.push(`Proxies: ${proxies.reason.message}`);
  if (rules.status === "fulfilled") renderRules(rules.value);
  else if (rules.reason.status === 404) unavailable("rules", 4, "This control plane does not list rules (an older version).");
  else problems.push(`Rules: ${rules.reason.message}`);
  const box = $("problems");
  box.textContent = problems.join("\n");
  box.hidden = problems.length === 0;
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}, every ${REFRESH_MS / 1000}s`;
  document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
}

// ---- live tap ----

let tap = null;

function tapStatus(text, kind) {
  const status = $("tap-status");
  status.textContent = text;
  status.className = kind || "muted";
  status.dataset.state = kind || "";
}

function stopTap() {
  if (tap) tap.abort();
  tap = null;
  $("tap-stop").disabled = true;
}

const workloadText = (end) => (end ? `${end.namespace || ""}/${end.workload || "?"}` : "?");

function tapEvent(event) {
  const status = event.grpc_status !== undefined && event.grpc_status !== null
    ? `${event.status ?? "-"} grpc ${event.grpc_status}` : String(event.status ?? "-");
  const row = el("tr", { "data-status": event.status ?? "" },
    el("td", {}, new Date().toLocaleTimeString()),
    el("td", {}, event.direction || ""),
    el("td", { title: event.source?.identity || "" }, workloadText(event.source)),
    el("td", { title: event.destination?.identity || "" }, workloadText(event.destination)),
    el("td", {}, event.tls ? "yes" : "no"),
    el("td", {}, `${event.method || ""} ${event.authority || ""}${event.path || ""}`),
    el("td", {}, status),
    el("td", { class: "num" }, millis(event.latency_ms)),
    el("td", { class: "num" }, event.retry ?? ""),
    el("td", {}, event.error || ""));
  const body = $("tap-events").tBodies[0];
  body.prepend(row);
  while (body.rows.length > TAP_ROWS) body.deleteRow(body.rows.length - 1);
}

function tapLine(line) {
  let message;
  try {
    message = JSON.parse(line);
  } catch (error) {
    tapStatus(`The tap sent a line that is not JSON: ${line.slice(0, 200)}`, "unavailable");
    return;
  }
  if (message.event) tapEvent(message.event);
  else if (message.tapping) tapStatus(`Tapping ${(message.tapping.pods || []).join(", ") || "no pod yet"}.`, "tapping");
  else if (message.dropped) tapStatus(`${message.dropped.count} events dropped on ${message.dropped.pod} (this page read too slowly).`, "tapping");
  else if (message.untappable) tapStatus(`${message.untappable.pod} cannot be tapped: ${message.untappable.reason}`, "unavailable");
}

async function startTap(submit) {
  submit.preventDefault();
  stopTap();
  const resource = $("tap-resource").value.trim();
  const namespace = $("tap-namespace").value.trim();
  if (!resource || !namespace) {
    tapStatus("Give a namespace and a resource such as deploy/frontend.", "unavailable");
    return;
  }
  const query = new URLSearchParams({ namespace, resource });
  for (const key of ["to", "to_namespace", "method", "path"]) {
    const value = $(`tap-${key.replace("_", "-")}`).value.trim();
    if (value) query.set(key, value);
  }
  const controller = new AbortController();
  tap = controller;
  $("tap-stop").disabled = false;
  $("tap-events").tBodies[0].replaceChildren();
  tapStatus("Connecting…", "tapping");
  try {
    const response = await fetch("dashboard/tap?" + query.toString(), { signal: controller.signal, cache: "no-store" });
    if (!response.ok) {
      tapStatus(`Tap refused (${response.status}): ${await errorText(response)}`, "unavailable");
      stopTap();
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, newline).trim();
        pending = pending.slice(newline + 1);
        if (line) tapLine(line);
      }
    }
    if (tap === controller) tapStatus("The tap ended.", "muted");
  } catch (error) {
    // Stopped on purpose (the Stop button, or a new tap): whoever stopped it says so.
    if (!controller.signal.aborted) tapStatus(`Tap failed: ${error.message}`, "unavailable");
  }
  if (tap === controller) stopTap();
}

// ---- start ----

readSettings();
$("controls").addEventListener("submit", (event) => event.preventDefault());
$("controls").addEventListener("change", () => {
  saveSettings();
  refresh();
});
$("tap-form").addEventListener("submit", startTap);
$("tap-stop").addEventListener("click", () => {
  stopTap();
  tapStatus("Stopped.", "muted");
});
refresh();
