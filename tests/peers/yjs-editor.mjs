// A Yjs editor in Node for duralog's interop tests: yjs + the official provider
// (@durable-streams/y-durable-streams) editing one document on a duralog server.
//
//   node yjs-editor.mjs <baseUrl> <docId> <seed> <ops> <sse|long-poll> [reconnects]
//
// Makes <ops> random edits (text inserts/deletes, map sets/deletes, array
// inserts/deletes), disconnecting and reconnecting the provider <reconnects>
// times on the way, prints "done", then answers each "dump" line on stdin with
// the document as JSON (and each "aware <json>" by setting its awareness state),
// until "quit".
import * as Y from "yjs"
import { Awareness } from "y-protocols/awareness"
import { YjsProvider } from "@durable-streams/y-durable-streams"
import { createInterface } from "node:readline"

const [baseUrl, docId, seedArg, opsArg, liveMode, reconnectsArg] = process.argv.slice(2)
let seed = Number(seedArg)
const random = () => {
  // mulberry32: the same edits for the same seed
  seed |= 0
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const pick = (n) => Math.floor(random() * n)

const doc = new Y.Doc()
const awareness = new Awareness(doc)
awareness.setLocalState({ user: `node-${seedArg}` })
const errors = []
const provider = new YjsProvider({ doc, baseUrl, docId, awareness, liveMode, connect: false })
provider.on("error", (err) => errors.push(String(err)))

const synced = () =>
  new Promise((resolve) => {
    if (provider.synced) return resolve()
    const on = (s) => {
      if (s) {
        provider.off("synced", on)
        resolve()
      }
    }
    provider.on("synced", on)
  })

const text = doc.getText("text")
const map = doc.getMap("map")
const array = doc.getArray("array")

function edit(i) {
  const kind = pick(6)
  if (kind === 0 || kind === 1) {
    text.insert(pick(text.length + 1), `n${seedArg}.${i} `)
  } else if (kind === 2 && text.length > 0) {
    const at = pick(text.length)
    text.delete(at, Math.min(1 + pick(4), text.length - at))
  } else if (kind === 3) {
    map.set(`k${pick(20)}`, `n${seedArg}.${i}`)
  } else if (kind === 4 && map.size > 0 && random() < 0.3) {
    map.delete([...map.keys()][pick(map.size)])
  } else if (array.length > 0 && random() < 0.3) {
    array.delete(pick(array.length), 1)
  } else {
    array.insert(pick(array.length + 1), [`n${seedArg}.${i}`])
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
await provider.connect()
await synced()
const ops = Number(opsArg)
const reconnects = Number(reconnectsArg ?? 0)
const every = reconnects > 0 ? Math.max(1, Math.floor(ops / (reconnects + 1))) : Infinity
for (let i = 0; i < ops; i++) {
  edit(i)
  if ((i + 1) % every === 0 && i + 1 < ops) {
    // The provider sends only while connected: flush, reconnect, wait for sync.
    await provider.flush()
    await provider.disconnect()
    await sleep(50 + pick(200))
    // The provider's producer id is `${docId}-${clientID}` and a new producer starts
    // again at epoch 0, seq 0; its IdempotentProducer (client 0.2.6) does not claim
    // a new epoch when the server answers "duplicate" (PROTOCOL.md 5.2.1), so after
    // a plain reconnect its first batches would be dropped as duplicates on any
    // conformant server. A fresh clientID (what Yjs does on an id clash) gives the
    // new session a producer of its own.
    doc.clientID = Math.floor(random() * 2 ** 31)
    await provider.connect()
    await synced()
  }
  await sleep(pick(15))
}
await provider.flush()
console.log("done")

const rl = createInterface({ input: process.stdin })
for await (const line of rl) {
  if (line === "dump") {
    const others = [...awareness.getStates().entries()]
      .filter(([id]) => id !== doc.clientID)
      .map(([, state]) => state)
    console.log(JSON.stringify({ text: text.toString(), map: map.toJSON(), array: array.toJSON(),
      others, errors }))
  } else if (line.startsWith("aware ")) {
    awareness.setLocalState(JSON.parse(line.slice(6)))
    console.log("ok")
  } else if (line === "quit") {
    break
  }
}
provider.destroy()
process.exit(0)
