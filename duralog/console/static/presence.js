// Presence: who else is looking at a stream, and who is typing. Kept in the
// `__presence__` stream as State Protocol events of type "presence" keyed by
// session id, the shape the reference Test UI writes, so both UIs see each
// other. Each page updates its entry on arrival, every 15 s and when typing,
// and deletes it when it leaves; entries not seen for 45 s count as gone.

import { create, Producer, Reader } from "./api.js";

const STREAM = "__presence__";
const STALE_MS = 45_000;
const COLORS = ["#d4704b", "#7a9a7e", "#c8886d", "#6b8e8d", "#d4a05b", "#8b7a9a", "#9a7a7e"];

function stored(storage, key, make) {
  let value = storage.getItem(key);
  if (!value) { value = make(); storage.setItem(key, value); }
  return value;
}

export class Presence {
  constructor(onChange) {
    this.userId = stored(localStorage, "durable-streams-user-id", () => `user-${crypto.randomUUID()}`);
    this.sessionId = stored(sessionStorage, "durable-streams-session-id", () => `session-${crypto.randomUUID()}`);
    const hash = [...this.userId].reduce((sum, c) => sum + c.charCodeAt(0), 0);
    this.color = COLORS[hash % COLORS.length];
    this.entries = new Map();
    this.onChange = onChange;
    this.streamPath = undefined;
    this.typingTimer = null;
    this.producer = new Producer(STREAM, "application/json");
    this.available = false;
  }

  async start() {
    try {
      await create(STREAM, { contentType: "application/json" });  // 200 when it exists
      this.available = true;
    } catch {
      return;  // no write access, or presence refused: the console works without it
    }
    this.reader = new Reader(STREAM, {
      offset: "-1", mode: "sse", contentType: "application/json",
      onChunk: (chunk) => chunk.data && this.apply(chunk.data),
      onStatus: () => {}, onResponse: () => {},
    });
    this.reader.run();
    this.announce(false);  // the view may have been chosen before the stream was ready
    setInterval(() => this.announce(false), 15_000);
    setInterval(() => this.onChange(), 5_000);  // let stale entries fade
    addEventListener("pagehide", () => this.leave());
  }

  apply(events) {
    for (const event of events) {
      if (!event || event.type !== "presence" || typeof event.key !== "string") continue;
      const op = event.headers && event.headers.operation;
      if (op === "delete") this.entries.delete(event.key);
      else if (event.value && typeof event.value === "object") this.entries.set(event.key, event.value);
    }
    this.onChange();
  }

  // Everyone else on `streamPath`, fresh entries only.
  viewers(streamPath) {
    const now = Date.now();
    return [...this.entries.values()].filter((e) =>
      e.sessionId !== this.sessionId && e.streamPath === streamPath && now - e.lastSeen < STALE_MS);
  }

  view(streamPath) {
    this.streamPath = streamPath;
    this.announce(false);
  }

  typing() {
    if (this.typingTimer) clearTimeout(this.typingTimer);
    else this.announce(true);
    this.typingTimer = setTimeout(() => { this.typingTimer = null; this.announce(false); }, 3000);
  }

  announce(isTyping) {
    if (!this.available) return;
    const value = {
      userId: this.userId, sessionId: this.sessionId, color: this.color,
      route: location.hash || "#/", isTyping: Boolean(isTyping),
      lastSeen: Date.now(),
    };
    if (this.streamPath !== undefined) value.streamPath = this.streamPath;
    const event = { type: "presence", key: this.sessionId, value, headers: { operation: "update", txid: crypto.randomUUID() } };
    this.producer.append(JSON.stringify(event)).catch(() => {});
  }

  leave() {
    if (!this.available) return;
    const event = { type: "presence", key: this.sessionId, headers: { operation: "delete" } };
    this.producer.append(JSON.stringify(event)).catch(() => {});
  }
}
