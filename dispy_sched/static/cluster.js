// A dispy program's cluster page (dispy_client.httpd): its clusters' nodes and jobs, pushed by the
// program as server-sent events, and a cancel button per unfinished job. Helpers are common.js's.
"use strict";

let snapshot = null;
const sections = new Map(); // cluster name -> its section (kept across updates: a chosen filter stays)

function section(name) {
  let s = sections.get(name);
  if (!s) {
    s = $("cluster").content.firstElementChild.cloneNode(true);
    s.querySelector(".name").textContent = name;
    s.querySelector(".state-filter").addEventListener("change", () => snapshot && render(snapshot));
    $("clusters").append(s);
    sections.set(name, s);
  }
  return s;
}

function render(snap) {
  snapshot = snap;
  for (const [name, s] of sections) if (!(name in snap)) { s.remove(); sections.delete(name); }
  for (const [name, c] of Object.entries(snap)) {
    const s = section(name);
    const cards = [["submitted", c.jobs_submitted], ["running", c.jobs_running], ["pending", c.jobs_pending],
      ["done", c.jobs_done], ["failed", c.jobs_failed], ["nodes", c.nodes.length]];
    s.querySelector(".cards").replaceChildren(...cards.map(([k, v]) => { const d = el("div", k, { class: "card" }); d.prepend(el("b", v)); return d; }));
    fill(s.querySelector(".nodes"), c.nodes.map((n) => [
      n.name, n.ip_addr, bar({ busy_cpus: n.busy, cpus: n.cpus, offered_cpus: n.offered_cpus, cpu_percent: n.cpu_percent }),
      n.cpu_percent === null ? "-" : `${n.cpu_percent.toFixed(0)}%`, size(n.memory_available), size(n.disk_available),
      n.jobs_done, n.cpu_time.toFixed(1), ago(n.update_time),
    ]));
    const filter = s.querySelector(".state-filter").value;
    s.querySelector(".jobs-count").textContent = `(${c.jobs_total})`;
    fill(s.querySelector(".jobs"), c.jobs.filter((j) => !filter || j.state === filter).map((j) => [
      j.id === null ? `#${j.uid}` : String(j.id), el("span", j.state, { class: `state-${j.state}` }), j.node,
      ago(j.submitted), ago(j.started), ago(j.ended),
      j.state === "created" || j.state === "running" || j.state === "provisional_result"
        ? button("cancel", () => act(`/api/v1/clusters/${enc(name)}/jobs/${j.uid}/cancel`, undefined, `Cancel job ${j.id ?? j.uid}?`))
        : "",
    ]));
  }
}

async function connect() {
  try {
    const response = await fetch("/api/v1/events");
    if (!response.ok) throw new Error(response.statusText);
    live(true);
    await readSnapshots(response, render);
  } catch (err) {
    say(`connection lost: ${err.message}`, true);
  }
  live(false);
  setTimeout(connect, 2000); // the program's server stopped, or the network blinked
}

connect();
