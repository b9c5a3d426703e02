// The stream list (#/): live from the server's `__registry__` stream, whose
// State Protocol events (insert, delete) say which streams exist; each row's
// size, state, expiry and fork source come from a HEAD of that stream.

import { create, head, remove, Reader, sizeOf } from "./api.js";

const MAX_ROWS = 500;
const HEADS_AT_ONCE = 6;

export function streamsView(main, app) {
  const root = document.getElementById("streams-view").content.cloneNode(true);
  main.replaceChildren(root);
  const tbody = document.getElementById("stream-rows");
  const empty = document.getElementById("streams-empty");
  const filter = document.getElementById("filter");
  const entries = new Map();   // path -> registry value
  const details = new Map();   // path -> HEAD facts, or a promise while one is in flight
  let queue = [];
  let active = 0;
  let drawn = false;

  const draw = () => {
    if (drawn) return;
    drawn = true;
    requestAnimationFrame(() => {
      drawn = false;
      const words = filter.value.trim().toLowerCase();
      const paths = [...entries.keys()].filter((p) => p.toLowerCase().includes(words)).sort();
      const rows = paths.slice(0, MAX_ROWS).map((p) => row(p));
      if (paths.length > MAX_ROWS) {
        const tr = document.createElement("tr");
        const td = document.createElement("td");
        td.colSpan = 8;
        td.className = "more";
        td.textContent = `${paths.length - MAX_ROWS} more: narrow the filter`;
        tr.append(td);
        rows.push(tr);
      }
      tbody.replaceChildren(...rows);
      empty.hidden = paths.length > 0;
      empty.textContent = entries.size ? "No stream matches the filter." : "No streams yet.";
    });
  };

  const fetchDetails = (path) => {
    if (details.has(path)) return;
    details.set(path, null);
    queue.push(path);
    pump();
  };

  const pump = () => {
    while (active < HEADS_AT_ONCE && queue.length) {
      const path = queue.shift();
      if (!entries.has(path)) continue;
      active++;
      head(path).then((h) => details.set(path, {
        size: sizeOf(h["stream-next-offset"]), closed: h["stream-closed"] === "true",
        ttl: h["stream-ttl"], expires: h["stream-expires-at"],
      })).catch((err) => details.set(path, { error: err.status === 404 ? "gone" : `HEAD ${err.status || "failed"}` }))
        .finally(() => { active--; draw(); pump(); });
    }
  };

  const row = (path) => {
    const value = entries.get(path) || {};
    const facts = details.get(path);
    if (facts === undefined) fetchDetails(path);
    const tr = document.createElement("tr");
    const cell = (text, cls) => {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      if (text instanceof Node) td.append(text); else td.textContent = text ?? "";
      tr.append(td);
      return td;
    };
    const link = document.createElement("a");
    link.href = app.streamLink(path);
    link.textContent = path;
    cell(link, "name");
    cell(value.contentType);
    cell(facts && facts.size != null ? app.fmtBytes(facts.size) : "", "num");
    cell(value.createdAt ? new Date(value.createdAt).toLocaleString() : "");
    cell(facts ? (facts.error || (facts.closed ? "closed" : "open")) : "…");
    cell(facts ? (facts.ttl ? `TTL ${facts.ttl} s` : facts.expires || "") : "");
    cell(value.forkedFrom || "");  // the registry names a fork's source (HEAD does not, 4.2)
    const del = document.createElement("button");
    del.className = "danger small";
    del.textContent = "Delete";
    del.setAttribute("aria-label", `Delete ${path}`);
    del.addEventListener("click", () => confirmDelete(path, app).then((gone) => {
      if (gone) { entries.delete(path); draw(); }
    }));
    cell(del, "actions");
    return tr;
  };

  filter.addEventListener("input", draw);
  document.getElementById("new-stream").addEventListener("click", () => createDialog(app));

  // Long-poll, not SSE: a token that may read only some streams gets the
  // registry filtered to them, which the server does for catch-up and long-poll.
  const registry = new Reader("__registry__", {
    offset: "-1", mode: "long-poll", contentType: "application/json",
    onChunk: (chunk) => {
      for (const event of chunk.data || []) {
        if (!event || event.type !== "stream" || typeof event.key !== "string") continue;
        const op = event.headers && event.headers.operation;
        if (op === "delete") entries.delete(event.key);
        else entries.set(event.key, event.value || { path: event.key });
        app.registry.set(event.key, entries.get(event.key));
        details.delete(event.key);  // changed: look again
      }
      draw();
    },
    onStatus: (status, error) => { if (error) app.notice(`Stream list: ${error}`); },
    onResponse: () => {},
  });
  registry.run();
  draw();
  return { stop: () => registry.stop() };
}

export function confirmDelete(path, app) {
  const dialog = document.getElementById("confirm-dialog");
  dialog.querySelector(".title").textContent = `Delete ${path}?`;
  dialog.querySelector(".text").textContent =
    "Readers lose it at once and its data is gone for good. Forks keep what they inherited.";
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", async () => {
      if (dialog.returnValue !== "ok") return resolve(false);
      try {
        await remove(path);
        resolve(true);
      } catch (err) {
        app.notice(err.message);
        resolve(false);
      }
    }, { once: true });
  });
}

function createDialog(app) {
  const dialog = document.getElementById("create-dialog");
  const form = document.getElementById("create-form");
  const error = form.querySelector(".error");
  const other = form.querySelector(".other-type");
  form.reset();
  error.textContent = "";
  other.hidden = true;
  form.elements.type.onchange = () => { other.hidden = form.elements.type.value !== "other"; };
  dialog.returnValue = "";
  dialog.showModal();
  form.onsubmit = async (event) => {
    if (event.submitter && event.submitter.value === "cancel") return;
    event.preventDefault();
    const f = form.elements;
    const name = f.name.value.trim();
    const contentType = f.type.value === "other" ? f.other.value.trim() : f.type.value;
    const expiresAt = f.expires.value ? new Date(f.expires.value).toISOString() : undefined;
    try {
      await create(name, { contentType, ttl: f.ttl.value || undefined, expiresAt, closed: f.closed.checked });
      dialog.close("ok");
      location.hash = app.streamLink(name);
    } catch (err) {
      error.textContent = err.message;
    }
  };
}
