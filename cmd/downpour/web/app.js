// The dashboard asks its role for the job's status and the run's progress
// every 2 s and redraws; pictures are fetched again with a fresh query so
// that no cache keeps an old one.
"use strict";

const $ = (id) => document.getElementById(id);

function text(id, v) { $(id).textContent = v; }

function fmt(x, digits) {
  return (typeof x === "number" && isFinite(x)) ? x.toFixed(digits) : "–";
}

function duration(s) {
  if (!isFinite(s) || s < 0) return "–";
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, sec = Math.floor(s % 60);
  return h > 0 ? `${h}h ${m}m` : m > 0 ? `${m}m ${sec}s` : `${sec}s`;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c;
    tr.appendChild(td);
  }
  return tr;
}

function fill(id, rows) {
  const body = $(id);
  body.replaceChildren(...rows.map(row));
}

let totalSteps = 0;

async function status() {
  const r = await fetch("/api/status", { cache: "no-store" });
  const s = await r.json();
  text("job", s.job || "");
  text("role", s.role ? `served by ${s.role}` : "");
  document.title = `downpour ${s.job || ""}`;
  if (!r.ok) {
    $("error").hidden = false;
    text("error", s.error || r.statusText);
    return;
  }
  $("error").hidden = true;
  totalSteps = s.steps;
  text("state", s.state || "starting");
  text("spec", `${s.model} on ${s.data} · ${s.workers} workers · ${s.placement.shards} shards · mode ${s.mode} · ${s.steps} steps · leader ${s.leader || "none"}`);
  fill("workers", s.workers_now.map((m) => [m.id, m.rank, m.epoch, m.lease_left, m.done ? "yes" : "–", m.task]));
  fill("shards", s.shards.map((x) => [x.shard, x.serving, x.clock || "–", x.lease_left]));
  text("placement", `placement ${s.placement.version}: ${s.placement.blocks} blocks of up to ${s.placement.block_size} floats, from step ${s.placement.start}`);
  text("checkpoint", s.checkpoint ? `last complete checkpoint: step ${s.checkpoint.step}` : "no checkpoint yet");
  $("rollbacks").replaceChildren(...s.rollbacks.map((rb) => {
    const li = document.createElement("li");
    li.textContent = `placement ${rb.placement}: ${rb.why}; back to step ${rb.to_step}`;
    return li;
  }));
}

async function progress() {
  const r = await fetch("/api/progress", { cache: "no-store" });
  if (!r.ok) return false;
  const p = await r.json();
  const t = Date.now();
  if (p.last) {
    const done = p.last.step + 1;
    text("step", totalSteps ? `${done} / ${totalSteps}` : `${done}`);
    text("loss", p.last.g_loss ? `D ${fmt(p.last.loss, 3)} · G ${fmt(p.last.g_loss, 3)}` : fmt(p.last.loss, 4));
    text("rate", fmt(p.last.steps_per_sec, 1));
    if (totalSteps) {
      $("bar").value = done / totalSteps;
      text("eta", duration((totalSteps - done) / p.last.steps_per_sec));
    }
  }
  if (p.eval) {
    text("eval", p.eval.samples ? `Parzen ${fmt(p.eval.parzen, 1)} ± ${fmt(p.eval.parzen_se, 1)}`
      : `BLEU ${fmt(p.eval.bleu, 1)} · exact ${fmt(100 * p.eval.exact_match, 1)}%`);
  }
  if (p.records > 0) {
    $("curves").hidden = false;
    $("loss-png").src = `/plot/loss.png?t=${t}`;
    if (p.eval) {
      $("eval-png").hidden = false;
      $("eval-png").src = `/plot/eval.png?t=${t}`;
    }
  }
  const s = await fetch("/samples/latest.png", { method: "HEAD", cache: "no-store" });
  if (s.ok) {
    $("samples").hidden = false;
    $("samples-png").src = `/samples/latest.png?t=${t}`;
    text("samples-step", `step ${s.headers.get("X-Step")}`);
  }
  const tr = await fetch("/translations/latest.txt", { cache: "no-store" });
  if (tr.ok) {
    $("translations").hidden = false;
    text("translations-step", `step ${tr.headers.get("X-Step")}`);
    text("translations-text", await tr.text());
  }
  return true;
}

async function refresh() {
  try { await status(); } catch (e) { $("error").hidden = false; text("error", String(e)); }
  try { await progress(); } catch (e) { /* the role has no run directory */ }
}

refresh();
setInterval(refresh, 2000);
