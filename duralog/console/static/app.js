// The console's page: the server panel, the token, routing between the
// stream list (#/) and one stream (#/s/<name>?offset=...&live=sse|long-poll).

import { settings, setToken, head, sizeOf, Reader } from "./api.js";
import { Presence } from "./presence.js";
import { streamView } from "./stream.js";
import { streamsView } from "./streams.js";

const main = document.getElementById("main");
let current = null;  // the view on screen: { stop() }

export function notice(message) {
  const box = document.getElementById("notice");
  box.textContent = message || "";
  box.hidden = !message;
}

export function fmtBytes(n) {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

// registry: what the stream list last read of `__registry__` (path -> entry), which
// the stream view uses for the one fact HEAD does not give: a fork's source.
export const app = { presence: null, registry: new Map(), notice, fmtBytes, head, sizeOf, Reader, streamLink };

// -- routing ---------------------------------------------------------------------

export function streamLink(name, params = {}) {
  const q = new URLSearchParams(params).toString();
  return `#/s/${encodeURIComponent(name)}${q ? "?" + q : ""}`;
}

function route() {
  if (current) current.stop();
  notice("");
  const hash = location.hash.slice(1) || "/";
  const [path, query] = hash.split("?");
  if (path.startsWith("/s/")) {
    const name = decodeURIComponent(path.slice(3));
    app.presence.view(name);
    current = streamView(main, name, new URLSearchParams(query || ""), app);
  } else {
    app.presence.view(undefined);
    current = streamsView(main, app);
  }
}

// -- the server panel -------------------------------------------------------------

async function serverPanel() {
  const el = document.getElementById("server");
  let info;
  try {
    const res = await fetch("/console/info", { cache: "no-store" });
    info = await res.json();
  } catch {
    el.textContent = "server not answering";
    setTimeout(serverPanel, 3000);
    return;
  }
  settings.prefix = info.streamPrefix || settings.prefix;
  const facts = [`duralog ${info.version}`, info.backend + (info.dataDir ? `: ${info.dataDir}` : "")];
  let figures = "";
  let last = null;
  const draw = () => {
    const up = Math.round((Date.now() - info.startedAt) / 1000);
    el.textContent = [...facts, `up ${duration(up)}`, figures].filter(Boolean).join(" · ");
  };
  draw();
  setInterval(draw, 1000);
  if (!info.metrics) return;
  const poll = async () => {
    try {
      const headers = settings.token ? { Authorization: `Bearer ${settings.token}` } : {};
      const res = await fetch("/metrics", { cache: "no-store", headers });
      if (!res.ok) { figures = ""; draw(); return; }  // metrics may need an admin token
      const text = await res.text();
      const appends = metric(text, "duralog_appends_total");
      const readers = metric(text, "duralog_live_readers");
      const now = performance.now();
      const rate = last ? Math.max(0, (appends - last.appends) / ((now - last.at) / 1000)) : 0;
      last = { appends, at: now };
      figures = `${rate.toFixed(rate < 10 ? 1 : 0)} appends/s · ${readers} live readers`;
      draw();
    } catch { /* metrics are a nicety */ }
  };
  poll();
  setInterval(poll, 2000);
}

// The sum of a metric's samples in Prometheus text (all label sets).
function metric(text, name) {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name) && (line[name.length] === " " || line[name.length] === "{")) {
      sum += Number(line.slice(line.lastIndexOf(" ") + 1)) || 0;
    }
  }
  return sum;
}

function duration(s) {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

// -- start ---------------------------------------------------------------------------

function tokenForm() {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token");
  input.value = settings.token;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    route();
  });
}

addEventListener("keydown", (event) => {
  const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
  if (event.key === "/" && !typing) {
    const filter = document.getElementById("filter");
    if (filter) { event.preventDefault(); filter.focus(); }
  }
});

tokenForm();
app.presence = new Presence(() => current && current.presence && current.presence());
serverPanel().then(() => {
  app.presence.start();
  addEventListener("hashchange", route);
  route();
});
