// The TanStack AI durable transport (npm @durable-streams/tanstack-ai-transport):
// send a message to our Python session endpoint, follow the answer live, then
// reconnect with a fresh connection and check the snapshot.
// Usage: node tanstack-client.mjs SEND_URL READ_URL -> one JSON line on stdout
import { durableStreamConnection } from "@durable-streams/tanstack-ai-transport";

const [sendUrl, readUrl] = process.argv.slice(2);
const conn = durableStreamConnection({ sendUrl, readUrl });
const user = { id: "u1", role: "user", parts: [{ type: "text", content: "hello there" }] };
await conn.send([user], undefined);

function apply(messages, chunk) {
  if (chunk.type === "MESSAGES_SNAPSHOT") return chunk.messages.map((m) => ({ ...m, parts: [...m.parts] }));
  if (chunk.type === "TEXT_MESSAGE_START" && !messages.find((m) => m.id === chunk.messageId)) {
    return [...messages, { id: chunk.messageId, role: chunk.role, parts: [] }];
  }
  if (chunk.type === "TEXT_MESSAGE_CONTENT") {
    return messages.map((m) => {
      if (m.id !== chunk.messageId) return m;
      const text = (m.parts.find((p) => p.type === "text")?.content ?? "") + chunk.delta;
      return { ...m, parts: [{ type: "text", content: text }] };
    });
  }
  return messages;
}

const live = new AbortController();
let messages = [];
const types = [];
for await (const chunk of conn.subscribe(live.signal)) {
  types.push(chunk.type);
  messages = apply(messages, chunk);
  if (chunk.type === "RUN_FINISHED" || chunk.type === "RUN_ERROR") break;
}
live.abort();

// A new page: a fresh connection, its first item is the snapshot of the whole session.
const fresh = durableStreamConnection({ sendUrl, readUrl });
const again = new AbortController();
let snapshot = null;
for await (const chunk of fresh.subscribe(again.signal)) {
  if (chunk.type === "MESSAGES_SNAPSHOT") { snapshot = chunk.messages; break; }
}
again.abort();
const text = (m) => (m?.parts ?? []).filter((p) => p.type === "text").map((p) => p.content).join("");
console.log(JSON.stringify({
  firstType: types[0],
  sawFinish: types.includes("RUN_FINISHED"),
  liveRoles: messages.map((m) => m.role),
  liveText: text(messages.find((m) => m.role === "assistant")),
  snapshotRoles: (snapshot ?? []).map((m) => m.role),
  snapshotUser: text((snapshot ?? []).find((m) => m.role === "user")),
  snapshotText: text((snapshot ?? []).find((m) => m.role === "assistant")),
}));
