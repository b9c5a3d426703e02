// One stream (#/s/<name>?offset=...&live=...): catch up from the start, from
// now or from an offset, then follow live; the offset read so far is kept in
// the page's URL, so a refresh or a shared link resumes exactly there.
// Writes go through an idempotent producer (a retry never duplicates).

import { close, create, head, headerMap, isJson, isText, Producer, Reader, settings } from "./api.js";
import { HexDump, jsonRows, renderRow, shortOffset, TextLog, VirtualList } from "./list.js";
import { confirmDelete } from "./streams.js";

const $ = (id) => document.getElementById(id);

export function streamView(main, name, params, app) {
  main.replaceChildren(document.getElementById("stream-view").content.cloneNode(true));
  $("s-name").textContent = name;
  document.title = `${name} · duralog console`;
  const view = { stop() {}, presence: () => drawPresence(app, name) };
  let reader = null;
  let mode = params.get("live") === "long-poll" ? "long-poll" : "sse";
  let count = 0;
  let urlTimer = null;
  let contentType = null;
  let producer = null;
  let meta = {};

  const list = new VirtualList($("s-list"), (row, i) => renderRow(row, i, {
    list, link: (offset) => app.streamLink(name, { offset, live: mode }),
  }));
  let sink = null;

  const setStatus = (status, error) => {
    const el = $("s-status");
    el.textContent = error ? `${status}: ${error}` : status;
    el.dataset.state = status.split(" ")[0];
  };

  const keepOffset = (offset) => {
    // Replace, not push: Back leaves the stream instead of stepping through offsets.
    clearTimeout(urlTimer);
    urlTimer = setTimeout(() => {
      // The page may have moved on (a fork opens its own view) before its
      // hashchange ran: rewriting the address then would send it back here.
      const here = app.streamLink(name);
      const hash = location.hash;
      if (hash !== here && !hash.startsWith(here + "?")) return;
      history.replaceState(null, "", app.streamLink(name, { offset, live: mode }));
    }, 200);
  };

  const showRaw = (res, data) => {
    const lines = [`HTTP ${res.status} ${res.statusText}`];
    for (const [k, v] of Object.entries(headerMap(res))) lines.push(`${k}: ${v}`);
    if (data != null) {
      lines.push("");
      const body = typeof data === "string" ? data
        : data instanceof Uint8Array ? `(${data.length} bytes)` : JSON.stringify(data);
      lines.push(body.length > 4096 ? body.slice(0, 4096) + " …" : body);
    } else if (res.headers.get("content-type") === "text/event-stream") {
      lines.push("", "(an SSE stream: events arrive below)");
    }
    $("s-raw").textContent = lines.join("\n");
  };

  const onChunk = (chunk) => {
    if (chunk.data) {
      if (isJson(contentType)) {
        const rows = jsonRows(chunk);
        count += rows.length;
        list.push(rows);
        $("s-count").textContent = `${count.toLocaleString("en-US")} message${count === 1 ? "" : "s"}`;
      } else {
        sink.add(chunk);
        count += typeof chunk.data === "string" ? new TextEncoder().encode(chunk.data).length : chunk.data.length;
        $("s-count").textContent = `${app.fmtBytes(count)} read`;
      }
    }
    keepOffset(chunk.next);
  };

  const start = (offset) => {
    if (reader) reader.stop();
    list.clear();
    sink = isJson(contentType) ? null : isText(contentType) ? new TextLog(list) : new HexDump(list);
    count = 0;
    $("s-count").textContent = "";
    reader = new Reader(name, {
      offset, mode, contentType, onChunk, onStatus: setStatus, onResponse: showRaw,
    });
    reader.run();
  };

  const refreshMeta = async () => {
    try {
      meta = await head(name);
    } catch (err) {
      app.notice(err.message);
      return false;
    }
    contentType = meta["content-type"];
    $("s-type").textContent = contentType;
    const dl = $("s-meta");
    const facts = [
      ["Next offset", meta["stream-next-offset"]],
      ["Size", app.fmtBytes(app.sizeOf(meta["stream-next-offset"]))],
      ["Closed", meta["stream-closed"] === "true" ? "yes" : "no"],
      ["TTL", meta["stream-ttl"] ? `${meta["stream-ttl"]} s` : "none"],
      ["Expires at", meta["stream-expires-at"] || "never"],
      ["Forked from", (await registryEntry(app, name)).forkedFrom || "not a fork"],
      ["ETag", meta.etag || ""],
    ];
    dl.replaceChildren(...facts.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      return [dt, dd];
    }));
    $("s-close").disabled = meta["stream-closed"] === "true";
    return true;
  };

  // -- controls ---------------------------------------------------------------
  const from = $("s-from");
  const offsetInput = $("s-offset");
  from.addEventListener("change", () => {
    offsetInput.hidden = from.value !== "offset";
    if (!offsetInput.hidden) offsetInput.focus();
  });
  $("s-restart").addEventListener("click", () => {
    const offset = from.value === "offset" ? offsetInput.value.trim() || "-1" : from.value;
    $("s-resumed").hidden = true;
    start(offset);
  });
  offsetInput.addEventListener("keydown", (e) => { if (e.key === "Enter") $("s-restart").click(); });

  const setMode = (next) => {
    mode = next;
    $("s-sse").setAttribute("aria-pressed", String(mode === "sse"));
    $("s-lp").setAttribute("aria-pressed", String(mode === "long-poll"));
    if (reader) {
      const offset = reader.offset;  // carry on from where the last mode stopped
      reader.stop();
      reader = new Reader(name, { offset, mode, contentType, onChunk, onStatus: setStatus, onResponse: showRaw });
      reader.run();
      keepOffset(offset);
    }
  };
  $("s-sse").addEventListener("click", () => setMode("sse"));
  $("s-lp").addEventListener("click", () => setMode("long-poll"));

  $("s-inspect").addEventListener("click", () => {
    const aside = $("s-inspector");
    aside.hidden = !aside.hidden;
    $("s-inspect").setAttribute("aria-pressed", String(!aside.hidden));
    if (!aside.hidden) refreshMeta();
  });

  $("s-close").addEventListener("click", async () => {
    try {
      await close(name);
      await refreshMeta();
    } catch (err) { app.notice(err.message); }
  });

  $("s-delete").addEventListener("click", () => confirmDelete(name, app).then((gone) => {
    if (gone) location.hash = "#/";
  }));

  $("s-fork").addEventListener("click", () => forkDialog(name, meta, app));

  // -- compose ------------------------------------------------------------------
  const input = $("s-input");
  const result = $("s-result");
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("s-compose").requestSubmit();
    }
  });
  input.addEventListener("input", () => app.presence.typing());
  $("s-compose").addEventListener("submit", async (event) => {
    event.preventDefault();
    let text = input.value;
    if (!text.trim()) return;
    if (isJson(contentType)) {
      try { JSON.parse(text); } catch (err) {
        result.textContent = `Not JSON: ${err.message}`;
        result.dataset.state = "error";
        return;
      }
    } else if (isText(contentType) && !text.endsWith("\n")) {
      text += "\n";  // a text stream is a log: one line per message sent
    }
    producer = producer || new Producer(name, contentType);
    result.textContent = "sending…";
    result.dataset.state = "";
    try {
      const body = isText(contentType) ? text : new TextEncoder().encode(text);
      const { offset, duplicate } = await producer.append(body);
      result.textContent = `${duplicate ? "already stored" : "stored"} · next offset ${shortOffset(offset)}`;
      input.value = "";
    } catch (err) {
      result.textContent = err.message;
      result.dataset.state = "error";
    }
  });

  // -- go -------------------------------------------------------------------------
  refreshMeta().then((ok) => {
    if (!ok) { setStatus("stopped"); return; }
    setMode(mode);
    const offset = params.get("offset");
    if (offset) {
      const note = $("s-resumed");
      note.textContent = `Resumed at offset ${shortOffset(offset)}: earlier messages are not shown. `;
      const all = document.createElement("button");
      all.textContent = "Read from the start";
      all.addEventListener("click", () => { note.hidden = true; from.value = "-1"; start("-1"); });
      note.append(all);
      note.hidden = false;
    }
    start(offset || "-1");
    drawPresence(app, name);
  });
  view.stop = () => { if (reader) reader.stop(); clearTimeout(urlTimer); };
  return view;
}

// A stream's registry entry: from the list's copy, or one catch-up read of the registry.
async function registryEntry(app, name) {
  if (!app.registry.has(name)) {
    let offset = "-1";
    try {
      for (let reads = 0; reads < 64; reads++) {
        const res = await fetch(`${settings.prefix}__registry__?offset=${encodeURIComponent(offset)}`, {
          headers: settings.token ? { Authorization: `Bearer ${settings.token}` } : {}, cache: "no-store",
        });
        if (!res.ok) break;
        for (const e of await res.json()) {
          if (e && e.type === "stream" && typeof e.key === "string") {
            if (e.headers && e.headers.operation === "delete") app.registry.delete(e.key);
            else app.registry.set(e.key, e.value || {});
          }
        }
        offset = res.headers.get("Stream-Next-Offset");
        if (res.headers.get("Stream-Up-To-Date") === "true") break;
      }
    } catch { /* the registry is a nicety here */ }
  }
  return app.registry.get(name) || {};
}

function drawPresence(app, name) {
  const el = $("s-presence");
  if (!el) return;
  const viewers = app.presence.viewers(name);
  const typing = viewers.filter((v) => v.isTyping);
  const dots = viewers.map((v) => {
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.style.background = v.color;
    dot.title = v.userId;
    return dot;
  });
  const text = document.createElement("span");
  text.textContent = viewers.length
    ? `${viewers.length} other${viewers.length > 1 ? "s" : ""} viewing` +
      (typing.length ? ` · ${typing.length > 1 ? `${typing.length} people are` : "someone is"} typing…` : "")
    : "";
  el.replaceChildren(...dots, text);
}

function forkDialog(name, meta, app) {
  const dialog = document.getElementById("fork-dialog");
  const form = document.getElementById("fork-form");
  const error = form.querySelector(".error");
  form.querySelector(".src").textContent = name;
  form.reset();
  form.elements.name.value = `${name}-fork`;
  form.elements.offset.placeholder = `current tail (${meta["stream-next-offset"] || "?"})`;
  error.textContent = "";
  dialog.returnValue = "";
  dialog.showModal();
  form.onsubmit = async (event) => {
    if (event.submitter && event.submitter.value === "cancel") return;
    event.preventDefault();
    const target = form.elements.name.value.trim();
    const forkOffset = form.elements.offset.value.trim() || undefined;
    try {
      await create(target, { forkedFrom: name, forkOffset });
      dialog.close("ok");
      location.hash = app.streamLink(target);
    } catch (err) {
      error.textContent = err.message;
    }
  };
}
