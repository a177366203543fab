// One run, live: the header from /api/runs/ID, then every event from the SSE feed
// /api/runs/ID/events (the same lines as `--output json`). Every value a site or the
// Polyfile gave goes in as text (textContent), never as HTML.
"use strict";

const runId = decodeURIComponent(location.pathname.split("/").pop());
const STATES = ["pending", "waiting", "running", "ok", "failed", "skipped", "cancelled", "unfinished"];
const MAX_LINES = 5000; // per site, in the page

const sites = new Map(); // name -> {state, lines: [[stream, text]], reason, lock, el}
const order = [];
let roles = {};
const chain = []; // [{id, name, mode, jobs, sites, ok, failed, skipped, done}]
let plannedChain = [];
let filter = "all";
let roleFilter = "";
let selected = null;
let finished = false;
let summary = null;
let dirtyGrid = true;
let dirtyText = true;
let gridBuilt = false;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function site(name) {
  let s = sites.get(name);
  if (!s) {
    s = { state: "pending", lines: [], reason: "", lock: "", el: null };
    sites.set(name, s);
    order.push(name);
    gridBuilt = false;
  }
  return s;
}

// The shortest host pattern for names: web01 web02 web03 -> web[01-03] (as polyshell folds).
function fold(names) {
  // A number with a leading zero fixes its group's width; one without joins the group of its
  // width when there is one (node01..node10 -> node[01-10]), else the unpadded group.
  const parsed = [];
  const plain = [];
  const widths = new Set();
  for (const n of names) {
    const m = /^(.*?)(\d+)(\D*)$/.exec(n);
    if (!m) { plain.push(n); continue; }
    parsed.push(m);
    if (m[2].length > 1 && m[2][0] === "0") widths.add(m[1] + "\u0000" + m[3] + "\u0000" + m[2].length);
  }
  const groups = new Map();
  for (const m of parsed) {
    const padded = widths.has(m[1] + "\u0000" + m[3] + "\u0000" + m[2].length);
    const width = padded ? m[2].length : 0;
    const key = m[1] + "\u0000" + m[3] + "\u0000" + width;
    if (!groups.has(key)) groups.set(key, { prefix: m[1], suffix: m[3], width, nums: [] });
    groups.get(key).nums.push(parseInt(m[2], 10));
  }
  const parts = plain.slice();
  for (const g of groups.values()) {
    const nums = [...new Set(g.nums)].sort((a, b) => a - b);
    const fmt = (x) => g.width ? String(x).padStart(g.width, "0") : String(x);
    if (nums.length === 1) { parts.push(g.prefix + fmt(nums[0]) + g.suffix); continue; }
    const ranges = [];
    let start = nums[0], prev = nums[0];
    for (const x of nums.slice(1).concat([null])) {
      if (x !== null && x === prev + 1) { prev = x; continue; }
      ranges.push(start === prev ? fmt(start) : fmt(start) + "-" + fmt(prev));
      if (x !== null) { start = x; prev = x; }
    }
    parts.push(g.prefix + "[" + ranges.join(",") + "]" + g.suffix);
  }
  return parts.sort().join(",");
}

function clock(ms) {
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s / 60) % 60)).padStart(2, "0") + "m";
}

function entry(id) {
  let e = chain.find((c) => c.id === id);
  if (!e) {
    e = { id, name: "", mode: "", jobs: [], sites: 0, ok: 0, failed: 0, skipped: 0, done: false };
    chain.push(e);
  }
  return e;
}

function apply(ev) {
  switch (ev.event) {
    case "schedule_started": {
      const e = entry(ev.schedule);
      Object.assign(e, { name: ev.name, mode: ev.mode, jobs: ev.jobs, sites: ev.sites });
      break;
    }
    case "schedule_finished": {
      const e = entry(ev.schedule);
      Object.assign(e, { ok: ev.ok, failed: ev.failed, skipped: ev.skipped, done: true });
      break;
    }
    case "lock_waiting": {
      const s = site(ev.site);
      if (s.state !== "failed") { s.state = "waiting"; s.lock = ev.lock; }
      break;
    }
    case "lock_acquired": {
      const s = site(ev.site);
      if (s.state === "waiting") s.state = "pending";
      s.lock = "";
      break;
    }
    case "action_started": {
      const s = site(ev.site);
      if (s.state !== "failed") s.state = "running";
      break;
    }
    case "output": {
      const s = site(ev.site);
      const text = ev.line !== undefined ? ev.line : "(" + (ev.line_base64 || "").length + " bytes, not UTF-8)";
      if (s.lines.length < MAX_LINES) s.lines.push([ev.stream, text]);
      else if (s.lines.length === MAX_LINES) s.lines.push(["stderr", "… (more output: `polyshell runs show " + runId + "`)"]);
      dirtyText = true;
      break;
    }
    case "action_finished": {
      const s = site(ev.site);
      const e = chain.find((c) => ev.id.startsWith(c.id + "-"));
      if (e && !e.done) {
        if (ev.status === "ok") e.ok++; else if (ev.status === "failed") e.failed++; else e.skipped++;
      }
      if (ev.status === "failed") {
        s.state = ev.reason === "cancelled" ? "cancelled" : "failed";
        s.reason = ev.reason || "";
      } else if (ev.status === "skipped") {
        if (s.state !== "failed" && s.state !== "cancelled") { s.state = "skipped"; s.reason = ev.reason || ""; }
      } else if (s.state !== "failed" && s.state !== "cancelled" && s.state !== "skipped") {
        s.state = "ok";
      }
      break;
    }
    case "summary": {
      finished = true;
      summary = ev;
      const bad = new Set();
      for (const f of ev.failed || []) {
        const s = site(f.site);
        s.state = f.reason === "cancelled" ? "cancelled" : "failed";
        s.reason = f.reason;
        bad.add(f.site);
      }
      for (const k of ev.skipped || []) {
        const s = site(k.site);
        s.state = "skipped";
        s.reason = k.reason;
        bad.add(k.site);
      }
      for (const [name, s] of sites) if (!bad.has(name)) s.state = "ok";
      break;
    }
    case "unfinished": {
      finished = true;
      for (const s of sites.values()) if (s.state === "running" || s.state === "waiting" || s.state === "pending") s.state = "unfinished";
      const b = document.getElementById("banner");
      b.textContent = "This run did not finish: its process is gone (killed). What it recorded is shown.";
      b.hidden = false;
      break;
    }
  }
  dirtyGrid = true;
}

function visible(name) {
  const s = sites.get(name);
  if (filter !== "all" && s.state !== filter) return false;
  if (roleFilter && !(roles[roleFilter] || []).includes(name)) return false;
  return true;
}

function buildGrid() {
  const grid = document.getElementById("grid");
  grid.replaceChildren();
  grid.classList.toggle("dense", order.length > 150);
  for (const name of order) {
    const s = sites.get(name);
    const tile = el("div", "site", name);
    tile.dataset.site = name;
    tile.addEventListener("click", () => select(name));
    s.el = tile;
    grid.append(tile);
  }
  gridBuilt = true;
}

function renderFilters() {
  const counts = {};
  for (const s of sites.values()) counts[s.state] = (counts[s.state] || 0) + 1;
  const box = document.getElementById("filters");
  box.replaceChildren();
  const chip = (key, label, n) => {
    const c = el("button", "chip" + (filter === key ? " active" : ""));
    c.dataset.filter = key;
    if (key !== "all") c.append(el("span", "dot st-" + key));
    c.append(el("span", null, label));
    c.append(el("b", null, n));
    c.addEventListener("click", () => { filter = key; dirtyGrid = true; render(); });
    box.append(c);
  };
  chip("all", "all", sites.size);
  for (const st of STATES) if (counts[st] || filter === st) chip(st, st === "waiting" ? "waiting for a lock" : st, counts[st] || 0);
}

function renderGrid() {
  if (!gridBuilt) buildGrid();
  for (const name of order) {
    const s = sites.get(name);
    s.el.className = "site st-" + s.state + (selected === name ? " selected" : "");
    s.el.hidden = !visible(name);
    s.el.title = name + ": " + s.state + (s.lock ? " (lock " + s.lock + ")" : "") + (s.reason ? " — " + s.reason : "");
  }
}

function renderChain() {
  const box = document.getElementById("chain");
  box.replaceChildren();
  const entries = chain.length ? chain : plannedChain.map((p, i) => ({ id: "", name: p.name, mode: p.mode, jobs: p.jobs, sites: 0, ok: 0, failed: 0, skipped: 0, done: false, planned: true, n: i }));
  plannedChain.slice(entries.length).forEach((p) => entries.push({ name: p.name, mode: p.mode, jobs: p.jobs, sites: 0, ok: 0, failed: 0, skipped: 0, done: false, planned: true }));
  entries.forEach((e, i) => {
    const row = el("div", "entry");
    row.append(el("div", "n", i + 1));
    const what = el("div", "what");
    what.append(el("b", null, e.name || "schedule"));
    what.append(document.createTextNode(" · " + e.mode + " · " + (e.jobs || []).join(", ")));
    const state = e.done ? "done" : e.planned ? "not started" : "running";
    what.append(el("span", "sub", "  " + state + (e.sites ? ", " + e.sites + " sites" : "")));
    row.append(what);
    const bar = el("div", "progress");
    const total = Math.max(e.sites * Math.max((e.jobs || []).length, 1), e.ok + e.failed + e.skipped, 1);
    for (const [n, color] of [[e.ok, "var(--ok)"], [e.failed, "var(--failed)"], [e.skipped, "var(--skipped)"]]) {
      const part = el("span");
      part.style.width = (100 * n / total) + "%";
      part.style.background = color;
      bar.append(part);
    }
    bar.title = e.ok + " ok, " + e.failed + " failed, " + e.skipped + " skipped";
    row.append(bar);
    box.append(row);
  });
  if (!entries.length) box.append(el("div", "sub", "Waiting for the first schedule."));
}

function renderSite() {
  const out = document.getElementById("site-out");
  if (!selected) return;
  const s = sites.get(selected);
  document.getElementById("site-title").textContent = "Output of " + selected + " (" + s.state + ")";
  out.replaceChildren();
  if (!s.lines.length) out.append(el("span", "sub", s.reason ? s.reason : "(no output)"));
  for (const [stream, text] of s.lines) {
    out.append(el("span", stream === "stderr" ? "err" : null, (stream === "stderr" ? "! " : "") + text + "\n"));
  }
  if (s.reason && s.lines.length) out.append(el("span", "err", "— " + s.reason + "\n"));
}

function renderGathered() {
  const box = document.getElementById("gathered");
  const groups = new Map();
  for (const name of order) {
    if (!visible(name)) continue;
    const s = sites.get(name);
    if (!s.lines.length) continue;
    const key = s.lines.map(([st, t]) => (st === "stderr" ? "! " : "") + t).join("\n");
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(name);
  }
  box.replaceChildren();
  const sorted = [...groups.entries()].sort((a, b) => b[1].length - a[1].length);
  for (const [text, names] of sorted.slice(0, 50)) {
    const g = el("div", "group");
    g.append(el("div", "who", "----- " + fold(names) + " (" + names.length + ")"));
    g.append(el("pre", "out", text));
    box.append(g);
  }
  if (!sorted.length) box.append(el("div", "sub", "No output yet."));
  else if (sorted.length > 50) box.append(el("div", "note", (sorted.length - 50) + " more distinct outputs"));
}

function renderSummary() {
  const box = document.getElementById("summary");
  const badge = document.getElementById("state");
  if (!summary) {
    if (!finished) { badge.textContent = "running"; badge.className = "badge running"; }
    else { badge.textContent = "killed"; badge.className = "badge unfinished"; }
    return;
  }
  const failed = summary.failed || [], skipped = summary.skipped || [];
  const total = summary.ok + failed.length + skipped.length;
  const good = !failed.length && !skipped.length;
  badge.textContent = good ? "ok" : failed.length ? "failed" : "skipped";
  badge.className = "badge " + (good ? "ok" : failed.length ? "failed" : "");
  box.className = "panel summary" + (good ? "" : " bad");
  box.replaceChildren();
  box.append(el("div", null, total + " sites: " + summary.ok + " ok, " + failed.length + " failed, " + skipped.length + " skipped in " + clock(summary.elapsed_ms)));
  const list = el("ul");
  for (const f of failed) list.append(el("li", null, "failed  " + f.site + ": " + f.reason));
  for (const k of skipped.slice(0, 100)) list.append(el("li", null, "skipped " + k.site + ": " + k.reason));
  if (list.childNodes.length) box.append(list);
  const w = summary.longest_lock_wait;
  if (w) box.append(el("div", "note", "longest lock wait: `" + w.lock + "` held " + w.site + " back " + (w.waited_ms / 1000).toFixed(1) + "s"));
}

function render() {
  if (dirtyGrid) { renderFilters(); renderGrid(); renderChain(); renderSummary(); }
  if (dirtyText || dirtyGrid) { renderSite(); renderGathered(); }
  dirtyGrid = false;
  dirtyText = false;
}

function select(name) {
  selected = name;
  dirtyGrid = true;
  render();
}

let scheduled = false;
function later() {
  if (scheduled) return;
  scheduled = true;
  setTimeout(() => { scheduled = false; render(); }, 100);
}

function follow() {
  // A reconnecting EventSource replays from the start: count, and skip what was seen.
  let seen = 0;
  let received = 0;
  const source = new EventSource("/api/runs/" + encodeURIComponent(runId) + "/events");
  source.onopen = () => { received = 0; };
  source.onmessage = (m) => {
    received++;
    if (received <= seen) return;
    seen++;
    let ev;
    try { ev = JSON.parse(m.data); } catch (e) { return; }
    apply(ev);
    if (ev.event === "summary" || ev.event === "unfinished") { source.close(); render(); return; }
    later();
  };
}

async function start() {
  const r = await fetch("/api/runs/" + encodeURIComponent(runId), { cache: "no-store" });
  if (!r.ok) {
    document.getElementById("what").textContent = "No run " + runId;
    document.getElementById("state").textContent = "not found";
    return;
  }
  const run = await r.json();
  document.title = "polyshell " + run.id + ": " + run.what;
  document.getElementById("crumb").textContent = "run " + run.id;
  document.getElementById("what").textContent = run.what;
  document.getElementById("meta").textContent =
    "started " + (run.started || "").replace("T", " ").replace("Z", " UTC") + " · on " + run.targets + " (" + Object.keys(run.sites || {}).length + " sites) · in " + (run.cwd || "?");
  for (const name of Object.keys(run.sites || {})) site(name);
  roles = run.roles || {};
  const select = document.getElementById("role");
  for (const role of Object.keys(roles).sort()) {
    const o = el("option", null, role + " (" + roles[role].length + ")");
    o.value = role;
    select.append(o);
  }
  select.addEventListener("change", () => { roleFilter = select.value; dirtyGrid = true; render(); });
  plannedChain = run.chain || [];
  render();
  follow();
}

start();
