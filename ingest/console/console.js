// Hookline console: a small single-page client of the /v1 API. Every figure it shows
// comes from the same API calls a script would make; it holds no state of its own
// beyond the bearer token (sessionStorage, this tab only).
//
// Everything the API returns is inserted as text (the `h` helper never parses HTML), so
// an endpoint description or a receiver's answer cannot inject markup.
"use strict";

const TOKEN_KEY = "hookline.token";
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const flashBox = document.getElementById("flash");
let session = null;

// ---- DOM helpers -------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children.flat()) if (child) node.append(child);
  return node;
}

/** A stacked bar chart of attempts over time, drawn in the page (no library): delivered
 * in green under failed in red, one bar per bucket, the oldest on the left. */
function attemptChart(buckets, { testid, label, unit }) {
  const width = 640, height = 120, top = 8, bottom = 18;
  const max = Math.max(1, ...buckets.map((b) => b.delivered + b.failed));
  const step = width / Math.max(1, buckets.length);
  const y = (n) => (height - bottom) * (1 - n / max) + top * (n / max);
  const bars = buckets.map((b, i) => {
    const x = i * step + 1, w = Math.max(1, step - 2);
    const delivered = svg("rect", { x, y: y(b.delivered), width: w, height: height - bottom - y(b.delivered), class: "bar-ok" });
    const failed = svg("rect", { x, y: y(b.delivered + b.failed), width: w, height: y(b.delivered) - y(b.delivered + b.failed), class: "bar-bad" });
    const title = svg("title", {});
    title.textContent = `${when(b.start)}: ${b.delivered} delivered, ${b.failed} failed`;
    return svg("g", {}, delivered, failed, title);
  });
  const delivered = buckets.reduce((n, b) => n + b.delivered, 0);
  const failed = buckets.reduce((n, b) => n + b.failed, 0);
  const axis = svg("text", { x: 0, y: height - 4, class: "axis" });
  axis.textContent = buckets.length ? `${when(buckets[0].start)} → now · peak ${max} per ${unit}` : "";
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart", "aria-label": label,
    "data-testid": testid, "data-delivered": delivered, "data-failed": failed,
  }, bars, axis);
  const ratio = delivered + failed ? ` · ${((failed / (delivered + failed)) * 100).toFixed(1)} % failed` : "";
  return h("figure", { class: "chart-box" }, chart,
    h("figcaption", { class: "muted" }, `${label}: ${delivered} delivered, ${failed} failed${ratio}`));
}

function present(nodes) {
  return nodes.flat().filter((node) => node !== null && node !== undefined && node !== false);
}

/** Replaces a page's content and moves focus there, so keyboard and screen-reader users
 * start at the new page rather than at the link they followed. */
function render(...nodes) {
  main.replaceChildren(...present(nodes));
  main.focus({ preventScroll: true });
}

function fill(node, ...children) {
  node.replaceChildren(...present(children));
}

// A message survives the one navigation that follows it (create → endpoint page), and
// is cleared by the next.
let flashKept = false;

function flash(message, isError) {
  flashBox.className = isError ? "error" : "";
  flashBox.textContent = message || "";
  flashKept = Boolean(message);
}

function badge(state) {
  return h("span", { class: `badge ${state}`, "data-testid": "health-badge" }, state);
}

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

function table(headers, rows, empty) {
  if (rows.length === 0) return h("p", { class: "muted" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("thead", {}, h("tr", {}, headers.map((title) =>
        h("th", { scope: "col", class: title.num ? "num" : "" }, title.text || title)))),
      h("tbody", {}, rows)));
}

// ---- API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    const where = error.field ? ` (${error.field})` : "";
    super(`${error.message || `HTTP ${status}`}${where}`);
    this.status = status;
    this.field = error.field;
  }
}

async function api(method, path, body) {
  const headers = { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(`/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch (_) { parsed = null; }
  if (response.status === 401) {
    signOut("Your session ended or the token is not valid. Sign in again.");
    throw new ApiError(401, parsed);
  }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

const enc = encodeURIComponent;

// ---- session -----------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  session = null;
  flash(message || "", Boolean(message));
  go("#/");
}

async function loadSession() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return null;
  try {
    return await api("GET", "/session");
  } catch (_) {
    return null;
  }
}

/** The session a token opens, asked without signing this tab out when it is refused. */
async function sessionOf(token) {
  try {
    const response = await fetch("/v1/session", { headers: { authorization: `Bearer ${token}` } });
    return response.ok ? await response.json() : null;
  } catch (_) {
    return null;
  }
}

function decodeLinkToken(encoded) {
  try {
    return decodeURIComponent(encoded);
  } catch (_) {
    return encoded;
  }
}

function who(view) {
  return view.scope === "operator" ? "an operator" : `tenant ${view.tenant}`;
}

/** Asked in the page rather than with `confirm()`, which browsers may suppress in an
 * embedding frame. Keeping the current session comes first, so a hurried Enter or a
 * click on the first button changes nothing. */
function switchSessionPage(current, offered, linkToken) {
  render(
    h("h1", {}, "Switch session?"),
    h("p", { "data-testid": "switch-session" },
      `This tab is signed in as ${who(current)}. The link you opened would sign it in as ${who(offered)} instead.`),
    h("p", { class: "muted" },
      "Switch only if you expected this link: a link from someone else opens their session, and whatever you do then happens there."),
    h("div", { class: "row" },
      h("button", { type: "button", class: "secondary", onclick: () => {
        flash("Kept your current session.");
        go("#/");
      } }, "Keep current session"),
      h("button", { type: "button", onclick: () => {
        sessionStorage.setItem(TOKEN_KEY, linkToken);
        session = null;
        go("#/");
      } }, `Switch to ${who(offered)}`)),
  );
}

function signInPage() {
  nav.replaceChildren();
  document.getElementById("sign-out").hidden = true;
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "off", required: true });
  render(
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Operators sign in with an API token. Customers open the link their ATS gives them."),
    h("form", {
      class: "stack narrow",
      onsubmit: async (event) => {
        event.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        session = await loadSession();
        if (!session) {
          sessionStorage.removeItem(TOKEN_KEY);
          flash("That token is not valid.", true);
          return;
        }
        flash("");
        go("#/");
      },
    },
    h("label", { for: "token" }, "API token", input),
    h("div", {}, h("button", { type: "submit" }, "Sign in"))),
  );
}

function setNav() {
  const links = [];
  if (session.scope === "operator") links.push(h("a", { href: "#/" }, "Overview"));
  const tenant = currentTenant();
  if (tenant) {
    links.push(h("a", { href: `#/tenants/${enc(tenant)}` }, `Endpoints (${tenant})`));
    links.push(h("a", { href: `#/tenants/${enc(tenant)}/dead-letters` }, "Dead letters"));
  }
  nav.replaceChildren(...links);
  document.getElementById("sign-out").hidden = false;
}

function currentTenant() {
  if (session && session.scope === "tenant") return session.tenant;
  const match = location.hash.match(/^#\/tenants\/([^/]+)/);
  return match ? decodeURIComponent(match[1]) : null;
}

// ---- operator overview -------------------------------------------------------------

async function overviewPage() {
  const data = await api("GET", "/operator/overview");
  const totals = data.totals;
  const card = (label, value, testid) =>
    h("div", { class: "card" }, h("div", { class: "muted" }, label), h("div", { class: "value", "data-testid": testid }, value));
  const ratio = (r) => (r === null || r === undefined ? "—" : `${(r * 100).toFixed(1)} %`);
  const reasons = (map) => Object.entries(map || {}).map(([reason, n]) => `${reason} ${n}`).join(", ") || "—";
  const open = h("input", { type: "text", id: "open-tenant", placeholder: "tenant id" });
  render(
    h("h1", {}, "Overview"),
    h("p", { class: "muted" }, `Last ${data.window_minutes} minutes · ${when(data.generated_at)}`),
    h("div", { class: "cards" },
      card("Deliverers connected", data.deliverers.connected, "deliverers"),
      card("Delivered / min", totals.deliveries_per_minute.toFixed(1), "rate"),
      card("Failure ratio", ratio(totals.failure_ratio), "failure-ratio"),
      card("Due now (retries, parked)", data.retry_backlog.due, "retries-due"),
      card("Scheduled later", data.retry_backlog.scheduled, "retries-scheduled"),
      card("Longest wait past due", `${data.retry_backlog.oldest_due_seconds.realtime.toFixed(1)} s`, "oldest-due"),
      card("Dead letters", Object.values(totals.dead_letters).reduce((a, b) => a + b, 0), "dead-letters")),
    h("h2", {}, `Attempts per minute, last ${data.window_minutes} minutes`),
    attemptChart(data.series, { testid: "overview-chart", label: "Attempts per minute, whole installation", unit: "min" }),
    h("h2", {}, "Tenants"),
    table(
      ["Tenant", { text: "Healthy", num: true }, { text: "Failing", num: true }, { text: "Disabled", num: true },
        { text: "Delivered / min", num: true }, { text: "Failure ratio", num: true }, "Dead letters"],
      data.tenants.map((t) => h("tr", { "data-tenant": t.tenant },
        h("td", {}, h("a", { href: `#/tenants/${enc(t.tenant)}` }, t.tenant)),
        h("td", { class: "num" }, t.endpoints.healthy),
        h("td", { class: "num" }, t.endpoints.failing),
        h("td", { class: "num" }, t.endpoints.disabled),
        h("td", { class: "num" }, t.deliveries_per_minute.toFixed(1)),
        h("td", { class: "num" }, ratio(t.failure_ratio)),
        h("td", {}, reasons(t.dead_letters)))),
      "No tenant has an endpoint yet."),
    h("h2", {}, "Largest backlogs"),
    h("p", { class: "muted" }, "Deliveries waiting in the retry pool per tenant lane: retries, deliveries held by an open circuit, and deliveries parked beyond the tenant's share."),
    table(["Tenant", "Priority", { text: "Deliveries waiting", num: true }],
      data.retry_backlog.largest_lanes.map((l) => h("tr", { "data-lane": `${l.priority}:${l.tenant}` },
        h("td", {}, h("a", { href: `#/tenants/${enc(l.tenant)}` }, l.tenant)),
        h("td", {}, l.priority),
        h("td", { class: "num" }, l.deliveries))),
      "Nothing is waiting."),
    h("h2", {}, "Deliverer replicas"),
    table(["Replica", "Last heartbeat"],
      data.deliverers.replicas.map((r) => h("tr", {}, h("td", {}, r.name), h("td", {}, when(r.last_seen)))),
      "No deliverer is connected."),
    h("h2", {}, "Open a tenant"),
    h("form", {
      class: "row",
      onsubmit: (event) => {
        event.preventDefault();
        if (open.value.trim()) location.hash = `#/tenants/${enc(open.value.trim())}`;
      },
    }, h("label", { for: "open-tenant", class: "muted" }, "Tenant"), open, h("button", { type: "submit" }, "Open")),
  );
}

// ---- endpoints ---------------------------------------------------------------------

async function endpointsPage(tenant) {
  const list = await api("GET", `/tenants/${enc(tenant)}/endpoints`);
  render(
    h("div", { class: "row spread" },
      h("h1", {}, "Endpoints"),
      h("div", { class: "row" },
        h("a", { class: "button secondary", href: `#/tenants/${enc(tenant)}/endpoints/new?notifications=1` }, "Get notified when an endpoint fails"),
        h("a", { class: "button", href: `#/tenants/${enc(tenant)}/endpoints/new` }, "New endpoint"))),
    table(["Health", "Endpoint", "Events", "Format"],
      list.data.map((e) => h("tr", { "data-endpoint": e.id },
        h("td", {}, badge(e.health.state),
          e.health.disabled_reason ? h("div", { class: "muted" }, e.health.disabled_reason) : null),
        h("td", {},
          h("a", { href: `#/tenants/${enc(tenant)}/endpoints/${enc(e.id)}` }, e.url),
          e.description ? h("div", { class: "muted" }, e.description) : null),
        h("td", {}, e.event_types.join(", ")),
        h("td", {}, typeof e.format === "string" ? e.format : "template"))),
      "No endpoints yet: create one to receive webhooks."),
  );
}

function linesToMap(text, separator) {
  const map = {};
  for (const line of text.split("\n")) {
    const at = line.indexOf(separator);
    if (line.trim() === "") continue;
    if (at < 0) throw new Error(`"${line.trim()}" needs "${separator}"`);
    map[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return map;
}

function mapToLines(map, separator) {
  return Object.entries(map || {}).map(([k, v]) => `${k}${separator} ${v}`).join("\n");
}

/** The form's endpoint as a JSON merge patch (RFC 7396) over `existing`: what the form
 * cleared must be sent as null, or the merge would keep it. */
function mergePatch(existing, body) {
  const patch = { ...body };
  for (const field of ["headers", "metadata"]) {
    for (const key of Object.keys(existing[field] || {})) {
      if (!(key in patch[field])) patch[field][key] = null;
    }
  }
  for (const field of ["description", "rate_limit_per_s", "filter"]) {
    if (!(field in patch) && existing[field] !== undefined) patch[field] = null;
  }
  return patch;
}

/** The preset format names, from the API's own description: the server's list is the
 * only one, so a preset added there appears here without a console change. */
let presets = null;
async function presetNames() {
  if (!presets) {
    const description = await api("GET", "/openapi.json");
    presets = description.components.schemas.Preset.enum;
  }
  return presets;
}

// What the one-click "operational notifications" box subscribes an endpoint to.
const NOTICE_PATTERNS = ["hookline.endpoint.*", "hookline.dead_letters.*"];

async function endpointForm(tenant, existing, { notifications = false } = {}) {
  const [catalog, presetList] = await Promise.all([
    api("GET", "/event-types").catch(() => ({ data: [] })),
    presetNames(),
  ]);
  const known = (catalog.data || []).map((entry) => entry.type);
  const chosen = new Set(existing ? existing.event_types : []);
  const extra = [...chosen].filter((p) => !known.includes(p) && !NOTICE_PATTERNS.includes(p));
  const notify = h("input", { type: "checkbox", id: "notify" });
  notify.checked = notifications || NOTICE_PATTERNS.every((p) => chosen.has(p));
  const isTemplate = existing && typeof existing.format === "object";

  const url = h("input", { type: "url", id: "url", name: "url", required: true, value: existing ? existing.url : "" });
  const description = h("input", { type: "text", id: "description", value: (existing && existing.description) || "" });
  const boxes = known.map((type) => h("label", {},
    h("input", { type: "checkbox", name: "event_type", value: type, checked: chosen.has(type) }), type));
  const patterns = h("input", { type: "text", id: "patterns", value: extra.join(", "), placeholder: "profile.*.success, job.#" });
  const format = h("select", { id: "format" },
    presetList.map((p) => h("option", { value: p, selected: existing ? existing.format === p : p === "json" }, p)),
    h("option", { value: "template", selected: isTemplate }, "template…"));
  const template = h("textarea", { id: "template", rows: 8 },
    isTemplate ? JSON.stringify(existing.format.template, null, 2)
      : JSON.stringify({ content_type: "json", body: { event: "{{type}}", data: "{{data}}" } }, null, 2));
  const templateLabel = h("label", { for: "template", hidden: !isTemplate }, "Template",
    h("span", { class: "hint" }, "{\"content_type\": \"json\"|\"form\", \"body\": …} — see docs/formats.md"), template);
  const metadata = h("textarea", { id: "metadata", rows: 2 }, mapToLines(existing && existing.metadata, "="));
  const headers = h("textarea", { id: "headers", rows: 3 }, mapToLines(existing && existing.headers, ":"));
  const rate = h("input", { type: "number", id: "rate", min: 1, value: (existing && existing.rate_limit_per_s) || "" });
  const ordered = h("input", { type: "checkbox", id: "ordered" });
  ordered.checked = Boolean(existing && existing.ordered);
  const filter = h("textarea", { id: "filter", rows: 2 }, existing && existing.filter ? JSON.stringify(existing.filter) : "");
  const preview = h("pre", { id: "preview", "aria-live": "polite" }, "…");
  const problem = h("p", { class: "error", id: "form-error", role: "alert" });

  function read() {
    const types = boxes.map((label) => label.firstChild).filter((box) => box.checked).map((box) => box.value);
    for (const pattern of patterns.value.split(",").map((p) => p.trim()).filter(Boolean)) types.push(pattern);
    if (notify.checked) for (const pattern of NOTICE_PATTERNS) if (!types.includes(pattern)) types.push(pattern);
    const body = { url: url.value.trim(), event_types: types };
    if (description.value.trim()) body.description = description.value.trim();
    body.format = format.value === "template" ? { template: JSON.parse(template.value) } : format.value;
    body.metadata = linesToMap(metadata.value, "=");
    body.headers = linesToMap(headers.value, ":");
    if (rate.value) body.rate_limit_per_s = Number(rate.value);
    body.ordered = ordered.checked;
    if (filter.value.trim()) body.filter = JSON.parse(filter.value);
    return body;
  }

  let timer = null;
  async function refreshPreview() {
    let body;
    try { body = read(); } catch (error) { preview.textContent = error.message; return; }
    try {
      const answer = await api("POST", `/tenants/${enc(tenant)}/endpoints?dry_run=true`, body);
      const sample = answer.sample;
      const shown = typeof sample.body === "string" ? sample.body : JSON.stringify(sample.body, null, 2);
      preview.textContent = `content-type: ${sample.content_type}\n\n${shown}`;
      problem.textContent = "";
    } catch (error) {
      preview.textContent = `Not valid yet: ${error.message}`;
    }
  }
  const schedule = () => { clearTimeout(timer); timer = setTimeout(refreshPreview, 350); };

  const form = h("form", {
    class: "stack", id: "endpoint-form", oninput: schedule, onchange: schedule,
    onsubmit: async (event) => {
      event.preventDefault();
      let body;
      try { body = read(); } catch (error) { problem.textContent = error.message; return; }
      try {
        if (existing) {
          await api("PATCH", `/tenants/${enc(tenant)}/endpoints/${enc(existing.id)}`, mergePatch(existing, body));
          flash("Endpoint saved.");
          location.hash = `#/tenants/${enc(tenant)}/endpoints/${enc(existing.id)}`;
        } else {
          const created = await api("POST", `/tenants/${enc(tenant)}/endpoints`, body);
          flash(`Endpoint created. Its signing secret: ${created.secret}`);
          location.hash = `#/tenants/${enc(tenant)}/endpoints/${enc(created.id)}`;
        }
      } catch (error) {
        problem.textContent = error.message;
      }
    },
  },
  h("label", { for: "url" }, "URL", url),
  h("label", { for: "description" }, "Description", description),
  h("fieldset", {}, h("legend", {}, "Event types"),
    boxes.length ? h("div", { class: "types" }, boxes) : h("p", { class: "muted" }, "The catalog is empty."),
    h("label", { for: "patterns" }, "More patterns",
      h("span", { class: "hint" }, "comma-separated; * matches one word, # any number"), patterns),
    h("label", { for: "notify", class: "check" }, notify,
      " Operational notifications: hear when this tenant's endpoints fail, recover, are disabled or dead-letter (hookline.endpoint.*, hookline.dead_letters.*; never about this endpoint itself)")),
  h("label", { for: "format" }, "Format", format),
  templateLabel,
  h("label", { for: "metadata" }, "Metadata", h("span", { class: "hint" }, "key = value per line (export_key for the company format)"), metadata),
  h("label", { for: "headers" }, "Custom headers", h("span", { class: "hint" }, "Name: value per line"), headers),
  h("label", { for: "rate" }, "Rate limit (deliveries per second)", rate),
  h("label", { for: "ordered", class: "check" }, ordered, " Ordered: events with the same ordering_key arrive one at a time, in the order they were accepted"),
  h("label", { for: "filter" }, "Filter", h("span", { class: "hint" }, "JSON: {\"status\": [\"hired\"]}"), filter),
  problem,
  h("div", { class: "row" },
    h("button", { type: "submit" }, existing ? "Save" : "Create endpoint"),
    h("a", { href: existing ? `#/tenants/${enc(tenant)}/endpoints/${enc(existing.id)}` : `#/tenants/${enc(tenant)}` }, "Cancel")));
  format.addEventListener("change", () => { templateLabel.hidden = format.value !== "template"; });

  render(
    h("h1", {}, existing ? "Edit endpoint" : "New endpoint"),
    h("div", { class: "split" }, form,
      h("section", { "aria-labelledby": "preview-title" },
        h("h2", { id: "preview-title" }, "What the receiver gets"),
        h("p", { class: "muted" }, "For the catalog's example event, signed like every delivery."), preview)),
  );
  refreshPreview();
}

async function endpointPage(tenant, id) {
  const base = `/tenants/${enc(tenant)}/endpoints/${enc(id)}`;
  const [endpoint, attempts, stats] = await Promise.all([
    api("GET", base), api("GET", `${base}/attempts?limit=50`), api("GET", `${base}/stats?hours=6`)]);
  const health = endpoint.health;
  const testResult = h("div", { class: "result", id: "test-result", "aria-live": "polite" });
  const secretBox = h("div", { class: "result secret", id: "secret", "aria-live": "polite" });

  const sendTest = async () => {
    testResult.textContent = "Sending…";
    try {
      const result = await api("POST", `${base}/test`, {});
      fill(testResult,
        h("p", { class: result.delivered ? "ok" : "error", "data-testid": "test-outcome" },
          result.delivered ? "Delivered" : "Not delivered",
          result.status ? ` · status ${result.status}` : "", ` · ${result.duration_ms} ms`),
        result.error ? h("p", {}, result.error) : null,
        result.response_excerpt ? h("pre", {}, result.response_excerpt) : null);
    } catch (error) {
      fill(testResult, h("p", { class: "error" }, error.message));
    }
  };
  const eventId = h("input", { type: "text", id: "event-id", placeholder: "event id" });
  const lookupResult = h("div", { class: "result", id: "event-state", "aria-live": "polite" });
  const lookup = h("form", {
    class: "row",
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        const found = await api("GET", `/tenants/${enc(tenant)}/events/${enc(eventId.value.trim())}`);
        const mine = (found.deliveries || {})[id];
        if (!mine) { fill(lookupResult, h("p", {}, "Not delivered to this endpoint.")); return; }
        fill(lookupResult, h("p", { "data-testid": "event-status" }, mine.status.replace("_", " "),
          ` · ${mine.attempts} attempts`,
          mine.blocked_by ? ` · waiting for event ${mine.blocked_by} (same ordering key)` : "",
          mine.status === "held_behind" && !mine.blocked_by ? " · waiting for an earlier event of its ordering key" : "",
          mine.next_attempt_at ? ` · next attempt ${when(mine.next_attempt_at)}` : "",
          mine.last_error ? ` · ${mine.last_error}` : ""));
      } catch (error) {
        fill(lookupResult, h("p", { class: "error" }, error.message));
      }
    },
  }, h("label", { for: "event-id", class: "muted" }, "Event id"), eventId, h("button", { type: "submit" }, "Look up"));
  const reveal = async () => {
    const secret = await api("GET", `${base}/secret`);
    secretBox.textContent = secret.secret;
  };
  const rotate = async () => {
    if (!confirm("Rotate the signing secret? The old one keeps signing during the overlap.")) return;
    const secret = await api("POST", `${base}/secret/rotate`);
    secretBox.textContent = `${secret.secret} (previous secret valid until ${when(secret.previous_secret_expires_at)})`;
  };
  const reEnable = async () => {
    await api("PATCH", base, { enabled: true });
    flash("Endpoint re-enabled. Replay its dead letters to deliver what it missed.");
    route();
  };
  const remove = async () => {
    if (!confirm("Delete this endpoint? Deliveries waiting for a retry will be dead-lettered.")) return;
    await api("DELETE", base);
    flash("Endpoint deleted.");
    location.hash = `#/tenants/${enc(tenant)}`;
  };

  render(
    h("div", { class: "row spread" },
      h("h1", {}, endpoint.description || "Endpoint"),
      h("div", { class: "row" },
        h("a", { class: "button", href: `#${base}/edit` }, "Edit"),
        h("button", { type: "button", class: "danger", onclick: remove }, "Delete"))),
    h("dl", { class: "facts" },
      h("dt", {}, "URL"), h("dd", {}, endpoint.url),
      h("dt", {}, "Id"), h("dd", {}, endpoint.id),
      h("dt", {}, "Events"), h("dd", {}, endpoint.event_types.join(", ")),
      h("dt", {}, "Format"), h("dd", {}, typeof endpoint.format === "string" ? endpoint.format : "template"),
      h("dt", {}, "Ordered"), h("dd", { "data-testid": "ordered" }, endpoint.ordered ? "yes, per ordering_key" : "no"),
      h("dt", {}, "Health"), h("dd", {}, badge(health.state),
        ` ${health.consecutive_failures} consecutive failures`,
        health.disabled_reason ? ` · disabled: ${health.disabled_reason}` : ""),
      h("dt", {}, "Last success"), h("dd", {}, when(health.last_success_at)),
      h("dt", {}, "Last failure"), h("dd", {}, when(health.last_failure_at))),
    health.state === "disabled"
      ? h("p", {}, h("button", { type: "button", onclick: reEnable }, "Re-enable endpoint")) : null,
    h("h2", {}, "Send a test event"),
    h("p", { class: "muted" }, "One signed delivery now; never retried, never counted in health."),
    h("button", { type: "button", onclick: sendTest }, "Send test event"),
    testResult,
    h("h2", {}, "Signing secret"),
    h("div", { class: "row" },
      h("button", { type: "button", class: "secondary", onclick: reveal }, "Reveal secret"),
      h("button", { type: "button", class: "secondary", onclick: rotate }, "Rotate secret")),
    secretBox,
    h("h2", {}, "Last six hours"),
    attemptChart(stats.buckets, { testid: "endpoint-chart", label: "Attempts per 10 minutes", unit: `${stats.bucket_minutes} min` }),
    h("h2", {}, "Look up an event"),
    lookup,
    lookupResult,
    h("div", { class: "row spread" }, h("h2", {}, "Recent attempts"),
      h("a", { href: `#/tenants/${enc(tenant)}/dead-letters?endpoint=${enc(id)}` }, "Dead letters of this endpoint")),
    table(["When", "Event", "Attempt", "Outcome", { text: "Duration", num: true }, "Answer"],
      attempts.data.map((a) => h("tr", {},
        h("td", {}, when(a.at)),
        h("td", {}, a.event_type, h("div", { class: "muted" }, a.event_id)),
        h("td", { class: "num" }, a.attempt),
        h("td", {}, h("span", { class: a.outcome === "success" ? "ok" : "error" }, a.outcome),
          a.status ? ` ${a.status}` : ""),
        h("td", { class: "num" }, `${a.duration_ms} ms`),
        h("td", {}, a.error || "", a.response_excerpt ? h("pre", {}, a.response_excerpt) : null))),
      "No attempts yet."),
  );
}

// ---- dead letters ------------------------------------------------------------------

async function deadLettersPage(tenant, endpoint) {
  const query = endpoint ? `?endpoint=${enc(endpoint)}&limit=100` : "?limit=100";
  const page = await api("GET", `/tenants/${enc(tenant)}/dead-letters${query}`);
  const replayOne = (id) => async () => {
    await api("POST", `/tenants/${enc(tenant)}/dead-letters/${enc(id)}/replay`);
    flash("Queued for delivery.");
    route();
  };
  const replayAll = async () => {
    const answer = await api("POST", `/tenants/${enc(tenant)}/dead-letters/replay`, endpoint ? { endpoint } : {});
    flash(`${answer.queued} queued for delivery${answer.more ? "; more remain, replay again" : ""}.`);
    route();
  };
  render(
    h("div", { class: "row spread" },
      h("h1", {}, endpoint ? `Dead letters of ${endpoint}` : "Dead letters"),
      h("button", { type: "button", onclick: replayAll, disabled: page.data.length === 0 }, "Replay all")),
    h("p", { class: "muted" }, "Deliveries that will not be attempted again until replayed. Replaying sends them with the endpoint's current format."),
    table(["", "When", "Reason", "Event", "Endpoint", { text: "Attempts", num: true }, "Last error"],
      page.data.map((d) => h("tr", { "data-dead-letter": d.id },
        h("td", {}, h("button", { type: "button", class: "secondary", onclick: replayOne(d.id) }, "Replay")),
        h("td", {}, when(d.dead_lettered_at)),
        h("td", {}, d.reason),
        h("td", {}, d.event.type, h("div", { class: "muted id" }, d.event.id)),
        h("td", {}, h("a", { class: "id", href: `#/tenants/${enc(tenant)}/endpoints/${enc(d.endpoint_id)}` }, d.endpoint_id)),
        h("td", { class: "num" }, d.attempts),
        h("td", {}, d.last_error ? `${d.last_error.class}${d.last_error.status ? ` ${d.last_error.status}` : ""}: ${d.last_error.message}` : "—"))),
      "No dead letters."),
  );
}

// ---- routing -----------------------------------------------------------------------

/** Shows `hash`: a new address routes through `hashchange`; the current one is shown
 * again directly. Exactly one navigation either way, so a page is never rendered twice
 * under a user's hands. */
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// Navigations run one after another: a page still loading when the address changes
// finishes first, and the newer page then replaces it, so the page shown is always the
// one the address names.
let routing = Promise.resolve();

function route() {
  routing = routing.then(showRoute, showRoute);
  return routing;
}

async function showRoute() {
  if (!flashKept) flash("");
  flashKept = false;
  const hash = location.hash || "#/";
  const tokenInLink = hash.match(/^#token=(.+)$/);
  if (tokenInLink) {
    // A portal link: drop the token from the address bar, then keep it for this tab —
    // unless it would replace another open session. A link is only a URL: anybody can
    // send one, and opening it must not silently put its owner's session in this tab.
    history.replaceState(null, "", "#/");
    const linkToken = decodeLinkToken(tokenInLink[1]);
    const current = sessionStorage.getItem(TOKEN_KEY);
    const currentSession = current && current !== linkToken ? await sessionOf(current) : null;
    if (currentSession) {
      const offered = await sessionOf(linkToken);
      if (offered) return switchSessionPage(currentSession, offered, linkToken);
      flash("The link you opened is not valid or has expired; your session is unchanged.", true);
    } else {
      sessionStorage.setItem(TOKEN_KEY, linkToken);
      session = null;
    }
  }
  if (!session) session = await loadSession();
  if (!session) return signInPage();

  const [path, search] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (session.scope === "tenant" && parts[0] !== "tenants") {
    location.hash = `#/tenants/${enc(session.tenant)}`;
    return;
  }
  setNav();
  try {
    if (parts.length === 0) return await overviewPage();
    const [, tenant, section, id, action] = parts;
    if (section === undefined) return await endpointsPage(tenant);
    if (section === "dead-letters") return await deadLettersPage(tenant, params.get("endpoint"));
    if (section === "endpoints" && id === "new") {
      return await endpointForm(tenant, null, { notifications: params.get("notifications") === "1" });
    }
    if (section === "endpoints" && action === "edit") {
      return await endpointForm(tenant, await api("GET", `/tenants/${enc(tenant)}/endpoints/${enc(id)}`));
    }
    if (section === "endpoints" && id) return await endpointPage(tenant, id);
    render(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back")));
  } catch (error) {
    if (error.status === 401) return;
    render(h("h1", {}, error.status === 404 ? "Not found" : "Something went wrong"),
      h("p", { class: "error", "data-testid": "page-error" }, error.message));
  }
}

document.getElementById("sign-out").addEventListener("click", () => signOut(""));
window.addEventListener("hashchange", () => { route(); });
route();
