// Drives the official TypeScript client (npm @durable-streams/client) for the
// interop tests (tests/test_interop.py). Two ways to run it:
//
//   node tests/peers/ts-client.mjs COMMAND '<json arguments>'   one command
//   node tests/peers/ts-client.mjs serve                          many commands
//
// "serve" reads one JSON request per stdin line, {"id", "command", "args"},
// runs requests concurrently, and answers with JSON lines tagged with the id:
// {"id", "event": "ready", ...} when a live read has caught up (so the test
// knows when to write), then {"id", "event": "result", "result": {...}}. One
// long-lived Node process saves the 1-2 s a Node start costs on a busy machine.
//
// Errors thrown by the client are reported as {"error": {"name", "message",
// "status", ...}} rather than crashing, so the test can assert on them. Byte
// payloads travel as base64 ("b64" fields).
//
// Commands:
//   write   {url, contentType, create?: {body?, closed?, ttlSeconds?, expiresAt?},
//            appends?: [string|{b64}], concurrent?, seqs?: [string],
//            appendStream?: {parts, delayMs?}, pipe?: [string|{b64}],
//            close?: {body?}|true, afterClose?: string|{b64}}
//   produce {url, contentType, producerId, epoch?, autoClaim?, messages: [json value],
//            close?: true, finalMessage?: any, lingerMs?, maxInFlight?, maxBatchBytes?,
//            duplicatePosts?}
//   read    {url, live: false|"long-poll"|"sse", offset?, format: "json"|"bytes",
//            count?, untilClosed?, timeoutMs?}
//   head    {url}
//   delete  {url}
import {
  DurableStream,
  IdempotentProducer,
  stream,
} from "@durable-streams/client"

import { createInterface } from "node:readline"

const write_ = (obj) => process.stdout.write(JSON.stringify(obj) + "\n")
const b64 = (bytes) => Buffer.from(bytes).toString("base64")
const fromB64 = (s) => new Uint8Array(Buffer.from(s, "base64"))
const payload = (p) => (typeof p === "string" ? p : fromB64(p.b64))
const describe = (err) => ({
  name: err?.constructor?.name ?? "Error",
  message: String(err?.message ?? err),
  status: err?.status,
  code: err?.code,
  finalOffset: err?.finalOffset,
  currentEpoch: err?.currentEpoch,
})

async function write(args) {
  const result = { errors: [] }
  let handle
  if (args.create) {
    const opts = { url: args.url, contentType: args.contentType }
    if (args.create.body !== undefined) opts.body = payload(args.create.body)
    if (args.create.closed) opts.closed = true
    if (args.create.ttlSeconds !== undefined) opts.ttlSeconds = args.create.ttlSeconds
    if (args.create.expiresAt !== undefined) opts.expiresAt = args.create.expiresAt
    try {
      handle = await DurableStream.create(opts)
    } catch (err) {
      return { createError: describe(err) }
    }
  } else {
    handle = new DurableStream({ url: args.url, contentType: args.contentType })
  }
  const appends = args.appends ?? []
  const seqs = args.seqs ?? []
  const opts = (i) => (seqs[i] ? { seq: seqs[i] } : undefined)
  if (args.concurrent) {
    // Fired without awaiting each one: the client batches them into fewer POSTs.
    const settled = await Promise.allSettled(appends.map((a, i) => handle.append(payload(a), opts(i))))
    for (const s of settled) if (s.status === "rejected") result.errors.push(describe(s.reason))
  } else {
    for (const [i, a] of appends.entries()) {
      try {
        await handle.append(payload(a), opts(i))
      } catch (err) {
        result.errors.push(describe(err))
      }
    }
  }
  if (args.appendStream) {
    // One POST whose body is streamed part by part (chunked), with pauses between parts.
    const { parts, delayMs = 0 } = args.appendStream
    async function* source() {
      for (const p of parts) {
        yield typeof p === "string" ? p : fromB64(p.b64)
        if (delayMs) await new Promise((r) => setTimeout(r, delayMs))
      }
    }
    try {
      await handle.appendStream(source())
    } catch (err) {
      result.errors.push(describe(err))
    }
  }
  if (args.pipe) {
    // writable(): an auto-claiming idempotent producer that closes the stream at the end.
    try {
      await ReadableStream.from(args.pipe.map(payload)).pipeTo(handle.writable({ lingerMs: 1 }))
    } catch (err) {
      result.errors.push(describe(err))
    }
  }
  if (args.close) {
    try {
      const body = args.close === true ? undefined : args.close.body
      const res = await handle.close(body === undefined ? undefined : { body: payload(body) })
      result.finalOffset = res.finalOffset
    } catch (err) {
      result.closeError = describe(err)
    }
  }
  if (args.afterClose !== undefined) {
    try {
      await handle.append(payload(args.afterClose))
      result.afterClose = "accepted"
    } catch (err) {
      result.afterClose = describe(err)
    }
  }
  const head = await handle.head()
  result.head = { offset: head.offset, streamClosed: head.streamClosed, contentType: head.contentType }
  return result
}

async function produce(args) {
  const handle = new DurableStream({ url: args.url, contentType: args.contentType })
  const errors = []
  // duplicatePosts: every POST is delivered twice and the client sees the second answer,
  // as when a response is lost and the request retried. The server must store it once.
  const pairs = []
  const duplicating = async (url, init) => {
    if (init?.method !== "POST") return fetch(url, init)
    const first = await fetch(url, init)
    await first.arrayBuffer()
    const second = await fetch(url, init)
    pairs.push([first.status, second.status])
    return second
  }
  const producer = new IdempotentProducer(handle, args.producerId, {
    ...(args.duplicatePosts ? { fetch: duplicating } : {}),
    epoch: args.epoch ?? 0,
    autoClaim: args.autoClaim ?? false,
    lingerMs: args.lingerMs ?? 5,
    maxInFlight: args.maxInFlight ?? 5,
    ...(args.maxBatchBytes ? { maxBatchBytes: args.maxBatchBytes } : {}),
    onError: (err) => errors.push(describe(err)),
  })
  // messages are JSON values; the client takes them pre-serialized.
  for (const m of args.messages ?? []) producer.append(JSON.stringify(m))
  const result = {}
  try {
    await producer.flush()
  } catch (err) {
    errors.push(describe(err))
  }
  if (args.appendStream) {
    // One POST whose body is streamed part by part (chunked), with pauses between parts.
    const { parts, delayMs = 0 } = args.appendStream
    async function* source() {
      for (const p of parts) {
        yield typeof p === "string" ? p : fromB64(p.b64)
        if (delayMs) await new Promise((r) => setTimeout(r, delayMs))
      }
    }
    try {
      await handle.appendStream(source())
    } catch (err) {
      result.errors.push(describe(err))
    }
  }
  if (args.pipe) {
    // writable(): an auto-claiming idempotent producer that closes the stream at the end.
    try {
      await ReadableStream.from(args.pipe.map(payload)).pipeTo(handle.writable({ lingerMs: 1 }))
    } catch (err) {
      result.errors.push(describe(err))
    }
  }
  if (args.close) {
    try {
      const final = args.finalMessage === undefined ? undefined : JSON.stringify(args.finalMessage)
      const res = await producer.close(final)
      result.finalOffset = res.finalOffset
    } catch (err) {
      result.closeError = describe(err)
    }
  } else {
    await producer.detach()
  }
  result.epoch = producer.epoch
  result.nextSeq = producer.nextSeq
  if (args.duplicatePosts) result.pairs = pairs
  result.errors = errors
  return result
}

async function read(args, emit) {
  const timeoutMs = args.timeoutMs ?? 15000
  const format = args.format ?? "json"
  const res = await stream({ url: args.url, offset: args.offset, live: args.live ?? false })
  const items = []
  const chunks = []
  const result = { batches: 0 }
  if (args.live === false || args.live === undefined) {
    // Catch-up: the promise helpers stop at the first up-to-date.
    if (format === "json") items.push(...(await res.json()))
    else chunks.push(await res.body())
  } else {
    let ready = false
    let done
    const finished = new Promise((resolve) => (done = resolve))
    const enough = () =>
      (args.count !== undefined && (format === "json" ? items.length : total(chunks)) >= args.count)
    const onMeta = (meta) => {
      result.batches += 1
      result.offset = meta.offset
      result.upToDate = meta.upToDate
      result.streamClosed = meta.streamClosed
      result.cursor = meta.cursor
      if (meta.upToDate && !ready) {
        ready = true
        emit({ event: "ready", offset: meta.offset })
      }
      if (enough() || meta.streamClosed) done("data")
    }
    if (format === "json") {
      res.subscribeJson(async (batch) => {
        items.push(...batch.items)
        onMeta(batch)
      })
    } else {
      res.subscribeBytes(async (chunk) => {
        chunks.push(chunk.data)
        onMeta(chunk)
      })
    }
    // The session ending by itself (res.closed resolving without cancel) is how
    // the client reports EOF on a closed stream.
    // res.closed can resolve before the subscriber has seen the last chunk:
    // leave it a moment to drain.
    res.closed.then(
      () => setTimeout(() => done("session-ended"), 300),
      (err) => {
        result.error = describe(err)
        done("error")
      },
    )
    const timer = setTimeout(() => done("timeout"), timeoutMs)
    result.finishedBy = await finished
    clearTimeout(timer)
    if (args.untilClosed && result.finishedBy === "data" && result.streamClosed) {
      // Give the session a moment to end on its own after the closing batch.
      const ended = await Promise.race([
        res.closed.then(() => true, () => true),
        new Promise((r) => setTimeout(() => r(false), 3000)),
      ])
      result.sessionEnded = ended
    } else {
      result.sessionEnded = result.finishedBy === "session-ended"
    }
    res.cancel()
  }
  result.offset = res.offset
  result.upToDate = res.upToDate
  result.streamClosed = res.streamClosed
  if (format === "json") result.items = items
  else result.b64 = b64(concat(chunks))
  return result
}

function total(chunks) {
  return chunks.reduce((n, c) => n + c.length, 0)
}

function concat(chunks) {
  const all = new Uint8Array(total(chunks))
  let at = 0
  for (const c of chunks) {
    all.set(c, at)
    at += c.length
  }
  return all
}

async function head(args) {
  const h = await DurableStream.head({ url: args.url })
  return { exists: h.exists, offset: h.offset, streamClosed: h.streamClosed, contentType: h.contentType }
}

async function remove(args) {
  await DurableStream.delete({ url: args.url })
  return { deleted: true }
}

const commands = { write, produce, read, head, delete: remove }

async function run(command, args, emit) {
  try {
    return await commands[command](args, emit)
  } catch (err) {
    return { error: describe(err) }
  }
}

const [command, rawArgs] = process.argv.slice(2)
if (command === "serve") {
  const pending = new Set()
  const lines = createInterface({ input: process.stdin })
  lines.on("line", (line) => {
    if (!line.trim()) return
    const { id, command: cmd, args } = JSON.parse(line)
    const emit = (obj) => write_({ id, ...obj })
    const job = run(cmd, args, emit).then((result) => emit({ event: "result", result }))
    pending.add(job)
    job.finally(() => pending.delete(job))
  })
  // stdin closed: finish what is running, then leave.
  lines.on("close", () => Promise.allSettled([...pending]).then(() => process.exit(0)))
} else {
  const result = await run(command, JSON.parse(rawArgs ?? "{}"), write_)
  // Exit once stdout drained: a large result piped out would be cut short otherwise.
  process.stdout.write(JSON.stringify(result) + "\n", () => process.exit(0))
}
