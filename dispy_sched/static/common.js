// What the scheduler's dashboard (app.js) and a program's cluster page (cluster.js, served by
// dispy_client.httpd) share: building and filling tables, CPU bars, reading a live feed, posting an action.
// No libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function ago(t) {
  if (!t) return "-";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 120 ? `${s.toFixed(0)} s ago` : s < 7200 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
}

function size(n) {
  if (n === null || n === undefined) return "-";
  for (const [unit, name] of [[2 ** 30, "GiB"], [2 ** 20, "MiB"], [2 ** 10, "KiB"]]) if (n >= unit) return `${(n / unit).toFixed(1)} ${name}`;
  return `${n} B`;
}

function say(text, isError) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

function button(text, onClick, cls) {
  const b = el("button", text, cls ? { class: cls } : {});
  b.addEventListener("click", onClick);
  return b;
}

// fills a table (an element, or its id) with rows of cells: text, a node, or a list of nodes
function fill(table, rows) {
  const body = (typeof table === "string" ? $(table) : table).tBodies[0];
  body.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    for (const c of cells) {
      const td = el("td");
      if (c instanceof Node) td.append(c);
      else if (Array.isArray(c)) td.append(...c);
      else td.textContent = c === null || c === undefined ? "-" : String(c);
      tr.append(td);
    }
    return tr;
  }));
}

// a node's CPUs: busy of those given (of those it offers), and its own CPU use as a thin line
function bar(node) {
  const div = el("div", null, { class: "bar", title: `${node.busy_cpus} busy of ${node.cpus} given, ${node.offered_cpus} offered` });
  const whole = Math.max(node.offered_cpus, node.cpus, node.busy_cpus, 1);
  const part = (cls, frac) => { const s = el("span", null, { class: cls }); s.style.width = `${Math.min(100, 100 * frac)}%`; return s; };
  div.append(part("given", node.cpus / whole), part("busy", node.busy_cpus / whole), part("cpu", (node.cpu_percent || 0) / 100));
  return [div, el("span", ` ${node.busy_cpus} / ${node.cpus} / ${node.offered_cpus}`)];
}

function live(on) {
  $("live").textContent = on ? "live" : "offline";
  $("live").className = on ? "" : "off";
}

// Reads server-sent events from a fetch() response (so that headers can go with the request) and calls
// onSnapshot with each `snapshot` event's data, until the stream ends.
async function readSnapshots(response, onSnapshot) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (block.startsWith("event: snapshot") && data) onSnapshot(JSON.parse(data));
    }
  }
}

// POSTs a JSON action (after confirmText is confirmed, if given) and says how it went
async function act(path, body, confirmText, headers) {
  if (confirmText && !confirm(confirmText)) return;
  const response = await fetch(path, {
    method: "POST",
    headers: { ...(headers || {}), "Content-Type": "application/json" },
    body: JSON.stringify(body === undefined ? {} : body),
  });
  const answer = await response.json().catch(() => ({ message: response.statusText }));
  say(response.ok ? answer.message : `${answer.message} (${answer.error})`, !response.ok);
}
