// Starts the Node reference server (npm @durable-streams/server) for tests and
// benchmarks: node tests/peers/reference-server.mjs PORT [DATA_DIR]
// Prints "ready <url>" once it listens; stops on SIGTERM/SIGINT.
import { DurableStreamTestServer } from "@durable-streams/server"

const port = Number(process.argv[2] ?? 4438)
const dataDir = process.argv[3] || undefined
const longPollTimeout = Number(process.env.REF_LONG_POLL_TIMEOUT_MS ?? 30000)
// webhooks: true so the subscription workers can be tested against it (off by default).
const server = new DurableStreamTestServer({ port, host: "127.0.0.1", dataDir, longPollTimeout, webhooks: true })
const url = await server.start()
console.log(`ready ${url}`)
const stop = async () => {
  await server.stop()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
