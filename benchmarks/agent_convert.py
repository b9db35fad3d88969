"""agent_convert: what turning one chat stream chunk into a Responses or Anthropic event costs.

    .venv/bin/python benchmarks/agent_convert.py            # ~20 s
    .venv/bin/python benchmarks/agent_convert.py --rounds 3 # quicker

`/v1/responses` and `/v1/messages` stream by translating each OpenAI chat chunk (the
internal form) with a per-stream state machine (aogstream/convert/responses.py,
anthropic.py) and framing the events as `event:` + `data:` SSE. This measures CPU µs per
chunk (process time) of that whole per-chunk step as the door runs it: `json.loads` of the
chat chunk, `feed()`, and the framing with the JSON encoding of every event
(aogstream/http/agent_doors.py `frame_all`), in steady state (the block already open), for
a text token and for a tool-call argument fragment. The baseline is `json.loads` +
`json.dumps` of the same chat chunk, the least any JSON-rewriting relay pays, measured in
the same rounds (baseline and translators back to back per case). Figures are medians of
round medians. Prints a markdown table and writes benchmarks/results/agent_convert.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aogstream.convert import Converter, anthropic, responses
from aogstream.convert.chat_stream import ChatStreamTranslator
from aogstream.http.agent_doors import frame_all


def chat_chunk(delta: dict[str, Any]) -> bytes:
    return json.dumps({
        "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1700000000,
        "model": "qwen2.5-0.5b-instruct",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}).encode()


TEXT = chat_chunk({"role": "assistant", "content": " world"})
CALL_OPEN = chat_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                        "function": {"name": "get_weather", "arguments": ""}}]})
ARGS = chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"Par"}}]})
# what an AOG-shaped provider (llama.cpp, openai-plugin) streams; the door first turns it
# into a chat chunk with the OpenAI chat door's own template (its fast twin)
AOG_TEXT = json.dumps({
    "id": "42", "model": "qwen2.5-0.5b-instruct", "created_at": "2023-11-14T22:13:20.000Z",
    "message": {"role": "assistant", "content": " world"}, "finished": False}).encode()


def baseline(chunk: bytes) -> Callable[[], object]:
    def run() -> object:
        return json.dumps(json.loads(chunk), separators=(",", ":")).encode()
    return run


def translator(make: Callable[[], ChatStreamTranslator], opening: bytes,
               chunk: bytes) -> Callable[[], bytes]:
    """The door's per-chunk step on a stream whose block is already open."""
    t = make()
    t.start()
    t.feed(json.loads(opening))

    def run() -> bytes:
        return frame_all(t.feed(json.loads(chunk)))
    return run


def from_aog(make: Callable[[], ChatStreamTranslator]) -> Callable[[], bytes]:
    """The door's whole step for an AOG provider: template to chat, then the translator."""
    sc = Converter().between("chat", "openai", "aog").stream(id="42")
    t = make()
    t.start()
    t.feed(json.loads(sc.convert(AOG_TEXT) or b"{}"))

    def run() -> bytes:
        return frame_all(t.feed(json.loads(sc.convert(AOG_TEXT) or b"{}")))
    return run


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """CPU µs per call (process time, so other processes on the machine do not count)."""
    fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--chunks", type=int, default=5000, help="chunks per round per case")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "agent_convert.md"))
    args = ap.parse_args()

    def resp() -> ChatStreamTranslator:
        return responses.ResponsesStream({"input": "x"}, "qwen2.5-0.5b-instruct", 12)

    def claude() -> ChatStreamTranslator:
        return anthropic.AnthropicStream("qwen2.5-0.5b-instruct", 12)

    cases = {
        "chat → Responses, text token": (TEXT, resp, TEXT),
        "chat → Anthropic, text token": (TEXT, claude, TEXT),
        "chat → Responses, tool argument fragment": (ARGS, resp, CALL_OPEN),
        "chat → Anthropic, tool argument fragment": (ARGS, claude, CALL_OPEN),
    }
    whole = {"AOG chunk → chat → Responses, text token": resp,
             "AOG chunk → chat → Anthropic, text token": claude}
    names = [*cases, *whole]
    base: dict[str, list[float]] = {name: [] for name in names}
    conv: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, (chunk, make, opening) in cases.items():
            base[name].append(per_call_us(baseline(chunk), args.chunks))
            conv[name].append(per_call_us(translator(make, opening, chunk), args.chunks))
        for name, make in whole.items():
            base[name].append(per_call_us(baseline(AOG_TEXT), args.chunks))
            conv[name].append(per_call_us(from_aog(make), args.chunks))
    sample = {name: translator(make, opening, chunk)().decode()
              for name, (chunk, make, opening) in cases.items()}

    lines = [
        "# agent_convert: per-chunk cost of the Responses and Anthropic stream translators",
        "",
        f"python {platform.python_version()}, {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.2f}, {args.rounds} rounds × {args.chunks} chunks, "
        "CPU µs per chunk, medians of rounds; baseline = json.loads + json.dumps of the same "
        "chat chunk, same rounds",
        "",
        "| conversion | translator µs | baseline µs | translator / baseline |",
        "|---|---:|---:|---:|",
    ]
    for name in names:
        c = statistics.median(conv[name])
        b = statistics.median(base[name])
        lines.append(f"| {name} | {c:.1f} | {b:.1f} | {c / b:.1f}× |")
    lines += [
        "",
        "translator = the door's whole per-chunk step: json.loads of the chat chunk, the state"
        " machine's feed(), and the SSE framing with the JSON encoding of each event (one event"
        " per chunk in steady state). No template engine runs per chunk. The last two rows are"
        " the door's whole step behind an AOG-shaped provider (llama.cpp, openai-plugin): the"
        " OpenAI chat door's template turns the provider's chunk into a chat chunk first (its"
        " plain-Python twin), then the translator runs; their baseline is json.loads +"
        " json.dumps of the provider's chunk. What one chunk becomes:",
        "",
    ]
    for name, text in sample.items():
        lines += [f"- {name}: `{text.strip().replace(chr(10), ' ⏎ ')}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
