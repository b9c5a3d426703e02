// The console's side of the Durable Streams protocol: requests with the
// user's token, an idempotent producer for writes, and a reader that catches
// up, follows live (SSE or long-poll) and resumes after any failure from the
// last offset it was given. Section numbers refer to PROTOCOL.md.

export const settings = {
  prefix: "/v1/stream/",
  token: sessionStorage.getItem("duralog.token") || "",
};

export function setToken(token) {
  settings.token = token;
  if (token) sessionStorage.setItem("duralog.token", token);
  else sessionStorage.removeItem("duralog.token");
}

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// What a refusal means, in a sentence a person can act on.
export function explain(status, body, op, name) {
  const reason = (body || "").trim().split("\n")[0];
  if (status === 401) return `${op} ${name}: this server needs a token (paste one in the Token field above)` + (reason ? ` (${reason})` : "");
  if (status === 403) return `${op} ${name}: this token is not allowed to do that` + (reason ? ` (${reason})` : "");
  if (status === 404) return `${op} ${name}: no such stream`;
  return `${op} ${name}: ${status}${reason ? " " + reason : ""}`;
}

export function streamUrl(name) {
  return settings.prefix + name.split("/").map(encodeURIComponent).join("/");
}

function withAuth(headers = {}) {
  if (settings.token) headers.Authorization = `Bearer ${settings.token}`;
  return headers;
}

async function request(method, name, { headers, body, query, signal, op } = {}) {
  const url = streamUrl(name) + (query ? `?${new URLSearchParams(query)}` : "");
  const res = await fetch(url, { method, headers: withAuth(headers), body, signal, cache: "no-store" });
  if (res.status >= 400) {
    const text = await res.text().catch(() => "");
    throw new HttpError(res.status, explain(res.status, text, op || method, name));
  }
  return res;
}

export function headerMap(res) {
  const out = {};
  res.headers.forEach((value, key) => { out[key] = value; });
  return out;
}

// Offsets are opaque to clients (6); duralog's happen to be the byte position,
// which the console shows as a size when it can read one.
export function sizeOf(offset) {
  const m = /^\d{16}_(\d{16})$/.exec(offset || "");
  return m ? Number(m[1]) : null;
}

export async function head(name) {
  const res = await request("HEAD", name, { op: "read" });
  return headerMap(res);
}

export async function create(name, { contentType, ttl, expiresAt, closed, forkedFrom, forkOffset }) {
  const headers = {};
  if (contentType) headers["Content-Type"] = contentType;
  if (ttl) headers["Stream-TTL"] = String(ttl);
  if (expiresAt) headers["Stream-Expires-At"] = expiresAt;
  if (closed) headers["Stream-Closed"] = "true";
  if (forkedFrom) headers["Stream-Forked-From"] = streamUrl(forkedFrom);  // 4.2: a path
  if (forkOffset) headers["Stream-Fork-Offset"] = forkOffset;
  const res = await request("PUT", name, { headers, op: forkedFrom ? "fork into" : "create" });
  return res.status;
}

export async function close(name) {
  const res = await request("POST", name, { headers: { "Stream-Closed": "true" }, op: "close" });
  return res.headers.get("Stream-Next-Offset");
}

export async function remove(name) {
  await request("DELETE", name, { op: "delete" });
}

// 5.2.1: one producer per page and stream. A retried append carries the same
// (id, epoch, seq), so the server applies it once however often it is sent.
export class Producer {
  constructor(name, contentType) {
    this.name = name;
    this.contentType = contentType;
    this.id = `console-${crypto.randomUUID()}`;
    this.epoch = 0;
    this.seq = 0;
    this.queue = Promise.resolve();
  }

  append(body) {
    const run = this.queue.then(() => this._send(body));
    this.queue = run.catch(() => {});
    return run;
  }

  async _send(body) {
    let delay = 250;
    for (let attempt = 0; ; attempt++) {
      const headers = {
        "Content-Type": this.contentType, "Producer-Id": this.id,
        "Producer-Epoch": String(this.epoch), "Producer-Seq": String(this.seq),
      };
      let res;
      try {
        res = await fetch(streamUrl(this.name), { method: "POST", headers: withAuth(headers), body });
      } catch (err) {
        // The request may or may not have landed: send the same seq again.
        if (attempt >= 8) throw new Error(`append to ${this.name}: the server did not answer`);
        await sleep(delay);
        delay = Math.min(delay * 2, 4000);
        continue;
      }
      if (res.status === 403 && res.headers.get("Producer-Epoch") && attempt < 2) {
        // Another page took this producer id's epoch (it never should): claim the next.
        this.epoch = Number(res.headers.get("Producer-Epoch")) + 1;
        this.seq = 0;
        continue;
      }
      if ((res.status >= 500 || res.status === 429) && attempt < 8) {
        await sleep(Number(res.headers.get("Retry-After")) * 1000 || delay);
        delay = Math.min(delay * 2, 4000);
        continue;
      }
      if (res.status >= 400) {
        const text = await res.text().catch(() => "");
        throw new HttpError(res.status, explain(res.status, text, "append to", this.name));
      }
      this.seq += 1;
      return { offset: res.headers.get("Stream-Next-Offset"), duplicate: res.status === 204 };
    }
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function isJson(contentType) {
  return /^application\/json\s*(;|$)/i.test(contentType || "");
}

export function isText(contentType) {
  return /^text\//i.test(contentType || "") || isJson(contentType);
}

// Reads a stream from `offset`: catch-up until up to date (5.6), then live by
// SSE (5.8) or long-poll (5.7). Every chunk goes to onChunk({ offset, next, data })
// with data as messages (JSON), a string (text) or a Uint8Array (binary).
// Failures are retried from the last offset received, so nothing is missed
// or repeated; the reader stops on a closed stream, a deletion or stop().
export class Reader {
  constructor(name, { offset = "-1", mode = "sse", contentType, onChunk, onStatus, onResponse }) {
    Object.assign(this, { name, offset, mode, contentType, onChunk, onStatus, onResponse });
    this.cursor = null;
    this.stopped = false;
    this.controller = null;
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  async run() {
    let delay = 500;
    let upToDate = false;
    while (!this.stopped) {
      this.controller = new AbortController();
      try {
        if (!upToDate) {
          this.onStatus("catching up");
          upToDate = await this._catchUp();
        } else if (this.mode === "sse") {
          this.onStatus("live (SSE)");
          await this._sse();
        } else {
          this.onStatus("live (long-poll)");
          await this._longPoll();
        }
        delay = 500;
      } catch (err) {
        if (this.stopped) return;
        if (err instanceof ClosedSignal) { this.onStatus("closed"); return; }
        if (err instanceof HttpError && [400, 401, 403, 404, 410].includes(err.status)) {
          this.onStatus("stopped", err.message);
          return;
        }
        this.onStatus(`reconnecting in ${(delay / 1000).toFixed(1)} s`, err.message);
        await sleep(delay);
        delay = Math.min(delay * 2, 5000);
      }
    }
  }

  _query(extra) {
    const q = { offset: this.offset, ...extra };
    return q;
  }

  async _decode(res) {
    if (isJson(this.contentType)) {
      const text = await res.text();
      return text ? JSON.parse(text) : [];
    }
    if (isText(this.contentType)) return res.text();
    return new Uint8Array(await res.arrayBuffer());
  }

  _took(res, startOffset, data) {
    const next = res.headers.get("Stream-Next-Offset") || startOffset;
    this.onResponse(res, data);
    const empty = data == null || data.length === 0;
    if (!empty || startOffset === "-1" || startOffset === "now") {
      this.onChunk({ offset: startOffset === "now" ? next : startOffset, next, data: empty ? null : data });
    }
    this.offset = next;
    if (res.headers.get("Stream-Cursor")) this.cursor = res.headers.get("Stream-Cursor");
    if (res.headers.get("Stream-Closed") === "true" && res.headers.get("Stream-Up-To-Date") === "true") {
      throw new ClosedSignal();
    }
  }

  async _catchUp() {
    const start = this.offset;
    const res = await request("GET", this.name, { query: this._query(), signal: this.controller.signal, op: "read" });
    const data = await this._decode(res);
    this._took(res, start, data);
    return res.headers.get("Stream-Up-To-Date") === "true";
  }

  async _longPoll() {
    const extra = { live: "long-poll" };
    if (this.cursor) extra.cursor = this.cursor;
    const start = this.offset;
    const res = await request("GET", this.name, { query: this._query(extra), signal: this.controller.signal, op: "read" });
    if (res.status === 204) {
      this.onResponse(res, null);
      this.offset = res.headers.get("Stream-Next-Offset") || this.offset;
      if (res.headers.get("Stream-Cursor")) this.cursor = res.headers.get("Stream-Cursor");
      if (res.headers.get("Stream-Closed") === "true") throw new ClosedSignal();
      return;
    }
    this._took(res, start, await this._decode(res));
  }

  async _sse() {
    const extra = { live: "sse" };
    if (this.cursor) extra.cursor = this.cursor;
    const res = await request("GET", this.name, {
      query: this._query(extra), signal: this.controller.signal, op: "read",
      headers: { Accept: "text/event-stream" },
    });
    this.onResponse(res, null);
    const base64 = res.headers.get("stream-sse-data-encoding") === "base64";
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let pending = null;  // a data event waits for the control event that follows it (5.8)
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;  // the server closes about every 60 s; resume from this.offset
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer[end] === "\r" ? 4 : 2));
        const event = parseEvent(block);
        if (event.type === "data") {
          pending = pending == null ? event.data : pending + "\n" + event.data;
        } else if (event.type === "control") {
          const control = JSON.parse(event.data);
          const start = this.offset;
          if (pending != null) {
            this.onChunk({ offset: start, next: control.streamNextOffset, data: this._sseData(pending, base64) });
            pending = null;
          }
          this.offset = control.streamNextOffset || this.offset;
          if (control.streamCursor) this.cursor = control.streamCursor;
          if (control.streamClosed) throw new ClosedSignal();
        }
      }
    }
  }

  _sseData(text, base64) {
    if (base64) {
      const bin = atob(text.replace(/[\r\n]/g, ""));
      const out = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
      return out;
    }
    if (isJson(this.contentType)) return text ? JSON.parse(text) : [];
    return text;
  }
}

class ClosedSignal extends Error {}

function parseEvent(block) {
  let type = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
  }
  return { type, data: data.join("\n") };
}
