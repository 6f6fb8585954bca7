// The dispy-shared dashboard: reads the scheduler's live feed (server-sent events over fetch, so that
// the Authorization header can go with it) and calls its JSON API for management. No libraries;
// the helpers it shares with a program's cluster page are in common.js.
"use strict";

const COLORS = ["#2f6fd0", "#d04a2f", "#2f9d5a", "#9b2fd0", "#d0a12f", "#2fb4d0", "#d02f8a", "#6b7a2f"];
let auth = sessionStorage.getItem("dispy-auth");
let snapshot = null;
let feed = null;

// ---------------------------------------------------------------- logging in

function showLogin(error) {
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = error || "";
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  const user = $("user").value.trim();
  auth = token ? `Bearer ${token}` : `Basic ${btoa(unescape(encodeURIComponent(`${user}:${$("secret").value}`)))}`;
  sessionStorage.setItem("dispy-auth", auth);
  $("secret").value = $("token").value = "";
  connect();
});

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem("dispy-auth");
  auth = null;
  if (feed) feed.abort();
  showLogin("");
});

// ---------------------------------------------------------------- the feed

async function connect() {
  if (!auth) return showLogin("");
  if (feed) feed.abort();
  feed = new AbortController();
  try {
    const response = await fetch("/api/v1/events", { headers: { Authorization: auth }, signal: feed.signal });
    if (!response.ok) {
      const body = await response.json().catch(() => ({ message: response.statusText }));
      if (response.status === 401 || response.status === 403) {
        sessionStorage.removeItem("dispy-auth");
        auth = null;
        return showLogin(body.message);
      }
      throw new Error(body.message);
    }
    $("login").hidden = true;
    $("main").hidden = false;
    $("logout").hidden = false;
    live(true);
    await readSnapshots(response, render);
  } catch (err) {
    if (err.name === "AbortError") return;
    say(`connection lost: ${err.message}`, true);
  }
  live(false);
  setTimeout(connect, 2000); // the scheduler restarted, or the network blinked
}

// ---------------------------------------------------------------- management

function manage(path, body, confirmText) {
  return act(path, body, confirmText, { Authorization: auth });
}

// ---------------------------------------------------------------- rendering

function render(snap) {
  snapshot = snap;
  const s = snap.status;
  const admin = s.you.admin;
  document.body.classList.toggle("is-admin", admin);
  $("who").textContent = admin ? "administrator" : `user ${s.you.user}`;
  const cards = [
    ["nodes", `${s.nodes}${s.drained_nodes.length ? ` (${s.drained_nodes.length} drained)` : ""}`],
    ["CPUs busy", `${s.busy_cpus} / ${s.cpus}`], ["jobs queued", s.queued_jobs], ["running", s.jobs.running],
    ["users active", s.active_users], ["clusters", s.clusters], ["version", s.version], ["policy", s.policy],
  ];
  if (s.leader) {  // one of several schedulers sharing a state: this one leads
    cards.push([`leading since (epoch ${s.leader.epoch})`, new Date(s.leader.since * 1000).toLocaleString()]);
  }
  $("summary").replaceChildren(...cards.map(([k, v]) => { const c = el("div", k, { class: "card" }); c.prepend(el("b", v)); return c; }));

  fill("users", snap.users.map((u) => [
    u.name, u.share, `${(100 * u.target).toFixed(0)}%`, u.busy, u.load.toFixed(1), u.queued, u.usage.toFixed(0),
    Object.entries(u.limits).map(([k, v]) => `${k}=${v}`).join(", ") || "-",
    admin ? button("share…", () => { const v = prompt(`share of ${u.name}`, u.share); if (v !== null) manage(`/api/v1/users/${enc(u.name)}/share`, { share: Number(v) }); }) : "",
  ]));

  fill("nodes", snap.nodes.map((n) => [
    n.name, el("span", n.state, { class: `state-${n.state}` }), bar(n),
    n.cpu_percent === null ? "-" : `${n.cpu_percent.toFixed(0)}%`, size(n.memory_available), ago(n.last_heartbeat),
    admin ? [
      n.state === "drained"
        ? button("undrain", () => manage(`/api/v1/nodes/${enc(n.name)}/undrain`))
        : button("drain", () => manage(`/api/v1/nodes/${enc(n.name)}/drain`, undefined, `Drain ${n.name}? Running jobs finish; no new ones start.`)),
      button("CPUs…", () => { const v = prompt(`CPUs for ${n.name} (-1: all it offers)`, n.cpus); if (v !== null) manage(`/api/v1/nodes/${enc(n.name)}/cpus`, { cpus: parseInt(v, 10) }); }),
    ] : "",
  ]));

  fill("clusters", snap.clusters.map((c) => [
    `${c.name} (${c.id.slice(0, 8)})`, c.user, c.queued, c.running, c.done, byState(c.jobs),
    // opened is null for a cluster opened under an earlier version (the journal did not keep it)
    c.opened ? el("span", ago(c.opened), { title: new Date(c.opened * 1000).toLocaleString() }) : "-",
    c.attached ? "attached" : "away",
    c.queued + c.running ? button("cancel all", () => manage(`/api/v1/clusters/${enc(c.id)}/cancel`, undefined, `Cancel every unfinished job of ${c.name}?`)) : "",
  ]));

  const filter = $("state-filter").value;
  const jobs = snap.jobs.filter((j) => !filter || j.state === filter);
  $("jobs-count").textContent = `(${snap.jobs_total})`;
  fill("jobs", jobs.slice(0, 500).map((j) => [
    j.id.length > 20 ? `${j.cluster.slice(0, 8)}…/${j.job}` : j.id, j.user, j.state, j.node, ago(j.submitted), ago(j.started), ago(j.ended),
    j.state === "queued" || j.state === "running"
      ? button("cancel", () => manage(`/api/v1/jobs/${enc(j.cluster)}/${j.job}/cancel`, undefined, `Cancel job ${j.job}?`)) : "",
  ]));
  chart(snap.history);
}

// a cluster's held jobs by state, the states it has none in left out: "2 queued, 1 running"
function byState(counts) {
  return Object.entries(counts).filter(([, n]) => n).map(([state, n]) => `${n} ${state}`).join(", ") || "none";
}

function chart(history) {
  const svg = $("chart");
  const users = [...new Set(history.flatMap((p) => Object.keys(p.busy)))].sort();
  const now = Date.now() / 1000;
  const sum = (cpus) => Object.values(cpus || {}).reduce((a, b) => a + b, 0);
  const top = Math.max(1, ...history.map((p) => Math.max(sum(p.busy), sum(p.load))));
  const x = (t) => 600 - ((now - t) / 3600) * 600;
  const y = (v) => 155 - (v / top) * 150;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  // per user: busy CPUs (solid), and those fair share counts (dashed; see docs/policies.md)
  users.forEach((u, i) => [["busy", null], ["load", "5 4"]].forEach(([key, dashes]) => {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", history.map((p) => `${x(p.t).toFixed(1)},${y((p[key] || {})[u] || 0).toFixed(1)}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    line.setAttribute("stroke-width", "2");
    if (dashes) line.setAttribute("stroke-dasharray", dashes);
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(line);
  }));
  $("legend").replaceChildren(...users.map((u, i) => { const s = el("span", `■ ${u}`); s.style.color = COLORS[i % COLORS.length]; return s; }),
    el("span", `(solid: busy CPUs, dashed: fair-share CPUs; top: ${+top.toFixed(2)} CPUs)`));
}

$("state-filter").addEventListener("change", () => snapshot && render(snapshot));
connect();
