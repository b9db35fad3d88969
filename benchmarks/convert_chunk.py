"""convert_chunk: what converting one stream chunk between flavors costs.

    .venv/bin/python benchmarks/convert_chunk.py            # ~1 min
    .venv/bin/python benchmarks/convert_chunk.py --rounds 3 # quicker

Measures CPU µs per chunk (process time: the machine is shared, wall clock is noisy) for the
flavor templates (aogstream/convert) on realistic token chunks: openai → aog and ollama → aog
(a provider's chunk to the AOG shape), aog → openai / aog → ollama (a front door's last step),
ollama → openai (both steps) and openai → openai (same flavor: passthrough).  Each conversion
runs twice: on the jsonata interpreter alone (`FlavorRegistry(fast=False)`) and on the fast
path (the plain-Python twins of aogstream/convert/fast.py, the default).  The baseline is
`json.loads` + `json.dumps` of the same chunk, the least any JSON-rewriting relay pays.  Each
round runs baseline, jsonata and fast path back to back for every case; the figures are
medians of round medians.  Prints a markdown table and writes
benchmarks/results/convert_chunk.md.
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

from aogstream.convert import Converter, FlavorRegistry

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
    """CPU µs per call (process time, so other processes on the machine do not count)."""
    fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--chunks", type=int, default=2000, help="chunks per round per case")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "convert_chunk.md"))
    args = ap.parse_args()

    fast = Converter()
    slow = Converter(FlavorRegistry(fast=False))
    pairs = {
        "openai → aog": ("aog", "openai", OPENAI_CHUNK),
        "ollama → aog": ("aog", "ollama", OLLAMA_CHUNK),
        "aog → openai": ("openai", "aog", AOG_CHUNK),
        "aog → ollama": ("ollama", "aog", AOG_CHUNK),
        "ollama → openai": ("openai", "ollama", OLLAMA_CHUNK),
        "openai → openai (passthrough)": ("openai", "openai", OPENAI_CHUNK),
    }
    cases = {
        name: (chunk, converter(slow, app, prov, chunk), converter(fast, app, prov, chunk))
        for name, (app, prov, chunk) in pairs.items()
    }
    for name, (_, slow_fn, fast_fn) in cases.items():
        a, b = slow_fn(), fast_fn()
        assert a is not None and b is not None and json.loads(a) == json.loads(b), name
    base: dict[str, list[float]] = {name: [] for name in cases}
    jsonata: dict[str, list[float]] = {name: [] for name in cases}
    fastp: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (chunk, slow_fn, fast_fn) in cases.items():
            base[name].append(per_call_us(baseline(chunk), args.chunks))
            jsonata[name].append(per_call_us(slow_fn, max(args.chunks // 10, 50)))
            fastp[name].append(per_call_us(fast_fn, args.chunks))

    lines = [
        "# convert_chunk: per-chunk flavor conversion cost",
        "",
        f"python {platform.python_version()}, {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.2f}, {args.rounds} rounds × {args.chunks} chunks "
        f"({max(args.chunks // 10, 50)} on the jsonata path), CPU µs per chunk, medians of "
        "rounds; baseline = json.loads + json.dumps of the same chunk, same rounds",
        "",
        "| conversion | jsonata path µs | fast path µs | baseline µs | jsonata / baseline "
        "| fast / baseline | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in cases:
        js = statistics.median(jsonata[name])
        fp = statistics.median(fastp[name])
        b = statistics.median(base[name])
        speedup = f"{js / fp:.0f}×" if js >= 1.0 else "—"  # passthrough: nothing to speed up
        lines.append(f"| {name} | {js:.1f} | {fp:.1f} | {b:.1f} | {js / b:.1f}× "
                     f"| {fp / b:.1f}× | {speedup} |")
    lines += [
        "",
        "jsonata path = every step on jsonata-python (`FlavorRegistry(fast=False)`); fast path ="
        " the default, where the built-in expressions run as their plain-Python twins"
        " (aogstream/convert/fast.py) and fall back to jsonata only for shapes a twin does not"
        " mirror. Both paths share the once-per-chunk parse/serialise and the cached"
        " $fromMillis/$toMillis; each case's two outputs are checked equal before timing.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
