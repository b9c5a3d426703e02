// The AI SDK durable transport (npm @durable-streams/aisdk-transport) with `ai` 6,
// reading a chat our Python helpers write: live (then a "refresh" mid-answer),
// after a reconnect, and the reconnect endpoint's 204 once nothing is in flight.
// Usage: node aisdk-client.mjs API_URL  -> one JSON line on stdout
import { createDurableChatTransport } from "@durable-streams/aisdk-transport";
import { readUIMessageStream, uiMessageChunkSchema } from "ai";
import { safeValidateTypes } from "@ai-sdk/provider-utils";

const api = process.argv[2];
const transport = createDurableChatTransport({ api });
const chatId = `chat-${Date.now()}-${Math.random().toString(36).slice(2)}`;
const messages = [{ id: "u1", role: "user", parts: [{ type: "text", text: "hello" }] }];

async function validate(chunk) {
  const r = await safeValidateTypes({ value: chunk, schema: uiMessageChunkSchema });
  if (!r.success) throw new Error(`invalid UI message chunk ${JSON.stringify(chunk)}: ${r.error}`);
}

function textOf(message) {
  return message.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
}

// Live: read a few chunks, then drop the connection as a page refresh would.
const abort = new AbortController();
const live = await transport.sendMessages({
  trigger: "submit-message", chatId, messageId: undefined, messages, abortSignal: abort.signal,
});
const reader = live.getReader();
const liveChunks = [];
while (liveChunks.length < 6) {
  const { value, done } = await reader.read();
  if (done) break;
  await validate(value);
  liveChunks.push(value);
}
abort.abort();
await reader.cancel().catch(() => {});

// Reconnect while the answer is still being written: the whole message, validated.
const again = await transport.reconnectToStream({ chatId });
let reconnectNull = again === null;
let finalMessage = null;
const chunkTypes = [];
if (again) {
  const [a, b] = again.tee();
  const seen = (async () => {
    const r = b.getReader();
    for (;;) {
      const { value, done } = await r.read();
      if (done) break;
      await validate(value);
      chunkTypes.push(value.type);
    }
  })();
  for await (const message of readUIMessageStream({ stream: a, terminateOnError: true })) {
    finalMessage = message;
  }
  await seen;
}
// Now nothing is in flight: the endpoint answers 204 and the transport returns null.
const after = await transport.reconnectToStream({ chatId });
console.log(JSON.stringify({
  liveTypes: liveChunks.map((c) => c.type),
  reconnectNull,
  text: finalMessage ? textOf(finalMessage) : null,
  role: finalMessage?.role ?? null,
  first: chunkTypes[0] ?? null,
  last: chunkTypes[chunkTypes.length - 1] ?? null,
  afterNull: after === null,
}));
