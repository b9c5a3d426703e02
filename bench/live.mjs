// Live-read and producer load for the benchmark suite (driven by bench/clients.py).
//   node bench/live.mjs '<json job>'
// Jobs (all take base: "http://host:port/v1/stream", stream: "name"):
//   {op: "latency", mode: "sse"|"long-poll", count, warmup, gap_ms, size[, read_base]}
//     one writer, one live reader: append -> delivered, one append at a time.
//   {op: "fanout", mode, readers, appends, gap_ms, size, connect_batch, deliver_timeout_ms}
//     N live readers on one stream; each append is timed until every reader has it.
//     Prints {"event":"connected"} and {"event":"delivered"} and waits for a line on
//     stdin after each, so the driver can read the server's RSS at those moments.
//   {op: "produce", producers, duration_s, batch, msg_size}
//     idempotent producers (Producer-Id/Epoch/Seq), one request in flight each.
// Output: JSON lines; the last is {"result": {...}}.
import http from "node:http"
import { performance } from "node:perf_hooks"
import readline from "node:readline"

const job = JSON.parse(process.argv[2])
const streamUrl = `${job.base}/${job.stream}`
// Readers may use another node than the writer (job.read_base: cross-node latency).
const readUrl = `${job.read_base || job.base}/${job.stream}`
const now = () => performance.now()
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

const rl = readline.createInterface({ input: process.stdin })
const lines = []
let lineWaiter = null
rl.on("line", (l) => {
  if (lineWaiter) {
    const w = lineWaiter
    lineWaiter = null
    w(l)
  } else lines.push(l)
})
function pause(event, extra = {}) {
  process.stdout.write(JSON.stringify({ event, ...extra }) + "\n")
  if (lines.length) return Promise.resolve(lines.shift())
  return new Promise((r) => { lineWaiter = r })
}

function percentile(sorted, p) {
  if (!sorted.length) return null
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[i]
}
function summary(values) {
  const s = Float64Array.from(values).sort()
  const mean = s.length ? s.reduce((a, b) => a + b, 0) / s.length : null
  return { n: s.length, p50: percentile(s, 50), p90: percentile(s, 90), p99: percentile(s, 99),
    max: s.length ? s[s.length - 1] : null, mean }
}

function message(i, size) {
  const head = `m${i};`
  return head + "x".repeat(Math.max(0, size - head.length))
}

const MARK = /m(\d+);/g
function lastMark(text) {
  let best = -1
  for (const m of text.matchAll(MARK)) best = Math.max(best, Number(m[1]))
  return best
}

// python -m bench with an auth target sets BENCH_AUTHORIZATION for every request.
const AUTH = process.env.BENCH_AUTHORIZATION
  ? { authorization: process.env.BENCH_AUTHORIZATION } : {}

function request(method, url, { agent, headers = {}, body = null } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent, headers: { ...AUTH, ...headers } }, (res) => {
      const chunks = []
      res.on("data", (c) => chunks.push(c))
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers,
        body: Buffer.concat(chunks) }))
      res.on("error", reject)
    })
    req.on("error", reject)
    req.end(body)
  })
}

async function tailOffset(agent) {
  const r = await request("HEAD", streamUrl, { agent })
  if (r.status !== 200) throw new Error(`HEAD ${streamUrl}: ${r.status}`)
  return r.headers["stream-next-offset"]
}

// Errors by phase: while readers connect, or while appends are being delivered.
let phase = "connect"
const phaseErrors = { connect: 0, measure: 0 }

// A live reader. onMark(reader, index) runs when data with marker m<index>; arrives.
class Reader {
  constructor(mode, offset, agent, onMark) {
    Object.assign(this, { mode, offset, agent, onMark })
    this.last = -1
    this.cursor = null
    this.errors = 0
    this.errorSamples = []
    this.stopped = false
    this.waiting = false // long-poll: a request is out and waiting for data
    this.req = null
    this.readyPromise = new Promise((r) => { this.onReady = r })
  }

  error(what) {
    this.errors++
    phaseErrors[phase]++
    if (this.errorSamples.length < 3) this.errorSamples.push(String(what))
  }

  start() { this.mode === "sse" ? this.sse() : this.poll() }

  stop() {
    this.stopped = true
    if (this.req) this.req.destroy()
  }

  url() {
    let u = `${readUrl}?offset=${encodeURIComponent(this.offset)}&live=${this.mode}`
    if (this.cursor) u += `&cursor=${encodeURIComponent(this.cursor)}`
    return u
  }

  retry() {
    if (!this.stopped) setTimeout(() => this.start(), 200)
  }

  seen(text) {
    const i = lastMark(text)
    if (i > this.last) this.onMark(this, i)
  }

  poll() {
    if (this.stopped) return
    const req = http.get(this.url(), { agent: this.agent, headers: AUTH }, (res) => {
      this.waiting = false
      const chunks = []
      res.on("data", (c) => chunks.push(c))
      res.on("end", () => {
        const h = res.headers
        if (res.statusCode === 200 || res.statusCode === 204) {
          if (h["stream-next-offset"]) this.offset = h["stream-next-offset"]
          if (h["stream-cursor"]) this.cursor = h["stream-cursor"]
          if (res.statusCode === 200) this.seen(Buffer.concat(chunks).toString("latin1"))
          if (h["stream-closed"] === "true") return
          this.poll()
        } else {
          this.error(`HTTP ${res.statusCode}`)
          this.retry()
        }
      })
    })
    this.req = req
    req.on("finish", () => {
      this.waiting = true
      this.onReady()
    })
    req.on("error", (e) => {
      this.waiting = false
      if (!this.stopped) {
        this.error(e.code || e.message)
        this.retry()
      }
    })
  }

  sse() {
    if (this.stopped) return
    const req = http.get(this.url(), { agent: this.agent, headers: AUTH }, (res) => {
      if (res.statusCode !== 200) {
        this.error(`HTTP ${res.statusCode}`)
        res.resume()
        res.on("end", () => this.retry())
        return
      }
      this.onReady()
      res.setEncoding("utf8")
      let buf = ""
      res.on("data", (chunk) => {
        buf += chunk.includes("\r") ? chunk.replace(/\r\n?/g, "\n") : chunk
        let i
        while ((i = buf.indexOf("\n\n")) >= 0) {
          this.event(buf.slice(0, i))
          buf = buf.slice(i + 2)
        }
      })
      res.on("end", () => {
        if (!this.stopped && !this.closed) this.sse() // the server ends SSE now and then
      })
      res.on("error", () => {})
    })
    this.req = req
    req.on("error", (e) => {
      if (!this.stopped) {
        this.error(e.code || e.message)
        this.retry()
      }
    })
  }

  event(text) {
    let type = "message"
    const data = []
    for (const line of text.split("\n")) {
      if (line.startsWith("event:")) type = line.slice(6).trim()
      else if (line.startsWith("data:")) data.push(line.slice(line[5] === " " ? 6 : 5))
    }
    if (type === "data") this.seen(data.join("\n"))
    else if (type === "control") {
      try {
        const c = JSON.parse(data.join("\n"))
        if (c.streamNextOffset) this.offset = c.streamNextOffset
        if (c.streamCursor) this.cursor = c.streamCursor
        if (c.streamClosed) this.closed = true
      } catch {
        this.error("bad control event")
      }
    }
  }
}

function newAgent() {
  return new http.Agent({ keepAlive: true, maxSockets: Infinity, maxFreeSockets: 100000 })
}

async function append(agent, i, size) {
  const r = await request("POST", streamUrl, { agent, body: message(i, size),
    headers: { "content-type": "text/plain" } })
  if (r.status !== 200 && r.status !== 204) throw new Error(`append: HTTP ${r.status}`)
}

// -- latency: one reader, one writer ------------------------------------------
async function latency() {
  const writeAgent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  const readAgent = newAgent()
  const offset = await tailOffset(writeAgent)
  let waiter = null
  let want = -1
  const reader = new Reader(job.mode, offset, readAgent, (r, i) => {
    r.last = i
    if (waiter && i >= want) {
      const w = waiter
      waiter = null
      w(now())
    }
  })
  reader.start()
  await reader.readyPromise
  await sleep(50)
  const lat = []
  const acks = []
  let missing = 0
  const total = job.warmup + job.count
  const t0 = now()
  for (let i = 0; i < total; i++) {
    if (job.mode === "long-poll") {
      const until = now() + 1000
      while (!reader.waiting && now() < until) await sleep(0.2)
    }
    if (job.gap_ms) await sleep(job.gap_ms)
    want = i
    const delivered = new Promise((r) => { waiter = r })
    let timer
    const timeout = new Promise((r) => { timer = setTimeout(() => r(null), 5000) })
    const start = now()
    await append(writeAgent, i, job.size)
    const ack = now()
    const at = await Promise.race([delivered, timeout])
    clearTimeout(timer)
    if (at === null) {
      missing++
      waiter = null
      continue
    }
    if (i >= job.warmup) {
      lat.push(at - start)
      acks.push(ack - start)
    }
  }
  const elapsed = (now() - t0) / 1000
  reader.stop()
  readAgent.destroy()
  writeAgent.destroy()
  return { latency_ms: summary(lat), append_ack_ms: summary(acks), samples_ms: lat,
    missing, errors: reader.errors, error_samples: reader.errorSamples, elapsed_s: elapsed }
}

// -- fan-out: N readers ----------------------------------------------------------
async function fanout() {
  const writeAgent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  const offset = await tailOffset(writeAgent)
  const sent = []
  const pending = []
  const resolvers = []
  const delays = []
  const onMark = (r, i) => {
    const t = now()
    for (let j = r.last + 1; j <= i; j++) {
      if (sent[j] === undefined) continue
      delays.push(t - sent[j])
      if (--pending[j] === 0 && resolvers[j]) resolvers[j](t)
    }
    r.last = i
  }
  const readers = []
  const agents = []
  const tConnect = now()
  let connectTimeouts = 0
  for (let k = 0; k < job.readers; k += job.connect_batch) {
    const agent = newAgent()
    agents.push(agent)
    const batch = []
    for (let j = k; j < Math.min(job.readers, k + job.connect_batch); j++) {
      const r = new Reader(job.mode, offset, agent, onMark)
      readers.push(r)
      batch.push(r)
      r.start()
    }
    const ok = await Promise.race([
      Promise.all(batch.map((r) => r.readyPromise)).then(() => true),
      sleep(30000).then(() => false),
    ])
    if (!ok) {
      // The server takes no more live readers (a concurrency cap?): stop connecting.
      connectTimeouts++
      break
    }
  }
  const n = readers.length
  const connectS = (now() - tConnect) / 1000
  if (connectTimeouts) {
    const ready = await Promise.all(readers.map((r) => Promise.race([r.readyPromise.then(() => 1),
      sleep(10).then(() => 0)])))
    for (const r of readers) r.stop()
    for (const a of agents) a.destroy()
    throw new Error(`only ${ready.reduce((a, b) => a + b, 0)} of ${job.readers} readers were ` +
      `answered within 30 s (does the server cap concurrent requests?)`)
  }
  // Long-poll requests are sent but the server may still be reading them; let it settle.
  await sleep(job.mode === "long-poll" ? 500 + job.readers / 10 : 200)
  await pause("connected", { readers: readers.length })
  phase = "measure"
  const perAppend = []
  let missing = 0
  for (let i = 0; i < job.appends; i++) {
    if (job.mode === "long-poll") {
      const until = now() + 30000
      while (readers.some((r) => !r.waiting && !r.stopped) && now() < until) await sleep(5)
    }
    await sleep(job.gap_ms)
    pending[i] = n
    const done = new Promise((r) => { resolvers[i] = r })
    sent[i] = now()
    // A fresh connection per append: with thousands of readers the writer can sit idle
    // for longer than the server's keep-alive timeout, and a reused socket then races
    // the server's close (ECONNRESET). The connect costs ~0.1 ms of the figure.
    await append(undefined, i, job.size)
    const t = await Promise.race([done, sleep(job.deliver_timeout_ms).then(() => null)])
    if (t === null) {
      missing += pending[i]
      perAppend.push(null)
    } else perAppend.push(t - sent[i])
  }
  await sleep(100)
  await pause("delivered")
  for (const r of readers) r.stop()
  for (const a of agents) a.destroy()
  writeAgent.destroy()
  const errors = readers.reduce((a, r) => a + r.errors, 0)
  const samples = []
  for (const r of readers) for (const s of r.errorSamples) if (samples.length < 5) samples.push(s)
  return {
    readers: n, appends: job.appends, connect_s: connectS, connect_timeouts: connectTimeouts,
    delivery_ms: summary(delays), all_readers_ms: summary(perAppend.filter((x) => x !== null)),
    per_append_ms: perAppend, missing, errors, error_samples: samples,
    errors_connecting: phaseErrors.connect, errors_measuring: phaseErrors.measure,
  }
}

// -- idempotent producers -------------------------------------------------------
function jsonBatch(count, size) {
  const items = []
  for (let i = 1; i <= count; i++) {
    const head = `{"i":${i},"pad":"`
    items.push(head + "x".repeat(Math.max(0, size - head.length - 2)) + '"}')
  }
  return "[" + items.join(",") + "]"
}

async function produce() {
  const body = Buffer.from(jsonBatch(job.batch, job.msg_size))
  const agent = new http.Agent({ keepAlive: true, maxSockets: job.producers })
  const tag = Math.random().toString(36).slice(2, 8)
  let requests = 0
  let errors = 0
  const samples = []
  const lat = []
  const t0 = now()
  const deadline = t0 + job.duration_s * 1000
  const one = async (k) => {
    const id = `bench-${tag}-${k}`
    for (let seq = 0; now() < deadline; seq++) {
      const start = now()
      try {
        const r = await request("POST", streamUrl, { agent, body, headers: {
          "content-type": "application/json", "producer-id": id, "producer-epoch": "0",
          "producer-seq": String(seq) } })
        if (r.status === 200 || r.status === 204) {
          requests++
          lat.push(now() - start)
        } else {
          errors++
          if (samples.length < 3) samples.push(`HTTP ${r.status} ${r.body.toString().slice(0, 100)}`)
          if (errors > 100) return
        }
      } catch (e) {
        errors++
        if (samples.length < 3) samples.push(String(e))
        if (errors > 100) return
      }
    }
  }
  await Promise.all(Array.from({ length: job.producers }, (_, k) => one(k)))
  const elapsed = (now() - t0) / 1000
  agent.destroy()
  return { requests, messages: requests * job.batch, elapsed_s: elapsed,
    messages_per_s: (requests * job.batch) / elapsed, request_ms: summary(lat), errors,
    error_samples: samples }
}

const ops = { latency, fanout, produce }
try {
  const result = await ops[job.op]()
  process.stdout.write(JSON.stringify({ result }) + "\n")
  process.exit(0)
} catch (e) {
  process.stderr.write(`${e.stack || e}\n`)
  process.exit(1)
}
