// The Vercel AI SDK against the gateway's agent doors, as a chat UI uses it:
// `openai(model)` (the default provider: POST /v1/responses) and `anthropic(model)`
// (POST /v1/messages). Text, streamed text, tool calls (unary and streamed) and a tool
// loop that runs the tool and sends its result back. Prints one JSON object of what
// the SDK understood; any error the SDK raises fails the run (exit code 1).
// Run by tests/test_agent_doors_node.py: GATEWAY_URL, MODEL and API_KEY in the environment.
import { generateText, jsonSchema, stepCountIs, streamText, tool } from "ai";
import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";

const base = process.env.GATEWAY_URL;
const model = process.env.MODEL;
const apiKey = process.env.API_KEY; // Bearer (openai), x-api-key (anthropic)
const providers = {
  openai: createOpenAI({ baseURL: `${base}/v1`, apiKey }),
  anthropic: createAnthropic({ baseURL: `${base}/v1`, apiKey }),
};
const schema = jsonSchema({
  type: "object", properties: { city: { type: "string" } }, required: ["city"],
});
const declared = { get_weather: tool({ description: "Weather of a city", inputSchema: schema }) };
const runnable = {
  get_weather: tool({
    description: "Weather of a city", inputSchema: schema,
    execute: async ({ city }) => `sunny in ${city}`,
  }),
};
const calls = (list) => list.map((c) => ({ name: c.toolName, input: c.input }));

const out = {};
for (const [name, provider] of Object.entries(providers)) {
  const m = provider(model);
  const text = await generateText({ model: m, prompt: "Hi", maxOutputTokens: 20 });
  const stream = streamText({ model: m, prompt: "Hi", maxOutputTokens: 20 });
  let streamed = "";
  for await (const delta of stream.textStream) streamed += delta;
  const called = await generateText({ model: m, prompt: "Weather in Paris?", tools: declared });
  const callStream = streamText({ model: m, prompt: "Weather in Paris?", tools: declared });
  for await (const _ of callStream.fullStream) { /* drain */ }
  const loop = await generateText({
    model: m, prompt: "Weather in Paris?", tools: runnable, stopWhen: stepCountIs(3),
  });
  out[name] = {
    text: text.text, finish: text.finishReason, usage: text.usage,
    streamed, streamFinish: await stream.finishReason, streamUsage: await stream.usage,
    calls: calls(called.toolCalls), callsFinish: called.finishReason,
    streamCalls: calls(await callStream.toolCalls),
    streamCallsFinish: await callStream.finishReason,
    loopText: loop.text, loopSteps: loop.steps.length,
  };
}
console.log(JSON.stringify(out));
