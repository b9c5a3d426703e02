// The message list: a virtualized list (only the rows in view are in the
// DOM, so 100,000 messages cost what 40 do), and the three ways of showing a
// stream: JSON messages as collapsible cards, text as a continuous log,
// binary as a hex and ASCII dump. Untrusted text only ever reaches the page
// through textContent.

const ROW = 26;        // px: one line, one collapsed card, one hex row
const LINE = 18;       // px: one line of an expanded card
const OVERSCAN = 8;
const MAX_LINES = 2000;

export class VirtualList {
  constructor(viewport, render) {
    this.viewport = viewport;
    this.render = render;
    this.rows = [];
    this.tops = new Float64Array(1024);  // tops[i]: y of row i; tops[n]: total height
    this.spacer = document.createElement("div");
    this.spacer.className = "spacer";
    this.layer = document.createElement("div");
    this.layer.className = "layer";
    viewport.replaceChildren(this.spacer, this.layer);
    this.pinned = true;  // follow the tail while the user is at the bottom
    this.scheduled = false;
    viewport.addEventListener("scroll", () => {
      const v = this.viewport;
      this.pinned = v.scrollTop + v.clientHeight >= v.scrollHeight - 4;
      this.schedule();
    });
    new ResizeObserver(() => this.schedule()).observe(viewport);
  }

  get length() { return this.rows.length; }

  clear() {
    this.rows = [];
    this.tops[0] = 0;
    this.pinned = true;
    this.schedule();
  }

  push(rows) {
    const n = this.rows.length;
    if (n + rows.length + 1 > this.tops.length) {
      const grown = new Float64Array(Math.max(this.tops.length * 2, n + rows.length + 1));
      grown.set(this.tops.subarray(0, n + 1));
      this.tops = grown;
    }
    for (let i = 0; i < rows.length; i++) {
      this.rows.push(rows[i]);
      this.tops[n + i + 1] = this.tops[n + i] + heightOf(rows[i]);
    }
    this.schedule();
  }

  // A row changed height (a card opened or closed, a log line grew).
  changed(index) {
    for (let i = index; i < this.rows.length; i++) {
      this.tops[i + 1] = this.tops[i] + heightOf(this.rows[i]);
    }
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => { this.scheduled = false; this.draw(); });
  }

  first(y) {  // the row at height y, by binary search over tops
    let lo = 0, hi = this.rows.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.tops[mid + 1] <= y) lo = mid + 1; else hi = mid;
    }
    return lo;
  }

  draw() {
    const n = this.rows.length;
    const total = this.tops[n];
    this.spacer.style.height = `${total}px`;
    if (this.pinned) this.viewport.scrollTop = total;
    const top = this.viewport.scrollTop;
    const start = Math.max(0, this.first(top) - OVERSCAN);
    const end = Math.min(n, this.first(top + this.viewport.clientHeight) + OVERSCAN + 1);
    this.layer.style.transform = `translateY(${this.tops[start]}px)`;
    const nodes = [];
    for (let i = start; i < end; i++) nodes.push(this.render(this.rows[i], i));
    this.layer.replaceChildren(...nodes);
  }
}

function heightOf(row) {
  if (row.kind === "json" && row.open) return 8 + Math.min(row.lines, MAX_LINES + 1) * LINE;
  return ROW;
}

// -- building rows from chunks --------------------------------------------------

// JSON: one card per message. `offset` is where a read that includes this
// message starts (the offset of the response that carried it), so a link to
// it replays from there.
export function jsonRows(chunk) {
  return chunk.data.map((value, index) => ({ kind: "json", offset: chunk.offset, index, value, open: false, lines: 0 }));
}

// Text: a continuous log. A chunk that does not end in a newline leaves its
// last line open; the next chunk continues it.
export class TextLog {
  constructor(list) { this.list = list; this.open = null; }
  add(chunk) {
    const parts = chunk.data.split("\n");
    const endsLine = parts[parts.length - 1] === "";
    if (endsLine) parts.pop();
    let from = 0;
    if (this.open && parts.length) {
      this.open.text += parts[0];
      this.list.changed(this.list.length - 1);
      from = 1;
    }
    const rows = parts.slice(from).map((text) => ({ kind: "text", offset: chunk.offset, text }));
    if (rows.length) this.list.push(rows);
    this.open = endsLine || !this.list.length ? null : this.list.rows[this.list.length - 1];
  }
}

// Binary: rows of 16 bytes; a short last row is filled by the next chunk.
export class HexDump {
  constructor(list) { this.list = list; this.total = 0; this.last = null; }
  add(chunk) {
    let bytes = chunk.data;
    const rows = [];
    if (this.last && this.last.bytes.length < 16) {
      const take = Math.min(16 - this.last.bytes.length, bytes.length);
      const merged = new Uint8Array(this.last.bytes.length + take);
      merged.set(this.last.bytes);
      merged.set(bytes.subarray(0, take), this.last.bytes.length);
      this.last.bytes = merged;
      bytes = bytes.subarray(take);
      this.total += take;
      this.list.changed(this.list.length - 1);
    }
    for (let i = 0; i < bytes.length; i += 16) {
      const row = { kind: "hex", offset: chunk.offset, at: this.total, bytes: bytes.slice(i, i + 16) };
      this.total += row.bytes.length;
      rows.push(row);
      this.last = row;
    }
    if (rows.length) this.list.push(rows);
  }
}

// -- drawing rows --------------------------------------------------------------

export function renderRow(row, index, { link, list }) {
  const el = document.createElement("div");
  el.className = `row ${row.kind}`;
  el.style.height = `${heightOf(row)}px`;
  const off = document.createElement("a");
  off.className = "off";
  off.href = link(row.offset);
  off.title = "Link to a read from this offset";
  off.textContent = row.kind === "hex" ? hex8(row.at) : shortOffset(row.offset);
  el.append(off);
  if (row.kind === "json") {
    const toggle = document.createElement("button");
    toggle.className = "fold";
    toggle.setAttribute("aria-expanded", String(row.open));
    toggle.setAttribute("aria-label", row.open ? "Collapse message" : "Expand message");
    toggle.textContent = row.open ? "▾" : "▸";
    toggle.addEventListener("click", () => {
      row.open = !row.open;
      if (row.open && !row.pretty) {
        row.pretty = JSON.stringify(row.value, null, 2);
        row.lines = row.pretty.split("\n").length;
      }
      list.changed(index);
    });
    el.append(toggle);
    if (row.open) {
      const pre = document.createElement("pre");
      pre.className = "card";
      pre.append(highlight(truncateLines(row.pretty)));
      el.append(pre);
    } else {
      const code = document.createElement("code");
      code.className = "compact";
      if (row.compact === undefined) row.compact = JSON.stringify(row.value).slice(0, 400);
      code.append(highlight(row.compact));
      el.append(code);
    }
  } else if (row.kind === "text") {
    const span = document.createElement("span");
    span.className = "line";
    span.textContent = row.text;
    el.append(span);
  } else {
    const hexCol = document.createElement("span");
    hexCol.className = "hexbytes";
    hexCol.textContent = Array.from(row.bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = document.createElement("span");
    ascii.className = "ascii";
    ascii.textContent = Array.from(row.bytes, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    el.append(hexCol, ascii);
  }
  return el;
}

function truncateLines(text) {
  const lines = text.split("\n");
  if (lines.length <= MAX_LINES) return text;
  return lines.slice(0, MAX_LINES).join("\n") + `\n… ${lines.length - MAX_LINES} more lines`;
}

function hex8(n) { return n.toString(16).padStart(8, "0"); }

export function shortOffset(offset) {
  if (offset === "-1") return "start";
  const m = /^0{16}_0*(\d+)$/.exec(offset || "");
  return m ? m[1] : offset;
}

// Syntax colouring of JSON text, as spans whose text is set, never parsed as HTML.
const TOKEN = /("(?:[^"\\]|\\.)*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;

export function highlight(text) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(TOKEN)) {
    if (m.index > last) frag.append(text.slice(last, m.index));
    const span = document.createElement("span");
    span.className = m[1] ? (m[2] ? "k" : "s") : m[3] ? "b" : "n";
    span.textContent = m[1] || m[0];
    frag.append(span);
    if (m[2]) frag.append(m[2]);
    last = m.index + m[0].length;
  }
  if (last < text.length) frag.append(text.slice(last));
  return frag;
}
