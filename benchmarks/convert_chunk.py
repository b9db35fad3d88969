"""convert_chunk: what converting one stream chunk between flavors costs.

    .venv/bin/python benchmarks/convert_chunk.py            # ~20 s
    .venv/bin/python benchmarks/convert_chunk.py --rounds 3 # quicker

Measures µs per chunk for the flavor templates (aogstream/convert) on realistic token chunks:
openai → aog and ollama → aog (a provider's chunk to the AOG shape), aog → openai (the
OpenAI front door's last step), and openai → openai (same flavor: passthrough). The baseline,
measured in the same run, is `json.loads` + `json.dumps` of the same chunk — the least any
JSON-rewriting relay pays. Rounds alternate baseline and conversions; the figures are medians
of round medians. Prints a markdown table and writes benchmarks/results/convert_chunk.md.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aogstream.convert import Converter

OPENAI_CHUNK = json.dumps({
    "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1700000000,
    "model": "qwen2.5-0.5b-instruct",
    "choices": [{"index": 0, "delta": {"content": " world"}, "finish_reason": None}],
}).encode()
OLLAMA_CHUNK = json.dumps({
    "model": "qwen2.5:0.5b", "created_at": "2024-01-01T00:00:00.123456Z",
    "message": {"role": "assistant", "content": " world"}, "done": False,
}).encode()
AOG_CHUNK = json.dumps({
    "id": "42", "model": "qwen2.5-0.5b-instruct", "created_at": "2023-11-14T22:13:20.000Z",
    "message": {"role": "assistant", "content": " world"}, "finished": False,
}).encode()


def baseline(chunk: bytes) -> Callable[[], object]:
    def run() -> object:
        return json.dumps(json.loads(chunk), separators=(",", ":")).encode()
    return run


def converter(conv: Converter, app: str, provider: str, chunk: bytes) -> Callable[[], object]:
    stream = conv.between("chat", app, provider).stream(id="42")

    def run() -> object:
        return stream.convert(chunk)
    return run


def per_call_us(fn: Callable[[], object], n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--chunks", type=int, default=2000, help="chunks per round per case")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "convert_chunk.md"))
    args = ap.parse_args()

    conv = Converter()
    cases = {
        "openai → aog": (OPENAI_CHUNK, converter(conv, "aog", "openai", OPENAI_CHUNK)),
        "ollama → aog": (OLLAMA_CHUNK, converter(conv, "aog", "ollama", OLLAMA_CHUNK)),
        "aog → openai": (AOG_CHUNK, converter(conv, "openai", "aog", AOG_CHUNK)),
        "ollama → openai": (OLLAMA_CHUNK, converter(conv, "openai", "ollama", OLLAMA_CHUNK)),
        "openai → openai (passthrough)": (
            OPENAI_CHUNK, converter(conv, "openai", "openai", OPENAI_CHUNK)),
    }
    rounds: dict[str, list[float]] = {name: [] for name in cases}
    base: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (chunk, fn) in cases.items():
            base[name].append(per_call_us(baseline(chunk), args.chunks))
            rounds[name].append(per_call_us(fn, args.chunks))

    lines = [
        "# convert_chunk: per-chunk flavor conversion cost",
        "",
        f"python {platform.python_version()}, {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.2f}, {args.rounds} rounds × {args.chunks} chunks, "
        "medians of rounds (baseline = json.loads + json.dumps of the same chunk, same run)",
        "",
        "| conversion | µs/chunk | baseline µs/chunk | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name in cases:
        us = statistics.median(rounds[name])
        b = statistics.median(base[name])
        lines.append(f"| {name} | {us:.1f} | {b:.1f} | {us / b:.1f}× |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
