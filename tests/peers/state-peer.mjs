// The TypeScript side of the State Protocol interop tests (tests/test_state_interop.py),
// on npm @durable-streams/state 0.3.1 and @durable-streams/client.
//
//   node tests/peers/state-peer.mjs materialize      stdin: {"sequences": [[event, ...], ...]}
//   node tests/peers/state-peer.mjs read URL         materialize a stream read through the client
//   node tests/peers/state-peer.mjs write URL        write events built by createStateSchema
//
// Every command prints one JSON document on stdout. A state is printed as
// {"types": [...], "data": [[type, [[key, value], ...]], ...]}: lists, so the
// order of types and keys (a JS Map's insertion order) is compared too.
//
// Control events: MaterializedState.apply takes change events only; section 6 of
// STATE-PROTOCOL.md leaves control handling to the application. We apply them as
// the package's own StreamDB does (src/stream-db.ts dispatchControl): reset
// clears everything, snapshot-start / snapshot-end change nothing.
import { MaterializedState, createStateSchema, isChangeEvent, isControlEvent } from "@durable-streams/state"
import { DurableStream, stream } from "@durable-streams/client"

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n")

function applyAll(state, events) {
  for (const event of events) {
    if (isChangeEvent(event)) state.apply(event)
    else if (isControlEvent(event) && event.headers.control === "reset") state.clear()
  }
}

function dump(state) {
  return {
    types: state.types,
    typeCount: state.typeCount,
    data: state.types.map((t) => [t, Array.from(state.getType(t).entries())]),
  }
}

async function readStdin() {
  const parts = []
  for await (const part of process.stdin) parts.push(part)
  return JSON.parse(Buffer.concat(parts).toString("utf8"))
}

async function materialize() {
  const { sequences } = await readStdin()
  out(sequences.map((events) => {
    const state = new MaterializedState()
    applyAll(state, events)
    return dump(state)
  }))
}

async function read(url) {
  const res = await stream({ url, offset: "-1", live: false })
  const items = await res.json()
  const state = new MaterializedState()
  applyAll(state, items)
  out({ state: dump(state), count: items.length })
}

// A Standard Schema that accepts objects with a string `id` (no zod needed).
const objectWithId = {
  "~standard": {
    version: 1,
    vendor: "duralog-tests",
    validate: (v) =>
      v && typeof v === "object" && typeof v.id === "string"
        ? { value: v }
        : { issues: [{ message: "expected an object with a string id" }] },
  },
}

async function write(url) {
  const schema = createStateSchema({
    users: { schema: objectWithId, type: "user", primaryKey: "id" },
    notes: { schema: objectWithId, type: "note", primaryKey: "id" },
  })
  const handle = await DurableStream.create({ url, contentType: "application/json" })
  const events = [
    schema.users.insert({ value: { id: "u1", name: "Ada" }, headers: { txid: "ts-1" } }),
    schema.users.insert({ value: { id: "u2", name: "Grace" }, headers: { txid: "ts-1" } }),
    schema.notes.upsert({ value: { id: "n1", text: "first" } }),
    schema.users.update({ value: { id: "u1", name: "Ada L." }, oldValue: { id: "u1", name: "Ada" } }),
    schema.notes.upsert({ value: { id: "n1", text: "second" } }),
    schema.users.delete({ key: "u2", oldValue: { id: "u2", name: "Grace" } }),
    schema.notes.insert({ value: { id: "n2", text: "kept" }, headers: { timestamp: "2025-01-15T10:30:00Z" } }),
  ]
  // One message per append (the client wraps a JSON append in an array itself).
  for (const event of events) await handle.append(JSON.stringify(event))
  const state = new MaterializedState()
  applyAll(state, events)
  out({ events, state: dump(state) })
}

const [command, url] = process.argv.slice(2)
const commands = { materialize, read: () => read(url), write: () => write(url) }
if (!commands[command]) {
  process.stderr.write(`unknown command ${command}\n`)
  process.exit(2)
}
await commands[command]()
