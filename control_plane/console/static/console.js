// VisionGuard release console: the control plane's own API, called with the person's token.
//
// The token is pasted into the login box and kept in this tab's sessionStorage only; every call
// sends it as `Authorization: Bearer <token>`. A 401 or 403 sends the page back to the login
// box with the API's reason; any other error shows in the section that asked. Everything from
// the API is written with textContent (never innerHTML). Reports (HTML that needs the token)
// are fetched and opened as blob: URLs.
//
// State for people and tests: #dashboard[data-state] (signed-out, loading, ready), each
// retraining row's data-state, #logs-result[data-state] (idle, asking, answered, error).
"use strict";

const TOKEN_KEY = "visionguard-console-token";
const COMPARED = [["val_mAP50", "mAP50"], ["val_mAP50-95", "mAP50-95"],
  ["latency_p50_ms", "latency p50 (ms)"], ["latency_p95_ms", "latency p95 (ms)"],
  ["throughput_infer_per_s", "throughput (inferences/s)"]];

const $ = (id) => document.getElementById(id);

// A DOM element with text content and attributes: the only way data reaches the page.
function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    tr.append(cell instanceof Node ? cell : el("td", cell));
  }
  return tr;
}

function td(...children) {
  const cell = document.createElement("td");
  cell.append(...children);
  return cell;
}

// canary_analysis.ACTIVE: states of an analysis that has not decided yet.
const ACTIVE = ["starting", "running", "extended", "deciding"];
const fmt = (v, digits = 4) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const utc = (seconds) => (seconds ? new Date(seconds * 1000).toISOString()
  .replace("T", " ").replace(/\.\d+Z$/, "") : "–");

function showError(id, err) {
  const node = $(id);
  node.textContent = err ? err.message : "";
  node.hidden = !err;
}

// ---------------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(`The control plane answered ${status} ${error.code || ""}: ${error.message || ""}`
      .replace(/\s+:/, ":"));
    this.status = status;
  }
}

class SignedOut extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function call(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${token()}` };
  let response;
  try {
    response = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch (err) {
    throw new Error(`The control plane did not answer (${err.message})`);
  }
  if (response.ok) return response;
  let body = null;
  try {
    body = await response.json();
  } catch (_) { /* not JSON: the status says enough */ }
  const error = new ApiError(response.status, body);
  if (response.status === 401 || response.status === 403) {
    signOut(error.message);
    throw new SignedOut(error.message);
  }
  throw error;
}

const getJson = async (path) => (await call(path)).json();
const postJson = async (path, body) => (await call(path, {
  method: "POST",
  headers: { "Content-Type": "application/json" },
  body: JSON.stringify(body || {}),
})).json();

// A report behind the token: fetched, then offered as a link to a blob: document.
async function openReport(path, holder, label) {
  holder.replaceChildren(el("span", "loading…", { class: "muted" }));
  let blob;
  try {
    blob = await (await call(path)).blob();
  } catch (err) {
    holder.replaceChildren();
    throw err;
  }
  const link = el("a", label, {
    href: URL.createObjectURL(blob), target: "_blank", rel: "noopener", class: "report-link",
  });
  holder.replaceChildren(link);
}

// ---------------------------------------------------------------------------------------------
// Sections

// What the releases did with a version (the promoter's `status` tag, as `models list` shows
// it): registered, challenger, champion, rejected at a step, canary_aborted, rolled_back.
function versionStatus(v) {
  const tags = v.tags || {};
  const status = tags.status || "registered";
  return status === "rejected" && tags.rejected_step ? `rejected at ${tags.rejected_step}` : status;
}

async function loadVersions() {
  const data = await getJson("/v1/models");
  $("model-name").textContent = data.model ? `(${data.model})` : "";
  const body = $("versions-body");
  body.replaceChildren();
  for (const v of data.versions) {
    const gates = Object.keys(v.tags || {}).filter((k) => k.startsWith("gate_"))
      .map((k) => k.slice("gate_".length)).sort();
    const holder = el("span");
    const button = el("button", "Report", { type: "button", "data-version": v.version });
    button.addEventListener("click", () => openReport(
      `/v1/models/${encodeURIComponent(v.version)}/report`, holder, `open v${v.version} report`,
    ).catch((err) => err instanceof SignedOut || showError("versions-error", err)));
    const tr = row([v.version, v.aliases.join(", ") || "–", fmt(v["mAP50"]),
      fmt(v["mAP50-95"]), (v.tags && v.tags.eval_dataset) || "–",
      gates.join(", ") || "none recorded", versionStatus(v),
      v.created.replace("T", " ").replace("Z", ""), td(button, holder)]);
    tr.dataset.version = v.version;
    body.append(tr);
  }
  $("versions-empty").hidden = data.versions.length > 0;
  return data.versions;
}

async function loadRouting(versions) {
  const routing = await getJson("/v1/routing");
  $("routing-champion").textContent = routing.champion ? `version ${routing.champion}`
    : "none registered";
  $("routing-challenger").textContent = routing.challenger ? `version ${routing.challenger}`
    : "none (no canary)";
  $("routing-canary").textContent = `${fmt(routing.canary_percent, 1)}% of streams`;
  // The challenger when a canary runs, else the newest other version: what would go next.
  let other = routing.challenger;
  let why = "challenger";
  if (!other) {
    const rest = versions.filter((v) => v.version !== routing.champion);
    other = rest.length ? rest[rest.length - 1].version : null;
    why = "newest other version";
  }
  const table = $("compare-table");
  if (!routing.champion || !other) {
    $("compare-note").textContent = "Nothing to compare: it takes a champion and another version.";
    table.hidden = true;
    return;
  }
  const data = await getJson(`/v1/models/compare?a=${encodeURIComponent(routing.champion)}`
    + `&b=${encodeURIComponent(other)}`);
  $("compare-note").textContent = `Champion (version ${data.a}) against the ${why} (version `
    + `${data.b}): registered metrics; ${data.same_eval_dataset ? "same" : "different"} `
    + "evaluation data.";
  $("compare-a").textContent = `v${data.a} (champion)`;
  $("compare-b").textContent = `v${data.b} (${why})`;
  $("compare-body").replaceChildren(...COMPARED.map(([key, label]) => {
    const m = data.metrics[key] || {};
    return row([label, fmt(m.a), fmt(m.b), m.delta === null || m.delta === undefined ? "–"
      : (m.delta > 0 ? "+" : "") + fmt(m.delta)]);
  }));
  table.hidden = false;
}

// The latest automated canary analysis (`models canary N --auto`): its state or decision, each
// criterion with its numbers, and the live counts it compared. None yet is a 404, said as such.
async function loadCanaryAnalysis() {
  let a;
  try {
    a = await getJson("/v1/canary/analysis");
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
    $("canary-summary").textContent = "None has run yet (visionguard models canary N --auto).";
    $("canary-table").hidden = true;
    $("canary-live").textContent = "";
    return;
  }
  const reason = a.reason ? `: ${a.reason}` : "";
  const left = ACTIVE.includes(a.status) && a.deadline
    ? `; decision due ${utc(a.deadline)} UTC` : "";
  $("canary-summary").textContent = `${a.id}: version ${a.version} at ${fmt(a.percent, 0)}% `
    + `against champion ${a.champion || "–"}, window ${fmt(a.window_s, 0)} s`
    + `${a.extended ? " (extended once)" : ""}: ${a.status}${reason}${left}`;
  $("canary-summary").dataset.status = a.status;
  $("canary-a").textContent = `Champion v${a.champion || "–"}`;
  $("canary-b").textContent = `Challenger v${a.version}`;
  const verdicts = { true: "pass", false: "fail", null: "not evaluated" };
  $("canary-body").replaceChildren(...(a.criteria || []).map((c) => {
    const tr = row([c.name, verdicts[c.passed], fmt(c.champion, 3), fmt(c.challenger, 3),
      fmt(c.statistic, 3), c.threshold]);
    tr.title = c.reason || "";
    tr.className = c.passed === false ? "bad" : "";
    return tr;
  }));
  $("canary-table").hidden = !(a.criteria || []).length;
  const live = a.live || {};
  $("canary-live").textContent = ["champion", "challenger"].filter((side) => live[side])
    .map((side) => `${side}: ${live[side].requests} requests, ${live[side].errors} errors, `
      + `p95 ${fmt(live[side].p95_ms, 1)} ms, ${fmt(live[side].detections_per_image, 2)} `
      + "detections per image").join("; ");
}

async function loadDrift() {
  const s = await getJson("/v1/drift/status");
  $("drift-window").textContent = `${s.window} of ${s.window_size} samples (a check needs `
    + `${s.min_samples}; every ${s.check_interval_s} s; level ${s.p_value})`;
  const last = s.last;
  const features = $("drift-features");
  if (!last) {
    $("drift-last").textContent = "no check yet";
    $("drift-verdict").textContent = "–";
    features.hidden = true;
    return;
  }
  const mmd = last.detectors.mmd;
  $("drift-last").textContent = `${utc(last.checked_at)}: ${last.model} version `
    + `${last.version}, ${last.n_live} live against ${last.n_reference} reference samples`;
  $("drift-verdict").textContent = last.drift
    ? `DRIFT on ${last.drifted_features.join(", ") || "the joint distribution"} `
      + `(MMD p=${fmt(mmd.p_value)})`
    : `no drift (MMD p=${fmt(mmd.p_value)})`;
  $("drift-verdict").className = last.drift ? "bad" : "good";
  $("drift-features-body").replaceChildren(...Object.entries(last.detectors.ks.features)
    .map(([name, f]) => row([name, fmt(f.p_value), fmt(f.distance)])));
  features.hidden = false;
}

async function loadRetraining() {
  const data = await getJson("/v1/drift/retraining");
  const body = $("retraining-body");
  body.replaceChildren();
  for (const r of [...data.requests].reverse()) {
    const decision = td();
    if (r.state === "pending") {
      for (const [verb, label] of [["approve", "Approve"], ["reject", "Reject"]]) {
        const button = el("button", label, { type: "button", class: verb });
        button.addEventListener("click", () => decide(r.id, verb));
        decision.append(button);
      }
    } else {
      decision.append(el("span", `${r.state} ${utc(r.decided_at)}`));
    }
    const tr = row([r.id, r.state, utc(r.created_at), `${r.model} v${r.version}`,
      (r.drifted_features || []).join(", ") || "joint distribution", fmt(r.mmd_p_value),
      r.decided_by || "–", decision]);
    tr.dataset.id = r.id;
    tr.dataset.state = r.state;
    body.append(tr);
  }
  $("retraining-empty").hidden = data.requests.length > 0;
}

async function decide(id, verb) {
  showError("retraining-error", null);
  try {
    const r = await postJson(`/v1/drift/retraining/${encodeURIComponent(id)}/${verb}`);
    $("retraining-message").textContent = `Request ${r.id} ${r.state} by ${r.decided_by}.`;
    await loadRetraining();
  } catch (err) {
    if (!(err instanceof SignedOut)) showError("retraining-error", err);
  }
}

async function ask(event) {
  event.preventDefault();
  const result = $("logs-result");
  showError("logs-error", null);
  result.dataset.state = "asking";
  $("logs-meta").textContent = "asking…";
  $("logs-answer").textContent = "";
  $("logs-citations").replaceChildren();
  try {
    const a = await postJson("/v1/logs/query", { question: $("question").value });
    $("logs-meta").textContent = `Answered by ${a.answered_by} (${a.mode} retrieval) in `
      + `${Math.round(a.took_ms)} ms from ${a.index_documents} indexed events`
      + `${a.citations.length ? "; sources below" : ""}.`;
    $("logs-answer").textContent = a.answer;
    $("logs-citations").replaceChildren(...a.citations.map((c) => {
      const item = el("li", null, { value: String(c.ref) });
      item.append(el("span", `${c.ts || ""} ${c.service || ""} ${c.level || ""} `
        + `${c.source || ""}:${c.line ?? ""}`, { class: "muted" }), el("br"), el("span", c.text));
      return item;
    }));
    result.dataset.state = "answered";
  } catch (err) {
    result.dataset.state = "error";
    $("logs-meta").textContent = "";
    if (!(err instanceof SignedOut)) showError("logs-error", err);
  }
}

// ---------------------------------------------------------------------------------------------
// Signing in and out; loading everything

async function section(errorId, load) {
  showError(errorId, null);
  try {
    await load();
  } catch (err) {
    if (err instanceof SignedOut) throw err;
    showError(errorId, err);
  }
}

async function loadAll() {
  const dashboard = $("dashboard");
  dashboard.dataset.state = "loading";
  try {
    let versions = [];
    await section("versions-error", async () => { versions = await loadVersions(); });
    await Promise.all([
      section("routing-error", async () => {
        await loadRouting(versions);
        await loadCanaryAnalysis();
      }),
      section("drift-error", loadDrift),
      section("retraining-error", loadRetraining),
    ]);
    dashboard.dataset.state = "ready";
  } catch (err) {
    if (!(err instanceof SignedOut)) throw err;
  }
}

function signIn(event) {
  event.preventDefault();
  const value = $("token").value.trim();
  $("token").value = "";
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  showSignedIn();
}

function showSignedIn() {
  $("login").hidden = true;
  $("login-message").hidden = true;
  $("session").hidden = false;
  $("dashboard").hidden = false;
  loadAll();
}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("dashboard").hidden = true;
  $("dashboard").dataset.state = "signed-out";
  $("session").hidden = true;
  $("login").hidden = false;
  const message = $("login-message");
  message.textContent = reason
    ? `${reason.replace(/\.?$/, ".")} Sign in with a token that may do this.` : "";
  message.hidden = !reason;
  $("token").focus();
}

$("login-form").addEventListener("submit", signIn);
$("logs-form").addEventListener("submit", ask);
$("refresh").addEventListener("click", loadAll);
$("sign-out").addEventListener("click", () => signOut(null));
$("drift-report").addEventListener("click", () => openReport(
  "/v1/drift/report?format=html", $("drift-report-link"), "open drift report",
).catch((err) => err instanceof SignedOut || showError("drift-error", err)));

if (token()) showSignedIn();
