// The npm server-side helpers write to our server; Python then reads the streams.
// Usage: node ai-writers.mjs AISDK_WRITE_URL SESSION_WRITE_URL
import { toDurableStreamResponse } from "@durable-streams/aisdk-transport";
import { toDurableChatSessionResponse } from "@durable-streams/tanstack-ai-transport";

const [aisdkUrl, sessionUrl] = process.argv.slice(2);
const words = ["Written ", "by ", "the ", "npm ", "helpers."];

async function* uiChunks() {
  yield { type: "start", messageId: "m-node" };
  yield { type: "text-start", id: "t1" };
  for (const w of words) yield { type: "text-delta", id: "t1", delta: w };
  yield { type: "text-end", id: "t1" };
  yield { type: "finish", finishReason: "stop" };
}
const r1 = await toDurableStreamResponse({ source: uiChunks(), stream: { writeUrl: aisdkUrl }, mode: "await" });

async function* runChunks() {
  const ts = Date.now();
  yield { type: "RUN_STARTED", runId: "r1", model: "node", timestamp: ts };
  yield { type: "TEXT_MESSAGE_START", messageId: "a1", role: "assistant", model: "node", timestamp: ts };
  for (const w of words) yield { type: "TEXT_MESSAGE_CONTENT", messageId: "a1", delta: w, content: "ignored", model: "node", timestamp: ts };
  yield { type: "TEXT_MESSAGE_END", messageId: "a1", model: "node", timestamp: ts };
  yield { type: "RUN_FINISHED", runId: "r1", finishReason: "stop", model: "node", timestamp: ts };
}
const r2 = await toDurableChatSessionResponse({
  stream: { writeUrl: sessionUrl },
  newMessages: [{ id: "u1", role: "user", parts: [{ type: "text", content: "hi from node" }] }],
  responseStream: runChunks(), mode: "await",
});
console.log(JSON.stringify({ aisdkStatus: r1.status, aisdkBody: await r1.json(), sessionStatus: r2.status }));
