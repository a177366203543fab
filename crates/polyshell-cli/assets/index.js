// The runs list: /api/runs every two seconds. Every value goes in as text, never as HTML.
"use strict";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function clock(ms) {
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s / 60) % 60)).padStart(2, "0") + "m";
}

function state(run) {
  if (run.running) return ["running", "running"];
  if (!run.finished) return ["unfinished", "killed"];
  if (run.failed > 0) return ["failed", "failed"];
  if (run.skipped > 0) return ["", "skipped"];
  return ["ok", "ok"];
}

async function refresh() {
  let data;
  try {
    const r = await fetch("/api/runs", { cache: "no-store" });
    data = await r.json();
  } catch (e) {
    return;
  }
  const body = document.querySelector("#runs tbody");
  body.replaceChildren();
  for (const run of data.runs || []) {
    const tr = el("tr");
    tr.dataset.id = run.id;
    const id = el("td", "mono");
    const a = el("a", null, run.id);
    a.href = "/runs/" + encodeURIComponent(run.id);
    id.append(a);
    tr.append(id);
    tr.append(el("td", "mono", (run.started || "").replace("T", " ").replace("Z", "")));
    tr.append(el("td", "mono", run.what));
    tr.append(el("td", "mono", run.targets));
    tr.append(el("td", "num", run.sites));
    tr.append(el("td", "num", run.ok));
    tr.append(el("td", "num", run.failed));
    tr.append(el("td", "num", run.skipped + run.unfinished));
    tr.append(el("td", "num", run.finished ? clock(run.elapsed_ms) : "…"));
    const [cls, word] = state(run);
    const st = el("td");
    st.append(el("span", "badge " + cls, word));
    tr.append(st);
    body.append(tr);
  }
  document.getElementById("empty").hidden = (data.runs || []).length > 0;
}

refresh();
setInterval(refresh, 2000);
