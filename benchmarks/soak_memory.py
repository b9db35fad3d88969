"""soak_memory: does memory plateau under repeated load? Prints resident memory per cycle.

    .venv/bin/python benchmarks/soak_memory.py llama --cycles 4 -n 40
    .venv/bin/python benchmarks/soak_memory.py gateway --cycles 7 -n 200
    .venv/bin/python benchmarks/soak_memory.py realtime --cycles 4 -n 15

- **llama**: a gateway with the shipped llamacpp-plugin (engines from
  `AOGSTREAM_TEST_ENGINE_DIR`, default `.cache/engines`, as `make test` installs them);
  each cycle sends N concurrent short chats (`max_tokens` 4) and reads the llama.cpp
  engine's RSS once they are all answered;
- **gateway**: a gateway (one serving process) with the test echo plugin; each cycle opens
  N streams at once, reads the first chunk of each and hangs up, then reads the
  gateway's RSS;
- **realtime**: a gateway with the shipped pocketsphinx-plugin; each cycle runs N
  realtime sessions one after another (half finished with finish-task, half abandoned
  mid-audio) and reads the plugin's RSS.

A plateau shows as the later cycles' deltas near zero. Not part of `make bench`: it
measures memory, not speed, and takes a few minutes. Every wait is bounded; every process
it starts is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from audio import frames, goforward_pcm  # noqa: E402
from conftest import Gateway, shipped_plugins_gateway  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

SETTLE_S = 1.5


def mb(proc: psutil.Process) -> float:
    return proc.memory_info().rss / 2**20


def report(label: str, start: float, read: Callable[[], float], cycles: int,
           run_cycle: Callable[[], None]) -> None:
    print(f"{label}: start {start:.1f} MB", flush=True)
    last = start
    for k in range(cycles):
        t0 = time.monotonic()
        run_cycle()
        time.sleep(SETTLE_S)
        now = read()
        print(f"  cycle {k + 1}: {now:.1f} MB ({now - last:+.1f}) in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        last = now


def soak_llama(cycles: int, n: int) -> None:
    async def chat(c: httpx.AsyncClient, url: str, i: int) -> None:
        r = await c.post(url, json={
            "model": "smollm2-135m-instruct", "max_tokens": 4, "stream": False,
            "messages": [{"role": "user", "content": f"Say a word about the number {i}."}]})
        r.raise_for_status()

    async def burst(url: str) -> None:
        async with httpx.AsyncClient(timeout=600,
                                     limits=httpx.Limits(max_connections=n + 5)) as c:
            await asyncio.gather(*(chat(c, url, i) for i in range(n)))

    with shipped_plugins_gateway(Path(tempfile.mkdtemp()), ["llamacpp-plugin"]) as gw:
        pid = gw.wait_plugin_running(name="llamacpp-plugin", timeout=60)["pid"]
        url = gw.service_url("chat")
        asyncio.run(_one(url))  # the engine loads with the first request
        engine = max(psutil.Process(pid).children(recursive=True), key=mb)
        report(f"llama.cpp engine, {n} concurrent chats per cycle", mb(engine),
               lambda: mb(engine), cycles, lambda: asyncio.run(burst(url)))


async def _one(url: str) -> None:
    """One chat, so the engine is loaded before the first reading."""
    async with httpx.AsyncClient(timeout=300) as c:
        r = await c.post(url, json={"model": "smollm2-135m-instruct", "max_tokens": 1,
                                    "messages": [{"role": "user", "content": "hi"}]})
        r.raise_for_status()


def soak_gateway(cycles: int, n: int) -> None:
    async def abandon(c: httpx.AsyncClient, url: str, i: int) -> None:
        body = {"id": f"s{i}", "stream": True, "tokens": 2000, "interval": 0.01}
        async with c.stream("POST", url, json=body) as r:
            async for _ in r.aiter_raw():
                break  # hang up after the first chunk

    async def burst(url: str) -> None:
        async with httpx.AsyncClient(timeout=60,
                                     limits=httpx.Limits(max_connections=n + 5)) as c:
            await asyncio.gather(*(abandon(c, url, i) for i in range(n)))

    gw = Gateway(Path(tempfile.mkdtemp()), {"AOGSTREAM_WORKERS": "1"}).start()
    try:
        gw.wait_plugin_running(timeout=20)
        assert gw.proc is not None
        proc = psutil.Process(gw.proc.pid)
        url = gw.service_url("chat")
        report(f"gateway, {n} streams abandoned after the first chunk per cycle", mb(proc),
               lambda: mb(proc), cycles, lambda: asyncio.run(burst(url)))
    finally:
        gw.stop()


def soak_realtime(cycles: int, n: int) -> None:
    run = json.dumps({"task": "speech-to-text-ws", "action": "run-task",
                      "parameters": {"format": "pcm", "sample_rate": 16000,
                                     "language": "en"}})
    finish = json.dumps({"task": "speech-to-text-ws", "action": "finish-task"})
    speech = goforward_pcm()

    def sessions(url: str) -> None:
        for i in range(n):
            with connect(url, open_timeout=10, max_size=None) as ws:
                ws.send(run)
                json.loads(ws.recv(timeout=20))
                pcm = speech if i % 2 == 0 else speech[: len(speech) // 2]
                for f in frames(pcm, 100):
                    ws.send(f)
                if i % 2 == 0:
                    ws.send(finish)
                    while json.loads(ws.recv(timeout=30))["header"]["event"] not in (
                            "task-finished", "task-failed"):
                        pass

    with shipped_plugins_gateway(Path(tempfile.mkdtemp()), ["pocketsphinx-plugin"]) as gw:
        proc = psutil.Process(gw.wait_plugin_running(name="pocketsphinx-plugin",
                                                     timeout=30)["pid"])
        url = gw.service_ws_url("speech-to-text-ws")
        sessions(url)  # warm-up: the first decoder
        time.sleep(SETTLE_S)
        report(f"pocketsphinx-plugin, {n} sequential sessions per cycle", mb(proc),
               lambda: mb(proc), cycles, lambda: sessions(url))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["llama", "gateway", "realtime"])
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("-n", type=int, default=40, help="requests or sessions per cycle")
    args = ap.parse_args()
    {"llama": soak_llama, "gateway": soak_gateway, "realtime": soak_realtime}[args.what](
        max(1, args.cycles), max(1, args.n))


if __name__ == "__main__":
    main()
