// The `ollama` JS client (as Ollama apps in Node use it) against the gateway's Ollama
// endpoints. Prints one JSON line with what each call returned, for
// tests/test_ollama_clients.py to check. GATEWAY_URL, CHAT_MODEL and GGUF_URL come from
// the test.
import { Ollama } from "ollama";

const client = new Ollama({ host: process.env.GATEWAY_URL });
const chatModel = process.env.CHAT_MODEL;
const gguf = process.env.GGUF_URL;
const out = {};

out.version = (await client.version()).version;
const shown = await client.show({ model: chatModel });
out.capabilities = shown.capabilities ?? [];
try {
  await client.show({ model: "no-such-model" });
  out.unknownShow = "answered";
} catch (err) {
  out.unknownShow = err.status_code ?? String(err);
}
out.running = (await client.ps()).models.map((m) => m.model);

const statuses = [];
let last = null;
for await (const part of await client.pull({ model: gguf, stream: true })) {
  statuses.push(part.status);
  if (part.total) last = { completed: part.completed, total: part.total };
}
out.pullStatuses = [statuses[0], statuses[statuses.length - 1]];
out.pullLast = last;
const pulled = gguf.split("/").pop().replace(/\.gguf$/, "");
out.listedAfterPull = (await client.list()).models.map((m) => m.model).includes(pulled);
const answer = await client.chat({
  model: pulled,
  messages: [{ role: "user", content: "Hi" }],
  options: { num_predict: 8, temperature: 0 },
});
out.chatText = answer.message.content;
await client.delete({ model: pulled });
out.listedAfterDelete = (await client.list()).models.map((m) => m.model).includes(pulled);

console.log(JSON.stringify(out));
